//! One supervised optimizer step with the host's optimizer and precision: micro-batches, f32 gradient
//! accumulation, fp16 loss scaling, gradient clipping and AdamW, as the RL updates (`crate::train::update`) take them.

use anyhow::Result;
use grpo_sdk::MetricValue;
use tch::{Kind, Tensor};

use super::loss::micro_batches;
use super::loss::{sft_loss, SftBatch};
use super::render::Rendered;
use crate::distributed::{ReduceOp, World};
use crate::model::Model;
use crate::train::experience::Chunking;
use crate::train::optimizer::AdamW;
use crate::train::precision::LossScaler;
use crate::train::update::{read_scalars, seed_forward_draws};

/// What one step works with.
pub struct SftStep<'a> {
    /// The trained model.
    pub model: &'a Model,
    /// Its optimizer.
    pub optimizer: &'a mut AdamW,
    /// fp16's dynamic loss scale (disabled in other precisions).
    pub scaler: &'a mut LossScaler,
    /// How the step's conversations are grouped into forward/backward passes.
    pub micro_batch: Chunking,
    /// Global gradient-norm clip (0 disables).
    pub max_norm: f64,
    /// Data-parallel ranks, each with its own rows: the step's loss is the mean over every rank's assistant tokens.
    pub world: &'a World,
    /// The run seed, from which each micro-batch's random draws (LoRA dropout) are seeded.
    pub seed: u64,
}

/// One supervised step as it happened.
#[derive(Clone, Debug, PartialEq)]
pub struct SftRecord {
    /// Mean token cross-entropy over the step's assistant tokens.
    pub loss: f64,
    /// Assistant tokens the loss covered.
    pub tokens: i64,
    /// Share of them the model's most likely next token got right (before the update).
    pub accuracy: f64,
    /// The mean entropy of the model's next-token distribution over them (before the update).
    pub entropy: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate applied.
    pub learning_rate: f64,
    /// A mixture's load-balancing loss, the mean over the step's micro-batches (before the update), when the model
    /// weighs one; its weighted share is in `loss`'s gradient, not in `loss`.
    pub aux_loss: Option<f64>,
}

impl SftRecord {
    /// The `sft/*` metrics of this step.
    pub fn metrics(&self) -> crate::logging::Metrics {
        [
            ("sft/loss", self.loss),
            ("sft/tokens", self.tokens as f64),
            ("sft/accuracy", self.accuracy),
            ("sft/entropy", self.entropy),
            ("sft/grad_norm", self.grad_norm),
            ("sft/learning_rate", self.learning_rate),
        ]
        .into_iter()
        .chain(self.aux_loss.map(|v| ("sft/aux_loss", v)))
        .map(|(k, v)| (k.to_string(), MetricValue::Number(v)))
        .collect()
    }
}

impl SftStep<'_> {
    /// Global optimizer step `step` over `rows` at learning rate `lr`: the gradient of the mean cross-entropy over
    /// all their assistant tokens (micro-batches weighted by their token counts, so the split does not change the
    /// result). `None` when the loss or the gradient was not finite (no update; fp16 lowers its scale).
    pub fn run(&mut self, rows: &[Rendered], lr: f64, step: u64) -> Result<Option<SftRecord>> {
        let local: usize = rows.iter().map(Rendered::assistant_tokens).sum();
        let total = self.world.reduce_f64("counting the step's tokens", &[local as f64], ReduceOp::Sum)?[0];
        if total == 0.0 {
            anyhow::bail!("internal: a supervised step without assistant tokens");
        }
        self.model.set_training(true);
        // Each rank's share of the global mean, times the world size because the gradients are then averaged.
        let result = self.accumulate(rows, total / self.world.size as f64, step);
        self.model.set_training(false);
        let (loss_sum, correct, entropy, aux) = result?;
        self.optimizer.average_grads(self.world)?;
        // The step's one read from the device: the summed loss, the correct count, the summed entropy, the mean
        // load-balancing loss and the gradient norm.
        let norm = self.optimizer.grad_norm();
        let mut parts = vec![loss_sum, correct, entropy, aux];
        parts.extend(norm.iter().map(Tensor::shallow_clone));
        let read = read_scalars(&parts)?;
        let grad_norm = if norm.is_some() { read[4] } else { 0.0 };
        let sums = self.world.reduce_f64("summing the step's loss", &read[..4], ReduceOp::Sum)?;
        let (loss, correct, entropy) = (sums[0] / total, sums[1], sums[2] / total);
        let aux_loss = (self.model.router_aux_loss_coef() > 0.0).then(|| sums[3] / self.world.size as f64);
        if !loss.is_finite() {
            self.optimizer.zero_grad();
            return Ok(None);
        }
        if !self.scaler.update(!grad_norm.is_finite()) {
            self.optimizer.zero_grad();
            return Ok(None);
        }
        self.optimizer.clip_to(grad_norm, self.max_norm);
        self.optimizer.step(lr)?;
        let tokens = total as i64;
        let accuracy = correct / total;
        Ok(Some(SftRecord { loss, tokens, accuracy, entropy, grad_norm, learning_rate: lr, aux_loss }))
    }

    /// Forward and backward over the micro-batches, each loss divided by `total`; returns the summed loss (f64),
    /// the correct predictions (int64), the summed entropy (f64) and the load-balancing loss averaged over the
    /// micro-batches by their rows (f64, 0 without one), one-element tensors still on the device.
    fn accumulate(&mut self, rows: &[Rendered], total: f64, step: u64) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        self.optimizer.zero_grad();
        let device = self.model.device();
        let mut loss_sum = Tensor::zeros([1], (Kind::Double, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut entropy = Tensor::zeros([], (Kind::Double, device));
        let mut aux_mean = Tensor::zeros([], (Kind::Double, device));
        let coef = self.model.router_aux_loss_coef();
        for (micro, refs) in micro_batches(rows, self.micro_batch).into_iter().enumerate() {
            seed_forward_draws(self.seed, step, micro, self.world.rank);
            let out = sft_loss(self.model, &SftBatch::new(&refs, device))?;
            loss_sum += out.sum.detach().to_kind(Kind::Double);
            correct += out.correct;
            entropy += out.entropy;
            let loss = match out.aux {
                // The rank's mean over its rows, micro-batches weighed by theirs (TRL adds the coefficient times
                // each micro-batch's aux_loss over the accumulation steps); the ranks' gradients are then averaged.
                Some(aux) => {
                    let share = refs.len() as f64 / rows.len() as f64;
                    aux_mean += aux.detach().to_kind(Kind::Double) * share;
                    out.sum / total + aux * (coef * share)
                }
                None => out.sum / total,
            };
            self.scaler.scale_loss(&loss).backward();
            self.optimizer.accumulate_grads(self.scaler.unscale_factor());
        }
        Ok((loss_sum, correct, entropy, aux_mean))
    }
}
