"""Oracle for `--reward-model`: a tiny sequence-classification model and transformers' scores of conversations.

Writes tests/fixtures/model/tiny/llama_rm/: a random LlamaForSequenceClassification (one label, the tiny byte-level
tokenizer and SmolLM2's chat template of model_fixtures.py) and scores.json, holding conversations, the text
transformers' `apply_chat_template` renders for each (no generation prompt, as TRL scores a prompt with its
completion), and the score TRL takes from it: the first logit of the model on those tokens (no special tokens
added), each conversation scored on its own.

Run from the repository root:
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/reward_model.py
"""

import json
import os
import shutil
import sys

import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_fixtures import FIX, TEMPLATES, save_tokenizer, tiny_shape, tiny_tokenizer  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "What is 17 + 25?"}, {"role": "assistant", "content": "42"}],
    [{"role": "user", "content": "What is 17 + 25?"}, {"role": "assistant", "content": "It is 41, I think."}],
    [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "And 6 * 7?"},
        {"role": "assistant", "content": "42"},
    ],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}],
]


def main():
    out = os.path.join(FIX, "tiny", "llama_rm")
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(2024)
    cfg = LlamaConfig(**{**tiny_shape(), "pad_token_id": 0}, num_labels=1, tie_word_embeddings=False)
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    model = model.eval()
    model.save_pretrained(out, safe_serialization=True)
    template = open(os.path.join(TEMPLATES, "HuggingFaceTB-SmolLM2-135M-Instruct.jinja")).read()
    tok = tiny_tokenizer(eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|endoftext|>")
    tok = save_tokenizer(tok, out, template)
    cases = []
    for messages in CONVERSATIONS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            score = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        cases.append({"messages": messages, "text": text, "ids": ids, "score": score})
    with open(os.path.join(out, "scores.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print(f"wrote {out}: {len(cases)} scored conversations")


if __name__ == "__main__":
    main()
