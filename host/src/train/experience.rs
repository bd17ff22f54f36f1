//! Experience: a batch of finished rollouts as padded tensors, aligned for next-token log-probs.
//!
//! Sequences are right-padded and the attention mask comes from each sequence's length, never from a pad id, so an
//! end-of-sequence id inside a conversation stays visible. Position `j` of every `[N, T-1]` tensor is the prediction
//! of token `j + 1`; it is an action when token `j + 1` was sampled by the model, which includes the final
//! end-of-sequence id (the model must learn to stop).

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::config::{IsCorrection, ObjectiveSettings};
use super::policy::Policy;
use super::scored::Scored;
use crate::rollout::Rollout;

/// Stage: scored rollouts -> experience. Pads the batch into tensors on the policy's device, recomputes the old
/// log-probs when the sampler's cannot be reused, and adds the reference's (when the run has one). `chunks` groups
/// the sequences into forward passes (a number: that many rows each).
pub fn prepare(
    scored: &Scored,
    policy: &Policy,
    loss: &ObjectiveSettings,
    chunks: impl Into<Chunking>,
) -> Result<Experience> {
    let mut exp = prepare_rollouts(&scored.rollouts, policy, loss, chunks.into())?;
    exp.set_advantages(&scored.advantages);
    Ok(exp)
}

/// [`prepare`] before the advantages are known (they are 0 until [`Experience::set_advantages`]): a KL penalty in
/// the reward needs the log-probs first.
pub fn prepare_rollouts(
    rollouts: &[Rollout],
    policy: &Policy,
    loss: &ObjectiveSettings,
    chunks: Chunking,
) -> Result<Experience> {
    let zeros = Tensor::zeros([rollouts.len() as i64], (Kind::Float, Device::Cpu));
    let mut exp = Experience::build(rollouts, &zeros, policy.device());
    if loss.mask_truncated_completions {
        exp.leave_out_of_loss(&rollouts.iter().map(Rollout::was_cut).collect::<Vec<_>>());
    }
    // A KL penalty in the reward compares the old log-probs with the reference's: both from the same forward pass,
    // so that at the start (the policy still the reference) the penalty is exactly 0, not the rounding difference
    // between the sampler's incremental decode and a full forward, which group normalisation would blow up into
    // advantages of noise wherever a group's rewards are equal.
    let recompute = match loss.recompute_old_logprobs {
        super::config::RecomputeOld::Auto if loss.reward_kl.is_some() => true,
        choice => policy.recompute_old(choice),
    };
    if recompute {
        let recomputed = policy.log_probs(&exp, chunks)?;
        let sampled = std::mem::replace(&mut exp.old_log_probs, recomputed);
        if loss.tis_cap > 0.0 {
            let (old, mask) = (&exp.old_log_probs, &exp.action_mask);
            exp.is_weights = Some(importance_weights(old, &sampled, mask, loss.tis_cap, loss.tis_mode));
        }
        exp.sample_log_probs = Some(sampled);
    }
    exp.ref_log_probs = policy.reference_log_probs(&exp, chunks, loss.needs_reference())?;
    Ok(exp)
}

/// How a batch's sequences are grouped into forward passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// At most this many sequences per pass, in the order given (`--train-batch-size`).
    Rows(usize),
    /// Longest first, as many sequences per pass as fit in this many padded tokens, the pass's sequences times its
    /// longest (`--micro-batch-tokens`, verl's dynamic batch size). Sorting by length first keeps each pass's
    /// padding small; a sequence longer than the budget goes alone.
    Tokens(usize),
}

impl From<usize> for Chunking {
    fn from(rows: usize) -> Chunking {
        Chunking::Rows(rows)
    }
}

impl Chunking {
    /// `rows` cut into passes; `lengths` holds every sequence's unpadded length, by row. Every row lands in exactly
    /// one pass.
    pub fn split(self, rows: &[usize], lengths: &[usize]) -> Vec<Vec<usize>> {
        match self {
            Chunking::Rows(size) => rows.chunks(size.max(1)).map(<[usize]>::to_vec).collect(),
            Chunking::Tokens(budget) => {
                let mut sorted = rows.to_vec();
                // A stable sort: sequences of one length keep the order given (the seeded shuffle).
                sorted.sort_by_key(|&row| std::cmp::Reverse(lengths[row]));
                let mut passes: Vec<Vec<usize>> = Vec::new();
                for row in sorted {
                    match passes.last_mut() {
                        // The pass's first row is its longest, so its padded width.
                        Some(pass) if (pass.len() + 1) * lengths[pass[0]] <= budget => pass.push(row),
                        _ => passes.push(vec![row]),
                    }
                }
                passes
            }
        }
    }
}

/// The padded tensors of one batch, on the training device.
pub struct Experience {
    /// `[N, T]` token ids (int64), right-padded with 0.
    pub tokens: Tensor,
    /// `[N, T]` 1 for real tokens, 0 for padding (int64).
    pub attention_mask: Tensor,
    /// `[N, T-1]` bool: position predicts an action token.
    pub action_mask: Tensor,
    /// `[N, T-1]` f32: log-probs of the taken tokens under the sampling policy.
    pub old_log_probs: Tensor,
    /// `[N, T-1]` f32 under the reference model, when there is one.
    pub ref_log_probs: Option<Tensor>,
    /// `[N, T-1]` f32 the sampler's own log-probs, kept when `old_log_probs` were recomputed in the training
    /// precision (their ratio is the sampler/trainer mismatch).
    pub sample_log_probs: Option<Tensor>,
    /// `[N, T-1]` f32 truncated importance weights for the loss (`--tis-cap`), 1 outside the action mask.
    pub is_weights: Option<Tensor>,
    /// `[N]` f32 advantages.
    pub advantages: Tensor,
    /// `[N]` bool: the sequences the loss covers, when some are left out (`--mask-truncated-completions`); the
    /// action mask of a micro-batch is cleared for the others, so they add nothing to the loss or its metrics.
    pub in_loss: Option<Tensor>,
    /// Unpadded length of each sequence.
    pub lengths: Vec<usize>,
    /// Action tokens of each sequence that the loss covers (0 for one left out of it): what a token-level loss
    /// divides by, counted on the host.
    pub action_tokens: Vec<usize>,
}

impl Experience {
    /// Pad `rollouts` into tensors on `device`; `advantages` is `[N]` in rollout order.
    pub fn build(rollouts: &[Rollout], advantages: &Tensor, device: Device) -> Experience {
        let n = rollouts.len();
        let t = rollouts.iter().map(|r| r.tokens.len()).max().unwrap_or(1).max(2);
        let mut action = vec![false; n * (t - 1)];
        let mut old = vec![0f32; n * (t - 1)];
        for (i, r) in rollouts.iter().enumerate() {
            for j in 1..r.tokens.len() {
                action[i * (t - 1) + j - 1] = r.action[j];
                old[i * (t - 1) + j - 1] = r.sample_logprobs[j];
            }
        }
        let lengths: Vec<i64> = rollouts.iter().map(|r| r.tokens.len() as i64).collect();
        let tokens = crate::model::right_padded(rollouts.iter().map(|r| &r.tokens[..]), t, device);
        let (n, t) = (n as i64, t as i64);
        // 1 where a column holds one of the row's tokens.
        let columns = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0);
        let attention_mask = columns.lt_tensor(&Tensor::from_slice(&lengths).to_device(device).unsqueeze(1));
        Experience {
            tokens,
            attention_mask: attention_mask.to_kind(Kind::Int64),
            action_mask: Tensor::from_slice(&action).view([n, t - 1]).to_device(device),
            old_log_probs: Tensor::from_slice(&old).view([n, t - 1]).to_device(device),
            ref_log_probs: None,
            sample_log_probs: None,
            is_weights: None,
            advantages: advantages.to_kind(Kind::Float).to_device(device),
            in_loss: None,
            lengths: rollouts.iter().map(|r| r.tokens.len()).collect(),
            // Position 0 predicts nothing, as in `action` above.
            action_tokens: rollouts.iter().map(|r| r.action.iter().skip(1).filter(|&&a| a).count()).collect(),
        }
    }

    /// Set the `[N]` advantages, in rollout order.
    pub fn set_advantages(&mut self, advantages: &Tensor) {
        self.advantages = advantages.to_kind(Kind::Float).to_device(self.tokens.device());
    }

    /// Leave the sequences where `left_out` is true out of the loss ([`Experience::in_loss`]); nothing changes when
    /// none is.
    pub fn leave_out_of_loss(&mut self, left_out: &[bool]) {
        if left_out.iter().any(|&l| l) {
            let kept: Vec<bool> = left_out.iter().map(|&l| !l).collect();
            for (count, _) in self.action_tokens.iter_mut().zip(left_out).filter(|(_, &l)| l) {
                *count = 0;
            }
            self.in_loss = Some(Tensor::from_slice(&kept).to_device(self.tokens.device()));
        }
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The rows `rows`, cut to their own longest sequence (a micro-batch pays only for its own length).
    pub fn select(&self, rows: &[usize]) -> MicroBatch {
        self.select_at(rows, &self.row_index(rows))
    }

    /// `rows` as an index tensor on the experience's device. A copy from host memory, which on CUDA waits for the
    /// queued kernels: build it once per pass, not per micro-batch.
    pub fn row_index(&self, rows: &[usize]) -> Tensor {
        Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(self.tokens.device())
    }

    /// [`Experience::select`] with `index`, the rows already on the device (a slice of [`Experience::row_index`]).
    pub fn select_at(&self, rows: &[usize], index: &Tensor) -> MicroBatch {
        let longest = rows.iter().map(|&r| self.lengths[r]).max().unwrap_or(2).max(2) as i64;
        let pick = |x: &Tensor, width: i64| x.index_select(0, index).narrow(1, 0, width);
        let action_mask = match &self.in_loss {
            Some(kept) => pick(&self.action_mask, longest - 1).logical_and(&kept.index_select(0, index).unsqueeze(1)),
            None => pick(&self.action_mask, longest - 1),
        };
        MicroBatch {
            tokens: pick(&self.tokens, longest),
            attention_mask: pick(&self.attention_mask, longest),
            action_mask,
            old_log_probs: pick(&self.old_log_probs, longest - 1),
            ref_log_probs: self.ref_log_probs.as_ref().map(|r| pick(r, longest - 1)),
            is_weights: self.is_weights.as_ref().map(|w| pick(w, longest - 1)),
            advantages: self.advantages.index_select(0, index),
        }
    }

    /// The sum, the count and the largest sampler-to-trainer ratio `p_old / p_sampler` over action tokens, when the old
    /// log-probs were recomputed (`None` otherwise, or without action tokens).
    pub fn is_ratio_totals(&self) -> Option<(f64, f64, f64)> {
        let sampled = self.sample_log_probs.as_ref()?;
        let on = self.action_mask.to_kind(Kind::Bool);
        let count = on.sum(Kind::Float).double_value(&[]);
        if count == 0.0 {
            return None;
        }
        let ratio = (&self.old_log_probs - sampled).where_self(&on, &self.old_log_probs.zeros_like()).exp();
        let sum = (&ratio * on.to_kind(Kind::Float)).sum(Kind::Double).double_value(&[]);
        // Over actions only: masked positions hold exp(0) = 1, which would hide a maximum below 1.
        let max = ratio.masked_select(&on).max().double_value(&[]);
        Some((sum, count, max))
    }

    /// The action tokens whose importance weight is 0 (a `--tis-mode` mask over the cap, or a sequence ratio that
    /// underflowed); `None` without weights. Weights exist only where the old log-probs were recomputed, so the
    /// action tokens they are a share of are [`Experience::is_ratio_totals`]'s count.
    pub fn zero_weight_tokens(&self) -> Option<f64> {
        let weights = self.is_weights.as_ref()?;
        Some(weights.eq(0.0).logical_and(&self.action_mask.to_kind(Kind::Bool)).sum(Kind::Double).double_value(&[]))
    }
}

/// Importance weights for rollouts from a sampler that is not exactly the trainer's policy (the correction TRL and
/// verl apply to rollouts from another engine or precision). The ratio is the trainer's probability over the
/// sampler's, `exp(old - sampled)`, each action token's own or, per sequence, the product over its action tokens;
/// over `cap` it is cut to `cap` (truncated importance sampling) or set to 0 (masked), as `mode` says, so that a
/// token or sequence the sampler found unlikely cannot dominate the update. 1 outside `action_mask`.
pub fn importance_weights(
    old: &Tensor,
    sampled: &Tensor,
    action_mask: &Tensor,
    cap: f64,
    mode: IsCorrection,
) -> Tensor {
    let on = action_mask.to_kind(Kind::Bool);
    let zero = old.zeros_like();
    let log_ratio = (old - sampled).where_self(&on, &zero);
    let log_ratio = match mode.per_sequence() {
        true => log_ratio.sum_dim_intlist(-1, true, None).expand_as(old),
        false => log_ratio,
    };
    let ratio = log_ratio.exp();
    let bounded = match mode.masks() {
        true => ratio.where_self(&ratio.le(cap), &zero),
        false => ratio.clamp_max(cap),
    };
    bounded.where_self(&on, &zero.ones_like()).to_kind(Kind::Float)
}

/// A slice of an [`Experience`] for one forward and backward pass.
pub struct MicroBatch {
    pub tokens: Tensor,
    pub attention_mask: Tensor,
    pub action_mask: Tensor,
    pub old_log_probs: Tensor,
    pub ref_log_probs: Option<Tensor>,
    pub is_weights: Option<Tensor>,
    pub advantages: Tensor,
}

/// Per-sequence masked mean of the k3 KL estimator between `log_probs` and `ref_log_probs` over action positions:
/// `exp(ref - lp) - (ref - lp) - 1`. Returns `[N]`; a sequence without actions gets 0. Positions outside the mask
/// are replaced by 0 before `exp` (not multiplied by the mask, since `inf * 0` is NaN), as `grpo_sdk::ops` does.
pub fn sequence_kl(log_probs: &Tensor, ref_log_probs: &Tensor, action_mask: &Tensor) -> Tensor {
    let on = action_mask.to_kind(Kind::Bool);
    let diff = (ref_log_probs.to_kind(Kind::Float) - log_probs.to_kind(Kind::Float))
        .where_self(&on, &Tensor::zeros([], (Kind::Float, log_probs.device())));
    let k3 = diff.exp() - &diff - 1.0;
    let count = on.sum_dim_intlist(-1, false, Kind::Float);
    k3.sum_dim_intlist(-1, false, Kind::Float) / count.clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(tokens: Vec<u32>, action: Vec<bool>) -> Rollout {
        let n = tokens.len();
        Rollout {
            tokens,
            prompt_len: 2,
            action,
            sample_logprobs: (0..n).map(|i| -(i as f32)).collect(),
            ..Rollout::empty()
        }
    }

    #[test]
    fn masks_follow_each_rollout_and_shift_by_one() {
        let a = rollout(vec![5, 6, 7, 2], vec![false, false, true, true]);
        let b = rollout(vec![5, 6, 9, 2, 3, 4], vec![false, false, true, true, false, true]);
        let exp = Experience::build(&[a, b], &Tensor::from_slice(&[1.0f32, -1.0]), Device::Cpu);
        assert_eq!(exp.tokens.size(), vec![2, 6]);
        let attn = Vec::<i64>::try_from(exp.attention_mask.view([-1])).unwrap();
        assert_eq!(attn, vec![1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1]);
        let act = Vec::<bool>::try_from(exp.action_mask.view([-1])).unwrap();
        assert_eq!(act, vec![false, true, true, false, false, false, true, true, false, true]);
        let old = Vec::<f32>::try_from(exp.old_log_probs.view([-1])).unwrap();
        assert_eq!(&old[..3], &[-1.0, -2.0, -3.0]);
        let mb = exp.select(&[0]);
        assert_eq!(mb.tokens.size(), vec![1, 4]);
        assert_eq!(mb.action_mask.size(), vec![1, 3]);
    }

    /// The four `--tis-mode`s on two sequences, by hand: log-ratios (0.5, -0.2 | 1.0, 0.3, masked 9), cap 1.5.
    #[test]
    fn importance_weights_truncate_or_mask_each_token_or_sequence() {
        let old = Tensor::from_slice(&[0.5f32, -0.2, 0.0, 1.0, 0.3, 9.0]).view([2, 3]);
        let sampled = old.zeros_like();
        let mask = Tensor::from_slice(&[true, true, false, true, true, false]).view([2, 3]);
        let e = f64::exp;
        let cases = [
            (IsCorrection::TokenTruncate, [1.5, e(-0.2), 1.0, 1.5, e(0.3), 1.0]),
            (IsCorrection::TokenMask, [0.0, e(-0.2), 1.0, 0.0, e(0.3), 1.0]),
            // Per sequence: e^0.3 (under the cap) and e^1.3 (over it), shared by the sequence's action tokens.
            (IsCorrection::SequenceTruncate, [e(0.3), e(0.3), 1.0, 1.5, 1.5, 1.0]),
            (IsCorrection::SequenceMask, [e(0.3), e(0.3), 1.0, 0.0, 0.0, 1.0]),
        ];
        for (mode, want) in cases {
            let got = Vec::<f32>::try_from(importance_weights(&old, &sampled, &mask, 1.5, mode).view([-1])).unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((f64::from(*g) - w).abs() < 1e-6, "{mode}: {got:?} vs {want:?}");
            }
        }
        // A sequence whose ratio overflows is masked, not NaN.
        let far = Tensor::from_slice(&[90.0f32, 90.0]).view([1, 2]);
        let on = Tensor::from_slice(&[true, true]).view([1, 2]);
        let w = importance_weights(&far, &far.zeros_like(), &on, 2.0, IsCorrection::SequenceMask);
        assert_eq!(Vec::<f32>::try_from(w.view([-1])).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn kl_is_masked_mean_of_k3() {
        let lp = Tensor::from_slice(&[-1.0f32, -2.0, -3.0]).view([1, 3]);
        let rf = Tensor::from_slice(&[-1.5f32, -2.0, 9.0]).view([1, 3]);
        let mask = Tensor::from_slice(&[true, true, false]).view([1, 3]);
        let kl = sequence_kl(&lp, &rf, &mask).double_value(&[0]);
        let d: f64 = -0.5;
        let expected = (d.exp() - d - 1.0) / 2.0; // the second action token has zero difference
        assert!((kl - expected).abs() < 1e-6, "{kl} vs {expected}");
    }

    #[test]
    fn kl_ignores_infinite_log_probs_outside_the_mask() {
        let lp = Tensor::from_slice(&[-1.0f32, f32::NEG_INFINITY]).view([1, 2]);
        let rf = Tensor::from_slice(&[-1.0f32, 0.0]).view([1, 2]);
        let mask = Tensor::from_slice(&[true, false]).view([1, 2]);
        assert_eq!(sequence_kl(&lp, &rf, &mask).double_value(&[0]), 0.0);
    }
}
