"""Oracle for our checkpoints: transformers and peft load them as they would a checkpoint of their own.

Usage: python checkpoint_load.py --base BASE_DIR [--full CKPT] [--adapter CKPT]
       python checkpoint_load.py --perturb CKPT

--full: a full fine-tuning checkpoint; transformers must load it with no missing or unexpected tensors.
--adapter: a LoRA checkpoint saved with --save-merged; peft must load the adapter onto BASE with every tensor used,
its logits must equal transformers' logits of the merged weights in CKPT/merged (max abs difference), and they must
differ from the base model's (the adapter was trained, so a silently ignored adapter would show here).
Prints one JSON object with the findings; the Rust test asserts on it.

--perturb: overwrite every lora_B of CKPT's adapter with small seeded random values, and move every DoRA magnitude by
about 10% of itself. A freshly initialised LoRA has B = 0 (and a DoRA magnitude the weight's row norms), and a tiny
random model earns equal rewards for every rollout (no gradient), so without this the adapter of a short test run is
a no-op and the comparison above could not fail; the test resumes from the perturbed checkpoint
and saves again, so the adapter and merged weights it checks are written by grpo-host.
"""

import argparse
import json
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

INPUT = torch.tensor([[1, 5, 9, 23, 42, 77, 100, 3]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits.float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base")
    ap.add_argument("--full")
    ap.add_argument("--adapter")
    ap.add_argument("--perturb")
    args = ap.parse_args()
    out = {}
    if args.perturb:
        path = f"{args.perturb}/adapter_model.safetensors"
        tensors = load_file(path)
        gen = torch.Generator().manual_seed(0)
        for name, t in tensors.items():
            if "lora_B" in name:
                tensors[name] = (torch.randn(t.shape, generator=gen) * 0.05).to(t.dtype)
            elif "lora_magnitude_vector" in name:
                tensors[name] = (t * (1.0 + 0.1 * torch.randn(t.shape, generator=gen))).to(t.dtype)
        save_file(tensors, path)
        # The edited file no longer matches the checkpoint's manifest (sizes and sha256), which grpo-host would rightly
        # refuse as damaged; without a manifest the checkpoint is checked for structure only, as one written before
        # manifests existed.
        manifest = os.path.join(args.perturb, "manifest.json")
        if os.path.exists(manifest):
            os.remove(manifest)
        out["perturbed"] = sum("lora_B" in n for n in tensors)
    if args.full:
        model, info = AutoModelForCausalLM.from_pretrained(args.full, dtype=torch.float32, output_loading_info=True)
        out["full_missing"] = sorted(info["missing_keys"])
        out["full_unexpected"] = sorted(info["unexpected_keys"])
        out["full_finite"] = bool(torch.isfinite(logits(model)).all())
    if args.adapter:
        from peft import PeftModel
        from peft.utils import get_peft_model_state_dict

        base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
        base_logits = logits(base)
        model = PeftModel.from_pretrained(base, args.adapter).eval()
        ours = set(load_file(f"{args.adapter}/adapter_model.safetensors"))
        theirs = set(get_peft_model_state_dict(model))
        out["adapter_unused"] = sorted(ours - theirs)
        out["adapter_missing"] = sorted(theirs - ours)
        # The projections with adapters, by the last part of their module name (".../q_proj.lora_A.weight").
        out["adapter_targets"] = sorted({n.split(".lora_")[0].rsplit(".", 1)[-1] for n in ours})
        peft_logits = logits(model)
        merged = AutoModelForCausalLM.from_pretrained(f"{args.adapter}/merged", dtype=torch.float32)
        out["peft_vs_merged_max_abs"] = float((peft_logits - logits(merged)).abs().max())
        out["peft_vs_base_max_abs"] = float((peft_logits - base_logits).abs().max())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
