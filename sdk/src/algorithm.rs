//! The [`Algorithm`] trait: how rewards become advantages and how a batch of log-probs becomes a loss.

use crate::{Metric, Plugin, Result};
use tch::Tensor;

/// A GRPO-family algorithm. The host generates rollouts, collects rewards, asks the algorithm for advantages, and
/// for every micro-batch asks it for a loss; the host then does backward, gradient clipping and the optimizer step.
///
/// Its name, constructor and config come from the parent trait [`Plugin`]. Methods take `&self` and may be called
/// from any thread (one call at a time per method is not guaranteed), so state that changes (statistics for
/// [`MetricSource`](crate::MetricSource)) needs interior mutability such as a `Mutex`.
///
/// ```
/// use grpo_sdk::tch::{Kind, Tensor};
/// use grpo_sdk::{Algorithm, LossOutput, LossSettings, MetricSource, Plugin, PolicyBatch};
///
/// /// Plain REINFORCE with a group baseline: a minimal, complete algorithm.
/// struct Reinforce;
///
/// impl MetricSource for Reinforce {}
///
/// impl Plugin for Reinforce {
///     const NAME: &'static str = "reinforce";
///     const DESCRIPTION: &'static str = "REINFORCE with the group mean as baseline";
///
///     fn new(_config: serde_json::Value) -> grpo_sdk::Result<Self> {
///         Ok(Reinforce)
///     }
///     fn config(&self) -> serde_json::Value {
///         serde_json::json!({})
///     }
/// }
///
/// impl Algorithm for Reinforce {
///     fn advantages(&self, rewards: &Tensor, groups: &[usize]) -> grpo_sdk::Result<Tensor> {
///         let parts: Vec<Tensor> = rewards
///             .split_with_sizes(groups.iter().map(|&g| g as i64).collect::<Vec<_>>(), 0)
///             .iter()
///             .map(|g| g - g.mean(g.kind()))
///             .collect();
///         Ok(Tensor::cat(&parts, 0))
///     }
///     fn loss(&self, batch: &PolicyBatch) -> grpo_sdk::Result<LossOutput> {
///         let mask = batch.action_mask.to_kind(batch.log_probs.kind());
///         let per_token = -&batch.log_probs * batch.advantages.unsqueeze(-1) * &mask;
///         let loss = (per_token.sum_dim_intlist(-1, false, None) / mask.sum_dim_intlist(-1, false, None))
///             .mean(None);
///         Ok(LossOutput::new(loss))
///     }
/// }
///
/// let algo = Reinforce::new(serde_json::Value::Null)?;
/// let adv = algo.advantages(&Tensor::from_slice(&[1.0f32, 0.0, 0.5, 0.5]), &[2, 2])?;
/// assert_eq!(Vec::<f32>::try_from(&adv)?, vec![0.5, -0.5, 0.0, 0.0]);
///
/// let log_probs = Tensor::full([2, 3], -1.0, (Kind::Float, grpo_sdk::tch::Device::Cpu)).set_requires_grad(true);
/// let batch = PolicyBatch {
///     log_probs: log_probs.shallow_clone(),
///     old_log_probs: log_probs.detach(),
///     ref_log_probs: None,
///     advantages: adv.narrow(0, 0, 2),
///     action_mask: Tensor::from_slice(&[true, true, false, true, true, true]).view([2, 3]),
///     settings: LossSettings::default(),
///     is_weights: None,
///     step_token_divisor: None,
/// };
/// let out = algo.loss(&batch)?;
/// out.loss.backward();
/// assert!(log_probs.grad().defined());
/// # Ok::<(), grpo_sdk::Error>(())
/// ```
pub trait Algorithm: Plugin {
    /// Advantages for one batch of rollouts. `rewards` is `[N]` (float32 or float64) and holds the groups one after
    /// another: `groups` are their sizes, summing to `N` (rollouts of one task form a group). Under data parallelism
    /// it is the global batch, every rank's rollouts in rank order, on every rank. Returns `[N]`, same dtype and
    /// device as `rewards`. A group of one must not produce NaN.
    fn advantages(&self, rewards: &Tensor, groups: &[usize]) -> Result<Tensor>;

    /// The loss of one micro-batch: a scalar tensor whose graph reaches `batch.log_probs`, plus metrics for this
    /// micro-batch. Must not call `backward` itself. The optimizer step's loss is the micro-batches' losses, each
    /// weighted by its share of the step's sequences, averaged over the data-parallel ranks: a mean over the
    /// micro-batch's sequences becomes the step's mean over its sequences however the host cuts them.
    fn loss(&self, batch: &PolicyBatch) -> Result<LossOutput>;

    /// The same loss with its tensor-valued metrics left on the device ([`DeferredLoss`]); the host calls this one
    /// in training. The default wraps [`Algorithm::loss`] (its metrics are on the host already). An algorithm whose
    /// metrics come from tensors implements this instead and defines `loss` as `self.loss_deferred(batch)?.read()`,
    /// so that a GPU run does not wait for a copy per metric and micro-batch.
    fn loss_deferred(&self, batch: &PolicyBatch) -> Result<DeferredLoss> {
        self.loss(batch).map(DeferredLoss::from)
    }
}

/// One micro-batch of experience, as the host hands it to [`Algorithm::loss`]. All tensors share one device.
///
/// Token positions are aligned: position `t` of every `[B, T]` tensor refers to the same generated token. Only
/// positions where `action_mask` is true are the model's own actions (including the final end-of-sequence token);
/// prompt, environment and padding positions are false and may hold any finite value.
pub struct PolicyBatch {
    /// `[B, T]` log-probabilities of the taken tokens under the current policy; requires grad.
    pub log_probs: Tensor,
    /// `[B, T]` log-probabilities under the policy that sampled the rollouts (no grad).
    pub old_log_probs: Tensor,
    /// `[B, T]` log-probabilities under the frozen reference model; `None` when the KL weight is 0.
    pub ref_log_probs: Option<Tensor>,
    /// `[B]` advantage of each sequence (from [`Algorithm::advantages`]).
    pub advantages: Tensor,
    /// `[B, T]` bool: which positions are actions.
    pub action_mask: Tensor,
    /// The run's loss hyper-parameters and generation settings.
    pub settings: LossSettings,
    /// `[B, T]` f32 per-token weights of the policy-gradient term (detached), when the run has some; `None`
    /// otherwise. They are the truncated importance weights `min(p_old / p_sampler, cap)` when the rollouts were
    /// sampled in another precision than the trainer's and the run corrects for it (`--tis-cap`), times 1 or 0 for
    /// whether a token is among the highest-entropy ones the run trains on (`--top-entropy-quantile`). A loss
    /// multiplies each token's policy-gradient term by its weight, not the KL term; [`crate::ops::PolicyTerms`]
    /// does so.
    pub is_weights: Option<Tensor>,
    /// What this micro-batch's sum over action tokens is divided by to make the optimizer step's token-level mean
    /// (ABI 1.4). The host weighs each micro-batch's loss by its share of the step's sequences and averages the
    /// data-parallel ranks, so this is the action tokens of the whole step (every micro-batch it accumulates, on
    /// every rank) times that share, over the number of ranks: with k micro-batches of one size, the tokens over k
    /// times the ranks. Every token of the step then weighs the same, however the tokens fall into micro-batches and
    /// ranks (DAPO's token-level loss, TRL's `loss_type="dapo"`). `None` when the micro-batch is the whole step, or
    /// the host predates ABI 1.4: [`crate::ops::PolicyTerms::step_token_mean`] then divides by the micro-batch's own
    /// count.
    pub step_token_divisor: Option<f64>,
}

/// The hyper-parameters a loss needs, taken from the run's flags so that every algorithm reads the same ones.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct LossSettings {
    /// Lower clip range: the ratio is clipped at `1 - clip_eps_low` (`--clip-eps`).
    pub clip_eps_low: f64,
    /// Upper clip range: the ratio is clipped at `1 + clip_eps_high` (`--clip-eps-high`, default `--clip-eps`).
    pub clip_eps_high: f64,
    /// Weight of the KL penalty to the reference model (`--kl-weight`); 0 means no reference model.
    pub kl_weight: f64,
    /// The most tokens one rollout may generate (`--max-new-tokens`), the constant divisor of DR-GRPO.
    pub generate_max_length: i64,
}

impl Default for LossSettings {
    /// re-grpo's defaults: clip 0.2 both ways, KL weight 0.01; 1024 new tokens.
    fn default() -> Self {
        LossSettings { clip_eps_low: 0.2, clip_eps_high: 0.2, kl_weight: 0.01, generate_max_length: 1024 }
    }
}

/// What [`Algorithm::loss`] returns.
pub struct LossOutput {
    /// The scalar loss; the host calls `backward` on it.
    pub loss: Tensor,
    /// Metrics of this micro-batch under their full names. The host averages them over the micro-batches of an
    /// update (each weighted by its sequences, as the loss) and logs them. By convention `training_step/kl` is the KL to the reference as a masked mean over
    /// action tokens, and `training_step/clip_fraction` the share of action tokens whose ratio was clipped.
    pub metrics: Vec<Metric>,
}

impl LossOutput {
    /// A loss without metrics.
    pub fn new(loss: Tensor) -> Self {
        LossOutput { loss, metrics: Vec::new() }
    }
}

/// What [`Algorithm::loss_deferred`] returns: the loss with its tensor-valued metrics still on the device.
///
/// The host reads every micro-batch's loss and device metrics in one device-to-host copy per optimizer step. A
/// number in [`LossOutput::metrics`] has been copied to the host by the plugin already, which on a GPU is a
/// synchronisation per micro-batch: the host cannot queue the next kernels until the copy is done.
///
/// ```
/// use grpo_sdk::tch::Tensor;
/// use grpo_sdk::{DeferredLoss, Metric};
///
/// let per_token = Tensor::from_slice(&[0.5f32, 1.5]);
/// let out = DeferredLoss::new(per_token.mean(None))
///     .with_device_metric("my_algo/max_token_loss", per_token.max())
///     .with_metric(Metric::text("my_algo/variant", "plain"));
/// assert_eq!(out.number("my_algo/max_token_loss"), Some(1.5));
/// let read = out.read()?; // what `Algorithm::loss` returns: every metric on the host
/// assert_eq!(read.metrics[1], Metric::number("my_algo/max_token_loss", 1.5));
/// # Ok::<(), grpo_sdk::Error>(())
/// ```
pub struct DeferredLoss {
    /// The scalar loss; the host calls `backward` on it.
    pub loss: Tensor,
    /// Metrics already on the host (texts, or numbers known without reading a tensor), as in [`LossOutput`].
    pub metrics: Vec<Metric>,
    /// Numeric metrics still on the loss's device: one-element tensors of any dtype, by full name, averaged over
    /// the micro-batches as the numbers in `metrics` are, and logged like them. The host detaches them.
    pub device_metrics: Vec<(String, Tensor)>,
}

impl DeferredLoss {
    /// A loss without metrics.
    pub fn new(loss: Tensor) -> Self {
        DeferredLoss { loss, metrics: Vec::new(), device_metrics: Vec::new() }
    }

    /// Add a metric already on the host.
    pub fn with_metric(mut self, metric: Metric) -> Self {
        self.metrics.push(metric);
        self
    }

    /// Add a numeric metric that is still a one-element tensor on the device.
    pub fn with_device_metric(mut self, name: impl Into<String>, value: Tensor) -> Self {
        self.device_metrics.push((name.into(), value));
        self
    }

    /// The numeric metric `name` from either list; a device metric is read here (one copy to the host). For tests
    /// and checks: the host's training loop never calls it.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|m| m.name == name).and_then(Metric::as_number).or_else(|| {
            let (_, t) = self.device_metrics.iter().find(|(n, _)| n == name)?;
            scalar_value(name, t).ok()
        })
    }

    /// The [`LossOutput`] with every device metric read into a number after the host metrics: what
    /// [`Algorithm::loss`] returns when an algorithm implements [`Algorithm::loss_deferred`]. An error names a
    /// device metric that is not a single element.
    pub fn read(self) -> Result<LossOutput> {
        let mut metrics = self.metrics;
        for (name, t) in &self.device_metrics {
            metrics.push(Metric::number(name.clone(), scalar_value(name, t)?));
        }
        Ok(LossOutput { loss: self.loss, metrics })
    }
}

impl From<LossOutput> for DeferredLoss {
    fn from(out: LossOutput) -> Self {
        DeferredLoss { loss: out.loss, metrics: out.metrics, device_metrics: Vec::new() }
    }
}

/// An error unless the device metric `name` is a defined one-element tensor.
pub(crate) fn check_device_metric(name: &str, t: &Tensor) -> Result<()> {
    if t.defined() && t.numel() == 1 {
        return Ok(());
    }
    let shape = if t.defined() { format!("{:?}", t.size()) } else { "undefined".to_string() };
    Err(crate::Error::msg(format!("device metric {name} must hold one element, it has shape {shape}")))
}

/// The value of the one-element device metric `name`.
fn scalar_value(name: &str, t: &Tensor) -> Result<f64> {
    check_device_metric(name, t)?;
    Ok(t.detach().to_kind(tch::Kind::Double).reshape([-1]).double_value(&[0]))
}
