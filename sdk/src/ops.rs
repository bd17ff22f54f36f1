//! Tensor building blocks shared by GRPO-family losses, so that every algorithm computes the clipped surrogate
//! and the KL estimate the same way (masked positions never produce NaN or gradient).

use crate::{Error, PolicyBatch, Result};
use tch::{Kind, Tensor};

/// Split `[N]` rewards into consecutive groups of the given sizes, checking that the sizes add up to `N`.
pub fn split_groups(rewards: &Tensor, groups: &[usize]) -> Result<Vec<Tensor>> {
    if rewards.dim() != 1 {
        return Err(Error::msg(format!("rewards must be 1-D, got shape {:?}", rewards.size())));
    }
    let n = rewards.size()[0];
    let total: usize = groups.iter().sum();
    if total as i64 != n || groups.contains(&0) {
        return Err(Error::msg(format!("group sizes {groups:?} do not partition {n} rewards into non-empty groups")));
    }
    let sizes: Vec<i64> = groups.iter().map(|&g| g as i64).collect();
    Ok(rewards.split_with_sizes(sizes.as_slice(), 0))
}

/// Which probability ratio the clipped surrogate uses; in a plugin's config, `"token"` or `"sequence"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RatioLevel {
    /// Each token's own ratio `exp(logp - old)`: PPO's and GRPO's.
    #[default]
    Token,
    /// One ratio per sequence, the geometric mean of its tokens' ratios, `exp(mean_t(logp - old))` over its action
    /// tokens, shared by all of them (GSPO, Zheng et al. 2025; TRL's `importance_sampling_level="sequence"`). The
    /// gradient reaches every token through the mean. GSPO clips it in a much narrower range than PPO's (its paper
    /// uses 3e-4 and 4e-4).
    Sequence,
}

/// Which estimate of the KL divergence to the reference each token's KL term is (verl's `kl_loss_type`); in a
/// plugin's config `"k3"` (or verl's `"low_var_kl"`), `"k1"` (`"kl"`) or `"k2"` (`"mse"`). With `d = ref - logp`,
/// each is 0 where the policy and the reference agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// `exp(d) - d - 1`: never negative, and of low variance (Schulman's k3; GRPO's, TRL's, re-grpo's).
    #[default]
    #[serde(alias = "low_var_kl")]
    K3,
    /// `-d = logp - ref`, the plain log-ratio (k1; verl's `kl`): unbiased, but negative for some tokens.
    #[serde(alias = "kl")]
    K1,
    /// `d^2 / 2` (k2; verl's `mse`): never negative; its gradient is that of the reverse KL's.
    #[serde(alias = "mse")]
    K2,
}

/// How [`PolicyTerms`] builds its terms, beyond the run's clip range and KL weight (`LossSettings`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TermOptions {
    /// Each token's ratio, or its sequence's (GSPO).
    pub ratio: RatioLevel,
    /// Two-sided clipping: the unclipped branch's ratio is capped at `delta`, so a token with a negative advantage
    /// whose ratio has grown far past the clip range adds a bounded loss and no gradient (INTELLECT-2; TRL's
    /// `delta`; verl's dual-clip `clip_ratio_c`). It must exceed `1 + clip_eps_high`, where it changes nothing for a
    /// positive advantage.
    pub delta: Option<f64>,
    /// The KL estimate of [`PolicyTerms::kl`].
    pub kl: KlEstimator,
}

/// The temperatures of SAPO's soft gate ([`PolicyTerms::sapo`]): the larger, the faster a token's gradient fades
/// as its ratio leaves 1. The defaults are the paper's and TRL's (`sapo_temperature_pos`, `sapo_temperature_neg`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftGate {
    /// For tokens with a positive advantage.
    pub tau_pos: f64,
    /// For the others: a little larger by default, since pushing a sampled token down spreads probability over
    /// many unsampled ones, which is the less stable direction.
    pub tau_neg: f64,
}

impl Default for SoftGate {
    fn default() -> Self {
        SoftGate { tau_pos: 1.0, tau_neg: 1.05 }
    }
}

/// The shapes of VESPO's weight ([`PolicyTerms::vespo`]), `phi(w) = e^lambda * w^k * e^(-lambda * w)` of the
/// sequence's ratio `w`, one `(k, lambda)` pair for sequences with a non-negative advantage and one for the others.
/// `phi(1) = 1`, and `phi` peaks at `w = k / lambda`. The defaults are TRL's (`vespo_k_pos`, `vespo_lambda_pos`,
/// `vespo_k_neg`, `vespo_lambda_neg`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GammaWeight {
    /// `k` for a non-negative advantage.
    pub k_pos: f64,
    /// `lambda` for a non-negative advantage.
    pub lambda_pos: f64,
    /// `k` for a negative advantage.
    pub k_neg: f64,
    /// `lambda` for a negative advantage.
    pub lambda_neg: f64,
}

impl Default for GammaWeight {
    fn default() -> Self {
        GammaWeight { k_pos: 2.0, lambda_pos: 3.0, k_neg: 3.0, lambda_neg: 2.0 }
    }
}

impl GammaWeight {
    /// Each sequence's `phi` (`[B]`, no gradient) from the batch's log-probs over the actions `on`. As in TRL, each
    /// token's log-ratio is clamped to [-20, 20] and their sum to [ln 1e-8, 20] before `phi` is taken in log space,
    /// so no sequence's weight overflows. Computed in at least f32: `phi` is exponential in a sum over the sequence,
    /// which bf16 would round by whole percents.
    fn phi(&self, batch: &PolicyBatch, on: &Tensor) -> Tensor {
        let kind = if batch.log_probs.kind() == Kind::Double { Kind::Double } else { Kind::Float };
        let log_ratio = batch.log_probs.detach().to_kind(kind) - batch.old_log_probs.to_kind(kind);
        let log_ratio = log_ratio.where_self(on, &log_ratio.zeros_like()).clamp(-20.0, 20.0);
        let log_w = log_ratio.sum_dim_intlist(-1, false, None);
        let log_w = log_w.clamp(1e-8f64.ln(), 20.0);
        let pos = batch.advantages.detach().ge(0.0).to_kind(kind);
        let k = &pos * (self.k_pos - self.k_neg) + self.k_neg;
        let lambda = &pos * (self.lambda_pos - self.lambda_neg) + self.lambda_neg;
        (&lambda + k * &log_w - &lambda * log_w.exp()).exp().nan_to_num(0.0, 0.0, 0.0)
    }
}

/// Which per-token objective [`PolicyTerms`] builds.
#[derive(Clone, Copy)]
enum Surrogate {
    /// PPO's clipped surrogate ([`PolicyTerms::with`]).
    Clipped,
    /// CISPO's capped, constant importance weight times the log-prob ([`PolicyTerms::cispo`]).
    Cispo,
    /// SAPO's soft gate on the ratio ([`PolicyTerms::sapo`]).
    Sapo(SoftGate),
    /// VESPO's sequence weight times the log-prob ([`PolicyTerms::vespo`]).
    Vespo(GammaWeight),
}

/// The per-token pieces of a GRPO-family loss for one micro-batch; every `[B, T]` tensor is 0 outside the mask.
pub struct PolicyTerms {
    /// `-min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A)`, `rho = exp(logp - old)` (or the sequence's ratio, see
    /// [`RatioLevel`]; in the first branch capped at [`TermOptions::delta`] when set), times the batch's truncated
    /// importance weight of each token when it has them
    /// ([`PolicyBatch::is_weights`]).
    pub surrogate: Tensor,
    /// The per-token estimate of the KL to the reference, by default k3, `exp(ref - logp) - (ref - logp) - 1`
    /// ([`KlEstimator`]); `None` without a reference.
    pub kl: Option<Tensor>,
    /// The action mask in the log-probs' float dtype.
    pub mask: Tensor,
    /// 1 where clipping changed the objective (the clipped branch was strictly smaller), else 0.
    pub clipped: Tensor,
    /// Of `clipped`, 1 where the upper bound did it (`rho > 1 + eps_high` with a positive advantage); the rest were
    /// clipped by the lower bound (`rho < 1 - eps_low`, negative advantage).
    clipped_high: Tensor,
    /// The batch's [`PolicyBatch::step_token_divisor`].
    step_token_divisor: Option<f64>,
    /// The probability ratio each token's surrogate used (its sequence's under GSPO), differentiable; 1 outside the
    /// mask.
    ratio: Tensor,
    /// 1 for each sequence [`PolicyTerms::mask_off_policy`] dropped, else 0 (`[B]`); `None` before it runs.
    off_policy: Option<Tensor>,
    /// VESPO's weight of each sequence (`[B]`); `None` for the other objectives.
    sequence_weights: Option<Tensor>,
}

impl PolicyTerms {
    /// Compute the terms with each token's own ratio, checking that the batch's shapes agree.
    pub fn new(batch: &PolicyBatch) -> Result<Self> {
        Self::with(batch, TermOptions::default())
    }

    /// Compute the terms as `how` says (GSPO's sequence ratio, two-sided clipping, the KL estimate), checking that
    /// the batch's shapes agree.
    pub fn with(batch: &PolicyBatch, how: TermOptions) -> Result<Self> {
        Self::build(batch, how, Surrogate::Clipped)
    }

    /// CISPO's terms (MiniMax-M1, Chen et al. 2025; TRL's `loss_type="cispo"`): the surrogate is
    /// `-sg(min(rho, 1 + eps_high)) * A * logp` per token, the policy gradient weighted by the ratio capped at
    /// `1 + clip_eps_high` and held constant, so every token keeps its gradient and only its weight is bounded (no
    /// lower bound, as in the paper). `clipped` marks the tokens whose weight was capped, all of them upper-bound
    /// clips. `how.ratio` and `how.kl` apply as in [`PolicyTerms::with`]; `how.delta` caps a branch CISPO does not
    /// have and is an error.
    ///
    /// ```
    /// # use grpo_sdk::{LossSettings, PolicyBatch, ops::{PolicyTerms, TermOptions}, tch::Tensor};
    /// let batch = PolicyBatch {
    ///     log_probs: Tensor::from_slice(&[-1.0f32, -0.5]).view([1, 2]),
    ///     // Ratios e^0.5 (capped at 1.2) and 1.
    ///     old_log_probs: Tensor::from_slice(&[-1.5f32, -0.5]).view([1, 2]),
    ///     ref_log_probs: None,
    ///     advantages: Tensor::from_slice(&[2.0f32]),
    ///     action_mask: Tensor::from_slice(&[true, true]).view([1, 2]),
    ///     settings: LossSettings { clip_eps_low: 0.2, clip_eps_high: 0.2, kl_weight: 0.0, generate_max_length: 2 },
    ///     is_weights: None,
    ///     step_token_divisor: None,
    /// };
    /// let terms = PolicyTerms::cispo(&batch, TermOptions::default()).unwrap();
    /// let surrogate = Vec::<f32>::try_from(&terms.surrogate.view([-1])).unwrap();
    /// assert!((surrogate[0] - 1.2 * 2.0).abs() < 1e-6 && (surrogate[1] - 1.0).abs() < 1e-6);
    /// assert!((terms.clip_fraction() - 0.5).abs() < 1e-9);
    /// ```
    pub fn cispo(batch: &PolicyBatch, how: TermOptions) -> Result<Self> {
        Self::build(batch, how, Surrogate::Cispo)
    }

    /// SAPO's terms (Soft Adaptive Policy Optimization, from Qwen; TRL's `loss_type="sapo"`): in place of
    /// clipping, each token's ratio passes through a sigmoid gate, the surrogate being
    /// `-sigmoid(tau * (rho - 1)) * 4 / tau * A` with `tau` the gate's `tau_pos` for a positive advantage and
    /// `tau_neg` otherwise. At `rho = 1` its gradient is the plain policy gradient's, and it fades smoothly as the
    /// ratio moves away, instead of vanishing at a bound. No token counts as clipped, and the clip range is unused.
    /// `how.ratio` (GSPO's sequence ratio) and `how.kl` apply as in [`PolicyTerms::with`]; `how.delta` caps a
    /// branch SAPO does not have and is an error, as are temperatures that are not finite and positive.
    ///
    /// ```
    /// # use grpo_sdk::{LossSettings, PolicyBatch, ops::{PolicyTerms, SoftGate, TermOptions}, tch::Tensor};
    /// let log_probs = Tensor::from_slice(&[-1.0f32, -0.5]).view([1, 2]).set_requires_grad(true);
    /// let batch = PolicyBatch {
    ///     log_probs: log_probs.shallow_clone(),
    ///     old_log_probs: Tensor::from_slice(&[-1.0f32, -2.5]).view([1, 2]), // ratios 1 and e^2
    ///     ref_log_probs: None,
    ///     advantages: Tensor::from_slice(&[2.0f32]),
    ///     action_mask: Tensor::from_slice(&[true, true]).view([1, 2]),
    ///     settings: LossSettings { clip_eps_low: 0.2, clip_eps_high: 0.2, kl_weight: 0.0, generate_max_length: 2 },
    ///     is_weights: None,
    ///     step_token_divisor: None,
    /// };
    /// let terms = PolicyTerms::sapo(&batch, TermOptions::default(), SoftGate::default()).unwrap();
    /// terms.surrogate.sum(terms.surrogate.kind()).backward();
    /// let grad = Vec::<f32>::try_from(&log_probs.grad().view([-1])).unwrap();
    /// // At ratio 1 the gradient is the policy gradient's, -A; far off policy it has faded.
    /// assert!((grad[0] + 2.0).abs() < 1e-6 && grad[1].abs() < 0.2 * 2.0);
    /// assert_eq!(terms.clip_fraction(), 0.0);
    /// ```
    pub fn sapo(batch: &PolicyBatch, how: TermOptions, gate: SoftGate) -> Result<Self> {
        for (name, tau) in [("tau_pos", gate.tau_pos), ("tau_neg", gate.tau_neg)] {
            if !(tau.is_finite() && tau > 0.0) {
                return Err(Error::msg(format!("SAPO's {name} must be a finite number > 0, got {tau}")));
            }
        }
        Self::build(batch, how, Surrogate::Sapo(gate))
    }

    /// VESPO's terms (TRL's `loss_type="vespo"`): the surrogate is `-sg(phi(w)) * A * logp` per token, where `w` is
    /// the sequence's ratio to the policy that sampled it, the product of its action tokens' ratios, and `phi` the
    /// gamma-shaped weight of [`GammaWeight`], held constant. On policy `phi = 1` and this is the policy gradient;
    /// as the sequence drifts far from it either way, `phi` falls smoothly towards 0 instead of clipping tokens, so
    /// no token counts as clipped and the clip range is unused. The weight is already one per sequence, so `how.ratio` must
    /// be [`RatioLevel::Token`]; `how.delta` caps a branch VESPO does not have and is an error, as are shapes that
    /// are not finite with `lambda > 0` and `k >= 0`. [`PolicyTerms::sequence_weight_mean_tensor`] is `phi`'s mean.
    ///
    /// ```
    /// # use grpo_sdk::{LossSettings, PolicyBatch, ops::{GammaWeight, PolicyTerms, TermOptions}, tch::Tensor};
    /// let batch = PolicyBatch {
    ///     log_probs: Tensor::from_slice(&[-1.0f32, -0.5, -1.0, -0.5]).view([2, 2]),
    ///     // The first sequence is on policy (w = 1); the second's ratio is e^0.5.
    ///     old_log_probs: Tensor::from_slice(&[-1.0f32, -0.5, -1.25, -0.75]).view([2, 2]),
    ///     ref_log_probs: None,
    ///     advantages: Tensor::from_slice(&[2.0f32, 2.0]),
    ///     action_mask: Tensor::from_slice(&[true, true, true, true]).view([2, 2]),
    ///     settings: LossSettings { clip_eps_low: 0.2, clip_eps_high: 0.2, kl_weight: 0.0, generate_max_length: 2 },
    ///     is_weights: None,
    ///     step_token_divisor: None,
    /// };
    /// let terms = PolicyTerms::vespo(&batch, TermOptions::default(), GammaWeight::default()).unwrap();
    /// let surrogate = Vec::<f32>::try_from(&terms.surrogate.view([-1])).unwrap();
    /// // phi(1) = 1: the policy gradient's surrogate -A * logp.
    /// assert!((surrogate[0] - 2.0).abs() < 1e-6 && (surrogate[1] - 1.0).abs() < 1e-6);
    /// // phi(e^0.5) = e^(3 + 2 * 0.5 - 3 e^0.5), about 0.39.
    /// let phi = (3.0f64 + 1.0 - 3.0 * 0.5f64.exp()).exp();
    /// assert!((surrogate[2] as f64 - phi * 2.0).abs() < 1e-5);
    /// ```
    pub fn vespo(batch: &PolicyBatch, how: TermOptions, weight: GammaWeight) -> Result<Self> {
        let GammaWeight { k_pos, lambda_pos, k_neg, lambda_neg } = weight;
        for (name, k, lambda) in [("pos", k_pos, lambda_pos), ("neg", k_neg, lambda_neg)] {
            if !(k.is_finite() && k >= 0.0 && lambda.is_finite() && lambda > 0.0) {
                return Err(Error::msg(format!(
                    "VESPO's k_{name} must be a finite number >= 0 and lambda_{name} one > 0, got {k} and {lambda}"
                )));
            }
        }
        if how.ratio == RatioLevel::Sequence {
            return Err(Error::msg(
                "VESPO weighs each sequence by its own ratio already; the sequence-level ratio does not apply",
            ));
        }
        Self::build(batch, how, Surrogate::Vespo(weight))
    }

    fn build(batch: &PolicyBatch, how: TermOptions, surrogate: Surrogate) -> Result<Self> {
        let lp = &batch.log_probs;
        let shape = lp.size();
        if shape.len() != 2 {
            return Err(Error::msg(format!("log_probs must be [B, T], got {shape:?}")));
        }
        let same = |t: &Tensor, what: &str| -> Result<()> {
            if t.size() == shape {
                Ok(())
            } else {
                Err(Error::msg(format!("{what} has shape {:?}, log_probs {shape:?}", t.size())))
            }
        };
        same(&batch.old_log_probs, "old_log_probs")?;
        same(&batch.action_mask, "action_mask")?;
        if let Some(r) = &batch.ref_log_probs {
            same(r, "ref_log_probs")?;
        }
        if let Some(w) = &batch.is_weights {
            same(w, "is_weights")?;
        }
        if batch.advantages.size() != [shape[0]] {
            return Err(Error::msg(format!(
                "advantages has shape {:?}, expected [{}]",
                batch.advantages.size(),
                shape[0]
            )));
        }
        if let Some(d) = batch.step_token_divisor.filter(|d| !(d.is_finite() && *d > 0.0)) {
            return Err(Error::msg(format!("step_token_divisor must be a finite number > 0, got {d}")));
        }
        let s = &batch.settings;
        if let (Surrogate::Cispo | Surrogate::Sapo(_) | Surrogate::Vespo(_), Some(d)) = (surrogate, how.delta) {
            let name = match surrogate {
                Surrogate::Cispo => "CISPO",
                Surrogate::Sapo(_) => "SAPO",
                _ => "VESPO",
            };
            return Err(Error::msg(format!(
                "delta {d} caps the clipped surrogate's unclipped branch, which {name} does not have; leave it unset"
            )));
        }
        if let Some(d) = how.delta.filter(|d| !(d.is_finite() && *d > 1.0 + s.clip_eps_high)) {
            return Err(Error::msg(format!(
                "delta {d} must be a number above 1 + clip_eps_high = {} (two-sided clipping caps the ratio above \
                 the clip range)",
                1.0 + s.clip_eps_high
            )));
        }
        let kind = lp.kind();
        let on = batch.action_mask.to_kind(Kind::Bool);
        let mask = on.to_kind(kind);
        let zero = lp.zeros_like();
        // Masked positions are zeroed before exp: garbage there must not overflow into inf * 0 = NaN.
        let log_ratio = (lp - batch.old_log_probs.to_kind(kind)).where_self(&on, &zero);
        let log_ratio = match how.ratio {
            RatioLevel::Token => log_ratio,
            RatioLevel::Sequence => {
                let tokens = mask.sum_dim_intlist(-1, true, None).clamp_min(1.0);
                (log_ratio.sum_dim_intlist(-1, true, None) / tokens).expand_as(lp).where_self(&on, &zero)
            }
        };
        let ratio = log_ratio.exp();
        let adv = batch.advantages.to_kind(kind).unsqueeze(-1);
        let mut sequence_weights = None;
        let (surrogate, clipped, clipped_high) = match surrogate {
            Surrogate::Clipped => {
                let unclipped = match how.delta {
                    Some(delta) => ratio.clamp_max(delta) * &adv,
                    None => &ratio * &adv,
                };
                let clipped_obj = ratio.clamp(1.0 - s.clip_eps_low, 1.0 + s.clip_eps_high) * &adv;
                let clipped = clipped_obj.lt_tensor(&unclipped).logical_and(&on);
                let clipped_high = clipped.logical_and(&ratio.gt(1.0 + s.clip_eps_high)).to_kind(kind);
                (-unclipped.minimum(&clipped_obj) * &mask, clipped.to_kind(kind), clipped_high)
            }
            Surrogate::Cispo => {
                let cap = 1.0 + s.clip_eps_high;
                let weight = ratio.clamp_max(cap).detach();
                let clipped = ratio.gt(cap).logical_and(&on).to_kind(kind);
                (-(weight * &adv * lp.where_self(&on, &zero)) * &mask, clipped.shallow_clone(), clipped)
            }
            Surrogate::Sapo(gate) => {
                // Per sequence, one temperature: the advantage's sign picks it (0 goes with the negatives, as in
                // TRL, and gives 0 either way).
                let tau = adv.gt(0.0).to_kind(kind) * (gate.tau_pos - gate.tau_neg) + gate.tau_neg;
                let soft = ((&ratio - 1.0) * &tau).sigmoid() * 4.0 / &tau;
                let none = mask.zeros_like();
                (-(soft * &adv) * &mask, none.shallow_clone(), none)
            }
            Surrogate::Vespo(weight) => {
                let phi = weight.phi(batch, &on);
                let scale = phi.to_kind(kind).unsqueeze(-1);
                sequence_weights = Some(phi);
                let none = mask.zeros_like();
                (-(scale * &adv * lp.where_self(&on, &zero)) * &mask, none.shallow_clone(), none)
            }
        };
        // The weights correct the sampler's precision, a constant per token: no gradient flows through them.
        let surrogate = match &batch.is_weights {
            Some(w) => surrogate * w.detach().to_kind(kind).where_self(&on, &zero),
            None => surrogate,
        };
        let kl = batch.ref_log_probs.as_ref().map(|r| {
            let d = (r.to_kind(kind) - lp).where_self(&on, &zero);
            // Each is exactly 0 at d = 0, so masked positions are 0.
            match how.kl {
                KlEstimator::K3 => d.exp() - &d - 1.0,
                KlEstimator::K1 => -d,
                KlEstimator::K2 => d.square() * 0.5,
            }
        });
        if s.kl_weight != 0.0 && kl.is_none() {
            return Err(Error::msg(format!("kl_weight is {} but the host passed no reference log-probs", s.kl_weight)));
        }
        let step_token_divisor = batch.step_token_divisor;
        Ok(PolicyTerms {
            surrogate,
            kl,
            mask,
            clipped,
            clipped_high,
            step_token_divisor,
            ratio,
            off_policy: None,
            sequence_weights,
        })
    }

    /// Multiply each token's KL estimate by its probability ratio to the old policy (the one the tokens were sampled
    /// from), with its gradient: the KL term then estimates the KL of the current policy rather than of the sampler,
    /// which is unbiased once the policy has moved (DeepSeek-V3.2's corrected k3; TRL's `use_bias_correction_kl`).
    /// Without a reference there is nothing to correct.
    pub fn correct_kl_bias(&mut self) {
        if let Some(kl) = &self.kl {
            self.kl = Some(kl * &self.ratio);
        }
    }

    /// Off-policy sequence masking (DeepSeek-V3.2; TRL's `off_policy_mask_threshold`): drop from the surrogate
    /// every sequence whose advantage is negative and whose policy has drifted by more than `threshold` from the
    /// one it was sampled from, measured as the mean over its action tokens of `old - logp` (a KL estimate, with no
    /// gradient). Pushing down a sequence the current policy no longer produces teaches little and destabilises;
    /// a sequence with a non-negative advantage is always kept. The KL term is left as it is.
    /// [`PolicyTerms::off_policy_fraction_tensor`] is the share of sequences dropped.
    ///
    /// ```
    /// # use grpo_sdk::{LossSettings, PolicyBatch, ops::PolicyTerms, tch::Tensor};
    /// let batch = PolicyBatch {
    ///     log_probs: Tensor::from_slice(&[-2.0f32, -2.0, -1.0, -1.0]).view([2, 2]),
    ///     // The first sequence drifted by 0.5 nats per token, the second not at all.
    ///     old_log_probs: Tensor::from_slice(&[-1.5f32, -1.5, -1.0, -1.0]).view([2, 2]),
    ///     ref_log_probs: None,
    ///     advantages: Tensor::from_slice(&[-1.0f32, -1.0]),
    ///     action_mask: Tensor::from_slice(&[true, true, true, true]).view([2, 2]),
    ///     settings: LossSettings { clip_eps_low: 0.2, clip_eps_high: 0.2, kl_weight: 0.0, generate_max_length: 2 },
    ///     is_weights: None,
    ///     step_token_divisor: None,
    /// };
    /// let mut terms = PolicyTerms::new(&batch).unwrap();
    /// terms.mask_off_policy(&batch, 0.1);
    /// let surrogate = Vec::<f32>::try_from(&terms.surrogate.view([-1])).unwrap();
    /// assert_eq!(&surrogate[..2], &[0.0, 0.0]);
    /// assert!(surrogate[2] > 0.0);
    /// assert_eq!(terms.off_policy_fraction_tensor().double_value(&[]), 0.5);
    /// ```
    pub fn mask_off_policy(&mut self, batch: &PolicyBatch, threshold: f64) {
        let kind = self.surrogate.kind();
        // Replaced, not multiplied, outside the mask: garbage there must not turn into inf * 0 = NaN.
        let (on, zero) = (self.mask.gt(0.0), self.mask.zeros_like());
        let drift = (batch.old_log_probs.to_kind(kind) - batch.log_probs.detach()).where_self(&on, &zero);
        let tokens = self.mask.sum_dim_intlist(-1, false, None).clamp_min(1.0);
        let drift = drift.sum_dim_intlist(-1, false, None) / tokens;
        let dropped = batch.advantages.lt(0.0).logical_and(&drift.gt(threshold));
        self.surrogate = &self.surrogate * dropped.logical_not().to_kind(kind).unsqueeze(-1);
        self.off_policy = Some(dropped.to_kind(Kind::Double));
    }

    /// The share of sequences [`PolicyTerms::mask_off_policy`] dropped, as a float64 scalar on the batch's device
    /// (0 before it runs, or without sequences).
    pub fn off_policy_fraction_tensor(&self) -> Tensor {
        match &self.off_policy {
            Some(dropped) if dropped.numel() > 0 => dropped.mean(None),
            _ => Tensor::zeros([], (Kind::Double, self.mask.device())),
        }
    }

    /// The mean over the micro-batch's sequences of VESPO's weight `phi` ([`PolicyTerms::vespo`]), as a float64
    /// scalar on the batch's device (TRL's `vespo/phi_seq_mean`); `None` for the other objectives, and 0 without
    /// sequences.
    pub fn sequence_weight_mean_tensor(&self) -> Option<Tensor> {
        self.sequence_weights.as_ref().map(|phi| match phi.numel() {
            0 => Tensor::zeros([], (Kind::Double, phi.device())),
            _ => phi.to_kind(Kind::Double).mean(None),
        })
    }

    /// `surrogate + kl_weight * kl` per token.
    pub fn per_token_loss(&self, kl_weight: f64) -> Tensor {
        match &self.kl {
            Some(kl) if kl_weight != 0.0 => &self.surrogate + kl * kl_weight,
            _ => self.surrogate.shallow_clone(),
        }
    }

    /// The mean over sequences of each sequence's masked mean of `x` (a sequence without actions counts as 0).
    pub fn sequence_mean(&self, x: &Tensor) -> Tensor {
        let tokens = self.mask.sum_dim_intlist(-1, false, None).clamp_min(1.0);
        ((x * &self.mask).sum_dim_intlist(-1, false, None) / tokens).mean(None)
    }

    /// The mean over sequences of each sequence's masked sum of `x` divided by the constant `normalizer` (Dr. GRPO's
    /// `generate_max_length`, TRL's `loss_type="dr_grpo"`): no sequence's own length enters the loss. With a
    /// normalizer of 1, each sequence weighs as many times as it has action tokens (LUSPO's, TRL's `"luspo"`).
    pub fn constant_mean(&self, x: &Tensor, normalizer: f64) -> Tensor {
        ((x * &self.mask).sum_dim_intlist(-1, false, None) / normalizer).mean(None)
    }

    /// The masked mean of `x` over the micro-batch's action tokens, every token weighing the same (0 without action
    /// tokens). Averaged over micro-batches by the host, a token of a short micro-batch weighs more than one of a long
    /// one (TRL's `loss_type="bnpo"`); [`PolicyTerms::step_token_mean`] weighs the whole step's tokens equally.
    pub fn token_mean(&self, x: &Tensor) -> Tensor {
        (x * &self.mask).sum(x.kind()) / self.mask.sum(x.kind()).clamp_min(1.0)
    }

    /// The micro-batch's share of the mean of `x` over every action token of the optimizer step (DAPO's
    /// token-level loss, TRL's `loss_type="dapo"`): its masked sum over [`PolicyBatch::step_token_divisor`], so that
    /// the host's average over micro-batches and ranks is the step's token mean. Without a divisor the micro-batch
    /// is the step, and this is [`PolicyTerms::token_mean`].
    pub fn step_token_mean(&self, x: &Tensor) -> Tensor {
        match self.step_token_divisor {
            Some(divisor) => (x * &self.mask).sum(x.kind()) / divisor,
            None => self.token_mean(x),
        }
    }

    /// The KL to the reference as the mean over sequences of per-sequence masked means; 0 without a reference.
    /// Reads the value to the host; inside a loss, return [`PolicyTerms::kl_mean_tensor`] as a device metric.
    pub fn kl_mean(&self) -> f64 {
        self.kl_mean_tensor().double_value(&[])
    }

    /// [`PolicyTerms::kl_mean`] as a float64 scalar on the batch's device (no copy to the host).
    pub fn kl_mean_tensor(&self) -> Tensor {
        match &self.kl {
            Some(kl) => self.sequence_mean(kl).detach().to_kind(Kind::Double),
            None => Tensor::zeros([], (Kind::Double, self.mask.device())),
        }
    }

    /// The share of action tokens where clipping changed the objective (0 without action tokens). Reads the value
    /// to the host; inside a loss, return [`PolicyTerms::clip_fraction_tensor`] as a device metric.
    pub fn clip_fraction(&self) -> f64 {
        self.clip_fraction_tensor().double_value(&[])
    }

    /// [`PolicyTerms::clip_fraction`] as a float64 scalar on the batch's device (no copy to the host).
    pub fn clip_fraction_tensor(&self) -> Tensor {
        self.share_of_actions(&self.clipped)
    }

    /// The share of action tokens clipped by the upper bound (`1 + eps_high`, DAPO's clip-higher), as a float64
    /// scalar on the batch's device (TRL's `clip_ratio/high_mean`).
    pub fn clip_high_fraction_tensor(&self) -> Tensor {
        self.share_of_actions(&self.clipped_high)
    }

    /// The share of action tokens clipped by the lower bound (`1 - eps_low`), as a float64 scalar on the batch's
    /// device (TRL's `clip_ratio/low_mean`); with the upper share it adds up to [`PolicyTerms::clip_fraction_tensor`].
    pub fn clip_low_fraction_tensor(&self) -> Tensor {
        self.share_of_actions(&(&self.clipped - &self.clipped_high))
    }

    /// `flags` (0 or 1, 0 outside the mask) summed over the action tokens and divided by their number. Without action
    /// tokens the sum is 0 and the divisor's floor of 1 gives 0 without a branch on the host.
    fn share_of_actions(&self, flags: &Tensor) -> Tensor {
        flags.sum(Kind::Double) / self.mask.sum(Kind::Double).clamp_min(1.0)
    }
}
