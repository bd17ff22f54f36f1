"""Reference generation throughput: transformers `generate` on the default model, plus this machine's roofline.

For each sample count N it renders one chat prompt, batches it N times (a GRPO group), and times one
`model.generate` call producing exactly --new-tokens tokens per sample (sampling at temperature 0.7, top-k and
top-p off, eos ignored through min_new_tokens), after one untimed warm-up call. Prints one JSON object.

The roofline: each decode step reads every weight once (memory bound) and does 2 FLOPs per weight per sequence
(compute bound); the slower bound sets the step time, so tokens/s <= N / max(bytes / bandwidth, N * flops / rate).
Bandwidth and matmul rate are measured here with torch at the same thread count.

    ~/.cache/grpo-rs/venv/bin/python tests/oracles/bench_generate.py --threads 2 --samples 1 8 64
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


def measure_bandwidth(gib=0.5, reps=5):
    n = int(gib * (1 << 30)) // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * n * 4 / best  # bytes read + written per second


def measure_matmul(m=64, k=1536, n=576, reps=50):
    # Decode-shaped matmuls (a batch of rows against a weight matrix), the work a decode step does.
    a = torch.randn(m, k)
    w = torch.randn(n, k)
    torch.nn.functional.linear(a, w)
    t = time.perf_counter()
    for _ in range(reps):
        torch.nn.functional.linear(a, w)
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(CACHE, "models", "SmolLM2-135M-Instruct"))
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt", default="What is 17 + 25?")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa").eval()
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    params = sum(p.numel() for p in model.parameters())
    # Tied embeddings: the lm_head matmul uses the embedding matrix, so every parameter is read and multiplied.
    weight_bytes = params * 4
    flops_per_token = 2 * params

    def run(n):
        batch = ids.repeat(n, 1)
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
            )
            secs = time.perf_counter() - t
        generated = (out.shape[1] - batch.shape[1]) * n
        return generated, secs

    run(1)  # warm-up
    results = []
    for n in args.samples:
        generated, secs = run(n)
        results.append({"samples": n, "generated_tokens": generated, "secs": secs, "tokens_per_second": generated / secs})
    bw = measure_bandwidth()
    rate = measure_matmul()
    roof = []
    for n in args.samples:
        step = max(weight_bytes / bw, n * flops_per_token / rate)
        roof.append({"samples": n, "tokens_per_second": n / step})
    print(
        json.dumps(
            {
                "threads": args.threads,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "params": params,
                "weight_bytes": weight_bytes,
                "flops_per_token": flops_per_token,
                "bandwidth_bytes_per_s": bw,
                "matmul_flops_per_s": rate,
                "reference": results,
                "roofline": roof,
            }
        )
    )


if __name__ == "__main__":
    main()
