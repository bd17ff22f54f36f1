//! The supervised loss: mean token cross-entropy over assistant tokens, and next-token accuracy on them.

use tch::{Device, Kind, Tensor};

use super::render::Rendered;
use crate::model::{Model, Padding};
use crate::train::experience::Chunking;

/// `rows` grouped into forward passes as `chunks` says (by count in order, or longest first by tokens).
pub fn micro_batches(rows: &[Rendered], chunks: Chunking) -> Vec<Vec<&Rendered>> {
    let all: Vec<usize> = (0..rows.len()).collect();
    let lengths: Vec<usize> = rows.iter().map(|r| r.tokens.len()).collect();
    chunks.split(&all, &lengths).into_iter().map(|pass| pass.into_iter().map(|i| &rows[i]).collect()).collect()
}

/// A micro-batch of rendered conversations as tensors, right-padded (as rollouts are).
pub struct SftBatch {
    /// `[B, T]` token ids (padding 0, masked out).
    pub tokens: Tensor,
    /// `[B, T]` 1 for real tokens.
    pub attention_mask: Tensor,
    /// `[N]` int64: the positions, counted over the flattened `[B, T - 1]` grid, that predict an assistant token
    /// (position `t` predicts token `t + 1`). Listed on the host, so that selecting them needs no read of a mask
    /// back from the device.
    pub target_positions: Tensor,
    /// `N`, the assistant tokens the loss covers.
    pub targets: i64,
}

impl SftBatch {
    /// Pad `rows` into tensors on `device`.
    pub fn new(rows: &[&Rendered], device: Device) -> SftBatch {
        let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0).max(2);
        let (mut ids, mut attn, mut target) = (Vec::new(), Vec::new(), Vec::new());
        for (row, r) in rows.iter().enumerate() {
            let n = r.tokens.len();
            ids.extend(r.tokens.iter().map(|&x| i64::from(x)).chain(std::iter::repeat_n(0, t - n)));
            attn.extend(std::iter::repeat_n(1i64, n).chain(std::iter::repeat_n(0, t - n)));
            // The first token is never a target: nothing predicts it. Position p predicts token p + 1.
            let predicts = r.assistant.iter().skip(1).enumerate().filter(|(_, &a)| a);
            target.extend(predicts.map(|(p, _)| (row * (t - 1) + p) as i64));
        }
        let b = rows.len() as i64;
        let t = t as i64;
        SftBatch {
            tokens: Tensor::from_slice(&ids).view([b, t]).to_device(device),
            attention_mask: Tensor::from_slice(&attn).view([b, t]).to_device(device),
            targets: target.len() as i64,
            target_positions: Tensor::from_slice(&target).to_device(device),
        }
    }
}

/// The loss of one micro-batch.
pub struct SftLoss {
    /// The summed cross-entropy over the assistant tokens (a scalar with grad); divide by the step's tokens.
    pub sum: Tensor,
    /// Assistant tokens in the micro-batch.
    pub tokens: i64,
    /// Of those, how many the model's most likely next token got right: an int64 scalar on the device, read with
    /// the step's other values.
    pub correct: Tensor,
    /// The entropy of the model's next-token distribution summed over those positions: an f64 scalar on the device.
    pub entropy: Tensor,
    /// A mixture's load-balancing loss over the micro-batch's real tokens (with grad), when the model weighs one
    /// ([`Model::router_aux_loss_coef`]).
    pub aux: Option<Tensor>,
}

/// Cross-entropy of the assistant tokens of `batch` under `model`, summed. Only the positions that predict an
/// assistant token go through the output projection (every other logit would be thrown away), and they go through
/// it in chunks that keep no full-vocabulary logits for the backward pass ([`Model::head_log_probs`]). A row longer
/// than the model's learned positions is an error ([`Model::check_length`]).
pub fn sft_loss(model: &Model, batch: &SftBatch) -> anyhow::Result<SftLoss> {
    let t = batch.tokens.size()[1];
    model.check_length(t, "a row", "cut rows to fit with --max-length")?;
    let pos = Model::position_ids(&batch.attention_mask);
    let mut routers = model.router_record();
    let hidden =
        model.hidden_states_padded(&batch.tokens, &batch.attention_mask, &pos, Padding::Right, routers.as_mut());
    // As transformers' `aux_loss`, over every real token of the rows, the prompt's included.
    let aux = routers.and_then(|r| model.load_balancing_loss(&r, &batch.attention_mask));
    let hidden_size = hidden.size()[2];
    let tokens = batch.targets;
    if tokens == 0 {
        let correct = Tensor::zeros([], (Kind::Int64, hidden.device()));
        let entropy = Tensor::zeros([], (Kind::Double, hidden.device()));
        return Ok(SftLoss { sum: (hidden.sum(Kind::Float) * 0.0), tokens: 0, correct, entropy, aux });
    }
    let at = &batch.target_positions;
    let picked = hidden.narrow(1, 0, t - 1).reshape([-1, hidden_size]).index_select(0, at);
    let targets = batch.tokens.narrow(1, 1, t - 1).reshape([-1]).index_select(0, at);
    let head = model.head_log_probs(&picked, &targets);
    Ok(SftLoss {
        sum: -head.log_probs.sum(Kind::Float),
        tokens,
        correct: head.hits.sum(Kind::Int64),
        entropy: head.entropy.sum(Kind::Double),
        aux,
    })
}
