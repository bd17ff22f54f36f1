//! `grpo-host sft` as a run of its own: a run folder with `config.json` and the loggers' files (`sft/*` rows on the
//! optimizer-step axis, as the warm-up logs them), checkpoints every `--checkpoint-interval` steps and at the end,
//! `--resume` that continues exactly (weights, AdamW moments, loss scale, schedule and the data stream's position),
//! LoRA, a stop on SIGINT/SIGTERM that saves where it is, and data parallelism under torchrun.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::render::{LossOn, RenderSettings};
use super::stream::Stream;
use super::{data, eval, render, tools_json, Demonstrations, Rendered, Renderer, SftStep};
use crate::checkpoint::{self, TrainerState};
use crate::data::DatasetSpec;
use crate::distributed::World;
use crate::error::RunFailed;
use crate::logging::{metrics, Loggers, Metrics};
use crate::plugins::{DiscoveryOptions, Registry};
use crate::train::best;
use crate::train::config::{CheckpointSettings, LogSettings, ModelSettings, OptimizerSettings};
use crate::train::optimizer::{AdamW, Schedule};
use crate::train::policy::Policy;
use crate::train::precision::LossScaler;
use crate::train::run_dir::{self, RunPaths};
use crate::train::StopRequest;
use crate::user_error;

/// Where the conversations come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftSource {
    /// A dataset of conversations in TRL's formats (`--data`, `--dataset-config`, `--dataset-split`): a file,
    /// folder, glob or hub dataset id.
    Data(DatasetSpec),
    /// An environment's demonstrations of its training tasks (`--env`, `--env-config`).
    Environment {
        /// The environment plugin's name.
        name: String,
        /// Its options.
        config: Json,
    },
}

/// A supervised fine-tuning run, as `grpo-host sft`'s flags give it (written to the run's `config.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftConfig {
    /// The conversations.
    pub source: SftSource,
    /// Where plugins are searched first (for `SftSource::Environment`).
    pub plugin_dirs: Vec<PathBuf>,
    /// The model, its precision and LoRA.
    pub model: ModelSettings,
    /// Optimizer steps in all.
    pub max_steps: u64,
    /// Passes over the dataset to train for (`--num-train-epochs`), which set `max_steps` once the rows are known.
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Rows per step.
    pub batch_size: usize,
    /// Rows per forward/backward (the step's gradient does not depend on it).
    pub micro_batch_size: usize,
    /// Instead, rows longest first within this many padded tokens per forward/backward (`--micro-batch-tokens`).
    #[serde(default)]
    pub micro_batch_tokens: Option<usize>,
    /// Tokens kept of each row (the rest is cut off); `None` keeps them all.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Which tokens of a row the loss covers.
    #[serde(default)]
    pub loss_on: LossOn,
    /// NEFTune's noise scale on the input embeddings of training forwards (`--neftune-noise-alpha`).
    #[serde(default)]
    pub neftune_noise_alpha: Option<f64>,
    /// The column of a language-modeling row's text (TRL's `dataset_text_field`).
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Held-out evaluation; `None` without `--eval-data`.
    #[serde(default)]
    pub eval: Option<SftEvalSettings>,
    /// AdamW and its schedule.
    pub optimizer: OptimizerSettings,
    /// The order of the data.
    pub seed: u64,
    /// The run's folder, checkpoints and `--resume`.
    pub checkpoints: CheckpointSettings,
    /// W&B and TensorBoard.
    pub logging: LogSettings,
    /// Data parallel (under torchrun): seconds a rank waits in a collective before it gives up on the others.
    #[serde(default = "default_dist_timeout")]
    pub dist_timeout_secs: f64,
}

fn default_dist_timeout() -> f64 {
    300.0
}

fn default_text_field() -> String {
    "text".into()
}

/// `grpo-host sft`'s held-out evaluation (TRL's `eval_dataset` with `eval_steps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftEvalSettings {
    /// Where its rows come from.
    pub rows: HeldOutRows,
    /// Evaluate after every this many steps as well as after the last (0: after the last only).
    pub every: u64,
    /// Also evaluate before the first step (not on a resume), logged at step 0 (transformers' `eval_on_start`).
    #[serde(default)]
    pub on_start: bool,
}

/// Where the held-out rows come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldOutRows {
    /// A dataset of their own (`--eval-data`, in `--data`'s formats).
    Data(DatasetSpec),
    /// The last rows of `--data` (`--eval-holdout N`), which are then not trained on.
    Holdout(usize),
}

impl HeldOutRows {
    /// The flag that named them, for messages.
    fn flag(&self) -> &'static str {
        match self {
            HeldOutRows::Data(_) => "--eval-data",
            HeldOutRows::Holdout(_) => "--eval-holdout",
        }
    }
}

impl SftConfig {
    /// Where the held-out rows come from, when there are any.
    fn held_out_rows(&self) -> Option<&HeldOutRows> {
        self.eval.as_ref().map(|e| &e.rows)
    }

    /// How a step's rows are grouped into forward/backward passes.
    fn chunking(&self) -> crate::train::experience::Chunking {
        use crate::train::experience::Chunking;
        self.micro_batch_tokens.map_or(Chunking::Rows(self.micro_batch_size), Chunking::Tokens)
    }

    /// How rows become training input.
    fn render_settings(&self) -> RenderSettings {
        RenderSettings { loss_on: self.loss_on, max_length: self.max_length }
    }

    /// The settings that change what the run computes: a resumed run must keep them unless
    /// `--allow-config-change` (the step count, micro-batch size, checkpoints, logging and threads may change).
    fn result_settings(&self) -> Json {
        let m = &self.model;
        serde_json::json!({
            "--data/--dataset-config/--dataset-split/--env/--env-config": self.source,
            "--dataset-text-field": self.text_field,
            "--eval-holdout": match self.held_out_rows() {
                Some(HeldOutRows::Holdout(n)) => *n,
                _ => 0,
            },
            "--model": m.model,
            "--model-revision": m.revision,
            "--dtype": m.dtype,
            "--mixed-precision": m.mixed_precision,
            "--lora-rank/--lora-alpha/--lora-dropout/--use-rslora/--use-dora": m.lora,
            "--router-aux-loss-coef": m.router_aux_loss_coef,
            "--chat-template-kwargs": m.chat_template_kwargs,
            "--chat-template": m.chat_template,
            "--batch-size": self.batch_size,
            "--max-length": self.max_length,
            "--assistant-only-loss/--completion-only-loss": self.loss_on,
            "--neftune-noise-alpha": self.neftune_noise_alpha,
            "--lr/--lr-schedule/--lr-scheduler-kwargs/--min-lr-ratio/--warmup-steps/--weight-decay/--max-norm":
                self.optimizer,
            "--seed": self.seed,
        })
    }

    fn default_run_name(&self) -> String {
        let source = match &self.source {
            SftSource::Data(spec) => {
                let last = spec.source.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
                let stem = last.split('.').next().unwrap_or_default().replace(['*', '?'], "");
                if stem.is_empty() {
                    "data".to_string()
                } else {
                    stem
                }
            }
            SftSource::Environment { name, .. } => name.clone(),
        };
        format!("sft-{source}-{}", crate::calendar::UtcDateTime::now().compact())
    }
}

/// How the steps ended.
enum Ending {
    Completed,
    /// A signal asked for a stop; the step in flight was finished first.
    Stopped,
    /// Resumed from the run's final checkpoint.
    AlreadyComplete,
}

/// Run the fine-tuning; returns the process exit code. Under torchrun this process is one rank of a data-parallel
/// job: every step takes `batch_size` rows per rank, each rank computes its share of the token-weighted
/// mean loss's gradient, the gradients are averaged, and rank 0 alone writes the run's files.
pub fn run(mut config: SftConfig) -> Result<i32> {
    crate::runtime::set_threads(config.model.threads);
    crate::runtime::set_deterministic(config.model.deterministic)?;
    let world = World::for_run(&mut config.model.device, Duration::from_secs_f64(config.dist_timeout_secs))?;
    let stop = StopRequest::install().context("installing the SIGINT/SIGTERM handlers")?;
    let (paths, history) = world.on_main("choosing the run directory", || {
        let paths = RunPaths::resolve(&config.checkpoints, || config.default_run_name())?;
        let history = match &paths.resume {
            Some(_) => resume_guard(&config, &paths.run_dir, world.size)?,
            None => Vec::new(),
        };
        Ok((paths, history))
    })?;
    let _unused = paths.unused_folder(world.is_main());
    // The data before the model: a bad file or plugin fails in seconds.
    let allow_download = config.model.allow_download;
    let mut eval_examples = None;
    let (examples, demos, env) = match &config.source {
        SftSource::Data(spec) => {
            let mut examples = data::examples(spec, "--data", "train", allow_download, &config.text_field)?;
            if let Some(HeldOutRows::Holdout(n)) = config.held_out_rows() {
                if *n >= examples.len() {
                    return Err(user_error!(
                        "--eval-holdout {n}: --data has {} rows, so none would be left to train on",
                        examples.len()
                    ));
                }
                eval_examples = Some(examples.split_off(examples.len() - n));
            }
            (examples, None, None)
        }
        SftSource::Environment { name, config: options } => {
            let registry = Registry::discover(&DiscoveryOptions::new(config.plugin_dirs.clone()))?;
            let env = registry.environment(name, options)?;
            (Vec::new(), Some(Demonstrations::new(env.clone(), config.seed)?), Some(env))
        }
    };
    if let Some(rows @ HeldOutRows::Data(spec)) = config.held_out_rows() {
        eval_examples = Some(data::examples(spec, rows.flag(), "test", allow_download, &config.text_field)?);
    }
    let tools = match &env {
        Some(env) => tools_json(&env.tools()?),
        None => None,
    };
    let mut policy = Policy::load(&config.model, false, config.seed)?;
    policy.model().check_max_length(config.max_length)?;
    policy.set_neftune_noise_alpha(config.neftune_noise_alpha.unwrap_or(0.0));
    let mut optimizer = policy.optimizer(config.optimizer.adamw());
    let mut scaler = LossScaler::new(policy.precision().mode);
    let state = crate::train::starting_state(&paths, config.seed, &mut policy, &mut optimizer, &mut scaler)?;
    if let Some(ckpt) = paths.resume.as_ref().filter(|_| world.is_main()) {
        eprintln!("resuming from {} (step {})", ckpt.display(), state.global_step);
    }
    crate::train::synchronize_start(&world, &policy, &optimizer)?;
    let mut stream = match demos {
        Some(demos) => Stream::Demos(Box::new(demos), Renderer::new(policy.tokenizer(), tools.as_deref())?),
        None => Stream::data(&examples, policy.tokenizer(), config.render_settings(), config.seed, "--data")?,
    };
    if let (Some(epochs), Stream::Data { rows, .. }) = (config.epochs, &stream) {
        let global_batch = config.batch_size * world.size;
        let (steps, line) = crate::train::config::steps_for_epochs(epochs, rows.len(), global_batch, "rows", "steps");
        config.max_steps = steps;
        if world.is_main() {
            eprintln!("{line}");
        }
    }
    // Each rank scores its share of the held-out rows.
    let held_out = eval_examples
        .zip(config.held_out_rows())
        .map(|(examples, rows)| {
            render::render_rows(&examples, policy.tokenizer(), config.render_settings(), rows.flag())
        })
        .transpose()?
        .map(|rows| eval::share(&rows, world.rank, world.size));
    // Checkpoints record where the data stream was; one from before they did took `batch_size` per step.
    let per_step = (config.batch_size * world.size) as u64;
    stream.seek(state.sft_position.unwrap_or(state.global_step * per_step));
    let loggers = if world.is_main() {
        open_loggers(&config, &paths, &state, &policy, history, world.size)?
    } else {
        Loggers::silent()
    };
    let resumed_step = state.global_step;
    let mut run = SftRun {
        schedule: config.optimizer.schedule(config.max_steps, 0)?,
        config: &config,
        policy: &policy,
        world: &world,
        optimizer,
        scaler,
        state,
        stream,
        held_out,
        loggers,
        stop,
        checkpoints: paths.checkpoints,
        last_save: Instant::now(),
        saved_at: paths.resume.map(|dir| (resumed_step, dir)),
        new_best: false,
    };
    let ending = crate::error::catch_panics(|| run.steps());
    run.finish(ending)
}

/// The pieces of a running fine-tuning.
struct SftRun<'a> {
    config: &'a SftConfig,
    policy: &'a Policy,
    /// The data-parallel ranks (a world of one in a single process).
    world: &'a World,
    optimizer: AdamW,
    scaler: LossScaler,
    schedule: Schedule,
    state: TrainerState,
    stream: Stream<'a>,
    /// This rank's share of the `--eval-data` rows.
    held_out: Option<Vec<Rendered>>,
    loggers: Loggers,
    stop: StopRequest,
    checkpoints: PathBuf,
    /// When the last checkpoint was written (or the run started), for `--checkpoint-every-minutes`.
    last_save: Instant,
    /// The step the last checkpoint holds, and where it is (the resumed one at first).
    saved_at: Option<(u64, PathBuf)>,
    /// The last evaluation was the best so far by `--metric-for-best-model`: a checkpoint is due at this step.
    new_best: bool,
}

impl SftRun<'_> {
    fn steps(&mut self) -> Result<Ending> {
        let max_steps = self.config.max_steps;
        self.state.early_stopped = best::still_stopped(self.config.checkpoints.best_model.as_ref(), &self.state);
        if (self.state.global_step >= max_steps || self.state.early_stopped) && self.saved_at.is_some() {
            return Ok(Ending::AlreadyComplete);
        }
        let config = self.config;
        let on_start = config.eval.as_ref().filter(|e| e.on_start);
        if let Some(eval) = on_start.filter(|_| self.state.global_step == 0 && self.saved_at.is_none()) {
            if (eval.every == 1 || max_steps == 1) && self.world.is_main() {
                eprintln!(
                    "warning: --eval-on-start: the evaluation after the first step is logged at step 0 too and \
                     replaces the one before training there (the console shows both)"
                );
            }
            // In the first step's row, as transformers logs it at step 0; it is no candidate for the best
            // checkpoint, since no checkpoint holds the weights before training.
            if let Some(metrics) = self.score(0, false)? {
                self.loggers.log(0, metrics);
            }
        }
        let (mut stopping, _) = self.agree()?;
        while self.state.global_step < max_steps {
            if stopping {
                return Ok(Ending::Stopped);
            }
            let (step, start) = (self.state.global_step, Instant::now());
            // Every rank draws the whole step's conversations in the same order and keeps its own share.
            let (per_rank, rank) = (self.config.batch_size, self.world.rank);
            let mut rows = self.stream.take(per_rank * self.world.size, self.config.render_settings())?;
            let rows: Vec<Rendered> = rows.drain(rank * per_rank..(rank + 1) * per_rank).collect();
            let lr = self.schedule.lr(step);
            let mut sft = SftStep {
                model: self.policy.model(),
                optimizer: &mut self.optimizer,
                scaler: &mut self.scaler,
                micro_batch: self.config.chunking(),
                max_norm: self.config.optimizer.max_norm,
                world: self.world,
                seed: self.config.seed,
            };
            let mut row = match sft.run(&rows, lr, step)? {
                Some(record) => record.metrics(),
                None => {
                    // A skipped step still counts (as in train), so the schedule and the data keep their places.
                    self.state.invalid_loss_count += 1;
                    metrics! {"sft/learning_rate" => lr}
                }
            };
            row.insert("sft/skipped_steps".into(), self.state.invalid_loss_count.into());
            if let Some(epoch) = self.stream.epoch() {
                row.insert("sft/epoch".into(), epoch.into());
            }
            row.insert("sft/step_seconds".into(), start.elapsed().as_secs_f64().into());
            if let Some(held_out) = self.evaluate(step + 1)? {
                row.extend(held_out);
            }
            self.loggers.log(step, row);
            self.state.global_step += 1;
            self.state.sft_position = Some(self.stream.position());
            let due;
            (stopping, due) = self.agree()?;
            // Every rank judged the same evaluation, so all stop early together.
            if self.state.early_stopped {
                self.loggers.commit();
                break;
            }
            if due && self.state.global_step < max_steps {
                self.loggers.log(step, crate::train::metrics::checkpoint_saved(&self.state));
                self.loggers.flush_durable();
                let dir = self.save()?;
                self.loggers.println(&format!("checkpoint saved: {}", dir.display()));
            }
            self.loggers.commit();
        }
        Ok(Ending::Completed)
    }

    /// The held-out metrics after `done` steps when an evaluation is due then: after the last step, and every
    /// `--eval-every` steps. Every rank takes part.
    fn evaluate(&mut self, done: u64) -> Result<Option<crate::logging::Metrics>> {
        let Some(settings) = &self.config.eval else { return Ok(None) };
        if !(done == self.config.max_steps || (settings.every > 0 && done.is_multiple_of(settings.every))) {
            return Ok(None);
        }
        self.score(done, true)
    }

    /// The held-out metrics of the model after `done` steps, judged for the best checkpoint when `judged`.
    fn score(&mut self, done: u64, judged: bool) -> Result<Option<crate::logging::Metrics>> {
        let Some(rows) = &self.held_out else { return Ok(None) };
        let start = Instant::now();
        let scored = eval::held_out(self.policy.model(), rows, self.config.chunking(), self.world)?;
        let seconds = start.elapsed().as_secs_f64();
        self.loggers.println(&format!(
            "eval at step {done}: loss {:.4} accuracy {:.3} over {} tokens ({seconds:.1}s)",
            scored.loss, scored.accuracy, scored.tokens
        ));
        let mut metrics = scored.metrics();
        metrics.insert("sft/eval_seconds".into(), seconds.into());
        if let Some(best_model) = self.config.checkpoints.best_model.as_ref().filter(|_| judged) {
            let verdict = best::judge(best_model, &mut self.state, &metrics, done, done == self.config.max_steps)?;
            self.new_best |= verdict.new_best;
            if let Some(line) = verdict.stop {
                self.loggers.println(&line);
            }
        }
        Ok(Some(metrics))
    }

    /// Between steps every rank takes the same decisions: whether to stop (a signal reached any rank) and whether
    /// a checkpoint is due (rank 0's clock).
    fn agree(&self) -> Result<(bool, bool)> {
        let all = self.world.gather("agreeing between steps", (self.stop.signal(), self.checkpoint_due()))?;
        self.stop.adopt(all.iter().find_map(|&(signal, _)| signal));
        Ok((self.stop.requested(), all[0].1))
    }

    /// Every `--checkpoint-interval` steps (0: only at the end), and when `--checkpoint-every-minutes` have passed.
    fn checkpoint_due(&self) -> bool {
        let c = &self.config.checkpoints;
        let by_count = c.interval > 0 && self.state.global_step.is_multiple_of(c.interval);
        let by_time = c.every_minutes > 0.0 && self.last_save.elapsed().as_secs_f64() >= c.every_minutes * 60.0;
        by_count || by_time || self.new_best
    }

    /// Rank 0 writes the checkpoint once every rank's weights are checked to be the same; no rank goes on before
    /// it is durable, and its outcome is every rank's.
    fn save(&mut self) -> Result<PathBuf> {
        if self.world.is_distributed() {
            let what = format!("at step {}", self.state.global_step);
            let trained = crate::train::trained_state(self.policy, &self.optimizer);
            self.world.check_same(&what, crate::distributed::fingerprint(&trained))?;
        }
        let written = self.world.is_main().then(|| self.write_checkpoint());
        let dir = self.world.share_from_main("writing the checkpoint", written)?;
        self.last_save = Instant::now();
        self.saved_at = Some((self.state.global_step, dir.clone()));
        Ok(dir)
    }

    fn write_checkpoint(&mut self) -> Result<PathBuf> {
        self.state.wandb_run_id = self.loggers.wandb_run_id().map(String::from);
        let settings = &self.config.checkpoints;
        let data = self.policy.checkpoint_data(&self.optimizer, &self.scaler, self.state.clone(), settings);
        let dir = checkpoint::save(&self.checkpoints, data)?;
        self.new_best = false;
        // Only after the new checkpoint is durable, and never the newest nor the best.
        let best = self.state.best.as_ref().map(|b| b.step);
        checkpoint::prune(&self.checkpoints, self.config.checkpoints.save_total_limit, best)?;
        Ok(dir)
    }

    /// The final checkpoint (unless the last one holds this step already), the summary and the exit code. After
    /// an error inside a step nothing is saved: the model may be between two steps' states.
    fn finish(mut self, ending: Result<Ending>) -> Result<i32> {
        let ending = match ending {
            Ok(ending) => ending,
            Err(err) => {
                let hint = match checkpoint::latest(&self.checkpoints) {
                    Some(dir) => {
                        let dir = dir.display();
                        format!(
                            "resume from its last checkpoint with: grpo-host sft --resume {dir} (and the same flags)"
                        )
                    }
                    None => "no checkpoint was written before it".to_string(),
                };
                self.loggers.set_summary(self.summary(false, false));
                self.loggers.println(&format!("the run failed at step {}; {hint}", self.state.global_step + 1));
                self.loggers.finish(1);
                return Err(err.context(RunFailed(format!("step {} failed; {hint}", self.state.global_step + 1))));
            }
        };
        if matches!(ending, Ending::AlreadyComplete) {
            self.loggers.println(best::nothing_to_do(&self.state));
            self.loggers.finish(0);
            return Ok(0);
        }
        self.loggers.flush_durable();
        let saved = match &self.saved_at {
            Some((step, dir)) if *step == self.state.global_step => Ok(dir.clone()),
            _ => self.save(),
        };
        let completed = matches!(ending, Ending::Completed);
        self.loggers.set_summary(self.summary(saved.is_ok(), completed));
        let dir = match saved {
            Ok(dir) => dir,
            Err(err) => {
                self.loggers.finish(1);
                return Err(err.context(RunFailed("saving the final checkpoint".into())));
            }
        };
        let code = if completed {
            if let Some(best) = &self.state.best {
                let at = self.checkpoints.join(format!("step_{}", best.step));
                self.loggers.println(&format!("best {} {:.4}: {}", best.metric, best.value, at.display()));
            }
            if self.world.is_main() {
                // An adapter is no model directory of its own: a later run starts from it with --lora-adapter.
                let flag = if self.config.model.lora.is_some() { "--lora-adapter" } else { "--model" };
                println!("saved the fine-tuned model to {} (use it with {flag} {})", dir.display(), dir.display());
            }
            0
        } else {
            self.loggers.println(&format!(
                "stopped by {} after step {}/{}: checkpoint saved; resume with: grpo-host sft --resume {} (and the \
                 same flags)",
                self.stop.name(),
                self.state.global_step,
                self.config.max_steps,
                dir.display()
            ));
            self.stop.exit_code()
        };
        self.loggers.finish(code);
        Ok(code)
    }

    fn summary(&self, saved: bool, completed: bool) -> Metrics {
        let mut m = metrics! {
            "final/total_steps" => self.state.global_step,
            "checkpoint/saved" => saved,
            "checkpoint/step" => self.state.global_step,
            "training/completed" => completed,
        };
        m.extend(best::final_metrics(&self.state));
        m
    }
}

/// On resume: the saved run's result-changing settings must equal these, unless `--allow-config-change`, which
/// records the change. Returns the run's change history for its new `config.json`.
fn resume_guard(config: &SftConfig, run_dir: &std::path::Path, world_size: usize) -> Result<Vec<Json>> {
    let Some((saved, history)) = run_dir::saved_config(run_dir) else { return Ok(Vec::new()) };
    let Ok(before) = serde_json::from_value::<SftConfig>(saved["sft"].clone()) else { return Ok(history) };
    // Batch sizes compare as global ones, so a run may continue in another number of processes.
    let saved_world = saved["world_size"].as_u64().unwrap_or(1) as usize;
    let global = |c: &SftConfig, size: usize| SftConfig { batch_size: c.batch_size * size, ..c.clone() };
    let (now, was) = (global(config, world_size).result_settings(), global(&before, saved_world).result_settings());
    let differences = now
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(flag, value)| was.get(flag.as_str()) != Some(value))
        .map(|(flag, value)| format!("{flag}: {} -> {value}", was[flag.as_str()]))
        .collect();
    run_dir::accept_changes(differences, history, config.checkpoints.allow_config_change, run_dir)
}

/// The run's resolved settings for `config.json`, and its loggers.
fn open_loggers(
    config: &SftConfig,
    paths: &RunPaths,
    state: &TrainerState,
    policy: &Policy,
    changes: Vec<Json>,
    world_size: usize,
) -> Result<Loggers> {
    let resolved = run_dir::resolved_config(
        serde_json::json!({"sft": config, "run_name": paths.run_name}),
        policy,
        serde_json::json!({"world_size": world_size, "config_changes": changes}),
    );
    let environment = match &config.source {
        SftSource::Environment { name, .. } => name.as_str(),
        SftSource::Data(_) => "data",
    };
    paths.open_loggers(run_dir::LogStart {
        resolved,
        names: ("sft", environment),
        logging: &config.logging,
        run_name_flag: config.checkpoints.run_name.as_deref(),
        state,
        total_steps: config.max_steps,
    })
}
