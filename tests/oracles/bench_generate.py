"""Reference generation throughput: transformers `generate` on the default model, plus this machine's roofline.

For each sample count N it renders one chat prompt, batches it N times (a GRPO group), and times one
`model.generate` call producing exactly --new-tokens tokens per sample (sampling at temperature 0.7, top-k and
top-p off, eos ignored through min_new_tokens), after one untimed warm-up call. Prints one JSON object.

Each N is timed twice for transformers: with its default dynamic KV cache and with its static cache
(`cache_implementation="static"`, preallocated to the final length).

The roofline: each decode step reads every weight once and every sequence's cached keys and values once (memory
bound: bytes = weights + N x positions x 2 x layers x kv_heads x head_dim x dtype size, at the mean cache length over
the steps) and does 2 FLOPs per weight per sequence (compute bound); the slower bound sets the step time, so
tokens/s <= N / max(bytes / bandwidth, N * flops / rate).
Bandwidth and matmul rate are measured here with torch at the same thread count. A third figure says what the
kernels themselves allow: one decode step's projections alone (every linear layer of the model and the output head,
torch's `linear` on the model's own weights at N rows), with nothing else of the step around them.

    ~/.cache/grpo-rs/venv/bin/python tests/oracles/bench_generate.py --threads 2 --samples 1 8 64 [--dtype bf16]
"""

import argparse
import json
import os
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CACHE = os.environ.get("GRPO_RS_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "grpo-rs"
)


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def measure_bandwidth(gib=0.5, reps=5):
    n = int(gib * (1 << 30)) // 4
    # Random contents: pages of identical bytes can be shared by the hypervisor and read from cache.
    src = torch.rand(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * n * 4 / best  # bytes read + written per second


def measure_matmul(dtype, m=64, k=1536, n=576, reps=50):
    # Decode-shaped matmuls (a batch of rows against a weight matrix), the work a decode step does.
    a = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype)
    torch.nn.functional.linear(a, w)
    t = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(a, w)
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def measure_step_matmuls(model, n, dtype, reps=5):
    # Seconds for one decode step's projections at n rows: each nn.Linear once (lm_head included, whose weight is
    # the tied embedding), on the model's own weights.
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {}
    for w in weights:
        inputs.setdefault(w.shape[1], torch.randn(n, w.shape[1], dtype=dtype))

    def step():
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    with torch.no_grad():
        step()
        t = time.perf_counter()
        for _ in range(reps):
            step()
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(CACHE, "models", "SmolLM2-135M-Instruct"))
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt", default="What is 17 + 25?")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa").eval()
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    params = sum(p.numel() for p in model.parameters())
    # Tied embeddings: the lm_head matmul uses the embedding matrix, so every parameter is read and multiplied.
    weight_bytes = params * torch.finfo(dtype).bits // 8
    flops_per_token = 2 * params

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    # Bytes of cached keys and values per sequence and position, over all layers.
    kv_bytes_per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8
    prompt_len = ids.shape[1]
    # Step i (0-based) of a sequence attends to prompt_len + i cached positions; the mean over the steps:
    mean_positions = prompt_len + (args.new_tokens - 1) / 2

    def run(n, cache):
        batch = ids.repeat(n, 1)
        extra = {"cache_implementation": "static"} if cache == "static" else {}
        with torch.no_grad():
            t = time.perf_counter()
            out = model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                do_sample=True,
                temperature=0.7,
                top_k=0,
                top_p=1.0,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=tok.pad_token_id,
                **extra,
            )
            secs = time.perf_counter() - t
        generated = (out.shape[1] - batch.shape[1]) * n
        return generated, secs

    results = []
    for cache in ("dynamic", "static"):
        run(1, cache)  # warm-up
        for n in args.samples:
            generated, secs = run(n, cache)
            results.append(
                {"samples": n, "cache": cache, "generated_tokens": generated, "secs": secs, "tokens_per_second": generated / secs}
            )
    bw = measure_bandwidth()
    rate = measure_matmul(dtype)
    roof = []
    for n in args.samples:
        step_bytes = weight_bytes + n * mean_positions * kv_bytes_per_position
        step = max(step_bytes / bw, n * flops_per_token / rate)
        matmuls = measure_step_matmuls(model, n, dtype)
        roof.append({"samples": n, "tokens_per_second": n / step, "matmuls_only_tokens_per_second": n / matmuls})
    print(
        json.dumps(
            {
                "threads": args.threads,
                "dtype": args.dtype,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "params": params,
                "weight_bytes": weight_bytes,
                "flops_per_token": flops_per_token,
                "kv_bytes_per_position": kv_bytes_per_position,
                "mean_positions": mean_positions,
                "bandwidth_bytes_per_s": bw,
                "matmul_flops_per_s": rate,
                "reference": results,
                "roofline": roof,
            }
        )
    )


if __name__ == "__main__":
    main()
