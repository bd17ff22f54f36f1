"""Golden learning rates for `--lr-schedule` and `--lr-scheduler-kwargs`, from transformers' own schedulers.

Writes tests/fixtures/optimizer/lr_schedules.json: for each case, the schedule's name and keyword arguments as a user passes
them (`--lr-scheduler-type`, `--lr-scheduler-kwargs`), the base rate, the warmup and the run's optimizer steps, and
the rate each step's update uses. The rates come from `transformers.get_scheduler` driving a real optimizer: the
rate read before each `optimizer.step()`, then `scheduler.step()`, as transformers' Trainer does.

One deliberate difference, applied here and nowhere else: grpo-rs's linear warmup gives update k (0-based)
(k + 1) / warmup of the rate, so that no update is spent at rate 0, where transformers' schedulers give k / warmup
(its `cosine_warmup_with_min_lr` already counts as grpo-rs does, and is taken as it is). A warmup update's
expected rate is therefore transformers' rate one step later: each schedule's warmup formula at k + 1, which at
k + 1 = warmup is where every schedule's rate after warmup starts, the full rate. After the warmup the rates are
transformers' unchanged.

Run: ~/.cache/grpo-rs/venv/bin/python tests/oracles/lr_schedules.py
"""

import json
import pathlib

import torch
from transformers import get_scheduler

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "optimizer" / "lr_schedules.json"

# (name, kwargs, lr, warmup, total): enough steps past warmup to reach each phase. Only the run's own steps count:
# past its end transformers' cosine rises again, where grpo-rs holds the last rate (a run never gets there).
CASES = [
    ("linear", {}, 1e-4, 3, 10),
    ("cosine", {}, 2e-5, 2, 10),
    ("cosine", {"num_cycles": 1.5}, 1e-3, 0, 12),
    ("cosine_with_min_lr", {"min_lr_rate": 0.1}, 3e-5, 2, 10),
    ("cosine_with_min_lr", {"min_lr": 1e-5}, 1e-4, 3, 11),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.05}, 1e-4, 3, 10),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1, "warmup_lr_rate": 0.2, "num_cycles": 0.4}, 1e-4, 4, 10),
    ("cosine_with_restarts", {"num_cycles": 3}, 5e-5, 2, 14),
    ("cosine_with_restarts", {}, 5e-5, 0, 8),
    ("polynomial", {"power": 2.0, "lr_end": 1e-6}, 1e-4, 2, 10),
    ("polynomial", {}, 1e-4, 0, 8),
    ("inverse_sqrt", {}, 1e-3, 4, 12),
    ("inverse_sqrt", {"timescale": 5}, 1e-3, 2, 10),
    ("inverse_sqrt", {}, 1e-3, 0, 6),
    ("constant_with_warmup", {}, 1e-5, 3, 8),
    ("warmup_stable_decay", {"num_decay_steps": 4}, 1e-4, 2, 12),
    (
        "warmup_stable_decay",
        {"num_decay_steps": 3, "num_stable_steps": 4, "warmup_type": "cosine", "decay_type": "1-sqrt", "min_lr_ratio": 0.1},
        1e-4,
        3,
        12,
    ),
    ("warmup_stable_decay", {"num_decay_steps": 5, "warmup_type": "1-sqrt", "decay_type": "linear"}, 2e-4, 4, 12),
    ("warmup_stable_decay", {"num_decay_steps": 4, "num_cycles": 1.0, "min_lr_ratio": 0.2}, 1e-4, 0, 9),
]

def rates(name, kwargs, lr, warmup, steps):
    """The rate of each of `steps` updates under transformers' scheduler."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=steps, scheduler_specific_kwargs=dict(kwargs)
    )
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def main():
    cases = []
    for name, kwargs, lr, warmup, total in CASES:
        steps = total
        hf = rates(name, kwargs, lr, warmup, steps)
        if name == "cosine_warmup_with_min_lr":
            expected = hf
        else:
            # The warmup one step ahead (see the module's docstring); hf[warmup] is the full rate for each case.
            expected = [hf[k + 1] if k < warmup else hf[k] for k in range(steps)]
            assert warmup == 0 or abs(hf[warmup] - lr) <= 1e-15 * lr, (name, hf)
        cases.append(
            {"name": name, "kwargs": kwargs, "lr": lr, "warmup": warmup, "total": total, "transformers": hf,
             "expected": expected}
        )
    OUT.write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
