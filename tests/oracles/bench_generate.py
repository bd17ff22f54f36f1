"""Reference generation throughput: transformers `generate` on the default model, plus this machine's roofline.

For each sample count N it renders one chat prompt, batches it N times (a GRPO group), and times one
`model.generate` call producing exactly --new-tokens tokens per sample (sampling at temperature 0.7, top-k and
top-p off, eos ignored through min_new_tokens), after one untimed warm-up call. Prints one JSON object.

Each N is timed twice for transformers: with its default dynamic KV cache and with its static cache
(`cache_implementation="static"`, preallocated to the final length). Both run eagerly: transformers would otherwise
compile the static-cache decode step on its own on a GPU, recompiling inside the timed call at each new N.
`--compile` adds a third timing, "static+compile": the static cache with the decode step's forward compiled by
torch.compile (mode="reduce-overhead", which also captures CUDA graphs on a GPU; fullgraph=True, or False with a
note on stderr where the model does not trace as one graph), through transformers' own `compile_config` so that the
prefill stays eager as transformers requires of a static cache. Compilation is kept out of the timings by untimed
calls at every N first (shapes differ per N, so each compiles and records its own graphs).

`--device cuda` runs everything on the GPU; every timed region ends with a device synchronisation, since CUDA calls
return before the work is done. Nothing decodes generated text, so the model may have random weights and a
vocabulary wider than its tokenizer (tests/oracles/random_model.py).

The roofline: each decode step reads every weight once and every sequence's cached keys and values once (memory
bound: bytes = weights + N x positions x 2 x layers x kv_heads x head_dim x dtype size, at the mean cache length over
the steps) and does 2 FLOPs per weight per sequence (compute bound); the slower bound sets the step time, so
tokens/s <= N / max(bytes / bandwidth, N * flops / rate).
Bandwidth and matmul rate are measured here with torch at the same thread count. A third figure says what the
kernels themselves allow: one decode step's projections alone (every linear layer of the model and the output head,
torch's `linear` on the model's own weights at N rows), with nothing else of the step around them.

    ~/.cache/grpo-rs/venv/bin/python tests/oracles/bench_generate.py --threads 2 --samples 1 8 64 [--dtype bf16]
        [--device cpu|cuda] [--compile] [--model DIR]
"""

import argparse
import json
import os
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, CompileConfig

CACHE = os.environ.get("GRPO_RS_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "grpo-rs"
)


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def sync(device):
    # CUDA calls return once the work is queued; a clock read must wait for it to finish.
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_bandwidth(device):
    # A GPU copies 0.5 GiB in well under a millisecond: a larger buffer and more repetitions keep the timer's
    # resolution and the launch cost out of the figure.
    gib, reps = (2.0, 20) if device.type == "cuda" else (0.5, 5)
    n = int(gib * (1 << 30)) // 4
    # Random contents: pages of identical bytes can be shared by the hypervisor and read from cache.
    src = torch.rand(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return 2 * n * 4 / best  # bytes read + written per second


def measure_matmul(dtype, device, m=64, k=1536, n=576):
    # Decode-shaped matmuls (a batch of rows against a weight matrix), the work a decode step does. One such matmul
    # takes microseconds on a GPU, so it is repeated more there.
    reps = 2000 if device.type == "cuda" else 50
    a = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device)
    torch.nn.functional.linear(a, w)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(a, w)
    sync(device)
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def measure_step_matmuls(model, n, dtype, device):
    # Seconds for one decode step's projections at n rows: each nn.Linear once (lm_head included, whose weight is
    # the tied embedding), on the model's own weights.
    reps = 50 if device.type == "cuda" else 5
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {}
    for w in weights:
        inputs.setdefault(w.shape[1], torch.randn(n, w.shape[1], dtype=dtype, device=device))

    def step():
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    with torch.no_grad():
        step()
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            step()
        sync(device)
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(CACHE, "models", "SmolLM2-135M-Instruct"))
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt", default="What is 17 + 25?")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--compile", action="store_true", help='also time "static+compile" (torch.compile, static cache)')
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
    # Padding never happens (every row has the same prompt and length), but generate wants an id; not every
    # tokenizer names a pad token.
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
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

    def run(n, cache, compile_config=None):
        batch = ids.repeat(n, 1)
        if cache == "dynamic":
            extra = {}
        elif compile_config is None:
            extra = {"cache_implementation": "static", "disable_compile": True}
        else:
            extra = {"cache_implementation": "static", "compile_config": compile_config}
        with torch.no_grad():
            sync(device)
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
                pad_token_id=pad,
                **extra,
            )
            sync(device)
            secs = time.perf_counter() - t
        generated = (out.shape[1] - batch.shape[1]) * n
        return generated, secs

    def row(n, cache, generated, secs):
        return {"samples": n, "cache": cache, "generated_tokens": generated, "secs": secs, "tokens_per_second": generated / secs}

    results = []
    for cache in ("dynamic", "static"):
        run(1, cache)  # warm-up
        for n in args.samples:
            results.append(row(n, cache, *run(n, cache)))

    compile_fullgraph, compile_error = None, None
    if args.compile:

        def compiled_rows(fullgraph):
            cc = CompileConfig(fullgraph=fullgraph, mode="reduce-overhead")
            # transformers compiles the decode step by itself only on accelerators; this flag of its own makes the
            # CPU take the same path (inductor's C++ kernels there, no CUDA graphs).
            cc._compile_all_devices = device.type != "cuda"
            rows = []
            for n in args.samples:
                # Untimed: the first call compiles for this N's shapes, the second lets CUDA graphs be recorded
                # (reduce-overhead records on a later call than the one that compiles).
                run(n, "static", cc)
                run(n, "static", cc)
                rows.append(row(n, "static+compile", *run(n, "static", cc)))
            if getattr(model, "_compiled_call", None) is None:
                raise RuntimeError("transformers did not compile the decode step; the timings would be eager")
            return rows

        # Each N, and the prefill/decode split within it, compiles its own graph; torch's default limit of 8 per
        # function would fall back to eager silently part way through a long --samples list.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(args.samples) + 4)
        try:
            results += compiled_rows(True)
            compile_fullgraph = True
        except Exception as e:
            print(f"static+compile: fullgraph=True failed ({type(e).__name__}: {e}); retrying with fullgraph=False",
                  file=sys.stderr)
            torch._dynamo.reset()
            try:
                results += compiled_rows(False)
                compile_fullgraph = False
            except Exception as e2:
                # Keep the eager timings and the roofline: report the failure rather than lose the whole run.
                compile_error = f"{type(e2).__name__}: {e2}"
                print(f"static+compile: failed with fullgraph=False too ({compile_error}); no static+compile rows",
                      file=sys.stderr)

    bw = measure_bandwidth(device)
    rate = measure_matmul(dtype, device)
    roof = []
    for n in args.samples:
        step_bytes = weight_bytes + n * mean_positions * kv_bytes_per_position
        step = max(step_bytes / bw, n * flops_per_token / rate)
        matmuls = measure_step_matmuls(model, n, dtype, device)
        roof.append({"samples": n, "tokens_per_second": n / step, "matmuls_only_tokens_per_second": n / matmuls})
    report = {
        "threads": args.threads,
        "dtype": args.dtype,
        "device": args.device,
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
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    if args.compile:
        report["compile_fullgraph"] = compile_fullgraph
        report["compile_error"] = compile_error
    print(json.dumps(report))


if __name__ == "__main__":
    main()
