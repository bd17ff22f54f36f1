"""Oracle for starting from a PEFT LoRA adapter (`--lora-adapter`): peft writes an adapter for a base model, and
transformers + peft give the logits the host must reproduce with it.

Usage: python peft_adapter.py --base BASE_DIR --out ADAPTER_DIR [--targets q_proj,v_proj] [--rank 4] [--alpha 8]
       [--rslora] [--dora]

Writes ADAPTER_DIR as `PeftModel.save_pretrained` does (adapter_config.json, adapter_model.safetensors), with every
lora_A and lora_B drawn from a seeded normal distribution (a fresh adapter's B is 0, which would make it a no-op) and,
with --dora, every magnitude moved by up to about 10% of itself (it starts at the weight's row norms, which would
make its rescaling a no-op too). Prints one JSON object: the input ids, the logits [1, T, V] of the base with the
adapter, the base's own, and the gradient of every adapter tensor (by its saved name, flattened) of the summed
log-probability of each next input token, which checks what backward sees (DoRA's norm is held constant there).
"""

import argparse
import json

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

INPUT = [[1, 5, 9, 23, 42, 77, 100, 3]]


def saved_name(name):
    """A parameter's name as `save_pretrained` writes it, less its `base_model.model.` prefix: without the adapter's
    name, and a magnitude without the `.weight` of the layer that holds it."""
    name = name.removeprefix("base_model.model.").replace(".default", "")
    return name.removesuffix(".weight") if "lora_magnitude_vector" in name else name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--rslora", action="store_true", help="rank-stabilized scaling, alpha / sqrt(r)")
    ap.add_argument("--dora", action="store_true", help="weight-decomposed LoRA: a trained magnitude per output")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    ids = torch.tensor(INPUT)
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.float()
    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    config = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        target_modules=targets,
        lora_dropout=0.0,
        use_rslora=args.rslora,
        use_dora=args.dora,
    )
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_magnitude_vector" in name:
                param.mul_(1.0 + 0.1 * torch.randn_like(param))
            elif "lora_" in name:
                param.normal_(0.0, 0.2)
    logits = model(input_ids=ids).logits.float()
    logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).sum().backward()
    grads = {saved_name(n): p.grad.flatten().tolist() for n, p in model.named_parameters() if "lora_" in n}
    model.save_pretrained(args.out)
    print(
        json.dumps(
            {
                "input_ids": INPUT,
                "logits": logits.detach().tolist(),
                "grads": grads,
                "base_logits": base_logits.tolist(),
            }
        )
    )


if __name__ == "__main__":
    main()
