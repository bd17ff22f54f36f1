"""Greedy reference continuations of the default model (SmolLM2-135M-Instruct) from transformers.

Writes tests/fixtures/model/default_greedy.json: for each prompt the chat-rendered text, its token ids and
transformers' greedy continuation (f32, CPU, 32 new tokens, the model's own generation_config eos ids).
Run from the repository root after `cargo xtask setup` has converted the default model:
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/model_default_greedy.py [MODEL_DIR]
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("GRPO_RS_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "grpo-rs"
)
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(CACHE, "models", "SmolLM2-135M-Instruct")

PROMPTS = [
    [{"role": "user", "content": "What is 17 + 25?"}],
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "Name three primary colors."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "Translate 'good morning' into French."}],
]

torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="sdpa").eval()
cases = []
for messages in PROMPTS:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=32,
        )
    gen = out[0, len(ids):].tolist()
    cases.append(
        {
            "messages": messages,
            "rendered": text,
            "prompt_ids": ids,
            "completion_ids": gen,
            "completion_text": tok.decode(gen, skip_special_tokens=True),
        }
    )
    print(repr(cases[-1]["completion_text"]))
with open(os.path.join(ROOT, "tests", "fixtures", "model", "default_greedy.json"), "w") as f:
    json.dump({"model": "SmolLM2-135M-Instruct", "max_new_tokens": 32, "eos_token_id": model.generation_config.eos_token_id, "cases": cases}, f, indent=1, ensure_ascii=False)
