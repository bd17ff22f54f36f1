//! The supervised loss: mean token cross-entropy over assistant tokens, and next-token accuracy on them.

use tch::{Device, Kind, Tensor};

use super::render::Rendered;
use crate::model::Model;

/// A micro-batch of rendered conversations as tensors, right-padded (as rollouts are).
pub struct SftBatch {
    /// `[B, T]` token ids (padding 0, masked out).
    pub tokens: Tensor,
    /// `[B, T]` 1 for real tokens.
    pub attention_mask: Tensor,
    /// `[B, T - 1]` bool: position `t` predicts token `t + 1`, which is the assistant's.
    pub target_mask: Tensor,
}

impl SftBatch {
    /// Pad `rows` into tensors on `device`.
    pub fn new(rows: &[&Rendered], device: Device) -> SftBatch {
        let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0).max(2);
        let (mut ids, mut attn, mut target) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            let n = r.tokens.len();
            ids.extend(r.tokens.iter().map(|&x| i64::from(x)).chain(std::iter::repeat_n(0, t - n)));
            attn.extend(std::iter::repeat_n(1i64, n).chain(std::iter::repeat_n(0, t - n)));
            // The first token is never a target: nothing predicts it.
            target.extend(r.assistant.iter().skip(1).copied().chain(std::iter::repeat_n(false, t - n)));
        }
        let b = rows.len() as i64;
        let t = t as i64;
        SftBatch {
            tokens: Tensor::from_slice(&ids).view([b, t]).to_device(device),
            attention_mask: Tensor::from_slice(&attn).view([b, t]).to_device(device),
            target_mask: Tensor::from_slice(&target).view([b, t - 1]).to_device(device),
        }
    }
}

/// The loss of one micro-batch.
pub struct SftLoss {
    /// The summed cross-entropy over the assistant tokens (a scalar with grad); divide by the step's tokens.
    pub sum: Tensor,
    /// Assistant tokens in the micro-batch.
    pub tokens: i64,
    /// Of those, how many the model's most likely next token got right.
    pub correct: i64,
}

/// Cross-entropy of the assistant tokens of `batch` under `model`, summed. Only the positions that predict an
/// assistant token go through the output projection (every other logit would be thrown away).
pub fn sft_loss(model: &Model, batch: &SftBatch) -> SftLoss {
    let t = batch.tokens.size()[1];
    let pos = Model::position_ids(&batch.attention_mask);
    let hidden = model.hidden_states(&batch.tokens, &batch.attention_mask, &pos);
    let hidden_size = hidden.size()[2];
    let mask = &batch.target_mask;
    let picked = hidden.narrow(1, 0, t - 1).masked_select(&mask.unsqueeze(-1)).view([-1, hidden_size]);
    let targets = batch.tokens.narrow(1, 1, t - 1).masked_select(mask);
    let tokens = targets.size()[0];
    if tokens == 0 {
        return SftLoss { sum: (hidden.sum(Kind::Float) * 0.0), tokens: 0, correct: 0 };
    }
    let logits = model.lm_head(&picked).to_kind(Kind::Float);
    let log_probs = logits.log_softmax(-1, Kind::Float);
    let nll = -log_probs.gather(-1, &targets.unsqueeze(-1), false).squeeze_dim(-1);
    let correct = tch::no_grad(|| logits.argmax(-1, false).eq_tensor(&targets).sum(Kind::Int64).int64_value(&[]));
    SftLoss { sum: nll.sum(Kind::Float), tokens, correct }
}
