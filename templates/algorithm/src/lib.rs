//! {{project-name}}: a grpo-rs algorithm plugin, selected with `--algo {{plugin_name}}`.
//!
//! REINFORCE with the group mean as baseline, the simplest member of the GRPO family: a rollout's advantage is its
//! reward minus the mean reward of its group (the rollouts of one task), and the loss is `-A * log p` summed over
//! the model's own tokens. There is no ratio to the sampling policy and no clipping, so it assumes one update per
//! batch of rollouts (the host's default). Change `advantages` and `loss` to make it your own; `grpo_sdk::ops` has
//! the clipped surrogate and KL pieces that the shipped `grpo` and `drgrpo` plugins are built from.

use grpo_sdk::ops::{split_groups, PolicyTerms};
use grpo_sdk::tch::Tensor;
use grpo_sdk::{
    Algorithm, DeferredLoss, Error, LossOutput, Metric, MetricSource, Plugin, PolicyBatch, Result,
};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Options, given as JSON with `--algo-config`. Unknown keys are rejected, so a misspelt option is an error
/// instead of being silently ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How a sequence's token terms become one number: `true` averages them over its action tokens (every
    /// sequence weighs the same, whatever its length); `false` sums them and divides by the constant
    /// `--max-new-tokens`, as Dr. GRPO does, so that long and short answers are not weighted differently per token.
    pub length_normalize: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            length_normalize: true,
        }
    }
}

/// Counts since the last [`MetricSource::metrics`] call. The host may call from several threads, hence the mutex.
#[derive(Default)]
struct Stats {
    groups: u64,
    flat_groups: u64,
}

/// The plugin: REINFORCE with a group-mean baseline.
pub struct Reinforce {
    config: Config,
    stats: Mutex<Stats>,
}

impl MetricSource for Reinforce {
    /// The share of groups whose rewards were all equal since the last call: they carry no learning signal, and a
    /// share near 1 means the task is too easy or too hard for the model.
    fn metrics(&self) -> Vec<Metric> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let taken = std::mem::take(&mut *stats);
        if taken.groups == 0 {
            return Vec::new();
        }
        vec![Metric::number(
            "{{plugin_name}}/flat_group_share",
            taken.flat_groups as f64 / taken.groups as f64,
        )]
    }
}

impl Plugin for Reinforce {
    const NAME: &'static str = "{{plugin_name}}";
    const DESCRIPTION: &'static str = "REINFORCE with the group mean as baseline";

    fn new(config: serde_json::Value) -> Result<Self> {
        let config: Config = grpo_sdk::parse_config(config)?;
        Ok(Reinforce {
            config,
            stats: Mutex::new(Stats::default()),
        })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

impl Algorithm for Reinforce {
    /// `r - mean(r)` within each group. A group whose rewards are all equal (a group of one included) gets exactly
    /// 0: subtracting a rounded mean would otherwise leave tiny advantages of pure noise.
    fn advantages(&self, rewards: &Tensor, groups: &[usize]) -> Result<Tensor> {
        let mut flat = 0;
        let parts: Vec<Tensor> = split_groups(rewards, groups)?
            .into_iter()
            .map(|g| {
                if g.max().double_value(&[]) == g.min().double_value(&[]) {
                    flat += 1;
                    g.zeros_like()
                } else {
                    &g - g.mean(None)
                }
            })
            .collect();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.groups += groups.len() as u64;
        stats.flat_groups += flat;
        Ok(Tensor::cat(&parts, 0))
    }

    /// The loss below with every metric read to the host.
    fn loss(&self, batch: &PolicyBatch) -> Result<LossOutput> {
        self.loss_deferred(batch)?.read()
    }

    /// `-A * log p` on every action token, plus `kl_weight` times the k3 estimate of the KL to the reference model
    /// when `--kl-weight` is not 0; each sequence's terms are reduced as `length_normalize` says, then averaged
    /// over the sequences of the micro-batch. Metrics computed from tensors stay on the device: the host reads them
    /// with the loss, once per optimizer step, instead of this plugin forcing a GPU synchronisation per micro-batch.
    fn loss_deferred(&self, batch: &PolicyBatch) -> Result<DeferredLoss> {
        // Checks the shapes, and gives the float action mask and the KL estimate (0 at masked positions).
        let terms = PolicyTerms::new(batch)?;
        let advantages = batch
            .advantages
            .to_kind(batch.log_probs.kind())
            .unsqueeze(-1);
        // Positions outside the mask hold arbitrary finite values; multiplying by the mask removes them and their
        // gradient.
        let mut per_token = -&batch.log_probs * &advantages * &terms.mask;
        let kl_weight = batch.settings.kl_weight;
        if let (Some(kl), true) = (&terms.kl, kl_weight != 0.0) {
            per_token += kl * kl_weight;
        }
        let loss = if self.config.length_normalize {
            terms.sequence_mean(&per_token)
        } else {
            let max_new_tokens = batch.settings.generate_max_length;
            if max_new_tokens < 1 {
                return Err(Error::msg(format!(
                    "length_normalize = false divides by --max-new-tokens, which is {max_new_tokens}"
                )));
            }
            (per_token.sum_dim_intlist(-1, false, None) / max_new_tokens as f64).mean(None)
        };
        Ok(DeferredLoss::new(loss)
            .with_device_metric("training_step/kl", terms.kl_mean_tensor())
            .with_device_metric(
                "{{plugin_name}}/mean_abs_advantage",
                batch.advantages.abs().mean(None),
            ))
    }
}

// The one line that makes this library a grpo-rs plugin: it exports the entry symbol grpo-host looks for.
grpo_sdk::export_plugins!(algorithm Reinforce);

#[cfg(test)]
mod tests {
    use super::*;
    use grpo_sdk::tch::Kind;
    use grpo_sdk::LossSettings;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// A batch of two sequences of three positions; the first has two action tokens, the second three. The masked
    /// position holds a large value, which must not leak into the loss or its gradient.
    fn batch(settings: LossSettings, with_ref: bool) -> (PolicyBatch, Tensor) {
        let log_probs = Tensor::from_slice(&[-1.0f32, -2.0, -1e4, -0.5, -1.5, -3.0])
            .view([2, 3])
            .set_requires_grad(true);
        let batch = PolicyBatch {
            log_probs: log_probs.shallow_clone(),
            old_log_probs: log_probs.detach(),
            ref_log_probs: with_ref.then(|| log_probs.detach() - 0.1),
            advantages: Tensor::from_slice(&[1.0f32, -2.0]),
            action_mask: Tensor::from_slice(&[true, true, false, true, true, true]).view([2, 3]),
            settings,
            is_weights: None,
            step_token_divisor: None,
        };
        (batch, log_probs)
    }

    fn no_kl() -> LossSettings {
        LossSettings {
            kl_weight: 0.0,
            generate_max_length: 4,
            ..LossSettings::default()
        }
    }

    #[test]
    fn advantages_subtract_the_group_mean() {
        let algo = Reinforce::new(serde_json::Value::Null).unwrap();
        let rewards = Tensor::from_slice(&[1.0f64, 0.0, 0.5, 0.5, 2.0, 0.0, 0.2, 0.4]);
        let adv = algo.advantages(&rewards, &[2, 2, 1, 3]).unwrap();
        assert_eq!(
            adv.kind(),
            Kind::Double,
            "advantages keep the rewards' dtype"
        );
        assert_close(&values(&adv), &[0.5, -0.5, 0.0, 0.0, 0.0, -0.2, 0.0, 0.2]);
    }

    #[test]
    fn flat_groups_are_reported_once() {
        let algo = Reinforce::new(serde_json::Value::Null).unwrap();
        let adv = algo
            .advantages(
                &Tensor::from_slice(&[1.0f32, 0.0, 0.5, 0.5, 2.0]),
                &[2, 2, 1],
            )
            .unwrap();
        assert_eq!(adv.size(), [5]);
        let metrics = algo.metrics();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].name, "{{plugin_name}}/flat_group_share");
        assert!((metrics[0].as_number().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(
            algo.metrics().is_empty(),
            "the counts start over after each pull"
        );
    }

    #[test]
    fn group_sizes_that_do_not_add_up_are_an_error() {
        let algo = Reinforce::new(serde_json::Value::Null).unwrap();
        let err = algo
            .advantages(&Tensor::from_slice(&[1.0f32, 0.0, 0.5]), &[2, 2])
            .err()
            .unwrap();
        assert!(err.to_string().contains("group sizes"), "{err}");
    }

    #[test]
    fn per_sequence_mean_gradient_is_minus_advantage_over_length() {
        let algo = Reinforce::new(serde_json::Value::Null).unwrap();
        let (batch, log_probs) = batch(no_kl(), false);
        let out = algo.loss(&batch).unwrap();
        // Sequence 0: -(1)(-1 - 2)/2 = 1.5; sequence 1: -(-2)(-0.5 - 1.5 - 3)/3 = -10/3; mean over the two.
        assert_close(&[out.loss.double_value(&[])], &[(1.5 - 10.0 / 3.0) / 2.0]);
        out.loss.backward();
        let a = -1.0 / (2.0 * 2.0);
        let b = 2.0 / (3.0 * 2.0);
        assert_close(&values(&log_probs.grad()), &[a, a, 0.0, b, b, b]);
    }

    #[test]
    fn constant_normaliser_divides_by_max_new_tokens() {
        let algo = Reinforce::new(serde_json::json!({ "length_normalize": false })).unwrap();
        let (batch, log_probs) = batch(no_kl(), false);
        algo.loss(&batch).unwrap().loss.backward();
        let a = -1.0 / (4.0 * 2.0);
        let b = 2.0 / (4.0 * 2.0);
        assert_close(&values(&log_probs.grad()), &[a, a, 0.0, b, b, b]);
    }

    #[test]
    fn kl_penalty_is_added_and_logged() {
        let algo = Reinforce::new(serde_json::Value::Null).unwrap();
        let plain = algo.loss(&batch(no_kl(), false).0).unwrap();
        let settings = LossSettings {
            kl_weight: 0.5,
            ..no_kl()
        };
        let with_kl = algo.loss(&batch(settings, true).0).unwrap();
        // ref - logp = -0.1 on every action token: k3 = exp(-0.1) + 0.1 - 1.
        let k3 = (-0.1f64).exp() + 0.1 - 1.0;
        let added = with_kl.loss.double_value(&[]) - plain.loss.double_value(&[]);
        assert_close(&[added], &[0.5 * k3]);
        let kl = with_kl
            .metrics
            .iter()
            .find(|m| m.name == "training_step/kl")
            .unwrap();
        assert_close(&[kl.as_number().unwrap()], &[k3]);
    }

    #[test]
    fn options_are_checked() {
        let err = Reinforce::new(serde_json::json!({ "length_normalise": true }))
            .err()
            .unwrap();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let algo = Reinforce::new(serde_json::Value::Null).unwrap();
        assert_eq!(
            algo.config(),
            serde_json::json!({ "length_normalize": true })
        );
    }
}
