//! The held-out loss of supervised fine-tuning (`grpo-host sft --eval-data`), TRL's `eval_loss`: the mean token
//! cross-entropy over an evaluation set's trained tokens, and how often the most likely next token is right, taken
//! without gradients and with the model in evaluation mode (no LoRA dropout).

use anyhow::Result;
use tch::{Kind, Tensor};

use super::loss::{micro_batches, sft_loss, SftBatch};
use super::render::Rendered;
use crate::distributed::{ReduceOp, World};
use crate::logging::Metrics;
use crate::model::Model;
use crate::train::experience::Chunking;
use crate::train::update::read_scalars;

/// The held-out numbers after a step.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldOut {
    /// Mean token cross-entropy over every trained token of the evaluation set.
    pub loss: f64,
    /// Share of those tokens the model's most likely next token gets right.
    pub accuracy: f64,
    /// Mean entropy of the model's next-token distribution over those tokens.
    pub entropy: f64,
    /// How many tokens that is.
    pub tokens: i64,
}

impl HeldOut {
    /// `sft/eval_loss`, `sft/eval_accuracy`, `sft/eval_entropy` and `sft/eval_tokens`.
    pub fn metrics(&self) -> Metrics {
        let values =
            [("sft/eval_loss", self.loss), ("sft/eval_accuracy", self.accuracy), ("sft/eval_entropy", self.entropy)];
        let mut m: Metrics = values.into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
        m.insert("sft/eval_tokens".into(), (self.tokens as f64).into());
        m
    }
}

/// The rows of `all` that rank `rank` of `size` scores: every `size`-th, so the shares differ by one row at most.
pub fn share(all: &[Rendered], rank: usize, size: usize) -> Vec<Rendered> {
    all.iter().skip(rank).step_by(size.max(1)).cloned().collect()
}

/// Score `rows` (this rank's share) in the forward passes `micro_batch` groups them into; the ranks' sums are added,
/// so every rank returns the whole set's numbers, the same for any number of ranks up to the order of floating-point
/// sums.
pub fn held_out(model: &Model, rows: &[Rendered], micro_batch: Chunking, world: &World) -> Result<HeldOut> {
    let _no_grad = tch::no_grad_guard();
    let device = model.device();
    let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
    let mut correct = Tensor::zeros([], (Kind::Int64, device));
    let mut entropy = Tensor::zeros([], (Kind::Double, device));
    let mut tokens = 0i64;
    for refs in micro_batches(rows, micro_batch) {
        let out = sft_loss(model, &SftBatch::new(&refs, device))?;
        loss_sum += out.sum.to_kind(Kind::Double);
        correct += out.correct;
        entropy += out.entropy;
        tokens += out.tokens;
    }
    // One read from the device for the whole evaluation.
    let read = read_scalars(&[loss_sum, correct, entropy])?;
    let local = [read[0], read[1], read[2], tokens as f64];
    let sums = world.reduce_f64("summing the held-out loss", &local, ReduceOp::Sum)?;
    let total = sums[3].max(1.0);
    Ok(HeldOut { loss: sums[0] / total, accuracy: sums[1] / total, entropy: sums[2] / total, tokens: sums[3] as i64 })
}
