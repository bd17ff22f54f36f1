"""An MXFP4 gpt-oss checkpoint, the oracle for reading the hub's quantized experts.

Quantizes the experts of tests/fixtures/model/tiny/gpt_oss (written by model_fixtures.py, read here unchanged) to MXFP4
as the hub's openai/gpt-oss checkpoints store them: each row of each expert's matrix, in transformers' [experts, out,
in] orientation, cut into groups of 32 values, each group a power-of-two scale (u8, exponent + 127) and 32 FP4 (E2M1)
codes packed two per byte, the first in the low nibble (`*_blocks` [experts, out, in/32, 16], `*_scales` [experts,
out, in/32]), and config.json's `quantization_config` says `mxfp4`. transformers then loads it with
`Mxfp4Config(dequantize=True)` and scores the tiny model's padded batch: the logits the host must give when it reads
the same files. Writes tests/fixtures/model/tiny/gpt_oss_mxfp4/.

Run from the repository root:
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/mxfp4_checkpoint.py
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Mxfp4Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_fixtures import TINY  # noqa: E402

# The E2M1 values of the 16 codes.
CODES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def quantize(x):
    """[experts, out, in] f32 -> (blocks u8 [experts, out, in/32, 16], scales u8 [experts, out, in/32]): each group's
    scale puts its largest magnitude within FP4's 6, each value rounded to the nearest code."""
    e, rows, cols = x.shape
    groups = x.reshape(e, rows, cols // 32, 32)
    exponent = torch.floor(torch.log2(groups.abs().amax(-1).clamp(min=1e-30))) - 2
    scaled = groups / torch.exp2(exponent)[..., None]
    codes = (scaled[..., None] - CODES).abs().argmin(-1).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (exponent + 127).to(torch.uint8).contiguous()


def main():
    source, out = os.path.join(TINY, "gpt_oss"), os.path.join(TINY, "gpt_oss_mxfp4")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, name), out)
    weights = {}
    for name, tensor in load_file(os.path.join(source, "model.safetensors")).items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            # transformers keeps them [experts, in, out] for x @ W; the hub stores [experts, out, in] quantized.
            weights[name + "_blocks"], weights[name + "_scales"] = quantize(tensor.transpose(1, 2).float())
        else:
            weights[name] = tensor
    save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    model = AutoModelForCausalLM.from_pretrained(
        out, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    batch = load_file(os.path.join(source, "reference.safetensors"))
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    experts = model.model.layers[0].mlp.experts
    save_file(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "logits": logits.contiguous(),
            # transformers' dequantized first layer, [experts, in, out] as it multiplies them.
            "gate_up_proj": experts.gate_up_proj.detach().float().contiguous(),
            "down_proj": experts.down_proj.detach().float().contiguous(),
        },
        os.path.join(out, "reference.safetensors"),
    )
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
