"""Benchmark: how much DoRA slows sampling down against plain LoRA in transformers + peft, the Python side of
docs/benchmarks.md's "LoRA and DoRA in rollouts".

Usage: python bench_dora_generate.py --model MODEL_DIR [--samples 16] [--new-tokens 64] [--rank 16] [--threads 2]

Wraps the model in a fresh peft adapter on every linear layer (rank 16, B drawn small so the adapter is not the
identity), LoRA and then DoRA, and times `generate` of SAMPLES sequences of exactly NEW_TOKENS sampled tokens from one
chat prompt (best of two runs after a warm-up). Prints one JSON object: tokens per second for each.
"""

import argparse
import json
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "What is 17 + 25? Think step by step, then give the answer."


def tokens_per_second(model, inputs, samples, new_tokens):
    best = float("inf")
    for attempt in range(3):
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                **inputs,
                do_sample=True,
                temperature=1.0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                num_return_sequences=samples,
            )
        if attempt > 0:
            best = min(best, time.perf_counter() - start)
    return samples * new_tokens / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt")
    out = {"samples": args.samples, "new_tokens": args.new_tokens, "rank": args.rank, "threads": args.threads}
    for name, dora in [("lora", False), ("dora", True)]:
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        config = LoraConfig(r=args.rank, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0, use_dora=dora)
        model = get_peft_model(base, config).eval()
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0.0, 0.02)
        out[f"{name}_tokens_per_s"] = tokens_per_second(model, inputs, args.samples, args.new_tokens)
    out["dora_over_lora"] = out["dora_tokens_per_s"] / out["lora_tokens_per_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
