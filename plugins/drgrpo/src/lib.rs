//! The `drgrpo` algorithm plugin (Dr. GRPO, "Understanding R1-Zero-Like Training"): advantages without the std
//! division, and each sequence's summed loss divided by the constant generate_max_length (the reference code's
//! `masked_mean(..., constant_normalizer)`), then the mean over sequences. Dividing by each sequence's own length,
//! or by the tokens in the batch, is the length bias the paper removes.

use grpo_sdk::ops::{split_groups, PolicyTerms};
use grpo_sdk::tch::{Kind, Tensor};
use grpo_sdk::{Algorithm, DeferredLoss, Error, LossOutput, Metric, MetricSource, PolicyBatch, Result};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Options (`--algo-config`); none yet besides the clip range and KL weight, which come from the run's flags.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {}

/// Dr. GRPO.
pub struct DrGrpo {
    config: Config,
    /// Statistics of the latest advantages, reported once by `metrics`.
    pending: Mutex<Vec<Metric>>,
}

impl MetricSource for DrGrpo {
    fn metrics(&self) -> Vec<Metric> {
        let mut out = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        // There is no learned critic: the baseline is the group's mean reward.
        out.push(Metric::text("dr_grpo/critic_type", "group_mean"));
        out
    }
}

/// Population variance and third standardized moment (Fisher-Pearson g1); the skewness of a constant is 0.
/// re-grpo logged std/mean under the skewness name; this is the actual skewness.
pub fn variance_and_skewness(x: &Tensor) -> (f64, f64) {
    let x = x.to_kind(grpo_sdk::tch::Kind::Double);
    let centered = &x - x.mean(None);
    let variance = centered.square().mean(None).double_value(&[]);
    if variance == 0.0 {
        return (0.0, 0.0);
    }
    let third = centered.pow_tensor_scalar(3).mean(None).double_value(&[]);
    (variance, third / variance.powf(1.5))
}

impl grpo_sdk::Plugin for DrGrpo {
    const NAME: &'static str = "drgrpo";
    const DESCRIPTION: &'static str =
        "Dr. GRPO: r - mean advantages, clipped surrogate + k3 KL summed per sequence / generate_max_length";

    fn new(config: serde_json::Value) -> Result<Self> {
        Ok(DrGrpo { config: grpo_sdk::parse_config(config)?, pending: Mutex::new(Vec::new()) })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

impl Algorithm for DrGrpo {
    fn advantages(&self, rewards: &Tensor, groups: &[usize]) -> Result<Tensor> {
        let parts: Vec<Tensor> = split_groups(rewards, groups)?.into_iter().map(|g| &g - g.mean(None)).collect();
        let adv = Tensor::cat(&parts, 0);
        let (variance, skewness) = variance_and_skewness(&adv);
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = vec![
            Metric::number("dr_grpo/advantages_variance", variance),
            Metric::number("dr_grpo/advantages_skewness", skewness),
        ];
        Ok(adv)
    }

    fn loss(&self, batch: &PolicyBatch) -> Result<LossOutput> {
        self.loss_deferred(batch)?.read()
    }

    /// Every metric computed from tensors stays on the device until the host reads the optimizer step's values.
    fn loss_deferred(&self, batch: &PolicyBatch) -> Result<DeferredLoss> {
        let max_len = batch.settings.generate_max_length;
        if max_len <= 0 {
            return Err(Error::msg(format!("generate_max_length must be positive, got {max_len}")));
        }
        let terms = PolicyTerms::new(batch)?;
        let kl_weight = batch.settings.kl_weight;
        let per_sequence = |x: &Tensor| terms.constant_mean(x, max_len as f64);
        let loss = per_sequence(&terms.per_token_loss(kl_weight));
        let policy = per_sequence(&terms.surrogate).detach();
        let kl = match &terms.kl {
            Some(k) => per_sequence(&(k * kl_weight)).detach(),
            None => Tensor::zeros([], (Kind::Double, loss.device())),
        };
        Ok(DeferredLoss::new(loss)
            .with_device_metric("training_step/kl", terms.kl_mean_tensor())
            .with_device_metric("training_step/clip_fraction", terms.clip_fraction_tensor())
            .with_device_metric("training_step/clip_fraction_high", terms.clip_high_fraction_tensor())
            .with_device_metric("training_step/clip_fraction_low", terms.clip_low_fraction_tensor())
            .with_device_metric("training_step/dr_component_policy", policy)
            .with_device_metric("training_step/dr_component_kl", kl)
            .with_metric(Metric::number("training_step/dr_component_normalizer", max_len as f64)))
    }
}

grpo_sdk::export_plugins!(algorithm DrGrpo);
