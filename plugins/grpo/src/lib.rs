//! The `grpo` algorithm plugin: group-normalised advantages and the clipped surrogate with a k3 KL penalty,
//! aggregated as a per-sequence masked mean, then the mean over sequences, or over tokens with `loss_type`
//! (docs/plugins.md, "The shipped algorithms and environment").

use grpo_sdk::ops::{split_groups, GammaWeight, KlEstimator, PolicyTerms, RatioLevel, SoftGate, TermOptions};
use grpo_sdk::tch::Tensor;
use grpo_sdk::{Algorithm, DeferredLoss, LossOutput, MetricSource, PolicyBatch, Result};
use serde::{Deserialize, Serialize};

/// Options (`--algo-config`); the clip range and KL weight come from the run's flags instead.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Added to the standard deviation before dividing (re-grpo: 1e-8).
    pub std_eps: f64,
    /// What each reward is centred on: its group's mean, or the mean of the rest of its group (RLOO).
    pub baseline: Baseline,
    /// Which standard deviation the centred rewards are divided by (TRL's `scale_rewards`).
    pub scale_rewards: ScaleRewards,
    /// How the per-token losses are averaged (TRL's `loss_type`).
    pub loss_type: LossType,
    /// Each token's probability ratio, or one per sequence (GSPO; TRL's `importance_sampling_level`).
    pub importance_sampling_level: RatioLevel,
    /// Two-sided clipping: cap the unclipped branch's ratio here (TRL's `delta`, verl's `clip_ratio_c`); `None`:
    /// off. Above `1 + --clip-eps-high`.
    pub delta: Option<f64>,
    /// The per-token estimate of the KL penalty (verl's `kl_loss_type`).
    pub kl_estimator: KlEstimator,
    /// `loss_type: "sapo"`'s gate temperature for positive advantages (TRL's `sapo_temperature_pos`).
    pub sapo_temperature_pos: f64,
    /// `loss_type: "sapo"`'s gate temperature for the other advantages (TRL's `sapo_temperature_neg`).
    pub sapo_temperature_neg: f64,
    /// `loss_type: "vespo"`'s weight shape `k` for non-negative advantages (TRL's `vespo_k_pos`).
    pub vespo_k_pos: f64,
    /// `loss_type: "vespo"`'s weight rate `lambda` for non-negative advantages (TRL's `vespo_lambda_pos`).
    pub vespo_lambda_pos: f64,
    /// `loss_type: "vespo"`'s `k` for negative advantages (TRL's `vespo_k_neg`).
    pub vespo_k_neg: f64,
    /// `loss_type: "vespo"`'s `lambda` for negative advantages (TRL's `vespo_lambda_neg`).
    pub vespo_lambda_neg: f64,
    /// Weigh each token's KL estimate by its probability ratio to the sampling policy (DeepSeek-V3.2's unbiased
    /// KL; TRL's `use_bias_correction_kl`).
    pub use_bias_correction_kl: bool,
    /// Off-policy sequence masking (DeepSeek-V3.2; TRL's `off_policy_mask_threshold`): leave a sequence with a
    /// negative advantage out of the surrogate when its mean `old - logp` exceeds this; `None`: off.
    pub off_policy_mask_threshold: Option<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            std_eps: 1e-8,
            baseline: Baseline::GroupMean,
            scale_rewards: ScaleRewards::Group,
            loss_type: LossType::Grpo,
            importance_sampling_level: RatioLevel::Token,
            delta: None,
            kl_estimator: KlEstimator::K3,
            sapo_temperature_pos: SoftGate::default().tau_pos,
            sapo_temperature_neg: SoftGate::default().tau_neg,
            vespo_k_pos: GammaWeight::default().k_pos,
            vespo_lambda_pos: GammaWeight::default().lambda_pos,
            vespo_k_neg: GammaWeight::default().k_neg,
            vespo_lambda_neg: GammaWeight::default().lambda_neg,
            use_bias_correction_kl: false,
            off_policy_mask_threshold: None,
        }
    }
}

/// How the per-token losses of an optimizer step become one loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossType {
    /// Each sequence's mean over its tokens, then the mean over sequences: GRPO as published, and re-grpo. A token
    /// of a short completion weighs more than one of a long completion.
    Grpo,
    /// The mean over each micro-batch's tokens, then over the micro-batches (TRL's `"bnpo"`): every token of a
    /// micro-batch weighs the same, but the weights still depend on how the step is cut into micro-batches.
    Bnpo,
    /// The mean over every token of the optimizer step, all its micro-batches and data-parallel ranks together
    /// (DAPO's token-level loss, TRL's `"dapo"`): the same loss however the step is split.
    Dapo,
    /// Each sequence's sum over its tokens divided by the constant `--max-new-tokens`, then the mean over sequences
    /// (Dr. GRPO's, TRL's `"dr_grpo"`): no sequence's length enters the loss. With `scale_rewards: "none"` this is
    /// the `drgrpo` plugin.
    #[serde(rename = "dr_grpo")]
    DrGrpo,
    /// CISPO's objective (MiniMax-M1; TRL's `"cispo"`): each token's log-prob times its advantage and its ratio,
    /// the ratio capped at `1 + --clip-eps-high` and held constant, so no token loses its gradient; averaged as
    /// `"dapo"`, over every token of the optimizer step.
    Cispo,
    /// SAPO's objective (Qwen; TRL's `"sapo"`): no clipping, each token's ratio through a sigmoid gate whose
    /// gradient is the policy gradient's at ratio 1 and fades as the ratio leaves it, faster for negative advantages
    /// (`sapo_temperature_pos`, `sapo_temperature_neg`); averaged as `"grpo"`, per sequence, then over sequences.
    Sapo,
    /// VESPO's objective (TRL's `"vespo"`): each token's log-prob times its advantage and a weight of its whole
    /// sequence's ratio, held constant, which is 1 on policy and falls smoothly towards 0 as the sequence drifts far
    /// from it (`vespo_k_*`, `vespo_lambda_*`); averaged as `"dapo"`, over every token of the optimizer step.
    Vespo,
    /// LUSPO's averaging (TRL's `"luspo"`), for GSPO's sequence-level ratio: each sequence's sum over its tokens,
    /// then the mean over sequences, so that a sequence weighs by its length and GSPO's bias towards short
    /// sequences goes.
    Luspo,
}

/// What a reward is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// The mean of its group, itself included: GRPO as published, and re-grpo.
    GroupMean,
    /// The mean of the other rewards of its group (REINFORCE leave-one-out, Ahmadian et al. 2024; verl's `rloo`):
    /// `r_i - mean_{j != i} r_j`, which is `n / (n - 1)` times the group-mean form, so the baseline does not depend
    /// on the reward it is subtracted from. With `scale_rewards: "none"` this is RLOO's advantage.
    LeaveOneOut,
}

/// What the centred rewards are divided by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRewards {
    /// The group's own standard deviation: GRPO as published, and re-grpo.
    Group,
    /// The standard deviation of every reward in the batch (the global batch under data parallelism): groups whose
    /// rewards barely differ are not blown up to unit scale ("Tricks or Traps?", Liu et al. 2025; TRL's `"batch"`).
    Batch,
    /// Nothing: the centred rewards, as Dr. GRPO's advantages (TRL's `"none"`).
    None,
}

/// GRPO.
pub struct Grpo {
    config: Config,
}

impl MetricSource for Grpo {}

impl grpo_sdk::Plugin for Grpo {
    const NAME: &'static str = "grpo";
    const DESCRIPTION: &'static str =
        "GRPO: (r - mean) / (std + eps) advantages (scale_rewards: group, batch or none; baseline leave_one_out for \
         RLOO), clipped surrogate + k3 KL, per-sequence mean (loss_type: grpo, bnpo, dapo, dr_grpo, cispo, sapo, vespo \
         or luspo); importance_sampling_level sequence for GSPO; delta for two-sided clipping; kl_estimator k3, k1 \
         or k2";

    fn new(config: serde_json::Value) -> Result<Self> {
        let config: Config = grpo_sdk::parse_config(config)?;
        if let Some(delta) = config.delta.filter(|d| !(d.is_finite() && *d > 1.0)) {
            return Err(grpo_sdk::Error::msg(format!(
                "invalid config: delta must be a number above 1 + the upper clip range (such as 4), got {delta}"
            )));
        }
        if let (LossType::Cispo | LossType::Sapo | LossType::Vespo, Some(_)) = (config.loss_type, config.delta) {
            let name = serde_json::to_value(config.loss_type).unwrap_or_default();
            return Err(grpo_sdk::Error::msg(format!(
                "invalid config: delta caps the clipped surrogate's unclipped branch, which loss_type {} does not \
                 have; leave it unset",
                name.as_str().unwrap_or_default()
            )));
        }
        if (config.loss_type, config.importance_sampling_level) == (LossType::Vespo, RatioLevel::Sequence) {
            return Err(grpo_sdk::Error::msg(
                "invalid config: loss_type vespo weighs each sequence by its own ratio already; leave \
                 importance_sampling_level at \"token\"",
            ));
        }
        // (option, value, whether 0 is allowed, a typical value)
        for (name, value, zero, example) in [
            ("sapo_temperature_pos", config.sapo_temperature_pos, false, 1),
            ("sapo_temperature_neg", config.sapo_temperature_neg, false, 1),
            ("vespo_lambda_pos", config.vespo_lambda_pos, false, 3),
            ("vespo_lambda_neg", config.vespo_lambda_neg, false, 2),
            ("vespo_k_pos", config.vespo_k_pos, true, 2),
            ("vespo_k_neg", config.vespo_k_neg, true, 3),
        ] {
            if !(value.is_finite() && (value > 0.0 || zero && value == 0.0)) {
                let bound = if zero { ">= 0" } else { "> 0" };
                let msg =
                    format!("invalid config: {name} must be a finite number {bound} (such as {example}), got {value}");
                return Err(grpo_sdk::Error::msg(msg));
            }
        }
        if let Some(t) = config.off_policy_mask_threshold.filter(|t| !(t.is_finite() && *t >= 0.0)) {
            let msg = format!("invalid config: off_policy_mask_threshold must be a finite number >= 0, got {t}");
            return Err(grpo_sdk::Error::msg(msg));
        }
        if !(config.std_eps >= 0.0 && config.std_eps.is_finite()) {
            return Err(grpo_sdk::Error::msg(format!(
                "invalid config: std_eps must be a finite number >= 0, got {}",
                config.std_eps
            )));
        }
        Ok(Grpo { config })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

impl Algorithm for Grpo {
    /// `(r - mean) / (std + eps)` with the unbiased std (the group's, as re-grpo, unless `scale_rewards` says
    /// otherwise), the mean the rest of the group's under `baseline: "leave_one_out"`. A group of one, or one whose rewards are all equal, gets exactly 0: re-grpo gave NaN for the
    /// first, and rounding in the mean can turn the second into large advantages of noise once divided by `0 + eps`.
    fn advantages(&self, rewards: &Tensor, groups: &[usize]) -> Result<Tensor> {
        let eps = self.config.std_eps;
        let parts = split_groups(rewards, groups)?;
        // Only a batch of two or more has a standard deviation; a smaller one is a single group, given zeros below.
        let batch_std = (self.config.scale_rewards == ScaleRewards::Batch && rewards.size()[0] > 1)
            .then(|| rewards.std(true) + eps);
        let parts: Vec<Tensor> = parts
            .into_iter()
            .map(|g| {
                let all_equal = g.max().double_value(&[]) == g.min().double_value(&[]);
                if g.size()[0] < 2 || all_equal {
                    return g.zeros_like();
                }
                let n = g.size()[0] as f64;
                let centred = match self.config.baseline {
                    Baseline::GroupMean => &g - g.mean(None),
                    Baseline::LeaveOneOut => (&g - g.mean(None)) * (n / (n - 1.0)),
                };
                match (self.config.scale_rewards, &batch_std) {
                    (ScaleRewards::Batch, Some(std)) => centred / std,
                    (ScaleRewards::None, _) => centred,
                    _ => centred / (g.std(true) + eps),
                }
            })
            .collect();
        Ok(Tensor::cat(&parts, 0))
    }

    fn loss(&self, batch: &PolicyBatch) -> Result<LossOutput> {
        self.loss_deferred(batch)?.read()
    }

    /// Every metric computed from tensors stays on the device until the host reads the optimizer step's values.
    fn loss_deferred(&self, batch: &PolicyBatch) -> Result<DeferredLoss> {
        let (ratio, delta, kl) = (self.config.importance_sampling_level, self.config.delta, self.config.kl_estimator);
        let how = TermOptions { ratio, delta, kl };
        let mut terms = match self.config.loss_type {
            LossType::Cispo => PolicyTerms::cispo(batch, how)?,
            LossType::Sapo => {
                let gate =
                    SoftGate { tau_pos: self.config.sapo_temperature_pos, tau_neg: self.config.sapo_temperature_neg };
                PolicyTerms::sapo(batch, how, gate)?
            }
            LossType::Vespo => {
                let c = &self.config;
                let (k_pos, lambda_pos, k_neg, lambda_neg) =
                    (c.vespo_k_pos, c.vespo_lambda_pos, c.vespo_k_neg, c.vespo_lambda_neg);
                PolicyTerms::vespo(batch, how, GammaWeight { k_pos, lambda_pos, k_neg, lambda_neg })?
            }
            _ => PolicyTerms::with(batch, how)?,
        };
        if self.config.use_bias_correction_kl {
            terms.correct_kl_bias();
        }
        if let Some(threshold) = self.config.off_policy_mask_threshold {
            terms.mask_off_policy(batch, threshold);
        }
        let per_token = terms.per_token_loss(batch.settings.kl_weight);
        let loss = match self.config.loss_type {
            LossType::Grpo | LossType::Sapo => terms.sequence_mean(&per_token),
            LossType::Bnpo => terms.token_mean(&per_token),
            LossType::Dapo | LossType::Cispo | LossType::Vespo => terms.step_token_mean(&per_token),
            LossType::Luspo => terms.constant_mean(&per_token, 1.0),
            LossType::DrGrpo => {
                let max_len = batch.settings.generate_max_length;
                if max_len <= 0 {
                    let msg = format!("loss_type dr_grpo needs a positive generate_max_length, got {max_len}");
                    return Err(grpo_sdk::Error::msg(msg));
                }
                terms.constant_mean(&per_token, max_len as f64)
            }
        };
        let mut out = DeferredLoss::new(loss);
        if self.config.off_policy_mask_threshold.is_some() {
            out = out.with_device_metric("training_step/off_policy_mask_fraction", terms.off_policy_fraction_tensor());
        }
        if let Some(phi) = terms.sequence_weight_mean_tensor() {
            out = out.with_device_metric("training_step/vespo_phi_mean", phi);
        }
        Ok(out
            .with_device_metric("training_step/kl", terms.kl_mean_tensor())
            .with_device_metric("training_step/clip_fraction", terms.clip_fraction_tensor())
            .with_device_metric("training_step/clip_fraction_high", terms.clip_high_fraction_tensor())
            .with_device_metric("training_step/clip_fraction_low", terms.clip_low_fraction_tensor()))
    }
}

grpo_sdk::export_plugins!(algorithm Grpo);
