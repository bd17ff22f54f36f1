"""The load-balancing loss of a mixture of experts, the oracle for `--router-aux-loss-coef`.

For each tiny mixture of tests/fixtures/model/tiny/ (written by model_fixtures.py, read here unchanged), transformers'
own `aux_loss` (`output_router_logits=True`, the Switch Transformer loss over the real tokens of the attention mask,
every sparse layer together) on the padded batch of reference.safetensors, and the gradient of that loss alone for
every parameter under the checkpoint's names. The batch has a left-padded and a right-padded row, so the mask
matters. Writes tests/fixtures/model/tiny/<family>/load_balancing.safetensors.

Run from the repository root:
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/load_balancing.py [family ...]
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_fixtures import TINY, attention_for, gradients_by_checkpoint_name, tiny_models_with  # noqa: E402


def main(names):
    # The mixtures are the tiny models with reference gradients.
    for name in names or tiny_models_with("reference_grads.safetensors"):
        out = os.path.join(TINY, name)
        kind = AutoConfig.from_pretrained(out).model_type
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation=attention_for(kind))
        model = model.train()
        reference = load_file(os.path.join(out, "reference.safetensors"))
        ids, mask, pos = reference["input_ids"], reference["attention_mask"], reference["position_ids"]
        model.zero_grad()
        aux = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_router_logits=True).aux_loss
        aux.backward()
        result = gradients_by_checkpoint_name(model, model.config)
        result["aux_loss"] = aux.detach().reshape(1).contiguous()
        save_file(result, os.path.join(out, "load_balancing.safetensors"))
        print(f"{name}: aux_loss {aux.item():.6f}")


if __name__ == "__main__":
    main(sys.argv[1:])
