"""Golden values for the `grpo` and `drgrpo` plugins, computed independently with PyTorch (float64).

Writes tests/fixtures/losses/<case>.json. Each case holds the inputs (rewards and group sizes, or a micro-batch of
log-probs with masks of different lengths) and what the plugins must return: advantages, the loss, its gradient with
respect to log_probs, and the metrics. The Rust tests compare to 1e-6.

Definitions (docs/plugins.md, "The shipped algorithms and environment"):
  GRPO advantages     A = (r - mean_g r) / (std_g r + eps), unbiased std; a group of one, or a group whose
                      rewards are all equal, gets exactly 0. With scale_rewards "batch" the divisor is the
                      unbiased std of all the batch's rewards, with "none" there is none (same zero rule).
  DR-GRPO advantages  A = r - mean_g r.
  per token           -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A) + beta*k3,
                      rho = exp(logp - old), k3 = exp(ref - logp) - (ref - logp) - 1 (both 0 outside the mask)
  GRPO loss           mean over sequences of the masked mean over action tokens (an empty mask counts as 0);
                      with loss_type "bnpo" the masked sum over the micro-batch's action tokens divided by
                      their number (at least 1), with "dapo" divided by the step's token divisor the host passes
                      (step_token_divisor: the step's action tokens over its micro-batch losses), or by the
                      micro-batch's own count when there is none
  DR-GRPO loss        mean over sequences of the masked SUM divided by generate_max_length
  GSPO cases          importance_sampling_level "sequence": every action token of a sequence uses the sequence's
                      ratio exp(mean over its action tokens of (logp - old)) in place of its own rho
  KL estimators       kl_estimator "k1": the per-token term is logp - ref; "k2": (ref - logp)^2 / 2 (k3 above)
  delta cases         two-sided clipping: the first branch's rho is capped at delta, -min(min(rho, delta)*A, ...)
  CISPO cases         loss_type "cispo": the per-token surrogate is -w*A*logp with w = min(rho, 1+eps_high) held
                      constant (no gradient through it), averaged as "dapo"; a token counts as clipped (upper)
                      where rho > 1+eps_high, whatever its advantage
  SAPO cases          loss_type "sapo": the per-token surrogate is -g*A with the soft gate g = sigmoid(tau*(rho-1))*4/tau,
                      tau = sapo_temperature_pos (default 1) where A > 0, else sapo_temperature_neg (1.05); no token
                      counts as clipped; averaged as "grpo"
  VESPO cases         loss_type "vespo": the per-token surrogate is -phi*A*logp with phi held constant (no gradient),
                      phi = exp(lam + k*log_w - lam*w) of the sequence's ratio w: log_w is the sum over its action
                      tokens of (logp - old), each clamped to [-20, 20], the sum clamped to [ln 1e-8, 20]; (k, lam) =
                      (vespo_k_pos, vespo_lambda_pos), default (2, 3), where A >= 0, else (vespo_k_neg,
                      vespo_lambda_neg), default (3, 2); no token counts as clipped; averaged as "dapo"; the mean of
                      phi over the micro-batch's sequences is the metric training_step/vespo_phi_mean
  LUSPO cases         loss_type "luspo": the clipped surrogate, each sequence's masked SUM over its action tokens, then
                      the mean over sequences
  DeepSeek-V3.2 cases use_bias_correction_kl: each token's KL term times its ratio rho (differentiated);
                      off_policy_mask_threshold d: a sequence with A < 0 whose mean over its action tokens of
                      old - logp (no gradient) exceeds d has its surrogate zeroed; the share of sequences so dropped
                      is the metric training_step/off_policy_mask_fraction
  TIS cases           the surrogate of each action token times w = min(exp(old - sampled), cap), the truncated
                      importance weight of a sampler in another precision (the KL term is not weighted)

Run: ~/.cache/grpo-rs/venv/bin/python tests/oracles/losses.py
"""

import json
import math
import pathlib

import torch

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "losses"
torch.set_default_dtype(torch.float64)


def grpo_advantages(rewards, groups, scale="group", eps=1e-8, leave_one_out=False):
    """GRPO's advantages, with the `grpo` plugin's `scale_rewards`: "group" divides by each group's std, "batch" by
    the std of all the batch's rewards, "none" by nothing. With `leave_one_out` (RLOO) the baseline of each reward is
    the mean of the other rewards of its group. A group of one, or one whose rewards are all equal, gets exact
    zeros."""
    batch_std = rewards.std(unbiased=True) if len(rewards) > 1 else torch.tensor(0.0)
    out, start = [], 0
    for n in groups:
        g = rewards[start : start + n]
        start += n
        if n == 1 or bool((g == g[0]).all()):
            out.append(torch.zeros_like(g))
            continue
        # The others' mean, summed explicitly (the plugin scales the centred rewards by n / (n - 1) instead).
        baseline = torch.stack([torch.cat([g[:i], g[i + 1 :]]).mean() for i in range(n)]) if leave_one_out else g.mean()
        if scale == "group":
            out.append((g - baseline) / (g.std(unbiased=True) + eps))
        elif scale == "batch":
            out.append((g - baseline) / (batch_std + eps))
        else:
            out.append(g - baseline)
    return torch.cat(out)


def drgrpo_advantages(rewards, groups):
    out, start = [], 0
    for n in groups:
        g = rewards[start : start + n]
        start += n
        out.append(g - g.mean())
    return torch.cat(out)


def per_token_terms(
    logp, old, ref, adv, mask, eps_low, eps_high, sequence_ratio=False, delta=None, kl="k3", cispo=False, sapo=None, kl_bias=False, opsm=None,
    vespo=None,
):
    """Surrogate and k3 per token, zero outside the mask, written out token by token on purpose (no shared code
    with the vectorised Rust implementation)."""
    B, T = logp.shape
    surr = torch.zeros(B, T)
    k3 = torch.zeros(B, T)
    clipped, clipped_high, dropped = 0, 0, 0
    phis = []
    for b in range(B):
        a = adv[b]
        if vespo is not None:
            # The sequence's weight from plain numbers: no gradient reaches it.
            log_w = sum(min(max(float(logp[b, t].detach() - old[b, t]), -20.0), 20.0) for t in range(T) if mask[b][t])
            log_w = min(max(log_w, math.log(1e-8)), 20.0)
            k, lam = (vespo[0], vespo[1]) if float(a) >= 0 else (vespo[2], vespo[3])
            phis.append(math.exp(lam + k * log_w - lam * math.exp(log_w)))
        # Off-policy sequence masking: the sequence's mean drift from the sampling policy, as a plain number.
        steps = [float(old[b, t] - logp[b, t].detach()) for t in range(T) if mask[b][t]]
        drift = sum(steps) / len(steps) if steps else 0.0
        keep = opsm is None or not (float(a) < 0 and drift > opsm)
        dropped += 0 if keep else 1
        if sequence_ratio:
            steps = [logp[b, t] - old[b, t] for t in range(T) if mask[b][t]]
            seq_rho = torch.exp(sum(steps) / len(steps)) if steps else None
        for t in range(T):
            if not mask[b][t]:
                continue
            rho = seq_rho if sequence_ratio else torch.exp(logp[b, t] - old[b, t])
            if vespo is not None:
                surr[b, t] = -(phis[b] * a * logp[b, t])
            elif sapo is not None:
                # The gate is differentiated; its slope at rho = 1 is exactly 1.
                tau = sapo[0] if a > 0 else sapo[1]
                surr[b, t] = -(torch.sigmoid(tau * (rho - 1)) * 4 / tau * a)
            elif cispo:
                # The capped ratio weighs the log-prob's gradient and is not differentiated itself.
                w = min(float(rho.detach()), 1 + eps_high)
                surr[b, t] = -(w * a * logp[b, t])
                if rho > 1 + eps_high:
                    clipped += 1
                    clipped_high += 1
            else:
                rho_c = torch.clamp(rho, 1 - eps_low, 1 + eps_high)
                # Two-sided clipping caps the first branch's ratio only.
                rho_u = torch.clamp(rho, max=delta) if delta is not None else rho
                surr[b, t] = -torch.minimum(rho_u * a, rho_c * a)
                if (rho_u * a) > (rho_c * a):
                    clipped += 1
                    # The upper bound binds only for a positive advantage, the lower only for a negative one.
                    if rho > 1 + eps_high:
                        clipped_high += 1
            if not keep:
                surr[b, t] = 0.0
            if ref is not None:
                d = ref[b, t] - logp[b, t]
                if kl == "k3":
                    k = torch.exp(d) - d - 1
                elif kl == "k1":
                    k = -d
                else:
                    k = d * d / 2
                k3[b, t] = k * rho if kl_bias else k
    return surr, k3, clipped, clipped_high, dropped, phis


def loss_case(
    name,
    algo,
    seed,
    lengths,
    T,
    beta,
    eps_low,
    eps_high,
    with_ref,
    gen_max_len,
    tis_cap=None,
    loss_type=None,
    divisor=None,
    level=None,
    delta=None,
    shift=0.0,
    kl=None,
    sapo=None,
    kl_bias=False,
    opsm=None,
    vespo=None,
):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    # Odd rows start their actions one position later, so masks are not all prefixes.
    mask = [[(t >= (b % 2)) and (t < (b % 2) + n) and t < T for t in range(T)] for b, n in enumerate(lengths)]
    logp0 = -torch.rand(B, T, generator=g) * 3 - 0.05
    old = (logp0 - shift + (torch.rand(B, T, generator=g) - 0.5) * 0.8).tolist()
    ref = (logp0 + (torch.rand(B, T, generator=g) - 0.5) * 0.6).tolist() if with_ref else None
    adv = ((torch.rand(B, generator=g) - 0.5) * 3).tolist()
    logp = logp0.clone().requires_grad_(True)
    old_t = torch.tensor(old)
    ref_t = torch.tensor(ref) if ref is not None else None
    adv_t = torch.tensor(adv)
    surr, k3, clipped, clipped_high, dropped, phis = per_token_terms(
        logp,
        old_t,
        ref_t,
        adv_t,
        mask,
        eps_low,
        eps_high,
        sequence_ratio=level == "sequence",
        delta=delta,
        kl=kl or "k3",
        cispo=loss_type == "cispo",
        sapo=(sapo or (1.0, 1.05)) if loss_type == "sapo" else None,
        kl_bias=kl_bias,
        opsm=opsm,
        vespo=(vespo or (2.0, 3.0, 3.0, 2.0)) if loss_type == "vespo" else None,
    )
    is_weights = None
    if tis_cap is not None:
        # The sampler's log-probs: the old ones perturbed as a bf16 sampler would be, some tokens far off.
        sampled = old_t + (torch.rand(B, T, generator=g) - 0.5) * 1.5
        w = torch.ones(B, T)
        for b in range(B):
            for t in range(T):
                if mask[b][t]:
                    w[b, t] = min(math.exp(float(old_t[b, t] - sampled[b, t])), tis_cap)
        surr = surr * w
        is_weights = w.tolist()
    m = torch.tensor(mask, dtype=torch.float64)
    n_tok = m.sum(-1)
    per_token = surr + beta * k3
    if algo == "grpo" and loss_type in (None, "grpo", "sapo"):
        denom = torch.clamp(n_tok, min=1.0)
        loss = ((per_token * m).sum(-1) / denom).mean()
    elif algo == "grpo" and loss_type == "luspo":
        loss = (per_token * m).sum(-1).mean()
    elif algo == "grpo" and loss_type == "dr_grpo":
        # TRL's form: every action token's loss summed over the micro-batch, over sequences x max completion length.
        loss = (per_token * m).sum() / (len(lengths) * gen_max_len)
    elif algo == "grpo":
        # bnpo, and dapo, cispo or vespo without a divisor: every token of the micro-batch weighs the same.
        step_mean = loss_type in ("dapo", "cispo", "vespo")
        step = divisor if step_mean and divisor is not None else max(float(n_tok.sum()), 1.0)
        loss = (per_token * m).sum() / step
    else:
        loss = ((per_token * m).sum(-1) / gen_max_len).mean()
    loss.backward()
    total_tokens = float(n_tok.sum())
    kl_masked_mean = float(((k3.detach() * m).sum(-1) / torch.clamp(n_tok, min=1.0)).mean()) if with_ref else 0.0
    metrics = {
        "training_step/kl": kl_masked_mean,
        "training_step/clip_fraction": clipped / total_tokens if total_tokens > 0 else 0.0,
        "training_step/clip_fraction_high": clipped_high / total_tokens if total_tokens > 0 else 0.0,
        "training_step/clip_fraction_low": (clipped - clipped_high) / total_tokens if total_tokens > 0 else 0.0,
    }
    if opsm is not None:
        metrics["training_step/off_policy_mask_fraction"] = dropped / B
    if phis:
        metrics["training_step/vespo_phi_mean"] = sum(phis) / len(phis)
    if algo == "drgrpo":
        metrics["training_step/dr_component_policy"] = float(((surr.detach() * m).sum(-1) / gen_max_len).mean())
        metrics["training_step/dr_component_kl"] = float(((beta * k3.detach() * m).sum(-1) / gen_max_len).mean())
        metrics["training_step/dr_component_normalizer"] = float(gen_max_len)
    config = {}
    if loss_type is not None:
        config["loss_type"] = loss_type
    if level is not None:
        config["importance_sampling_level"] = level
    if delta is not None:
        config["delta"] = delta
    if kl is not None:
        config["kl_estimator"] = kl
    if sapo is not None:
        config["sapo_temperature_pos"], config["sapo_temperature_neg"] = sapo
    if kl_bias:
        config["use_bias_correction_kl"] = True
    if opsm is not None:
        config["off_policy_mask_threshold"] = opsm
    if vespo is not None:
        names = ["vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"]
        config.update(zip(names, vespo))
    return {
        "kind": "loss",
        "algorithm": algo,
        "name": name,
        "config": config or None,
        "step_token_divisor": divisor,
        "log_probs": logp0.tolist(),
        "old_log_probs": old,
        "ref_log_probs": ref,
        "advantages": adv,
        "action_mask": mask,
        "settings": {
            "clip_eps_low": eps_low,
            "clip_eps_high": eps_high,
            "kl_weight": beta,
            "generate_max_length": gen_max_len,
        },
        "is_weights": is_weights,
        "expected_loss": float(loss.detach()),
        "expected_grad": logp.grad.tolist(),
        "expected_metrics": metrics,
    }


def skewness(x):
    mu = x.mean()
    sigma = torch.sqrt(((x - mu) ** 2).mean())
    if float(sigma) == 0.0:
        return 0.0
    return float((((x - mu) / sigma) ** 3).mean())


def advantages_case(name, rewards, groups):
    r = torch.tensor(rewards)
    grpo = grpo_advantages(r, groups)
    dr = drgrpo_advantages(r, groups)
    assert not torch.isnan(grpo).any()
    return {
        "kind": "advantages",
        "name": name,
        "rewards": rewards,
        "groups": groups,
        "expected_grpo": grpo.tolist(),
        "expected_grpo_scale_batch": grpo_advantages(r, groups, "batch").tolist(),
        "expected_grpo_scale_none": grpo_advantages(r, groups, "none").tolist(),
        "expected_rloo": grpo_advantages(r, groups, "none", leave_one_out=True).tolist(),
        "expected_rloo_scale_group": grpo_advantages(r, groups, "group", leave_one_out=True).tolist(),
        "expected_rloo_scale_batch": grpo_advantages(r, groups, "batch", leave_one_out=True).tolist(),
        "expected_drgrpo": dr.tolist(),
        "expected_drgrpo_metrics": {
            # Population variance and the third standardized moment (Fisher-Pearson g1) of all advantages.
            "dr_grpo/advantages_variance": float(((dr - dr.mean()) ** 2).mean()),
            "dr_grpo/advantages_skewness": skewness(dr),
        },
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = [
        advantages_case(
            "advantages_mixed_groups",
            # groups: varied, all equal (0.3 three times: float sums are not exact), one, binary
            [1.0, 0.0, 0.5, 0.01, 0.3, 0.3, 0.3, 0.7, 1.0, 0.0],
            [4, 3, 1, 2],
        ),
        advantages_case("advantages_single_group", [2.0, -0.5, -0.8, 0.5, 2.0, -0.1], [6]),
        loss_case("grpo_ref_masks", "grpo", 1, [5, 2, 7, 1, 3], 8, 0.01, 0.2, 0.2, True, 8),
        loss_case("grpo_asym_clip_high_kl", "grpo", 2, [4, 6, 1, 6], 7, 0.04, 0.2, 0.28, True, 7),
        loss_case("grpo_no_ref", "grpo", 3, [3, 5, 6], 6, 0.0, 0.1, 0.1, False, 6),
        loss_case("grpo_empty_mask_row", "grpo", 4, [4, 0, 2], 5, 0.01, 0.2, 0.2, True, 5),
        loss_case("drgrpo_ref_masks", "drgrpo", 1, [5, 2, 7, 1, 3], 8, 0.01, 0.2, 0.2, True, 16),
        loss_case("drgrpo_asym_clip_high_kl", "drgrpo", 2, [4, 6, 1, 6], 7, 0.04, 0.2, 0.28, True, 7),
        loss_case("drgrpo_no_ref", "drgrpo", 3, [3, 5, 6], 6, 0.0, 0.1, 0.1, False, 12),
        loss_case("grpo_tis", "grpo", 5, [5, 2, 7, 3], 8, 0.01, 0.2, 0.2, True, 8, tis_cap=2.0),
        loss_case("drgrpo_tis", "drgrpo", 5, [5, 2, 7, 3], 8, 0.01, 0.2, 0.28, True, 8, tis_cap=1.5),
        loss_case("grpo_bnpo", "grpo", 1, [5, 2, 7, 1, 3], 8, 0.01, 0.2, 0.2, True, 8, loss_type="bnpo"),
        # This micro-batch's 18 tokens are part of a step of 52 tokens over 4 micro-batch losses (2 ranks x 2).
        loss_case("grpo_dapo_step", "grpo", 1, [5, 2, 7, 1, 3], 8, 0.01, 0.2, 0.2, True, 8, None, "dapo", 13.0),
        loss_case("grpo_dapo_alone", "grpo", 6, [4, 0, 6, 2], 6, 0.0, 0.3, 0.3, False, 6, loss_type="dapo"),
        # GSPO: the sequence's ratio, clipped in a narrow range (here wide enough that some sequences are not).
        loss_case("grpo_gspo", "grpo", 7, [5, 0, 7, 1, 3], 8, 0.01, 0.05, 0.08, True, 8, level="sequence"),
        # Old log-probs far below the new ones: ratios up to e^1.5, some past delta with negative advantages.
        loss_case("grpo_delta", "grpo", 9, [5, 3, 7, 6], 8, 0.01, 0.2, 0.2, True, 8, delta=1.5, shift=1.2),
        loss_case("grpo_kl_k1", "grpo", 10, [5, 2, 7, 1], 8, 0.05, 0.2, 0.2, True, 8, kl="k1"),
        loss_case("grpo_kl_k2", "grpo", 10, [5, 2, 7, 1], 8, 0.05, 0.2, 0.2, True, 8, kl="mse"),
        # The normaliser (10) differs from the padded width (8) and from every sequence's length.
        loss_case("grpo_dr_grpo", "grpo", 11, [5, 2, 7, 0, 3], 8, 0.02, 0.2, 0.28, True, 10, loss_type="dr_grpo"),
        loss_case("grpo_gspo_tis_dapo", "grpo", 8, [4, 6, 2], 7, 0.0, 0.1, 0.1, False, 7, 2.0, "dapo", 5.5, "sequence"),
        # CISPO: in each case some ratios pass the cap (with either sign of advantage), and some lie below 1 - eps_low,
        # a bound CISPO does not have; the second with GSPO's sequence ratios and truncated importance weights.
        loss_case(
            "grpo_cispo_step", "grpo", 12, [5, 2, 7, 1, 3], 8, 0.01, 0.05, 0.28, True, 8, None, "cispo", 13.0, shift=0.1
        ),
        loss_case(
            "grpo_cispo_gspo_tis", "grpo", 13, [4, 6, 0, 2], 7, 0.0, 0.01, 0.05, False, 7, 2.0, "cispo", None,
            level="sequence",
            shift=0.1,
        ),
        # SAPO: ratios from about e^-0.5 to e^0.9, both signs of advantage, a row without actions, the KL term; the
        # second with other temperatures, GSPO's sequence ratio and truncated importance weights.
        loss_case("grpo_sapo", "grpo", 14, [5, 2, 7, 0, 3], 8, 0.02, 0.2, 0.2, True, 8, loss_type="sapo", shift=0.3),
        loss_case(
            "grpo_sapo_gspo_tis", "grpo", 15, [4, 6, 1, 5], 7, 0.0, 0.2, 0.2, False, 7, 2.0, "sapo", None,
            level="sequence",
            shift=0.4,
            sapo=(2.0, 3.5),
        ),
        # DeepSeek-V3.2's corrections: old log-probs above the new ones (a policy that drifted away from its samples,
        # by 0.35 nats per token on average), some sequences past the threshold with a negative advantage, others
        # with a positive one; then with GSPO's sequence ratio weighing the KL and a DAPO step.
        loss_case(
            "grpo_opsm_kl_bias", "grpo", 16, [5, 3, 7, 2, 6, 4], 8, 0.03, 0.2, 0.2, True, 8, shift=-0.35,
            kl_bias=True,
            opsm=0.35,
        ),
        loss_case(
            "grpo_opsm_kl_bias_gspo_dapo", "grpo", 17, [4, 6, 0, 5], 7, 0.05, 0.1, 0.1, True, 7, None, "dapo", 9.0,
            level="sequence",
            shift=-0.3,
            kl_bias=True,
            opsm=0.2,
        ),
        # VESPO: the first case's old log-probs below the new ones (sequences' summed log-ratios 0 to 1.4, phi 1 down
        # to 0.002), the second's mostly above them (-1.2 to 0.1, phi 0.14 to 1.1: these shapes peak off w = 1);
        # both signs of advantage, a row without actions (phi 1), the KL term; the first with a step's divisor, the
        # second with other shapes, truncated importance weights and the corrected KL.
        loss_case(
            "grpo_vespo_step", "grpo", 18, [5, 2, 7, 0, 3, 4], 8, 0.01, 0.2, 0.2, True, 8, None, "vespo", 15.0,
            shift=0.1,
        ),
        loss_case(
            "grpo_vespo_tis_kl_bias", "grpo", 19, [4, 6, 1, 5], 7, 0.03, 0.2, 0.2, True, 7, 2.0, "vespo", None,
            shift=-0.15,
            kl_bias=True,
            vespo=(1.5, 2.5, 2.5, 1.5),
        ),
        # LUSPO: GSPO's sequence ratio without a KL term, as the paper trains, then per token with the KL term and
        # two-sided clipping; rows of different lengths and one without actions.
        loss_case(
            "grpo_luspo_gspo", "grpo", 37, [5, 2, 7, 0, 3], 8, 0.0, 0.05, 0.08, False, 8, loss_type="luspo",
            level="sequence",
        ),
        loss_case(
            "grpo_luspo_kl_delta", "grpo", 21, [5, 3, 7, 6], 8, 0.02, 0.2, 0.2, True, 8, loss_type="luspo",
            delta=1.5,
            shift=1.2,
        ),
    ]
    for case in cases:
        path = OUT / f"{case['name']}.json"
        path.write_text(json.dumps(case, indent=1) + "\n")
        print("wrote", path.relative_to(OUT.parent.parent.parent))
    assert all(math.isfinite(c.get("expected_loss", 0.0)) for c in cases)


if __name__ == "__main__":
    main()
