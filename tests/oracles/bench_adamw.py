"""torch.optim.AdamW over the default model's parameters, for docs/benchmarks.md ("AdamW update"), beside
host/examples/bench_adamw.rs: the same shapes, hyper-parameters and fixed random gradients, f32 weights, each of
PyTorch's three implementations (single-tensor, foreach, fused), mean of STEPS updates after one warm-up.

    ~/.cache/grpo-rs/venv/bin/python tests/oracles/bench_adamw.py [STEPS] [THREADS]
"""

import pathlib
import sys
import time

import torch
from safetensors import safe_open

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.set_num_threads(threads)
model_dir = pathlib.Path.home() / ".cache/grpo-rs/models/SmolLM2-135M-Instruct"
with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
    shapes = [f.get_slice(name).get_shape() for name in sorted(f.keys())]
torch.manual_seed(0)
for variant in ("single-tensor", "foreach", "fused"):
    params = [torch.nn.Parameter(torch.randn(shape) * 0.02) for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape) * 1e-3
    flags = {"single-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[variant]
    opt = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, **flags)
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        opt.step()
        if step > 0:
            times.append(time.perf_counter() - t)
    count = sum(p.numel() for p in params)
    print(f"torch {torch.__version__} AdamW {variant}, f32: {count} parameters in {len(params)} tensors, "
          f"{threads} thread(s): update {sum(times) / len(times):.3f} s (mean of {steps})")
