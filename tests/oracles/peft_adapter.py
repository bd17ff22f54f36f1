"""Oracle for starting from a PEFT LoRA adapter (`--lora-adapter`): peft writes an adapter for a base model, and
transformers + peft give the logits the host must reproduce with it.

Usage: python peft_adapter.py --base BASE_DIR --out ADAPTER_DIR [--targets q_proj,v_proj] [--rank 4] [--alpha 8]
       [--rslora]

Writes ADAPTER_DIR as `PeftModel.save_pretrained` does (adapter_config.json, adapter_model.safetensors), with every
lora_A and lora_B drawn from a seeded normal distribution (a fresh adapter's B is 0, which would make it a no-op),
and prints one JSON object: the input ids, the logits [1, T, V] of the base with the adapter, and the base's own.
"""

import argparse
import json

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

INPUT = [[1, 5, 9, 23, 42, 77, 100, 3]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--rslora", action="store_true", help="rank-stabilized scaling, alpha / sqrt(r)")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    ids = torch.tensor(INPUT)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.float()
    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    config = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, target_modules=targets, lora_dropout=0.0, use_rslora=args.rslora
    )
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.2)
        logits = model(input_ids=ids).logits.float()
    model.save_pretrained(args.out)
    print(
        json.dumps(
            {
                "input_ids": INPUT,
                "logits": logits.tolist(),
                "base_logits": base_logits.tolist(),
            }
        )
    )


if __name__ == "__main__":
    main()
