"""Greedy continuations with transformers' repetition penalty, the oracle for `--repetition-penalty`.

For each tiny model of tests/fixtures/model/tiny/ (written by model_fixtures.py, read here unchanged), the prompts
of its greedy.json continued greedily for 12 tokens by transformers `generate` with `repetition_penalty` 1.3 and
0.7 (below 1 it favours repeats), never stopping early. The random tiny models repeat tokens freely, so the penalty
changes their continuations. Writes tests/fixtures/model/tiny/<family>/greedy_repetition_penalty.json.

Run from the repository root:
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/repetition_penalty.py [family ...]
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM

TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model", "tiny")


FAMILIES = ("llama", "llama3", "qwen2", "qwen3", "mistral", "smollm3", "olmo2", "mistral_window", "gemma3", "qwen2_window", "phi3", "olmo3", "ministral")


def main(families):
    for family in families:
        directory = os.path.join(TINY, family)
        model = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
        with open(os.path.join(directory, "greedy.json")) as f:
            prompts = json.load(f)["prompts"]
        cases = []
        for penalty in (1.3, 0.7):
            completions = []
            for prompt in prompts:
                with torch.no_grad():
                    out = model.generate(
                        torch.tensor([prompt]),
                        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                        do_sample=False,
                        max_new_tokens=12,
                        repetition_penalty=penalty,
                        eos_token_id=None,
                        pad_token_id=0,
                    )
                completions.append(out[0, len(prompt) :].tolist())
            cases.append({"repetition_penalty": penalty, "completions": completions})
        path = os.path.join(directory, "greedy_repetition_penalty.json")
        with open(path, "w") as f:
            json.dump({"prompts": prompts, "max_new_tokens": 12, "cases": cases}, f)
        print("wrote", os.path.relpath(path))


if __name__ == "__main__":
    # Name families to rewrite only theirs.
    main(sys.argv[1:] or FAMILIES)
