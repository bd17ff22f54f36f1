"""What one decode step's attention reads cost under three KV-cache layouts, with the default model's shapes.

- slotted, in place: each sequence owns a slot of a preallocated [slots, kv_heads, capacity, head_dim] buffer and
  the decoding rows are the first slots, so attention reads a strided view (grpo-rs's engine);
- slotted, gathered: the decoding rows' slots are gathered (index_select) before attention;
- paged: keys and values live in fixed-size blocks of a shared pool and each row's block table is gathered into a
  contiguous tensor before attention (what a paged cache costs without a fused paged-attention kernel, which
  libtorch's CPU backend does not have).

Prints one JSON object: milliseconds per decode step (all layers) for each layer and row count.
Usage: python tests/oracles/bench_cache_layout.py [--threads 2] [--cached 256] [--rows 8 32]
"""

import argparse
import json
import time

import torch

LAYERS, HEADS, KV_HEADS, HEAD_DIM = 30, 9, 3, 64  # SmolLM2-135M
BLOCK = 16


def attend(q, k, v):
    b = q.shape[0]
    scores = q.view(b, KV_HEADS, HEADS // KV_HEADS, HEAD_DIM) @ k.transpose(2, 3)
    probs = (scores / HEAD_DIM**0.5).softmax(-1)
    return probs @ v


def timed(fn, repeat):
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return 1000 * (time.perf_counter() - start) / repeat


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cached", type=int, default=256)
    p.add_argument("--capacity", type=int, default=1152)
    p.add_argument("--rows", type=int, nargs="+", default=[8, 32])
    p.add_argument("--repeat", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    out = {"threads": a.threads, "cached": a.cached, "layers": LAYERS, "results": []}
    slots = max(a.rows)
    for rows in a.rows:
        q = torch.randn(rows, HEADS, 1, HEAD_DIM)
        cache_k = [torch.randn(slots, KV_HEADS, a.capacity, HEAD_DIM) for _ in range(LAYERS)]
        cache_v = [torch.randn(slots, KV_HEADS, a.capacity, HEAD_DIM) for _ in range(LAYERS)]
        idx = torch.randperm(slots)[:rows]
        blocks = a.cached // BLOCK
        pool_k = [torch.randn(slots * (a.capacity // BLOCK), KV_HEADS, BLOCK, HEAD_DIM) for _ in range(LAYERS)]
        pool_v = [torch.randn(slots * (a.capacity // BLOCK), KV_HEADS, BLOCK, HEAD_DIM) for _ in range(LAYERS)]
        table = torch.randperm(pool_k[0].shape[0])[: rows * blocks].view(rows, blocks)

        def in_place():
            for k, v in zip(cache_k, cache_v):
                attend(q, k[:rows, :, : a.cached], v[:rows, :, : a.cached])

        def gathered():
            for k, v in zip(cache_k, cache_v):
                attend(q, k[:, :, : a.cached].index_select(0, idx), v[:, :, : a.cached].index_select(0, idx))

        def paged():
            for k, v in zip(pool_k, pool_v):
                def rows_of(pool):
                    g = pool.index_select(0, table.view(-1)).view(rows, blocks, KV_HEADS, BLOCK, HEAD_DIM)
                    return g.transpose(1, 2).reshape(rows, KV_HEADS, blocks * BLOCK, HEAD_DIM)

                attend(q, rows_of(k), rows_of(v))

        with torch.no_grad():
            out["results"].append(
                {
                    "rows": rows,
                    "slotted_in_place_ms": timed(in_place, a.repeat),
                    "slotted_gathered_ms": timed(gathered, a.repeat),
                    "paged_gathered_ms": timed(paged, a.repeat),
                }
            )
    out["torch"] = torch.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
