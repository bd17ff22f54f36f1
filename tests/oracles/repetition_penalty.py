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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_fixtures import TINY, greedy_continuations, tiny_models_with  # noqa: E402


def main(names):
    for family in names:
        directory = os.path.join(TINY, family)
        model = AutoModelForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
        with open(os.path.join(directory, "greedy.json")) as f:
            prompts = json.load(f)["prompts"]
        cases = []
        for penalty in (1.3, 0.7):
            completions = greedy_continuations(model, prompts, repetition_penalty=penalty)
            cases.append({"repetition_penalty": penalty, "completions": completions})
        path = os.path.join(directory, "greedy_repetition_penalty.json")
        with open(path, "w") as f:
            json.dump({"prompts": prompts, "max_new_tokens": 12, "cases": cases}, f)
        print("wrote", os.path.relpath(path))


if __name__ == "__main__":
    # Name families to rewrite only theirs.
    # Every tiny model with greedy continuations (the reward model has none), or the families named.
    main(sys.argv[1:] or tiny_models_with("greedy.json"))
