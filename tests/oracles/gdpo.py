"""Golden values for `--multi-objective-aggregation normalize-then-sum` (GDPO, TRL's `multi_objective_aggregation`).

Writes tests/fixtures/rewards/gdpo.json: episodes' reward components by name (some missing, as an environment that
ends an episode early reports fewer), their groups and the weights, and what the host must hand the algorithm as
each episode's return: per group and component, the component minus its group mean over the episodes that reported
it, over that group's unbiased standard deviation plus 1e-4 (0 where fewer than two reported it, or a missing
component), weighted and summed. It also checks that the `grpo` plugin with `scale_rewards: "batch"` turns those
returns into TRL's advantages, `(R - mean(R)) / (std(R) + 1e-4)`, up to the two epsilons.

Run: ~/.cache/grpo-rs/venv/bin/python tests/oracles/gdpo.py
"""

import json
import math
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "rewards"
torch.set_default_dtype(torch.float64)

NAN = float("nan")


def gdpo_returns(components, names, groups, weights):
    """TRL's normalize-then-sum, with NaN for a component an episode did not report."""
    table = torch.tensor([[ep.get(n, NAN) for n in names] for ep in components])
    w = torch.tensor([weights.get(n, 1.0) for n in names])
    out, start = [], 0
    for size in groups:
        g = table[start : start + size]
        start += size
        present = ~torch.isnan(g)
        count = present.sum(0)
        mean = torch.nansum(g, 0) / count.clamp(min=1)
        centred = torch.where(present, g - mean, torch.zeros_like(g))
        # Bessel's correction, as TRL's nanstd; fewer than two values have no spread, and give 0.
        var = (centred**2).sum(0) / (count - 1).clamp(min=1)
        normalised = torch.where(present & (count >= 2), centred / (var.sqrt() + 1e-4), torch.zeros_like(g))
        out.append((normalised * w).sum(1))
    return torch.cat(out)


def main():
    names = ["answer", "format", "overlong_penalty"]
    components = [
        # group 1: every component varies; one episode lacks "format"
        {"answer": 1.0, "format": 0.5, "overlong_penalty": 0.0},
        {"answer": 0.0, "format": 0.2, "overlong_penalty": -0.5},
        {"answer": 1.0, "overlong_penalty": 0.0},
        {"answer": 0.0, "format": 0.0, "overlong_penalty": -1.0},
        # group 2: "answer" equal, "format" reported once, the penalty varies
        {"answer": 0.0, "format": 1.0, "overlong_penalty": 0.0},
        {"answer": 0.0, "overlong_penalty": -0.25},
        {"answer": 0.0, "overlong_penalty": 0.0},
        # group 3: every component equal in the group: no signal
        {"answer": 1.0, "format": 0.3, "overlong_penalty": 0.0},
        {"answer": 1.0, "format": 0.3, "overlong_penalty": 0.0},
    ]
    groups = [4, 3, 2]
    weights = {"answer": 2.0, "format": 0.5}
    returns = gdpo_returns(components, names, groups, weights)
    # TRL's advantages of these returns, and the grpo plugin's with scale_rewards "batch" (group mean, batch std).
    trl = (returns - returns.mean()) / (returns.std() + 1e-4)
    plugin, start = [], 0
    for size in groups:
        g = returns[start : start + size]
        start += size
        plugin.append(torch.zeros_like(g) if bool((g == g[0]).all()) else (g - g.mean()) / (returns.std() + 1e-8))
    plugin = torch.cat(plugin)
    assert torch.allclose(plugin, trl, atol=1e-3), (plugin, trl)
    assert all(math.isfinite(r) for r in returns.tolist())
    OUT.mkdir(parents=True, exist_ok=True)
    case = {
        "components": components,
        "groups": groups,
        "weights": weights,
        "expected_returns": returns.tolist(),
        "trl_advantages": trl.tolist(),
    }
    path = OUT / "gdpo.json"
    path.write_text(json.dumps(case, indent=1) + "\n")
    print("wrote", path.relative_to(OUT.parent.parent.parent))


if __name__ == "__main__":
    main()
