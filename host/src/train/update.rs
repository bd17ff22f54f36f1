//! Stage: experience -> updates. `epochs_per_step` shuffled passes over a batch's experience in micro-batches of
//! `train_batch_size` sequences; every `gradient_accumulation_steps` micro-batches make one optimizer step, whose
//! loss is the algorithm plugin's. With `micro_batch_tokens` a step's sequences are regrouped by length into
//! micro-batches of a token budget; each micro-batch weighs by its share of the step's sequences either way.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use grpo_sdk::rng::{mix, SplitMix64};
use grpo_sdk::{DeferredLoss, MetricValue, PolicyBatch};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::config::{BatchSettings, ReferenceSync};
use super::experience::{Chunking, Experience};
use super::optimizer::{AdamW, Schedule};
use super::policy::Policy;
use super::precision::LossScaler;
use crate::checkpoint::TrainerState;
use crate::distributed::{ReduceOp, World};
use crate::model::{EntropyGrad, Padding};
use crate::plugins::AlgorithmPlugin;

/// What the updates of one batch work with.
pub struct Updater<'a> {
    /// The trained model.
    pub policy: &'a Policy,
    /// Its optimizer.
    pub optimizer: &'a mut AdamW,
    /// fp16's dynamic loss scale (disabled in other precisions).
    pub scaler: &'a mut LossScaler,
    /// The loss.
    pub algo: &'a AlgorithmPlugin,
    /// The learning rate by step.
    pub schedule: &'a Schedule,
    /// Micro-batch sizes and passes.
    pub batch: &'a BatchSettings,
    /// What the algorithm receives with every micro-batch.
    pub loss: grpo_sdk::LossSettings,
    /// Global gradient-norm clip (0 disables).
    pub max_norm: f64,
    /// The share of each micro-batch's action tokens, the highest-entropy ones, that the policy-gradient term keeps
    /// (`--top-entropy-quantile`); 1 keeps all.
    pub top_entropy_quantile: f64,
    /// The entropy bonus's weight (`--entropy-coeff`): each step's loss minus this times the policy's mean entropy
    /// over the step's action tokens; 0 adds nothing (and keeps the entropy out of autograd).
    pub entropy_coeff: f64,
    /// `--sync-ref-model`: when and how far the KL reference moves toward the policy after an update.
    pub reference_sync: Option<ReferenceSync>,
    /// The supervised warm-up's steps, which come before the updates on the global-step axis.
    pub warmup_steps: u64,
    /// The run seed (the micro-batch shuffles derive from it and the batch number).
    pub seed: u64,
    /// The data-parallel ranks: each step's gradients, loss and metrics are averaged over them.
    pub world: &'a World,
}

/// One optimizer step as it happened.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// Its optimizer-step number (0-based).
    pub step: u64,
    /// The loss averaged over its micro-batches.
    pub loss: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate applied (or that would have been, for a skipped step).
    pub learning_rate: f64,
    /// The update was not applied (a non-finite loss or gradient, or an fp16 overflow): the weights and moments are
    /// untouched, but the step keeps its index, so the step axis and the checkpoints' names do not depend on how
    /// many updates were skipped. Its loss is NaN when a micro-batch's was not finite.
    pub skipped: bool,
    /// The loss scale the step was computed with, when loss scaling is on.
    pub loss_scale: Option<f64>,
    /// Steps skipped so far because the scaled gradients overflowed (fp16).
    pub skipped_steps: u64,
    /// The algorithm's numeric metrics, averaged over the micro-batches that reported them, and the host's
    /// `training_step/entropy`.
    pub algorithm: BTreeMap<String, f64>,
    /// The algorithm's text metrics (the last micro-batch's).
    pub algorithm_text: BTreeMap<String, String>,
    /// Seconds spent averaging the gradients over the ranks (0 in one process).
    pub allreduce_secs: f64,
}

/// The updates of one batch.
#[derive(Debug, Default)]
pub struct Updates {
    /// The optimizer steps, in order (skipped ones included).
    pub steps: Vec<StepRecord>,
}

impl Updater<'_> {
    /// Run the passes over `exp`. `state` counts steps and skipped updates; `on_step` sees each step as it is taken
    /// (for live logging). Always runs to the end of the batch: a checkpoint is only ever taken between batches.
    pub fn run(
        &mut self,
        exp: &Experience,
        state: &mut TrainerState,
        on_step: &mut dyn FnMut(&StepRecord, &TrainerState),
    ) -> Result<Updates> {
        let mut out = Updates::default();
        self.policy.model().set_training(true);
        let result = (|| {
            let passes: Vec<Vec<Vec<Vec<usize>>>> =
                (0..self.batch.epochs_per_step).map(|pass| self.pass_steps(exp, state.batch, pass)).collect();
            let mut step_tokens = self.step_action_tokens(exp, &passes)?.into_iter();
            for steps in &passes {
                // The pass's row order goes to the device in one copy; each micro-batch takes a slice of it.
                let index = exp.row_index(&steps.concat().concat());
                let mut offset = 0;
                for window in steps {
                    let mut micro = Vec::with_capacity(window.len());
                    for rows in window {
                        micro.push((rows.as_slice(), index.narrow(0, offset, rows.len() as i64)));
                        offset += rows.len() as i64;
                    }
                    let tokens = step_tokens.next().unwrap_or(1.0);
                    let record = self.step(exp, &micro, tokens, state)?;
                    self.sync_reference(state.global_step)?;
                    on_step(&record, state);
                    out.steps.push(record);
                }
            }
            Ok(())
        })();
        self.policy.model().set_training(false);
        result.map(|()| out)
    }

    /// Move the KL reference toward the policy when `--sync-ref-model` is due after the update that brought the run
    /// to `global_step` (a skipped update too, as TRL counts it). Every rank holds the same weights and mixes them
    /// the same way, so the references stay equal without a collective. The batch's reference log-probs were taken
    /// before its updates: a sync shows in the next batch's.
    fn sync_reference(&self, global_step: u64) -> Result<()> {
        let Some(sync) = self.reference_sync else { return Ok(()) };
        if !sync.due_after(global_step.saturating_sub(self.warmup_steps)) {
            return Ok(());
        }
        let masters = self.optimizer.has_master_weights().then(|| self.optimizer.master_weights());
        self.policy.mix_into_reference(sync.alpha, masters.as_ref())
    }

    /// The optimizer steps of pass `pass` over `exp`, each as its micro-batches' rows: the seeded shuffle cut into
    /// micro-batches of `--train-batch-size` sequences, `--gradient-accumulation-steps` of them to a step. With
    /// `--micro-batch-tokens` a step keeps the same sequences, regrouped longest first within the token budget.
    fn pass_steps(&self, exp: &Experience, batch: u64, pass: usize) -> Vec<Vec<Vec<usize>>> {
        let micro = micro_batches(exp.len(), self.batch.train_batch_size, self.seed, batch, pass);
        micro
            .chunks(self.batch.gradient_accumulation_steps.max(1))
            .map(|window| match self.batch.micro_batch_tokens {
                Some(budget) => Chunking::Tokens(budget).split(&window.concat(), &exp.lengths),
                None => window.to_vec(),
            })
            .collect()
    }

    /// The action tokens the loss covers in each optimizer step of the batch's `passes`, in order, summed over the
    /// ranks (at least one). They are known on the host; under data parallelism they take one collective per batch,
    /// not one per step.
    fn step_action_tokens(&self, exp: &Experience, passes: &[Vec<Vec<Vec<usize>>>]) -> Result<Vec<f64>> {
        let tokens: Vec<f64> = passes
            .iter()
            .flatten()
            .map(|step| step.iter().flatten().map(|&row| exp.action_tokens[row] as f64).sum())
            .collect();
        let tokens =
            self.world.reduce_f64("counting the steps' action tokens over the ranks", &tokens, ReduceOp::Sum)?;
        Ok(tokens.into_iter().map(|n| n.max(1.0)).collect())
    }

    /// `[B, T]` f32: 1 on the action tokens whose entropy reaches the `1 - q` quantile of the action tokens'
    /// entropies in this micro-batch on every rank, else 0 (TRL's `get_high_entropy_mask`, which gathers over the
    /// processes too). The entropies come to the host for it: on a GPU, a synchronisation per micro-batch, the
    /// option's cost.
    fn high_entropy_tokens(&self, entropy: &Tensor, action_mask: &Tensor) -> Result<Tensor> {
        let on = action_mask.to_kind(Kind::Bool);
        let local = Vec::<f32>::try_from(entropy.masked_select(&on).to_device(Device::Cpu))?;
        let ranks = self.world.gather("gathering the micro-batch's token entropies", local)?;
        let mut all: Vec<f32> = ranks.concat();
        Ok(match super::stats::quantile(&mut all, 1.0 - self.top_entropy_quantile) {
            Some(threshold) => entropy.ge(threshold).logical_and(&on).to_kind(Kind::Float),
            None => entropy.zeros_like(),
        })
    }

    /// One optimizer step over the micro-batches `window` (rows, and the same rows on the device). It is skipped
    /// (the weights untouched, [`StepRecord::skipped`]) when a micro-batch's loss or the gradient was not finite
    /// (counted in `state.invalid_loss_count`), or, under fp16, when the scaled gradients overflowed; it counts as a
    /// step either way, as a skipped update does in transformers' Trainer.
    ///
    /// The step reads the device once: every micro-batch's loss and device metrics and the gradient norm come to the
    /// host together after the last backward, so on a GPU the micro-batches' kernels are queued back to back. A loss
    /// is therefore judged after its backward: a non-finite one has already reached the accumulated gradients, and
    /// the whole step is skipped rather than the micro-batch alone.
    ///
    /// One function, longer than the rest, on purpose: the order is the design (backward queued per micro-batch,
    /// one all-reduce, one device read, one skip decision the ranks share), and it reads best in one place.
    fn step(
        &mut self,
        exp: &Experience,
        window: &[(&[usize], Tensor)],
        step_tokens: f64,
        state: &mut TrainerState,
    ) -> Result<StepRecord> {
        let mut pending = Vec::with_capacity(window.len());
        let window_rows: usize = window.iter().map(|(rows, _)| rows.len()).sum();
        // The policy's entropy summed over the window's action tokens, and their count, kept on the device.
        let mut entropy = Tensor::zeros([2], (Kind::Double, exp.tokens.device()));
        self.optimizer.zero_grad();
        for (micro, (rows, index)) in window.iter().enumerate() {
            seed_forward_draws(state.seed, state.global_step, micro, self.world.rank);
            // The micro-batch's loss is divided by this, its share of the step's sequences inverted (the number of
            // micro-batches when they are of one size), so that the step's loss is the mean over its sequences
            // however they were cut; and a token-level loss's sum by the step's tokens over this on every rank
            // (`PolicyBatch::step_token_divisor`), so that every token of the step weighs the same.
            let share = window_rows as f64 / rows.len() as f64;
            let step_token_divisor = step_tokens / (share * self.world.size as f64);
            let mb = exp.select_at(rows, index);
            let model = self.policy.model();
            let grad = if self.entropy_coeff != 0.0 { EntropyGrad::Yes } else { EntropyGrad::No };
            let aux_coef = model.router_aux_loss_coef();
            let mut routers = model.router_record();
            let (log_probs, token_entropy) = model.token_log_probs_and_entropy(
                &mb.tokens,
                &mb.attention_mask,
                Padding::Right,
                grad,
                routers.as_mut(),
            );
            // A mixture's load-balancing loss over the micro-batch's real tokens, prompts included (TRL's GRPO
            // passes the whole attention mask), weighed as the algorithm's loss is, per micro-batch.
            let aux = routers.and_then(|r| model.load_balancing_loss(&r, &mb.attention_mask));
            // The bonus's share of this micro-batch: its action tokens' entropy over the step's tokens per averaged
            // loss, so the step's bonus is the mean over all its tokens (on every rank) however they are split.
            let bonus = (self.entropy_coeff != 0.0).then(|| {
                let on = mb.action_mask.to_kind(Kind::Bool);
                token_entropy.where_self(&on, &token_entropy.zeros_like()).sum(Kind::Float)
                    * (self.entropy_coeff / step_token_divisor)
            });
            let token_entropy = token_entropy.detach();
            entropy += action_totals(&token_entropy, &mb.action_mask);
            // The entropy mask weighs the policy-gradient term only, as the importance weights do.
            let is_weights = if self.top_entropy_quantile < 1.0 {
                let keep = self.high_entropy_tokens(&token_entropy, &mb.action_mask)?;
                Some(match mb.is_weights {
                    Some(w) => w * keep,
                    None => keep,
                })
            } else {
                mb.is_weights
            };
            let batch = PolicyBatch {
                log_probs,
                old_log_probs: mb.old_log_probs,
                ref_log_probs: mb.ref_log_probs,
                advantages: mb.advantages,
                action_mask: mb.action_mask,
                settings: self.loss,
                is_weights,
                step_token_divisor: Some(step_token_divisor),
            };
            let mut out = self.algo.loss(&batch)?;
            if let Some(bonus) = bonus {
                // Out of place: the algorithm's loss may be an output its graph still needs.
                out.loss = &out.loss - bonus;
            }
            if let Some(aux) = aux {
                out.loss = &out.loss + &aux * aux_coef;
                out.device_metrics.push((AUX_LOSS.to_string(), aux.detach()));
            }
            // Each micro-batch's share, so the accumulated gradient is the window's mean; under fp16 scaled up so
            // small gradients survive, and unscaled as they are added to the f32 gradients.
            self.scaler.scale_loss(&(&out.loss / share)).backward();
            self.optimizer.accumulate_grads(self.scaler.unscale_factor());
            // Only the values are kept for the step's read: no reference to the micro-batch's graph outlives it.
            let device_metrics = out.device_metrics.into_iter().map(|(name, t)| (name, t.detach())).collect();
            let deferred = DeferredLoss { loss: out.loss.detach(), metrics: out.metrics, device_metrics };
            pending.push((deferred, rows.len() as f64));
        }
        // Data parallel: the gradients averaged over the ranks once per optimizer step (the micro-batches before the
        // last accumulate locally, as DDP's no_sync). The average of the ranks' mean gradients is the mean over the
        // global micro-batch, which is what one process would take.
        let t = Instant::now();
        self.optimizer.average_grads(self.world)?;
        let allreduce_secs = t.elapsed().as_secs_f64();
        let (local, grad_norm) = read_step(pending, &entropy, self.optimizer.grad_norm())?;
        // The window's sums from every rank: the skip decision below is the same on all of them.
        let acc = Accumulated::merge(self.world.gather("summing the step's loss over the ranks", local)?);
        let loss_scale = self.scaler.enabled().then(|| self.scaler.scale());
        let invalid_loss = acc.invalid > 0 || acc.count == 0;
        let applied = if invalid_loss {
            state.invalid_loss_count += acc.invalid as u64;
            // Its gradients are as non-finite as the loss: under fp16 that is an overflow like any other (the scale
            // backs off and the skip is counted, as GradScaler's inf check would find).
            if self.scaler.enabled() && !grad_norm.is_finite() {
                self.scaler.update(true);
            }
            false
        } else if !self.scaler.update(!grad_norm.is_finite()) {
            // The scaler decides for fp16 (an overflow lowers the scale and skips the step, counted there);
            // otherwise a non-finite gradient is an invalid update.
            if !self.scaler.enabled() {
                state.invalid_loss_count += 1;
            }
            false
        } else {
            true
        };
        let learning_rate = self.schedule.lr(state.global_step);
        if applied {
            self.optimizer.clip_to(grad_norm, self.max_norm);
            self.optimizer.step(learning_rate)?;
        } else {
            self.optimizer.zero_grad();
        }
        let mut record = acc.finish(state.global_step, grad_norm, learning_rate);
        if invalid_loss {
            record.loss = f64::NAN;
        }
        record.skipped = !applied;
        record.loss_scale = loss_scale;
        record.skipped_steps = self.scaler.skipped_steps();
        record.allreduce_secs = allreduce_secs;
        state.global_step += 1;
        Ok(record)
    }
}

/// The policy's mean entropy over the action tokens of an optimizer step, all its micro-batches and ranks (TRL's
/// `entropy`, verl's `actor/entropy`): where it collapses, exploration has stopped. Absent from a step without
/// action tokens.
const ENTROPY: &str = "training_step/entropy";

/// A mixture of experts' load-balancing loss (TRL's `aux_loss`), the mean over an optimizer step's micro-batches,
/// unweighted; `--router-aux-loss-coef` times it is part of the step's loss.
const AUX_LOSS: &str = "training_step/aux_loss";

/// `[2]` f64 on the device: the sum of `x` `[B, T]` over the action positions of `action_mask`, and their count.
fn action_totals(x: &Tensor, action_mask: &Tensor) -> Tensor {
    let on = action_mask.to_kind(Kind::Bool);
    Tensor::stack(&[x.where_self(&on, &x.zeros_like()).sum(Kind::Double), on.sum(Kind::Double)], 0)
}

/// The one device-to-host copy of an optimizer step: each micro-batch's loss and device metrics, the entropy
/// totals ([`action_totals`] summed) and the gradient norm (0 without gradients), read together and summed into the
/// step's record, each micro-batch weighted by its sequences (the number paired with its output). A micro-batch
/// whose loss is not finite counts as invalid and adds nothing.
fn read_step(
    outputs: Vec<(DeferredLoss, f64)>,
    entropy: &Tensor,
    grad_norm: Option<Tensor>,
) -> Result<(Accumulated, f64)> {
    let mut parts = Vec::new();
    for (out, _) in &outputs {
        parts.push(out.loss.shallow_clone());
        parts.extend(out.device_metrics.iter().map(|(_, t)| t.shallow_clone()));
    }
    parts.extend([entropy.get(0), entropy.get(1)]);
    parts.extend(grad_norm.as_ref().map(Tensor::shallow_clone));
    let mut values = read_scalars(&parts)?.into_iter();
    let mut acc = Accumulated::default();
    for (out, weight) in outputs {
        let loss = values.next().unwrap_or(f64::NAN);
        let mut metrics = out.metrics;
        for (name, _) in out.device_metrics {
            metrics.push(grpo_sdk::Metric::number(name, values.next().unwrap_or(f64::NAN)));
        }
        if loss.is_finite() {
            acc.add(loss, weight, metrics);
        } else {
            acc.invalid += 1;
        }
    }
    acc.entropy = (values.next().unwrap_or(f64::NAN), values.next().unwrap_or(0.0));
    Ok((acc, if grad_norm.is_some() { values.next().unwrap_or(f64::NAN) } else { 0.0 }))
}

/// One-element tensors of any dtype, on one device, read to the host in one copy: on CUDA one synchronisation for
/// all of them rather than one each.
pub fn read_scalars(values: &[Tensor]) -> Result<Vec<f64>> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<Tensor> = values.iter().map(|t| t.detach().to_kind(Kind::Double).reshape([1])).collect();
    Ok(Vec::<f64>::try_from(Tensor::cat(&parts, 0).to_device(Device::Cpu))?)
}

/// Seed libtorch's generator for micro-batch `micro` of global step `step` on data-parallel rank `rank`, before its
/// training forward pass. That pass draws from the generator (LoRA dropout), and a resumed process starts it afresh:
/// seeded from the run's seed and its position instead, the draws are the same whether or not the run was stopped
/// and resumed in between, and differ between ranks as their rows do.
pub fn seed_forward_draws(seed: u64, step: u64, micro: usize, rank: usize) {
    tch::manual_seed(mix(mix(mix(seed, step), micro as u64 + 1), rank as u64 + 1) as i64);
}

/// The micro-batches of pass `pass` over `n` sequences: a shuffle seeded by the run seed, the batch and the pass,
/// cut into chunks of `size`.
pub fn micro_batches(n: usize, size: usize, seed: u64, batch: u64, pass: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(mix(mix(seed, batch), pass as u64 + 1)).shuffle(&mut order);
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

/// The micro-batches of one optimizer step, summed for its record (over the ranks, under data parallelism). Losses
/// and numeric metrics are weighted by each micro-batch's sequences, as the step's gradient weighs them.
#[derive(Default, Serialize, Deserialize)]
struct Accumulated {
    count: usize,
    /// Micro-batches whose loss was not finite.
    invalid: usize,
    /// The weighted sum of the losses, and the weights'.
    loss: f64,
    weight: f64,
    /// Each metric's weighted sum and the weights of the micro-batches that reported it.
    numbers: BTreeMap<String, (f64, f64)>,
    texts: BTreeMap<String, String>,
    /// The policy's entropy summed over the action tokens, and their count.
    entropy: (f64, f64),
}

impl Accumulated {
    fn add(&mut self, loss: f64, weight: f64, metrics: Vec<grpo_sdk::Metric>) {
        self.count += 1;
        self.loss += weight * loss;
        self.weight += weight;
        for metric in metrics {
            match metric.value {
                MetricValue::Number(x) => {
                    let e = self.numbers.entry(metric.name).or_insert((0.0, 0.0));
                    e.0 += weight * x;
                    e.1 += weight;
                }
                MetricValue::Text(t) => {
                    self.texts.insert(metric.name, t);
                }
            }
        }
    }

    /// The ranks' sums as one: counts and sums added, texts from the first rank that has each.
    fn merge(parts: Vec<Accumulated>) -> Accumulated {
        let mut out = Accumulated::default();
        for p in parts {
            out.count += p.count;
            out.invalid += p.invalid;
            out.loss += p.loss;
            out.weight += p.weight;
            out.entropy = (out.entropy.0 + p.entropy.0, out.entropy.1 + p.entropy.1);
            for (k, (sum, n)) in p.numbers {
                let e = out.numbers.entry(k).or_insert((0.0, 0.0));
                e.0 += sum;
                e.1 += n;
            }
            for (k, t) in p.texts {
                out.texts.entry(k).or_insert(t);
            }
        }
        out
    }

    fn finish(self, step: u64, grad_norm: f64, learning_rate: f64) -> StepRecord {
        let mut algorithm: BTreeMap<String, f64> =
            self.numbers.into_iter().map(|(k, (sum, weight))| (k, sum / weight)).collect();
        let (entropy, tokens) = self.entropy;
        if tokens > 0.0 {
            algorithm.insert(ENTROPY.to_string(), entropy / tokens);
        }
        StepRecord {
            step,
            loss: self.loss / self.weight,
            grad_norm,
            learning_rate,
            skipped: false,
            loss_scale: None,
            skipped_steps: 0,
            algorithm,
            algorithm_text: self.texts,
            allreduce_secs: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A micro-batch's output: its loss, a device metric and a host metric.
    fn output(loss: f64, kl: f64) -> DeferredLoss {
        DeferredLoss::new(Tensor::from(loss as f32))
            .with_device_metric("training_step/kl", Tensor::from(kl))
            .with_metric(grpo_sdk::Metric::number("algo/host", 1.0))
    }

    /// Entropy totals as the step keeps them: summed entropy and action tokens.
    fn totals(sum: f64, tokens: f64) -> Tensor {
        Tensor::from_slice(&[sum, tokens])
    }

    #[test]
    fn a_step_reads_its_losses_metrics_and_norm_together_and_counts_non_finite_losses() {
        let outputs = vec![(output(1.0, 0.5), 1.0), (output(3.0, 0.25), 1.0)];
        let (acc, norm) = read_step(outputs, &totals(6.0, 4.0), Some(Tensor::from(2.5f32))).unwrap();
        assert_eq!((acc.count, acc.invalid, acc.loss, acc.weight, norm), (2, 0, 4.0, 2.0, 2.5));
        assert_eq!(acc.numbers["training_step/kl"], (0.75, 2.0));
        assert_eq!(acc.numbers["algo/host"], (2.0, 2.0));

        let outputs = vec![(output(f64::NAN, 0.5), 1.0), (output(2.0, 0.5), 1.0)];
        let (acc, norm) = read_step(outputs, &totals(1.0, 2.0), None).unwrap();
        assert_eq!((acc.count, acc.invalid, acc.loss, norm), (1, 1, 2.0, 0.0));
        // The ranks' sums: one rank's non-finite loss is every rank's.
        let other = read_step(vec![(output(1.0, 0.0), 1.0)], &totals(2.0, 1.0), None).unwrap().0;
        let merged = Accumulated::merge(vec![acc, other]);
        assert_eq!((merged.count, merged.invalid), (2, 1));
        // The entropy is the mean over every action token of the ranks, not a mean of their means.
        let record = merged.finish(0, 1.0, 1e-3);
        assert_eq!(record.algorithm[ENTROPY], 1.0);
        let (none, _) = read_step(vec![(output(1.0, 0.0), 1.0)], &totals(0.0, 0.0), None).unwrap();
        assert!(!none.finish(0, 1.0, 1e-3).algorithm.contains_key(ENTROPY), "a step without actions has none");
    }

    #[test]
    fn a_steps_loss_and_metrics_weigh_each_micro_batch_by_its_sequences() {
        // Micro-batches of 3 sequences and 1: the step's loss is the mean over its 4 sequences, 1.5, not 2.
        let outputs = vec![(output(1.0, 0.5), 3.0), (output(3.0, 0.25), 1.0)];
        let record = read_step(outputs, &totals(6.0, 4.0), None).unwrap().0.finish(0, 1.0, 1e-3);
        assert_eq!(record.loss, 1.5);
        assert_eq!(record.algorithm["training_step/kl"], (3.0 * 0.5 + 0.25) / 4.0);
    }

    #[test]
    fn entropy_totals_cover_action_tokens_only() {
        let x = Tensor::from_slice(&[1.0f32, 2.0, 100.0, 4.0]).view([2, 2]);
        let mask = Tensor::from_slice(&[true, true, false, true]).view([2, 2]);
        assert_eq!(Vec::<f64>::try_from(action_totals(&x, &mask)).unwrap(), vec![7.0, 3.0]);
    }

    #[test]
    fn micro_batches_cover_every_row_once_and_follow_the_seed() {
        let a = micro_batches(10, 4, 42, 3, 0);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(a, micro_batches(10, 4, 42, 3, 0));
        assert_ne!(a, micro_batches(10, 4, 42, 3, 1));
        assert_ne!(a, micro_batches(10, 4, 43, 3, 0));
    }

    #[test]
    fn token_budgets_group_sequences_longest_first_within_the_budget() {
        let lengths = [5, 9, 3, 9, 2, 4, 30];
        let rows = [0, 1, 2, 3, 4, 5];
        // 20 tokens: the two 9s (2 x 9 = 18; a 5 more would pad to 27), then 5, 4, 3 and 2 (4 x 5 = 20).
        let passes = Chunking::Tokens(20).split(&rows, &lengths);
        assert_eq!(passes, vec![vec![1, 3], vec![0, 5, 2, 4]]);
        for pass in &passes {
            let longest = pass.iter().map(|&r| lengths[r]).max().unwrap();
            assert!(pass.len() * longest <= 20, "{pass:?}");
        }
        // A sequence longer than the budget goes alone; none is dropped.
        let passes = Chunking::Tokens(20).split(&[6, 4, 2], &lengths);
        assert_eq!(passes, vec![vec![6], vec![2, 4]]);
        // Rows keep the order given.
        assert_eq!(Chunking::Rows(4).split(&rows, &lengths), vec![vec![0, 1, 2, 3], vec![4, 5]]);
        assert_eq!(Chunking::from(3), Chunking::Rows(3));
    }
}
