//! Where metrics go: the JSONL file and console always, W&B's own run file (offline, and uploaded from a background
//! thread when online), and TensorBoard event files as re-grpo's fallback when W&B is off.
//!
//! # How the trainer uses it
//!
//! ```no_run
//! # use grpo_host::logging::*;
//! # fn demo(cfg: LoggingConfig) -> anyhow::Result<()> {
//! let mut loggers = Loggers::new(&cfg)?;          // user mistakes (bad run id, unwritable dir) are user errors
//! loggers.set_total_steps(100);                    // the console bar's length and ETA
//! for step in 0..100u64 {
//!     let mut m = Metrics::new();
//!     m.insert("rollouts/returns_mean".into(), 0.5.into());
//!     loggers.log(step, m);                        // may be called several times per step: keys merge
//!     loggers.log(step, metrics! {"training_step/loss" => 0.1});
//!     loggers.commit();                            // the step is complete: every sink gets one row
//! }
//! loggers.set_summary(metrics! {"final/total_steps" => 100});
//! loggers.finish(0);                               // waits a bounded time for the W&B upload
//! # Ok(()) }
//! ```
//!
//! Steps must not go backwards: a `log` at a step below the pending one is dropped with a warning (W&B would drop
//! it too). Dropping `Loggers` without `finish` (a panic unwinding through the trainer) finishes with exit code 1, so
//! the W&B run is marked failed rather than left running.
//!
//! Sinks never fail the run: an I/O or network error is one warning on stderr, and the sink stops or degrades.
//!
//! # Resuming and checkpoints
//!
//! A resumed run sets [`LoggingConfig::resume_from_step`] to its checkpoint's `global_step`: every sink forgets
//! what the stopped run logged from that step on (the JSONL files are cut back, W&B and TensorBoard continue from
//! it), and `log` drops steps below it. Before writing a checkpoint, call [`Loggers::flush_durable`]: it commits the
//! pending step and fsyncs, so every row the checkpoint covers is on disk before the checkpoint exists.

pub mod config;
pub mod console;
pub mod json;
pub mod jsonl;
pub mod system;
pub mod tensorboard;
pub mod wandb;

use std::collections::BTreeMap;

pub use config::{
    default_project, Env, LoggingArgs, LoggingConfig, ResumeMode, UploadTuning, WandbFlags, WandbMode, WandbSettings,
};
pub use system::{DistInfo, SystemMetrics};

/// One logged value: the SDK's type, so that plugin metrics, host metrics and every sink share it unconverted.
pub use grpo_sdk::MetricValue;

/// A set of metrics by name (sorted, so every sink writes keys in the same order).
pub type Metrics = BTreeMap<String, MetricValue>;

/// Metrics reported by several parts of one computation (ranks, evaluation shards) as one set: each number is the
/// mean over the parts that reported it, weighted as given (1 each for a plain mean), and each text the first
/// part's.
pub fn weighted_mean(parts: impl IntoIterator<Item = (f64, Vec<(String, MetricValue)>)>) -> Metrics {
    let mut numbers: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut out = Metrics::new();
    for (weight, part) in parts {
        for (name, value) in part {
            match value {
                MetricValue::Number(x) => {
                    let e = numbers.entry(name).or_default();
                    e.0 += weight * x;
                    e.1 += weight;
                }
                text => {
                    out.entry(name).or_insert(text);
                }
            }
        }
    }
    out.extend(numbers.into_iter().map(|(k, (sum, weight))| (k, MetricValue::Number(sum / weight))));
    out
}

/// Build a [`Metrics`] map: `metrics! {"training_step/loss" => 0.5, "accelerate/device" => "cpu"}`.
#[macro_export]
macro_rules! metrics {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = $crate::logging::Metrics::new();
        $( m.insert(($k).to_string(), $crate::logging::MetricValue::from($v)); )*
        m
    }};
}
pub use crate::metrics;

/// A table logged at a step, beside its row: the evaluation's per-task episodes (`eval/completions`). W&B shows it
/// as a table, TensorBoard as text; the JSONL files leave it out (the run's `eval_completions.jsonl` holds the
/// same outcomes in full). Training's rollouts have their own [`CompletionRow`] table.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// The key it is logged under.
    pub key: String,
    /// Column names.
    pub columns: Vec<String>,
    /// One cell per column in each row: a string, number, boolean or null.
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// One row of the completions table: what the model saw, what it wrote, and how it was scored.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionRow {
    /// The optimizer step the rollout belongs to.
    pub step: u64,
    /// The prompt as rendered for the model (or the dialog so far).
    pub prompt: String,
    /// The model's completion (for multi-turn environments, the transcript).
    pub completion: String,
    /// Reward components by name (for example `total`, `format`, `answer`).
    pub rewards: BTreeMap<String, f64>,
    /// The advantage the algorithm assigned to this rollout.
    pub advantage: f64,
}

/// A destination for metrics. [`Loggers`] calls `log` once per completed step with the merged row, with strictly
/// increasing steps; implementations must return quickly (microseconds) and never panic on I/O trouble.
pub trait Sink: Send {
    /// A short name for warnings ("jsonl", "wandb", ...).
    fn name(&self) -> &'static str;
    /// The complete row of one step.
    fn log(&mut self, step: u64, row: &Metrics);
    /// A completions table logged at `step`.
    fn log_completions(&mut self, _step: u64, _rows: &[CompletionRow]) {}
    /// Another [`Table`] logged at `step` (by default not at all).
    fn log_table(&mut self, _step: u64, _table: &Table) {}
    /// Overrides of the run summary (by default the last value of every key).
    fn set_summary(&mut self, _summary: &Metrics) {}
    /// The number of steps the run will take, once known.
    fn set_total_steps(&mut self, _total: u64) {}
    /// Print a line for the user without tearing a progress bar.
    fn println(&self, _line: &str) {}
    /// Make everything logged so far survive a kill or a power loss (fsync); called before a checkpoint is written.
    fn flush_durable(&mut self) {}
    /// The run is over; `exit_code` 0 means success. Flush and release everything, waiting a bounded time.
    fn finish(&mut self, exit_code: i32);
}

/// The fan-out the trainer holds: merges the `log` calls of one step, then hands the row to every sink.
pub struct Loggers {
    sinks: Vec<Box<dyn Sink>>,
    pending: Option<(u64, Metrics)>,
    last_step: Option<u64>,
    dropped_out_of_order: u64,
    resume_from_step: Option<u64>,
    dropped_before_resume: u64,
    finished: bool,
    wandb_dir: Option<std::path::PathBuf>,
    wandb_run_id: Option<String>,
    /// Print nothing (see [`Loggers::silent`]).
    silent: bool,
}

impl Loggers {
    /// Build the sinks a configuration asks for: JSONL and console always, W&B unless disabled, TensorBoard when a
    /// log dir is given and W&B is disabled or `tensorboard_with_wandb` asks for both.
    pub fn new(cfg: &LoggingConfig) -> anyhow::Result<Loggers> {
        Self::with_env(cfg, &config::process_env())
    }

    /// [`Loggers::new`] with the `WANDB_*` environment (and `HOME`) given explicitly, for tests and embedding.
    pub fn with_env(cfg: &LoggingConfig, env: &config::Env) -> anyhow::Result<Loggers> {
        let settings = WandbSettings::resolve(cfg, env)?;
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        sinks.push(Box::new(jsonl::JsonlSink::create_resumed(&cfg.run_dir, cfg.resume_from_step)?));
        if cfg.console {
            sinks.push(Box::new(console::ConsoleSink::new(cfg.total_steps)));
        }
        let mut wandb_dir = None;
        let mut wandb_run_id = None;
        if settings.mode != WandbMode::Disabled {
            let sink = wandb::WandbSink::start(&settings, &cfg.config, cfg)?;
            wandb_dir = Some(sink.run_dir().to_path_buf());
            wandb_run_id = Some(settings.run_id.clone());
            sinks.push(Box::new(sink));
        }
        if let Some(dir) = &cfg.log_dir {
            if settings.mode == WandbMode::Disabled || cfg.tensorboard_with_wandb {
                let dir = dir.join(&cfg.run_name);
                let sink = tensorboard::TensorBoardSink::create_resumed(&dir, cfg.resume_from_step).map_err(|e| {
                    crate::user_error!(
                        "cannot write TensorBoard events under {}: {e}; pass a writable --log-dir",
                        dir.display()
                    )
                })?;
                sinks.push(Box::new(sink));
            } else {
                eprintln!(
                    "note: --log-dir is the TensorBoard fallback and is used only when W&B is disabled \
                     (--no-wandb or WANDB_MODE=disabled); W&B is {}, so no TensorBoard files are written",
                    settings.mode.as_str()
                );
            }
        }
        let mut loggers = Loggers::from_sinks(sinks);
        loggers.wandb_dir = wandb_dir;
        loggers.wandb_run_id = wandb_run_id;
        loggers.set_resume_from_step(cfg.resume_from_step);
        Ok(loggers)
    }

    /// A fan-out over the given sinks (tests, or a trainer that builds its own).
    pub fn from_sinks(sinks: Vec<Box<dyn Sink>>) -> Loggers {
        Loggers {
            sinks,
            pending: None,
            last_step: None,
            dropped_out_of_order: 0,
            resume_from_step: None,
            dropped_before_resume: 0,
            finished: false,
            wandb_dir: None,
            wandb_run_id: None,
            silent: false,
        }
    }

    /// No sinks and no console lines: a data-parallel rank other than 0, whose numbers reach rank 0's loggers.
    pub fn silent() -> Loggers {
        let mut loggers = Loggers::from_sinks(Vec::new());
        loggers.silent = true;
        loggers
    }

    /// Drop every later `log` and `log_completions` below `step`: the stopped run logged those steps already (set by
    /// [`Loggers::new`] from [`LoggingConfig::resume_from_step`]; the sinks themselves are told at creation).
    pub fn set_resume_from_step(&mut self, step: Option<u64>) {
        self.resume_from_step = step;
    }

    /// The step the run resumed from, if it did.
    pub fn resume_from_step(&self) -> Option<u64> {
        self.resume_from_step
    }

    fn before_resume(&mut self, step: u64) -> bool {
        let Some(from) = self.resume_from_step.filter(|&from| step < from) else {
            return false;
        };
        self.dropped_before_resume += 1;
        if self.dropped_before_resume == 1 {
            eprintln!(
                "note: metrics at step {step} are dropped: the run resumed at step {from}, and the steps before it are \
                 already logged"
            );
        }
        true
    }

    /// The W&B run directory (the one `wandb sync` takes), when W&B is enabled.
    pub fn wandb_run_dir(&self) -> Option<&std::path::Path> {
        self.wandb_dir.as_deref()
    }

    /// The W&B run id, when W&B is enabled; store it with checkpoints to continue the same W&B run on resume.
    pub fn wandb_run_id(&self) -> Option<&str> {
        self.wandb_run_id.as_deref()
    }

    /// Add metrics to `step`. Calls for the same step merge (later values win per key); a larger step first
    /// commits the pending one.
    pub fn log(&mut self, step: u64, metrics: Metrics) {
        if self.finished || self.before_resume(step) {
            return;
        }
        let behind_committed = self.last_step.is_some_and(|last| step <= last);
        let behind_pending = self.pending.as_ref().is_some_and(|(s, _)| step < *s);
        if behind_committed || behind_pending {
            self.dropped_out_of_order += 1;
            if self.dropped_out_of_order == 1 {
                eprintln!(
                    "warning: metrics logged at step {step} after a later step; they are dropped (steps must not go \
                     backwards)"
                );
            }
            return;
        }
        if self.pending.as_ref().is_some_and(|(s, _)| step > *s) {
            self.commit();
        }
        match &mut self.pending {
            Some((_, row)) => row.extend(metrics),
            None => self.pending = Some((step, metrics)),
        }
    }

    /// Finish the pending step: every sink receives its merged row now.
    pub fn commit(&mut self) {
        if let Some((step, row)) = self.pending.take() {
            for sink in &mut self.sinks {
                sink.log(step, &row);
            }
            self.last_step = Some(step);
        }
    }

    /// Log a completions table at `step` (W&B table, TensorBoard text, `completions.jsonl`).
    pub fn log_completions(&mut self, step: u64, rows: &[CompletionRow]) {
        self.for_each_sink(step, |sink| sink.log_completions(step, rows));
    }

    /// Log `table` at `step` (W&B table, TensorBoard text), before the step's row is committed.
    pub fn log_table(&mut self, step: u64, table: &Table) {
        self.for_each_sink(step, |sink| sink.log_table(step, table));
    }

    /// Hand something logged at `step` to every sink, unless the run is finished or a resumed run has it already.
    fn for_each_sink(&mut self, step: u64, mut f: impl FnMut(&mut dyn Sink)) {
        if self.finished || self.before_resume(step) {
            return;
        }
        for sink in &mut self.sinks {
            f(sink.as_mut());
        }
    }

    /// Commit the pending step, then make every sink's files durable (fsync). Call it before writing a checkpoint:
    /// once the checkpoint exists, a resume from it never logs the steps before it again, so their rows must
    /// already be on disk. Costs one fsync per file (milliseconds), so once per checkpoint, not per step.
    pub fn flush_durable(&mut self) {
        if self.finished {
            return;
        }
        self.commit();
        for sink in &mut self.sinks {
            sink.flush_durable();
        }
    }

    /// Set summary values (for example `final/*`); they override the last-value summary.
    pub fn set_summary(&mut self, summary: Metrics) {
        if self.finished {
            return;
        }
        for sink in &mut self.sinks {
            sink.set_summary(&summary);
        }
    }

    /// Tell the console how many steps the run will take.
    pub fn set_total_steps(&mut self, total: u64) {
        for sink in &mut self.sinks {
            sink.set_total_steps(total);
        }
    }

    /// Print a line for the user above the progress bar.
    pub fn println(&self, line: &str) {
        if self.silent {
            return;
        }
        let mut printed = false;
        for sink in &self.sinks {
            if sink.name() == "console" {
                sink.println(line);
                printed = true;
            }
        }
        if !printed {
            eprintln!("{line}");
        }
    }

    /// Commit the pending step and finish every sink (exit code 0 = success). Later calls do nothing.
    pub fn finish(&mut self, exit_code: i32) {
        if self.finished {
            return;
        }
        self.commit();
        self.finished = true;
        if self.dropped_out_of_order > 1 {
            eprintln!("warning: {} out-of-order metric updates were dropped", self.dropped_out_of_order);
        }
        for sink in &mut self.sinks {
            sink.finish(exit_code);
        }
    }
}

impl Drop for Loggers {
    fn drop(&mut self) {
        // Reached without finish() only when the trainer bailed out (error or panic): the run failed.
        self.finish(1);
    }
}
