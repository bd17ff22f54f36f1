//! The training metric schema: every name the trainer logs, computed from the stages' values. docs/metrics.md
//! describes each; the names are re-grpo's, so its W&B dashboards carry over.
//!
//! Rows by step: a batch's rollout metrics at the step it starts from ([`rollout`], [`progress`], [`timing`]),
//! each optimizer step's at its own step ([`step`]), the batch's update summary at its last step ([`epoch`]), and
//! the run's end at the last step ([`final_summary`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::experience::{sequence_kl, Experience};
use super::scored::Scored;
use super::stats::summarize;
use super::update::{StepRecord, Updates};
use crate::checkpoint::TrainerState;
use crate::logging::{metrics, CompletionRow, MetricValue, Metrics};
use crate::rollout::{EndReason, RolloutStats};
use crate::train::dynamic_sampling::SamplingSummary;
use crate::train::reward_kl::RewardKlSummary;

/// One rollout as the metrics see it: plain numbers and texts, so that the ranks of a data-parallel run can send
/// theirs to each other and every statistic is computed over the global batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The episode's return.
    pub total_reward: f64,
    /// Its advantage.
    pub advantage: f64,
    /// Reward components summed over the episode.
    pub rewards: BTreeMap<String, f64>,
    /// Action tokens.
    pub completion_length: f64,
    /// Assistant turns taken.
    pub turns: usize,
    /// Turns cut at max_new_tokens or at the context limit.
    pub cut_turns: usize,
    /// Tool results received.
    pub tool_messages: usize,
    /// Ended at the context limit.
    pub truncated: bool,
    /// Its opening prompt was cut to `--max-prompt-length`.
    pub prompt_truncated: bool,
    /// Masked mean k3 KL of the sampling policy from the reference, when there is one.
    pub kl: Option<f64>,
    /// The rendered prompt.
    pub prompt: String,
    /// Everything after it.
    pub transcript: String,
    /// The task's question.
    pub question: String,
    /// The task's reference answer.
    pub answer: String,
}

impl RolloutRecord {
    /// Whether the episode was cut off rather than ended by the model ([`crate::rollout::Rollout::was_cut`]).
    pub fn was_cut(&self) -> bool {
        self.cut_turns > 0 || self.truncated
    }
}

/// A batch (one rank's share, or all ranks' merged) as the metrics see it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BatchSummary {
    /// Rollouts in order, groups consecutive (rank 0's groups first when merged).
    pub rollouts: Vec<RolloutRecord>,
    /// Episodes per group.
    pub group_size: usize,
    /// Importance ratios of the sampler against the trainer's old log-probs: (sum, count, max) over action tokens.
    pub is_ratio: Option<(f64, f64, f64)>,
    /// Action tokens whose importance weight (`--tis-cap`) is 0, when the loss has weights (a share of `is_ratio`'s
    /// count); merged, the ranks' counts added.
    #[serde(default)]
    pub is_masked: Option<f64>,
    /// Stage times; merged, each the slowest rank's.
    pub timings: Timings,
    /// What dynamic sampling's rounds did (`--dynamic-sampling`); merged, the ranks' counts added.
    #[serde(default)]
    pub sampling: Option<SamplingSummary>,
    /// The KL penalty in the reward (`--reward-kl-coef`); merged, the ranks' sums added.
    #[serde(default)]
    pub reward_kl: Option<RewardKlSummary>,
}

impl BatchSummary {
    /// This rank's batch.
    pub fn new(scored: &Scored, exp: &Experience, timings: Timings) -> BatchSummary {
        let kl: Option<Vec<f64>> = exp.ref_log_probs.as_ref().map(|reference| {
            let kl = sequence_kl(&exp.old_log_probs, reference, &exp.action_mask);
            Vec::<f64>::try_from(&kl.to_kind(tch::Kind::Double)).unwrap_or_default()
        });
        let lengths = scored.completion_lengths();
        let rollouts = scored
            .rollouts
            .iter()
            .enumerate()
            .map(|(i, r)| RolloutRecord {
                total_reward: scored.returns[i],
                advantage: f64::from(scored.advantage_values[i]),
                rewards: r.rewards.clone(),
                completion_length: lengths[i],
                turns: r.turns,
                cut_turns: r.cut_turns,
                tool_messages: r.tool_messages,
                truncated: r.end == EndReason::ContextLimit,
                prompt_truncated: r.prompt_truncated,
                kl: kl.as_ref().and_then(|k| k.get(i).copied()),
                prompt: r.prompt_text.clone(),
                transcript: r.transcript.clone(),
                question: r.task.question.clone(),
                answer: r.task.answer.clone(),
            })
            .collect();
        BatchSummary {
            rollouts,
            group_size: scored.group_size,
            is_ratio: exp.is_ratio_totals(),
            is_masked: exp.zero_weight_tokens(),
            timings,
            sampling: None,
            reward_kl: None,
        }
    }

    /// The ranks' summaries as one batch: rollouts in rank order, ratio totals added, the slowest rank's times.
    pub fn merge(parts: Vec<BatchSummary>) -> BatchSummary {
        let mut out = BatchSummary::default();
        for p in parts {
            out.group_size = p.group_size;
            out.rollouts.extend(p.rollouts);
            out.is_ratio = match (out.is_ratio, p.is_ratio) {
                (Some((s, c, m)), Some((s2, c2, m2))) => Some((s + s2, c + c2, m.max(m2))),
                (a, b) => a.or(b),
            };
            out.is_masked = match (out.is_masked, p.is_masked) {
                (Some(z), Some(z2)) => Some(z + z2),
                (a, b) => a.or(b),
            };
            out.timings.rollout = out.timings.rollout.max(p.timings.rollout);
            out.timings.logprob = out.timings.logprob.max(p.timings.logprob);
            out.timings.rollout_peak_rss = out.timings.rollout_peak_rss.max(p.timings.rollout_peak_rss);
            out.timings.logprob_peak_rss = out.timings.logprob_peak_rss.max(p.timings.logprob_peak_rss);
            // Token counts add up over the ranks; times are the slowest rank's.
            let (o, r) = (&mut out.timings.rollout_stats, &p.timings.rollout_stats);
            let slowest =
                (o.engine.prefill_secs.max(r.engine.prefill_secs), o.engine.decode_secs.max(r.engine.decode_secs));
            o.engine.add(&r.engine);
            (o.engine.prefill_secs, o.engine.decode_secs) = slowest;
            o.env_secs = o.env_secs.max(r.env_secs);
            out.sampling = match (out.sampling, p.sampling) {
                (Some(a), Some(b)) => Some(SamplingSummary::merge([a, b])),
                (a, b) => a.or(b),
            };
            out.reward_kl = match (out.reward_kl, p.reward_kl) {
                (Some(a), Some(b)) => Some(RewardKlSummary::merge(a, b)),
                (a, b) => a.or(b),
            };
        }
        out
    }

    /// Each rollout's return.
    pub fn returns(&self) -> Vec<f64> {
        self.rollouts.iter().map(|r| r.total_reward).collect()
    }
}

/// Returns, advantages, rollout KL, reward components, completion lengths and episode shapes of a batch.
/// `best_mean_return` is the best batch mean so far, this batch included.
pub fn rollout(batch: &BatchSummary, best_mean_return: f64) -> Metrics {
    let mut m = Metrics::new();
    let returns = batch.returns();
    let r = summarize(&returns);
    for (k, v) in [("sum", r.sum), ("mean", r.mean), ("std", r.std), ("max", r.max), ("min", r.min)] {
        m.insert(format!("rollouts/returns_{k}"), v.into());
    }
    m.insert("rollouts/returns_best_mean".into(), best_mean_return.into());
    if let Some(k) = batch.reward_kl.filter(|k| k.sequences > 0.0) {
        // The returns above are the environment's; the advantages come from these penalised ones.
        m.insert("rollouts/reward_kl_coef".into(), k.coef.into());
        m.insert("rollouts/reward_kl_mean".into(), k.mean_kl().into());
        m.insert("rollouts/reward_kl_penalty_mean".into(), (k.penalty_sum / k.sequences).into());
    }
    // re-grpo's multi-turn logger names for the same quantities, so its dashboards carry over.
    m.insert("batch_returns/mean".into(), r.mean.into());
    m.insert("batch_returns/max".into(), r.max.into());
    m.insert("batch_returns/best_mean".into(), best_mean_return.into());
    let group_means: Vec<f64> =
        returns.chunks(batch.group_size.max(1)).map(|g| g.iter().sum::<f64>() / g.len() as f64).collect();
    m.insert("group_avg/reward".into(), summarize(&group_means).mean.into());
    m.insert("rollouts/frac_reward_zero_std".into(), zero_std_share(&returns, batch.group_size).into());

    let a = summarize(&batch.rollouts.iter().map(|r| r.advantage).collect::<Vec<_>>());
    m.insert("rollouts/advantages_mean".into(), a.mean.into());
    m.insert("rollouts/advantages_std".into(), a.std.into());
    let kl: Vec<f64> = batch.rollouts.iter().filter_map(|r| r.kl).collect();
    if !kl.is_empty() {
        // The sampling policy's distance from the reference, before this batch's updates.
        let k = summarize(&kl);
        m.insert("rollouts/kl_mean".into(), k.mean.into());
        m.insert("rollouts/kl_std".into(), k.std.into());
        m.insert("rollouts/kl_max".into(), k.max.into());
    }
    if let Some((sum, count, max)) = batch.is_ratio.filter(|(_, count, _)| *count > 0.0) {
        // How far the sampler (another precision, or the incremental decode) is from the trainer's policy.
        m.insert("rollouts/is_ratio_mean".into(), (sum / count).into());
        m.insert("rollouts/is_ratio_max".into(), max.into());
        if let Some(zero) = batch.is_masked {
            m.insert("rollouts/is_masked_share".into(), (zero / count).into());
        }
    }
    m.extend(reward_components(&batch.rollouts));
    m.extend(episode_shapes(&batch.rollouts));
    if let Some(s) = &batch.sampling {
        // verl's num_gen_batches, and how much of what was rolled out the batch could use.
        m.insert("dynamic_sampling/rounds".into(), (s.rounds as f64).into());
        m.insert("dynamic_sampling/sampled_groups".into(), (s.sampled_groups as f64).into());
        m.insert(
            "dynamic_sampling/varied_share".into(),
            (s.varied_groups as f64 / s.sampled_groups.max(1) as f64).into(),
        );
        m.insert("dynamic_sampling/filled_groups".into(), (s.filled_groups as f64).into());
    }
    m
}

/// The share of groups whose returns are all equal: their advantages are 0 under group normalisation, so they give
/// the policy-gradient term nothing to learn from (TRL's `frac_reward_zero_std`). Equal exactly, as the `grpo`
/// plugin decides it; 0 for an empty batch.
fn zero_std_share(returns: &[f64], group_size: usize) -> f64 {
    let groups: Vec<&[f64]> = returns.chunks(group_size.max(1)).collect();
    let flat = groups.iter().filter(|g| !super::dynamic_sampling::returns_vary(g)).count();
    flat as f64 / groups.len().max(1) as f64
}

/// `rollout_rewards/<name>`: each reward component averaged over the rollouts that reported it (an episode that
/// ended early reports fewer).
fn reward_components(rollouts: &[RolloutRecord]) -> Metrics {
    let mut components: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in rollouts {
        for (name, value) in &r.rewards {
            components.entry(name).or_default().push(*value);
        }
    }
    components.into_iter().map(|(name, v)| (format!("rollout_rewards/{name}"), summarize(&v).mean.into())).collect()
}

/// Completion lengths, cut turns, turns, tool messages, truncated episodes and prompts.
fn episode_shapes(rollouts: &[RolloutRecord]) -> Metrics {
    let l = summarize(&rollouts.iter().map(|r| r.completion_length).collect::<Vec<_>>());
    let turns: usize = rollouts.iter().map(|r| r.turns).sum();
    let cut: usize = rollouts.iter().map(|r| r.cut_turns).sum();
    let tools: usize = rollouts.iter().map(|r| r.tool_messages).sum();
    let truncated = rollouts.iter().filter(|r| r.truncated).count();
    let prompts_cut = rollouts.iter().filter(|r| r.prompt_truncated).count();
    // Episodes the model ended itself: no turn cut, the stream within --max-length (0 for each when there are none).
    let finished: Vec<f64> = rollouts.iter().filter(|r| !r.was_cut()).map(|r| r.completion_length).collect();
    let f = summarize(&finished);
    let n = rollouts.len().max(1) as f64;
    metrics! {
        "completions/mean_length" => l.mean,
        "completions/max_length" => l.max,
        "completions/min_length" => l.min,
        "completions/mean_terminated_length" => f.mean,
        "completions/min_terminated_length" => f.min,
        "completions/max_terminated_length" => f.max,
        "completions/clipped_ratio" => cut as f64 / turns.max(1) as f64,
        "episodes/turns_mean" => turns as f64 / n,
        "episodes/tool_messages_mean" => tools as f64 / n,
        "episodes/truncated_share" => truncated as f64 / n,
        "episodes/prompt_truncated_share" => prompts_cut as f64 / n,
    }
}

/// Counters after a batch's rollouts.
pub fn progress(state: &TrainerState) -> Metrics {
    metrics! {
        "rollouts/total_rollouts" => state.total_rollouts,
        "rollouts/batch_step" => state.batch,
    }
}

/// Wall-clock time of a batch's stages, in seconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Generating the rollouts (environment steps included).
    pub rollout: f64,
    /// Old and reference log-probs.
    pub logprob: f64,
    /// The updates.
    pub train: f64,
    /// The rollout engine's counters and the environments' time.
    #[serde(default)]
    pub rollout_stats: RolloutStats,
    /// The process's peak resident memory while generating the rollouts, in bytes (`None` where unknown).
    #[serde(default)]
    pub rollout_peak_rss: Option<u64>,
    /// The same while computing the old and reference log-probs.
    #[serde(default)]
    pub logprob_peak_rss: Option<u64>,
}

/// `timing/*` of the rollout phase (the slowest rank's), with the generation throughput of the whole batch.
pub fn timing(batch: &BatchSummary) -> Metrics {
    let t = &batch.timings;
    let generated: f64 = batch.rollouts.iter().map(|r| r.completion_length).sum();
    let engine = &t.rollout_stats.engine;
    let mut m = metrics! {
        "timing/rollout_s" => t.rollout,
        "timing/logprob_s" => t.logprob,
        "timing/generated_tokens_per_s" => generated / t.rollout.max(1e-9),
        "timing/prefill_s" => engine.prefill_secs,
        "timing/decode_s" => engine.decode_secs,
        "timing/env_s" => t.rollout_stats.env_secs,
        "rollouts/prefill_tokens" => engine.prefill_tokens,
        "rollouts/prefill_shared_tokens" => engine.prefill_shared_tokens,
        "rollouts/generated_tokens" => engine.generated_tokens,
        "rollouts/decode_rows_mean" => engine.decode_rows_mean(),
    };
    m.extend(peak_rss("system/rollout_peak_rss_gb", t.rollout_peak_rss));
    m.extend(peak_rss("system/logprob_peak_rss_gb", t.logprob_peak_rss));
    m
}

/// A phase's peak resident memory as the metric `name`, in GiB, when it is known.
fn peak_rss(name: &str, bytes: Option<u64>) -> Option<(String, MetricValue)> {
    bytes.map(|b| (name.to_string(), MetricValue::Number(b as f64 / (1u64 << 30) as f64)))
}

/// One optimizer step: the host's numbers and the algorithm's own (`training_step/kl` among them: the KL has one
/// source, the algorithm's loss terms).
pub fn step(record: &StepRecord, state: &TrainerState) -> Metrics {
    let mut m = metrics! {
        "training_step/grad_norm" => record.grad_norm,
        "training_step/learning_rate" => record.learning_rate,
        "training/invalid_loss_count" => state.invalid_loss_count,
    };
    // A step skipped for a non-finite loss logs none (re-grpo logged `inf`), so loss plots stay readable; the
    // count above records it.
    if record.loss.is_finite() {
        m.insert("training_step/loss".into(), record.loss.into());
    }
    if let Some(scale) = record.loss_scale {
        m.insert("training_step/loss_scale".into(), scale.into());
        m.insert("training/skipped_steps".into(), record.skipped_steps.into());
    }
    m.extend(record.algorithm.iter().map(|(k, &v)| (k.clone(), v.into())));
    m.extend(record.algorithm_text.iter().map(|(k, v)| (k.clone(), v.as_str().into())));
    m
}

/// The batch's updates summarised: loss, KL (the algorithm's `training_step/kl`) and gradient norm over its applied
/// steps (a skipped one's values are not finite, or did not move the weights).
pub fn epoch(updates: &Updates, state: &TrainerState, train_secs: f64, train_peak_rss: Option<u64>) -> Metrics {
    let applied = || updates.steps.iter().filter(|s| !s.skipped);
    let of = |f: &dyn Fn(&StepRecord) -> Option<f64>| -> Vec<f64> { applied().filter_map(f).collect() };
    let loss = summarize(&of(&|s| Some(s.loss)));
    let kl = summarize(&of(&|s| s.algorithm.get("training_step/kl").copied()));
    let grad_norms = of(&|s| Some(s.grad_norm));
    let grad = summarize(&grad_norms);
    let mut m = metrics! {
        "training_epoch/loss_mean" => loss.mean,
        "training_epoch/loss_std" => loss.std,
        "training_epoch/kl_mean" => kl.mean,
        "training_epoch/kl_std" => kl.std,
        "training_epoch/grad_norm_mean" => grad.mean,
        "training_epoch/grad_norm_max" => if grad_norms.is_empty() { 0.0 } else { grad.max },
        "training/invalid_loss_count" => state.invalid_loss_count,
        "timing/train_s" => train_secs,
        "timing/allreduce_s" => updates.steps.iter().map(|s| s.allreduce_secs).sum::<f64>(),
    };
    m.extend(peak_rss("system/train_peak_rss_gb", train_peak_rss));
    m
}

/// The run's end: totals, whether the final checkpoint was saved, and whether training completed.
pub fn final_summary(state: &TrainerState, checkpoint_saved: bool, completed: bool) -> Metrics {
    let mut m = metrics! {
        "final/total_steps" => state.global_step,
        "final/total_batches" => state.batch,
        "final/total_rollouts" => state.total_rollouts,
        "final/best_mean_return" => state.best_mean_return.unwrap_or(f64::NAN),
        "checkpoint/saved" => checkpoint_saved,
        "checkpoint/step" => state.global_step,
        "training/completed" => completed,
    };
    m.extend(super::best::final_metrics(state));
    m
}

/// A checkpoint written during the run.
pub fn checkpoint_saved(state: &TrainerState) -> Metrics {
    metrics! {"checkpoint/saved" => 1, "checkpoint/step" => state.global_step}
}

/// The completions table's rows, and the markdown example of the first rollout.
pub fn completions(step: u64, batch: &BatchSummary) -> (Vec<CompletionRow>, Option<String>) {
    let rows = batch
        .rollouts
        .iter()
        .map(|r| {
            let mut rewards = r.rewards.clone();
            rewards.insert("total".into(), r.total_reward);
            CompletionRow {
                step,
                prompt: r.prompt.clone(),
                completion: r.transcript.clone(),
                rewards,
                advantage: r.advantage,
            }
        })
        .collect();
    let example = batch.rollouts.first().map(|r| {
        format!(
            "**Question:** {}\n\n**Transcript:**\n```\n{}\n```\n\n**Reward:** {:.3} (oracle answer: {})",
            r.question, r.transcript, r.total_reward, r.answer
        )
    });
    (rows, example)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(total_reward: f64, completion_length: f64) -> RolloutRecord {
        RolloutRecord {
            total_reward,
            advantage: 0.0,
            rewards: BTreeMap::new(),
            completion_length,
            turns: 1,
            cut_turns: 0,
            tool_messages: 0,
            truncated: false,
            prompt_truncated: false,
            kl: None,
            prompt: String::new(),
            transcript: String::new(),
            question: String::new(),
            answer: String::new(),
        }
    }

    #[test]
    fn groups_whose_returns_are_all_equal_are_counted_and_lengths_summarised() {
        // Three groups of three: the first and last have one return each (no learning signal), the middle one two.
        let returns = [1.0, 1.0, 1.0, 0.0, 2.0, 0.0, -0.5, -0.5, -0.5];
        let batch = BatchSummary {
            rollouts: returns
                .iter()
                .enumerate()
                .map(|(i, &r)| RolloutRecord {
                    cut_turns: usize::from(i != 1 && i != 3 && i != 4 && i != 7),
                    truncated: i == 7,
                    ..record(r, (i + 3) as f64)
                })
                .collect(),
            group_size: 3,
            ..BatchSummary::default()
        };
        let m = rollout(&batch, 1.0);
        assert_eq!(m["rollouts/frac_reward_zero_std"], MetricValue::Number(2.0 / 3.0));
        assert_eq!(m["completions/min_length"], MetricValue::Number(3.0));
        assert_eq!(m["completions/max_length"], MetricValue::Number(11.0));
        // Of those, the episodes the model ended itself: lengths 4, 6 and 7 (the one of 10 reached --max-length, the
        // others had a turn cut).
        assert_eq!(m["completions/mean_terminated_length"], MetricValue::Number(17.0 / 3.0));
        assert_eq!(m["completions/min_terminated_length"], MetricValue::Number(4.0));
        assert_eq!(m["completions/max_terminated_length"], MetricValue::Number(7.0));
        assert_eq!(zero_std_share(&[0.0, 1e-9], 2), 0.0, "only equal returns count");
        assert_eq!(zero_std_share(&[], 4), 0.0);
    }
}
