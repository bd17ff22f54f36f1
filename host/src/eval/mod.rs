//! Evaluation on held-out tasks: the policy plays each task once greedily and `samples` times with sampling, and
//! the environment's rewards and judgements become `eval/*` metrics. Training (`--eval-every`,
//! `--eval-before-train`) and `grpo-host eval` run the same [`Evaluation`] with the same tasks, chunks and seeds, so
//! a checkpoint scored afterwards gives the numbers the run logged at that step.
//!
//! Metric names (all here, documented in docs/metrics.md): `eval/returns_mean`, `eval/accuracy` (pass@1 of the
//! greedy episode), `eval/pass@K` (some of K samples solved it), `eval/mean@K` (the share of the samples solved),
//! `eval/completion_length_mean`,
//! `eval/completion_logprob_mean` (the policy's mean log-probability of its greedy tokens), `eval/tasks`,
//! `eval/rewards/<component>`, and the environment's own metrics over the greedy episodes as `eval/<name>`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use grpo_sdk::{MetricValue, Split, Task};
use serde::{Deserialize, Serialize};

use crate::generate::SamplingParams;
use crate::logging::{Metrics, Table};
use crate::model::Model;
use crate::plugins::EnvironmentPlugin;
use crate::rollout::RewardShaping;
use crate::rollout::{run_episodes, task_seeds, Rollout, RolloutConfig};
use crate::tokenizer::Tokenizer;
use crate::user_error;

/// Tasks evaluated from an unbounded generator when `--eval-tasks` is not given.
pub const GENERATOR_EVAL_TASKS: u64 = 200;

/// How evaluations run; the same settings give the same numbers in training and in `grpo-host eval`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Evaluate every this many batches and after the last one (0: not during training).
    pub every: u64,
    /// Evaluate once before the first batch (not again when resuming).
    pub before_train: bool,
    /// At most this many tasks, the first ones of the split; `None`: every task of a finite split,
    /// [`GENERATOR_EVAL_TASKS`] of a generator.
    pub tasks: Option<u64>,
    /// Sampled episodes per task for `eval/pass@K` (0: greedy only).
    pub samples: usize,
    /// Temperature and filters of the sampled episodes.
    pub sampling: SamplingParams,
    /// Tasks per generation call (memory; the numbers depend on it only through batching's rounding).
    pub batch_tasks: usize,
    /// Decode steps per host read (`--multi-step`; speed only, as `batch_tasks`).
    #[serde(default = "crate::generate::engine::one_read_per_step")]
    pub multi_step: usize,
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            every: 0,
            before_train: false,
            tasks: None,
            samples: 4,
            sampling: SamplingParams { temperature: 0.7, top_k: 50, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 },
            batch_tasks: 16,
            multi_step: 1,
        }
    }
}

impl EvalSettings {
    /// Whether training evaluates at all.
    pub fn enabled(&self) -> bool {
        self.every > 0 || self.before_train
    }
}

/// The episode limits of the run being evaluated.
#[derive(Debug, Clone, Copy)]
pub struct EpisodeLimits {
    /// Most tokens per assistant turn.
    pub max_new_tokens: usize,
    /// Most assistant turns.
    pub max_turns: usize,
    /// Most tokens in an episode.
    pub max_length: usize,
    /// The longest opening prompt (`--max-prompt-length`).
    pub prompt_limit: Option<crate::rollout::PromptLimit>,
}

/// The evaluation tasks: `given` (from `--eval-data` or `--eval-holdout`), else `env`'s eval split for `seed`; the
/// first `limit` of them. A split without tasks is one line saying how to give some.
pub fn eval_tasks(env: &EnvironmentPlugin, given: Option<&[Task]>, limit: Option<u64>, seed: u64) -> Result<Vec<Task>> {
    if let Some(tasks) = given {
        let n = limit.map_or(tasks.len(), |l| (l as usize).min(tasks.len()));
        if n == 0 {
            return Err(user_error!("the evaluation data has no tasks; check --eval-data / --eval-holdout"));
        }
        return Ok(tasks[..n].to_vec());
    }
    let n = match env.task_count(Split::Eval)? {
        Some(0) => {
            return Err(user_error!(
                "environment `{}` has no eval tasks with this --env-config; pass --eval-data FILE|DIR|ORG/NAME or \
                 --eval-holdout N with --dataset (docs/environments.md lists each environment's eval split)",
                env.name()
            ))
        }
        Some(count) => limit.map_or(count, |l| l.min(count)),
        None => limit.unwrap_or(GENERATOR_EVAL_TASKS),
    };
    (0..n).map(|i| env.task(Split::Eval, seed, i)).collect()
}

/// One task's outcome: its greedy episode and how many samples solved it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// The task's id.
    pub id: String,
    /// The question.
    pub question: String,
    /// The reference answer.
    pub answer: String,
    /// The greedy episode's transcript.
    pub completion: String,
    /// The greedy episode's return.
    pub greedy_return: f64,
    /// The mean log-probability (temperature 1) of the greedy episode's generated tokens under the policy.
    pub greedy_logprob_mean: f64,
    /// Tokens the model generated in the greedy episode.
    pub completion_tokens: usize,
    /// Its reward components.
    pub rewards: BTreeMap<String, f64>,
    /// Whether the environment judged the greedy episode solved (`None`: not judged).
    pub solved: Option<bool>,
    /// Sampled episodes that solved it (of `samples`).
    pub samples_solved: usize,
}

/// An evaluation's numbers and its per-task outcomes.
#[derive(Debug, Clone)]
pub struct EvalResult {
    /// Tasks evaluated.
    pub tasks: usize,
    /// Mean greedy return.
    pub returns_mean: f64,
    /// Share of tasks whose greedy episode was judged solved; `None` when the environment never judges.
    pub accuracy: Option<f64>,
    /// `(k, pass@k)` for k = 1, 2, 4, ... below the K samples per task and K itself, each the unbiased estimate
    /// from the K samples ([`pass_at`]); pass@K is the share of tasks with at least one of K samples solved. Empty
    /// without samples or judgements.
    pub pass_at: Vec<(usize, f64)>,
    /// `(K, share of all K samples of every task solved)` (verl's `mean@N`): the sampling policy's own accuracy,
    /// less noisy than the greedy one, and pass@1 of the samples; `None` without samples or judgements.
    pub mean_at_k: Option<(usize, f64)>,
    /// Mean tokens the model generated per greedy episode.
    pub completion_length_mean: f64,
    /// Mean over greedy episodes of their tokens' mean log-probability: how sure the policy is of its answers.
    pub completion_logprob_mean: f64,
    /// Reward components of the greedy episodes, each averaged over the episodes that reported it.
    pub rewards: BTreeMap<String, f64>,
    /// The environment's own metrics over the greedy episodes.
    pub env_metrics: Metrics,
    /// Per task, in order.
    pub outcomes: Vec<TaskOutcome>,
}

impl EvalResult {
    /// The per-task outcomes as the `eval/completions` table (W&B, TensorBoard): one row per task with its question,
    /// reference answer, greedy transcript, return and judgements, and its reward components.
    pub fn table(&self, step: u64) -> Table {
        let reward_keys: std::collections::BTreeSet<&String> =
            self.outcomes.iter().flat_map(|o| o.rewards.keys()).collect();
        let fixed = [
            "step",
            "id",
            "question",
            "answer",
            "completion",
            "return",
            "solved",
            "samples_solved",
            "completion_tokens",
        ];
        let mut columns: Vec<String> = fixed.into_iter().map(String::from).collect();
        columns.extend(reward_keys.iter().map(|k| format!("reward/{k}")));
        let number =
            |x: f64| serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number);
        let rows = self
            .outcomes
            .iter()
            .map(|o| {
                let mut row = vec![
                    step.into(),
                    o.id.as_str().into(),
                    o.question.as_str().into(),
                    o.answer.as_str().into(),
                    o.completion.as_str().into(),
                    number(o.greedy_return),
                    o.solved.map_or(serde_json::Value::Null, serde_json::Value::Bool),
                    o.samples_solved.into(),
                    o.completion_tokens.into(),
                ];
                row.extend(
                    reward_keys.iter().map(|k| o.rewards.get(*k).map_or(serde_json::Value::Null, |x| number(*x))),
                );
                row
            })
            .collect();
        Table { key: "eval/completions".into(), columns, rows }
    }

    /// The `eval/*` metrics.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        m.insert("eval/tasks".into(), (self.tasks as f64).into());
        m.insert("eval/returns_mean".into(), self.returns_mean.into());
        m.insert("eval/completion_length_mean".into(), self.completion_length_mean.into());
        m.insert("eval/completion_logprob_mean".into(), self.completion_logprob_mean.into());
        if let Some(a) = self.accuracy {
            m.insert("eval/accuracy".into(), a.into());
        }
        for (k, p) in &self.pass_at {
            m.insert(format!("eval/pass@{k}"), (*p).into());
        }
        if let Some((k, p)) = self.mean_at_k {
            m.insert(format!("eval/mean@{k}"), p.into());
        }
        for (name, v) in &self.rewards {
            m.insert(format!("eval/rewards/{name}"), (*v).into());
        }
        for (name, v) in &self.env_metrics {
            m.insert(format!("eval/{name}"), v.clone());
        }
        m
    }

    /// The summary `grpo-host eval` writes: the metrics as plain JSON numbers (non-finite ones as strings).
    pub fn summary(&self) -> serde_json::Value {
        let metrics: serde_json::Map<String, serde_json::Value> = self
            .metrics()
            .into_iter()
            .map(|(k, v)| {
                let value = match v {
                    MetricValue::Number(x) if x.is_finite() => serde_json::json!(x),
                    MetricValue::Number(x) => serde_json::json!(x.to_string()),
                    MetricValue::Text(t) => serde_json::json!(t),
                };
                (k, value)
            })
            .collect();
        serde_json::Value::Object(metrics)
    }

    /// Append the per-task outcomes of the evaluation at `step` to `path` (one JSON object per line).
    pub fn write_completions(&self, path: &Path, step: u64) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut text = String::new();
        for o in &self.outcomes {
            let mut row = serde_json::to_value(o)?;
            row["step"] = step.into();
            text.push_str(&serde_json::to_string(&row)?);
            text.push('\n');
        }
        f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }
}

/// One evaluation: its tasks, settings, episode limits and seed. The same four give the same numbers in training and
/// in `grpo-host eval`.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The held-out tasks ([`eval_tasks`]).
    pub tasks: Vec<Task>,
    /// Greedy and sampled episodes, chunking.
    pub settings: EvalSettings,
    /// The run's episode limits.
    pub limits: EpisodeLimits,
    /// Seeds the sampled episodes.
    pub seed: u64,
    /// How the rewards make a return, as in training (`--reward-weights`, `--overlong-buffer`).
    pub rewards: RewardShaping,
}

impl Evaluation {
    /// Evaluate `model` in this one process ([`Evaluation::run_shard`] of everything, then [`Evaluation::combine`]).
    pub fn run(
        &self,
        model: &Model,
        tokenizer: &Tokenizer,
        env: &EnvironmentPlugin,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<EvalResult>> {
        let shard = self.run_shard(model, tokenizer, env, (0, 1), cancelled)?;
        Ok(shard.map(|s| self.combine(vec![s])))
    }

    /// Play this rank's part of the evaluation: `rank` of `ranks` takes every `ranks`-th chunk of
    /// `settings.batch_tasks` tasks, from chunk `rank`. Each task gets one greedy episode, then `settings.samples`
    /// sampled ones; task `i` samples from `task_seeds(seed, i, ..)` and a chunk is the same batch whichever rank
    /// plays it, so the outcomes do not depend on the number of ranks. The environment's metrics are pulled after
    /// the greedy episodes (they become `eval/<name>`) and after the sampled ones (discarded), so training's own
    /// environment metrics never count evaluation episodes.
    ///
    /// `cancelled` is asked before every engine step; when it says yes the evaluation is abandoned and `None`
    /// returned (a run told to stop must not spend its grace period on an evaluation, which changes nothing it
    /// checkpoints).
    pub fn run_shard(
        &self,
        model: &Model,
        tokenizer: &Tokenizer,
        env: &EnvironmentPlugin,
        (rank, ranks): (usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<EvalShard>> {
        let Evaluation { tasks, settings, limits, seed, rewards } = self;
        let chunk = settings.batch_tasks.max(1);
        let mine: Vec<(usize, &[Task])> = tasks
            .chunks(chunk)
            .enumerate()
            .filter(|(c, _)| c % ranks.max(1) == rank)
            .map(|(c, p)| (c * chunk, p))
            .collect();
        let config = |group_size: usize, sampling: SamplingParams| RolloutConfig {
            group_size,
            max_new_tokens: limits.max_new_tokens,
            max_turns: limits.max_turns,
            max_length: limits.max_length,
            sampling,
            ignore_eos: false,
            max_batch_rows: None,
            multi_step: settings.multi_step,
            rewards: rewards.clone(),
            prompt_limit: limits.prompt_limit,
        };
        let abandon = || -> Result<Option<EvalShard>> {
            // The partial evaluation's episodes must not reach the next training batch's environment metrics.
            env.metrics()?;
            Ok(None)
        };
        // Argmax decoding, under the sampled episodes' repetition penalty: it changes the logits, not how a token
        // is picked from them (transformers applies it to greedy search too).
        let repetition_penalty = settings.sampling.repetition_penalty;
        let greedy_cfg = config(1, SamplingParams { repetition_penalty, ..SamplingParams::greedy() });
        let mut greedy: Vec<(usize, Rollout)> = Vec::new();
        for &(first, part) in &mine {
            let seeds = task_seeds(*seed, first as u64, part.len());
            let Some(episodes) = run_episodes(model, tokenizer, env, part, &greedy_cfg, &seeds, cancelled)? else {
                return abandon();
            };
            greedy.extend(episodes.rollouts.into_iter().map(|r| (first + r.group, r)));
        }
        let env_metrics: Vec<(String, MetricValue)> = env.metrics()?.into_iter().map(|m| (m.name, m.value)).collect();

        let mut samples_solved: BTreeMap<usize, usize> = BTreeMap::new();
        let mut judged_samples = false;
        if settings.samples > 0 {
            let cfg = config(settings.samples, settings.sampling);
            for &(first, part) in &mine {
                let seeds = task_seeds(*seed, first as u64, part.len());
                let Some(episodes) = run_episodes(model, tokenizer, env, part, &cfg, &seeds, cancelled)? else {
                    return abandon();
                };
                for r in episodes.rollouts {
                    judged_samples |= r.solved.is_some();
                    *samples_solved.entry(first + r.group).or_default() += usize::from(r.solved == Some(true));
                }
            }
            // Their metrics would otherwise reach the next training batch's.
            env.metrics()?;
        }
        let outcomes = greedy
            .into_iter()
            .map(|(i, r)| {
                let outcome = TaskOutcome {
                    id: r.task.id.clone(),
                    question: r.task.question.clone(),
                    answer: r.task.answer.clone(),
                    completion: r.transcript.clone(),
                    greedy_return: r.total_reward,
                    greedy_logprob_mean: mean_action_logprob(&r),
                    completion_tokens: r.action.iter().filter(|a| **a).count(),
                    rewards: r.rewards.clone(),
                    solved: r.solved,
                    samples_solved: samples_solved.get(&i).copied().unwrap_or(0),
                };
                (i, outcome)
            })
            .collect();
        Ok(Some(EvalShard { outcomes, env_metrics, judged_samples }))
    }

    /// The evaluation's numbers from every rank's shard. Sums run over the tasks in their order, so they equal one
    /// process's to the bit; the environment's metrics, which only the plugin can compute, are each shard's value
    /// weighted by its share of the tasks (exact for per-episode rates).
    pub fn combine(&self, shards: Vec<EvalShard>) -> EvalResult {
        let total = shards.iter().map(|s| s.outcomes.len()).sum::<usize>().max(1) as f64;
        let judged_samples = shards.iter().any(|s| s.judged_samples);
        let (mut parts, mut indexed) = (Vec::new(), Vec::new());
        // A shard without tasks reports rates over no episodes: they must not count.
        for s in shards.into_iter().filter(|s| !s.outcomes.is_empty()) {
            // Weighted by its share, which is exactly 1 for one process's single shard: its numbers stay as given.
            parts.push((s.outcomes.len() as f64 / total, s.env_metrics));
            indexed.extend(s.outcomes);
        }
        let env_metrics = crate::logging::weighted_mean(parts);
        indexed.sort_by_key(|(i, _)| *i);
        let outcomes: Vec<TaskOutcome> = indexed.into_iter().map(|(_, o)| o).collect();

        let n = outcomes.len().max(1) as f64;
        let mean = |f: &dyn Fn(&TaskOutcome) -> f64| outcomes.iter().map(f).sum::<f64>() / n;
        let share = |f: &dyn Fn(&TaskOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as f64 / n;
        let mut components: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for o in &outcomes {
            for (name, v) in &o.rewards {
                components.entry(name.clone()).or_default().push(*v);
            }
        }
        let samples = self.settings.samples;
        let sampled = samples > 0 && judged_samples;
        EvalResult {
            tasks: outcomes.len(),
            returns_mean: mean(&|o| o.greedy_return),
            accuracy: outcomes.iter().any(|o| o.solved.is_some()).then(|| share(&|o| o.solved == Some(true))),
            pass_at: match sampled {
                true => pass_at_ks(samples).map(|k| (k, mean(&|o| pass_at(samples, o.samples_solved, k)))).collect(),
                false => Vec::new(),
            },
            mean_at_k: sampled.then(|| (samples, mean(&|o| o.samples_solved as f64) / samples as f64)),
            completion_length_mean: mean(&|o| o.completion_tokens as f64),
            completion_logprob_mean: mean(&|o| o.greedy_logprob_mean),
            rewards: components.into_iter().map(|(k, v)| (k, v.iter().sum::<f64>() / v.len() as f64)).collect(),
            env_metrics,
            outcomes,
        }
    }
}

/// One rank's part of an evaluation ([`Evaluation::run_shard`]), sent to the others to be combined.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalShard {
    /// The tasks this rank played: (index in the evaluation's tasks, outcome).
    pub outcomes: Vec<(usize, TaskOutcome)>,
    /// The environment's metrics over this rank's greedy episodes.
    pub env_metrics: Vec<(String, MetricValue)>,
    /// Whether the environment judged any of this rank's sampled episodes.
    pub judged_samples: bool,
}

/// The k of the `eval/pass@k` metrics for `samples` samples per task: the powers of two below it, then itself.
fn pass_at_ks(samples: usize) -> impl Iterator<Item = usize> {
    (0..usize::BITS).map(|b| 1usize << b).take_while(move |&k| k < samples).chain(std::iter::once(samples))
}

/// The unbiased estimate of pass@k from `n` samples of a task of which `c` were solved (Chen et al. 2021, the
/// Codex paper): the chance that k samples drawn without replacement from the n include a solved one,
/// `1 - C(n - c, k) / C(n, k)`, computed as a product of ratios so that no binomial coefficient overflows.
pub fn pass_at(n: usize, c: usize, k: usize) -> f64 {
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// The mean sampler log-probability of an episode's generated tokens (0 for an episode without any).
fn mean_action_logprob(r: &Rollout) -> f64 {
    let (sum, count) = r
        .action
        .iter()
        .zip(&r.sample_logprobs)
        .filter(|(a, _)| **a)
        .fold((0.0f64, 0usize), |(s, c), (_, lp)| (s + f64::from(*lp), c + 1));
    if count == 0 {
        0.0
    } else {
        sum / count as f64
    }
}

/// One line for the console: tasks, return, accuracy, pass@K and mean@K.
pub fn describe(result: &EvalResult) -> String {
    let mut line = format!("{} tasks, return {:.4}", result.tasks, result.returns_mean);
    if let Some(a) = result.accuracy {
        line.push_str(&format!(", accuracy {a:.4}"));
    }
    for (k, p) in &result.pass_at {
        line.push_str(&format!(", pass@{k} {p:.4}"));
    }
    if let Some((k, p)) = result.mean_at_k {
        line.push_str(&format!(", mean@{k} {p:.4}"));
    }
    line.push_str(&format!(", completion length {:.1}", result.completion_length_mean));
    line
}

/// Evaluation inside a training run: its tasks (fixed when the run starts), settings and, on rank 0, where its
/// per-task outcomes go (`<run>/eval_completions.jsonl`). Every rank plays its share ([`Evaluation::run_shard`]);
/// the shards are gathered and combined ([`InTraining::finish`]).
pub struct InTraining {
    evaluation: Evaluation,
    completions: Option<std::path::PathBuf>,
}

impl InTraining {
    /// The run's evaluation, or `None` when it asks for none. `given` are the tasks from `--eval-data` or
    /// `--eval-holdout`; `run_dir` is where the outcomes are written (`None` on ranks that write no files).
    pub fn new(
        env: &EnvironmentPlugin,
        given: Option<&[Task]>,
        settings: EvalSettings,
        limits: EpisodeLimits,
        seed: u64,
        rewards: RewardShaping,
        run_dir: Option<&Path>,
    ) -> Result<Option<InTraining>> {
        if !settings.enabled() {
            return Ok(None);
        }
        let tasks = eval_tasks(env, given, settings.tasks, seed)?;
        let evaluation = Evaluation { tasks, settings, limits, seed, rewards };
        Ok(Some(InTraining { evaluation, completions: run_dir.map(|d| d.join("eval_completions.jsonl")) }))
    }

    /// Whether to evaluate before the first batch of a run that has not started yet.
    pub fn due_before_training(&self, batches_done: u64, steps_done: u64) -> bool {
        self.evaluation.settings.before_train && batches_done == 0 && steps_done == 0
    }

    /// Whether to evaluate after `batches_done` batches of `max_batches`.
    pub fn due_after_batch(&self, batches_done: u64, max_batches: u64) -> bool {
        let every = self.evaluation.settings.every;
        every > 0 && (batches_done.is_multiple_of(every) || batches_done == max_batches)
    }

    /// On resume from the checkpoint at `step`: drop the per-task outcomes logged at `step` or later, which the
    /// resumed run logs again (as the metric sinks cut their history back), so each evaluation appears once.
    pub fn cut_back(&self, step: u64) -> Result<()> {
        self.completions.as_deref().map_or(Ok(()), |path| cut_back_completions(path, step))
    }

    /// Score the evaluation's episodes with the run's loaded reward models too (see [`RewardShaping::scorers`]).
    pub fn set_reward_models(&mut self, shaping: &RewardShaping) {
        self.evaluation.rewards.scorers = shaping.scorers.clone();
    }

    /// The evaluation, whose [`Evaluation::run_shard`] each rank plays.
    pub fn evaluation(&self) -> &Evaluation {
        &self.evaluation
    }

    /// Combine every rank's shard and append the per-task outcomes for `step` (where this rank writes them).
    pub fn finish(&self, shards: Vec<EvalShard>, step: u64) -> Result<EvalResult> {
        let result = self.evaluation.combine(shards);
        if let Some(path) = &self.completions {
            result.write_completions(path, step)?;
        }
        Ok(result)
    }
}

/// Keep the lines of a per-task outcome file whose `step` is below `step` (a missing file is fine).
fn cut_back_completions(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s < step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let tmp = path.with_extension("jsonl.partial");
    std::fs::write(&tmp, kept).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_cuts_the_outcomes_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eval_completions.jsonl");
        cut_back_completions(&path, 3).unwrap();
        assert!(!path.exists());
        let lines =
            ["{\"step\":0,\"id\":\"a\"}", "{\"step\":2,\"id\":\"a\"}", "{\"step\":5,\"id\":\"a\"}", "{\"step\":3"];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        cut_back_completions(&path, 3).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n{}\n", lines[0], lines[1]));
    }

    #[test]
    fn due_points_are_before_training_every_n_batches_and_at_the_end() {
        let settings = EvalSettings { every: 2, before_train: true, ..Default::default() };
        let limits = EpisodeLimits { max_new_tokens: 1, max_turns: 1, max_length: 2, prompt_limit: None };
        let evaluation = Evaluation { tasks: Vec::new(), settings, limits, seed: 0, rewards: Default::default() };
        let e = InTraining { evaluation, completions: None };
        assert!(e.due_before_training(0, 0) && !e.due_before_training(1, 3) && !e.due_before_training(0, 4));
        let due: Vec<u64> = (1..=5).filter(|&b| e.due_after_batch(b, 5)).collect();
        assert_eq!(due, [2, 4, 5]);
    }

    fn outcome(i: usize, solved: bool, samples_solved: usize) -> TaskOutcome {
        TaskOutcome {
            id: format!("t{i}"),
            question: String::new(),
            answer: String::new(),
            completion: format!("c{i}"),
            greedy_return: 0.1 * i as f64 + 0.3,
            greedy_logprob_mean: -0.7 / (i + 1) as f64,
            completion_tokens: 3 + i,
            rewards: BTreeMap::from([("answer".to_string(), i as f64 * 0.25)]),
            solved: Some(solved),
            samples_solved,
        }
    }

    #[test]
    fn pass_at_k_is_the_unbiased_estimate_from_binomials() {
        let choose = |n: u128, k: u128| -> u128 {
            if k > n {
                return 0;
            }
            (0..k).fold(1u128, |acc, i| acc * (n - i) / (i + 1))
        };
        for n in 1..=30usize {
            for c in 0..=n {
                for k in 1..=n {
                    let exact = 1.0 - choose((n - c) as u128, k as u128) as f64 / choose(n as u128, k as u128) as f64;
                    let got = pass_at(n, c, k);
                    assert!((got - exact).abs() < 1e-12, "n {n} c {c} k {k}: {got} vs {exact}");
                }
            }
        }
        assert_eq!(pass_at(16, 4, 1), 0.25, "pass@1 is the share solved");
        assert_eq!((pass_at(8, 0, 8), pass_at(8, 1, 8)), (0.0, 1.0), "pass@n: any solved");
        assert_eq!(pass_at_ks(1).collect::<Vec<_>>(), [1]);
        assert_eq!(pass_at_ks(4).collect::<Vec<_>>(), [1, 2, 4]);
        assert_eq!(pass_at_ks(10).collect::<Vec<_>>(), [1, 2, 4, 8, 10]);
    }

    #[test]
    fn shards_combine_to_the_one_process_result() {
        let settings = EvalSettings { samples: 2, ..Default::default() };
        let limits = EpisodeLimits { max_new_tokens: 1, max_turns: 1, max_length: 2, prompt_limit: None };
        let e = Evaluation { tasks: Vec::new(), settings, limits, seed: 0, rewards: Default::default() };
        let all: Vec<(usize, TaskOutcome)> = (0..5).map(|i| (i, outcome(i, i % 2 == 0, i % 3))).collect();
        let rate = |name: &str, x: f64| vec![(name.to_string(), MetricValue::Number(x))];
        let one = e.combine(vec![EvalShard {
            outcomes: all.clone(),
            env_metrics: rate("env/rate", 0.4),
            judged_samples: true,
        }]);
        // Rank 0 played tasks 0, 1 and 4, rank 1 tasks 2 and 3 (chunks of two, dealt round-robin); a third rank had
        // none, and its metric (a rate over no episodes) must not count.
        let shard = |idx: &[usize], x: f64| EvalShard {
            outcomes: idx.iter().map(|&i| all[i].clone()).collect(),
            env_metrics: rate("env/rate", x),
            judged_samples: true,
        };
        let empty = EvalShard { outcomes: Vec::new(), env_metrics: rate("env/rate", f64::NAN), judged_samples: false };
        let three = e.combine(vec![shard(&[2, 3], 0.5), empty, shard(&[0, 1, 4], 1.0 / 3.0)]);
        let (a, b) = (one.metrics(), three.metrics());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (key, x) in &a {
            let (x, y) = (x.as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-15, "{key}: {x} vs {y}");
            if key != "eval/env/rate" {
                assert_eq!(x, y, "{key}: sums in task order, as one process adds them");
            }
        }
        let ids = |r: &EvalResult| r.outcomes.iter().map(|o| o.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&one), ids(&three), "outcomes in task order");
        // pass@1 is each task's share of solved samples (mean@2); pass@2 whether one was solved.
        assert_eq!(one.pass_at, [(1, 0.4), (2, 0.6)]);
        // 0 + 1 + 2 + 0 + 1 of the 5 tasks' 2 samples each.
        assert_eq!(one.mean_at_k, Some((2, 0.4)));
    }
}
