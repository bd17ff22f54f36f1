"""Write a Hugging Face model directory with random weights in the shape of a known model, for speed benchmarks.

A benchmark's speed depends on the architecture (widths, layers, heads, vocabulary), not on the weights' values, so
a machine that cannot download a checkpoint (a GPU machine with no network) can still time one: this builds the
architecture from a preset of its config values, initialises it with transformers' own initialisation (normal with
std = initializer_range, RMSNorm weights at one), saves it as one safetensors file, and copies the tokenizer files of
`--tokenizer` beside it. The tokenizer need not be the model's own: generated ids may then lie past its vocabulary,
which is fine for benchmarks that never decode text (tests/oracles/bench_generate.py, bench_grpo_step.py), but its
vocabulary must fit in the model's. bos/eos/pad ids are the tokenizer's.

The presets hold the architecture of SmolLM2-135M(-Instruct) (from its config.json) and Qwen2.5-0.5B(-Instruct).
The output loads with `AutoModelForCausalLM.from_pretrained` and with grpo-host's loader (host/src/model): tensors
under their Hugging Face names, the tied lm_head not stored.

    ~/.cache/grpo-rs/venv/bin/python tests/oracles/random_model.py --preset qwen2.5-0.5b \\
        --tokenizer ~/.cache/grpo-rs/models/SmolLM2-135M-Instruct --out /tmp/qwen-random [--dtype bf16|f32] [--seed 0]
"""

import argparse
import json
import os
import shutil

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config


def arch(vocab, hidden, intermediate, layers, heads, kv_heads, max_positions, eps, rope_theta, **extra):
    """The config values of a decoder with SiLU MLPs, tied embeddings and default rope (both presets are)."""
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act="silu",
        max_position_embeddings=max_positions,
        initializer_range=0.02,
        rms_norm_eps=eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=True,
        **extra,
    )


# Architecture only; token ids come from the tokenizer.
PRESETS = {
    # SmolLM2-135M-Instruct's config.json (its rms_norm_eps reads 9.999999747378752e-06 there: 1e-5 rounded to f32
    # by an earlier save).
    "smollm2-135m": (
        LlamaConfig,
        arch(49152, 576, 1536, 30, 9, 3, 8192, 1e-5, 100000.0, head_dim=64, attention_bias=False, mlp_bias=False,
             pretraining_tp=1),
    ),
    # Qwen2.5-0.5B(-Instruct): q/k/v projections with biases (Qwen2's fixed layout), no sliding window (the window
    # fields are inert while use_sliding_window is off).
    "qwen2.5-0.5b": (
        Qwen2Config,
        arch(151936, 896, 4864, 24, 14, 2, 32768, 1e-6, 1000000.0, use_sliding_window=False, sliding_window=32768,
             max_window_layers=24),
    ),
}

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}

# What a model directory needs of its tokenizer (tokenizer.json and tokenizer_config.json are required by
# host/src/model/resolve.rs); chat_template.jinja, where a tokenizer keeps its template there, takes precedence over
# the one in tokenizer_config.json in both transformers and grpo-host.
REQUIRED_FILES = ["tokenizer.json", "tokenizer_config.json"]
OPTIONAL_FILES = ["special_tokens_map.json", "chat_template.jinja", "generation_config.json"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--tokenizer", required=True, help="a directory with tokenizer.json and tokenizer_config.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]

    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(args.tokenizer, f))]
    if missing:
        raise SystemExit(f"{args.tokenizer} lacks {', '.join(missing)}")
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    config_class, arch = PRESETS[args.preset]
    # A token id past the embedding's rows would fail at the first forward; the other way round is harmless.
    if len(tok) > arch["vocab_size"]:
        raise SystemExit(
            f"the tokenizer has {len(tok)} tokens, more than the {args.preset} vocabulary ({arch['vocab_size']})"
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = config_class(
        **arch, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=pad, dtype=dtype
    )

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    embed = model.get_input_embeddings().weight
    # A zero (never initialised) or non-finite weight would make every benchmark measure something else.
    if not all(torch.isfinite(p).all() for p in model.parameters()) or embed.abs().max() == 0:
        raise SystemExit("initialisation left a zero embedding or non-finite weights")

    os.makedirs(args.out, exist_ok=True)
    # One file: larger than any preset, so nothing is sharded.
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="1000GB")
    for name in REQUIRED_FILES + OPTIONAL_FILES:
        src = os.path.join(args.tokenizer, name)
        if os.path.isfile(src):
            # The tokenizer's generation_config.json replaces the one save_pretrained wrote: same ids, and any
            # sampling defaults it carries.
            shutil.copyfile(src, os.path.join(args.out, name))

    # transformers 5 writes `dtype`; transformers 4 readers look for `torch_dtype`. Both say the stored dtype.
    path = os.path.join(args.out, "config.json")
    with open(path) as f:
        saved = json.load(f)
    saved["dtype"] = saved["torch_dtype"] = str(dtype).removeprefix("torch.")
    with open(path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
        f.write("\n")

    params = sum(p.numel() for p in model.parameters())
    print(f"{args.preset}: {params} parameters ({args.dtype}, seed {args.seed}) written to {args.out}")


if __name__ == "__main__":
    main()
