//! `grpo-host sft`'s flags (the run itself is `crate::sft::run`), and the `--sft-*` warm-up flags of `train`.

use std::path::PathBuf;

use clap::Args;

use super::args::{json_option, LoraArgs, ModelArgs, RunDirArgs};
use super::plugins::PluginDirArgs;
use crate::data::DatasetSpec;
use crate::logging::LoggingArgs;
use crate::sft::render::LossOn;
use crate::sft::run::{HeldOutRows, SftConfig, SftEvalSettings, SftSource};
use crate::sft::warmup::WarmupSettings;
use crate::train::run_dir::RunPaths;
use crate::user_error;

/// `train`'s supervised warm-up: N steps on the environment's demonstrations (or `--sft-data`) before the first
/// rollout batch.
#[derive(Debug, Clone, Args)]
pub struct WarmupArgs {
    /// Supervised steps on the environment's demonstrations (or --sft-data) before reinforcement learning (0: none).
    #[arg(long, default_value_t = 0)]
    pub sft_warmup_steps: u64,
    /// Demonstrations (or rows) per warm-up step.
    #[arg(long, default_value_t = 8)]
    pub sft_batch_size: usize,
    /// The warm-up's learning rate (constant).
    #[arg(long, default_value_t = 5e-5)]
    pub sft_lr: f64,
    /// Warm up on these rows (TRL's formats, as `grpo-host sft --data`) instead of the environment's demonstrations.
    #[arg(long, value_name = "FILE|DIR|GLOB|ID")]
    pub sft_data: Option<String>,
    /// The split of --sft-data to read from a hub layout [default: train].
    #[arg(long, value_name = "SPLIT", requires = "sft_data")]
    pub sft_data_split: Option<String>,
}

impl WarmupArgs {
    /// The checked settings.
    pub fn into_settings(self) -> anyhow::Result<WarmupSettings> {
        if self.sft_batch_size == 0 {
            return Err(user_error!("--sft-batch-size 0: must be at least 1"));
        }
        if !(self.sft_lr > 0.0 && self.sft_lr.is_finite()) {
            return Err(user_error!("--sft-lr {}: must be a positive number", self.sft_lr));
        }
        let data = self.sft_data.map(|source| DatasetSpec { source, config: None, split: self.sft_data_split });
        Ok(WarmupSettings { steps: self.sft_warmup_steps, batch_size: self.sft_batch_size, lr: self.sft_lr, data })
    }
}

/// `grpo-host sft (--data SOURCE | --env NAME) [--max-steps N] [--run-name NAME | --output DIR] [--resume]`. The flags
/// are declared by `--help` heading, in the order `--help` shows them.
#[derive(Debug, Args)]
pub struct SftArgs {
    /// A TOML file setting any of these flags by name (`batch-size = 16`), or a YAML recipe (`.yaml`, as TRL's
    /// --config); flags on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rows in TRL's formats (conversations: `{"messages": [{"role": "user", "content": ...}, ...]}`, or `prompt`
    /// and `completion` lists; plain text: `{"text": ...}`, or `prompt` and `completion` strings): a .jsonl, .json,
    /// .csv, .tsv, .txt, .parquet or .arrow file (the text ones also .gz or .zst), a folder or glob of them (a
    /// `save_to_disk` folder too), or a hub dataset id.
    #[arg(
        help_heading = "Data",
        long,
        visible_aliases = ["dataset", "dataset-name"],
        value_name = "FILE|DIR|GLOB|ID",
        conflicts_with = "env",
        required_unless_present = "env"
    )]
    pub data: Option<String>,
    /// The hub dataset's config (its top-level folder), as `datasets.load_dataset(ID, CONFIG)`.
    #[arg(
        help_heading = "Data",
        long = "dataset-config",
        visible_alias = "data-config",
        value_name = "NAME",
        requires = "data"
    )]
    pub data_config: Option<String>,
    /// The split to read from a hub layout [default: train].
    #[arg(
        help_heading = "Data",
        long = "dataset-split",
        visible_aliases = ["data-split", "dataset-train-split"],
        value_name = "SPLIT",
        requires = "data"
    )]
    pub data_split: Option<String>,
    /// The column holding a language-modeling row's text (TRL's dataset_text_field), in --data and --eval-data.
    #[arg(long, help_heading = "Data", value_name = "NAME", default_value = "text")]
    pub dataset_text_field: String,
    /// Train on this environment's demonstrations instead of --data.
    #[arg(long, help_heading = "Data", value_name = "NAME")]
    pub env: Option<String>,
    /// The environment's options (JSON or @FILE).
    #[arg(long, help_heading = "Data", value_name = "JSON|@FILE", requires = "env")]
    pub env_config: Option<String>,
    #[command(flatten, next_help_heading = "Data")]
    pub plugins: PluginDirArgs,
    #[command(flatten, next_help_heading = "Model and device")]
    pub model: ModelArgs,
    /// Mixed precision: --mixed-precision, or transformers' --bf16 and --fp16 (as in training).
    #[command(flatten, next_help_heading = "Model and device")]
    pub precision: super::args::PrecisionArgs,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping them (as in training).
    #[arg(long, help_heading = "Model and device")]
    pub gradient_checkpointing: bool,
    /// Use libtorch's deterministic algorithms (as in training; transformers' full_determinism).
    #[arg(long, help_heading = "Model and device", visible_alias = "full-determinism")]
    pub deterministic: bool,
    /// A mixture of experts' load-balancing loss (--router-aux-loss-coef).
    #[command(flatten, next_help_heading = "Model and device")]
    pub router: super::args::RouterArgs,
    /// LoRA flags (--lora-rank, --lora-alpha, --lora-dropout).
    #[command(flatten, next_help_heading = "Model and device")]
    pub lora: LoraArgs,
    /// Optimizer steps in all (a resumed run continues to this count).
    #[arg(long, help_heading = "Batches and length", default_value_t = 100)]
    pub max_steps: u64,
    /// Train for this many passes over --data instead of --max-steps (TRL's num_train_epochs): the steps are the
    /// rows times E over the global batch, rounded up.
    #[arg(long, help_heading = "Batches and length", value_name = "E", conflicts_with = "max_steps")]
    pub num_train_epochs: Option<f64>,
    /// Rows (conversations or texts) per step.
    #[arg(long, help_heading = "Batches and length", default_value_t = 8)]
    pub batch_size: usize,
    /// Rows per forward/backward (a step's gradient is the same whatever it is).
    #[arg(long, help_heading = "Batches and length", default_value_t = 8)]
    pub micro_batch_size: usize,
    /// TRL's sizing instead of --batch-size and --micro-batch-size: rows per forward/backward, each step taking
    /// --gradient-accumulation-steps of them [default: 8].
    #[arg(
        long,
        help_heading = "Batches and length",
        value_name = "N",
        conflicts_with_all = ["batch_size", "micro_batch_size"]
    )]
    pub per_device_train_batch_size: Option<usize>,
    /// Micro-batches of --per-device-train-batch-size rows per step (TRL's sizing) [default: 1].
    #[arg(
        long,
        help_heading = "Batches and length",
        value_name = "G",
        conflicts_with_all = ["batch_size", "micro_batch_size"]
    )]
    pub gradient_accumulation_steps: Option<usize>,
    /// Instead of --micro-batch-size: rows longest first, as many per forward/backward as fit in N padded tokens
    /// (rows times the longest), so short rows are not padded to a long one's length. At least --max-length.
    #[arg(long, help_heading = "Batches and length", value_name = "N")]
    pub micro_batch_tokens: Option<usize>,
    /// Tokens kept of each row, the rest cut off (TRL's max_length, formerly max_seq_length); 0 keeps them all.
    #[arg(long, help_heading = "Batches and length", default_value_t = 1024, visible_alias = "max-seq-length")]
    pub max_length: usize,
    /// Train a conversation's assistant turns only (true), or every token of it (false, TRL's default).
    #[arg(long, help_heading = "Optimisation", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub assistant_only_loss: bool,
    /// Train a string prompt-completion row's completion only (true, TRL's default), or its prompt too.
    #[arg(long, help_heading = "Optimisation", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub completion_only_loss: bool,
    /// NEFTune: noise drawn uniformly from +-ALPHA / sqrt(tokens x hidden size) added to each input embedding in
    /// training forward passes (transformers' neftune_noise_alpha, such as 5).
    #[arg(long, help_heading = "Optimisation", value_name = "ALPHA")]
    pub neftune_noise_alpha: Option<f64>,
    /// Learning rate.
    #[arg(long, help_heading = "Optimisation", default_value_t = 5e-5, visible_alias = "learning-rate")]
    pub lr: f64,
    /// The learning-rate schedule.
    #[command(flatten, next_help_heading = "Optimisation")]
    pub schedule: super::args::ScheduleArgs,
    /// Gradient-norm clip (0 disables).
    #[arg(long, help_heading = "Optimisation", default_value_t = 1.0, visible_alias = "max-grad-norm")]
    pub max_norm: f64,
    /// AdamW weight decay.
    #[arg(long, help_heading = "Optimisation", default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Seed for the order of the data.
    #[arg(long, help_heading = "Optimisation", default_value_t = 42)]
    pub seed: u64,
    /// Held-out rows (same formats and kinds as --data): their loss is logged as sft/eval_loss after the last step
    /// and every --eval-every steps (TRL's eval_dataset).
    #[arg(long, help_heading = "Evaluation", value_name = "FILE|DIR|GLOB|ID")]
    pub eval_data: Option<String>,
    /// The split of --eval-data to read from a hub layout [default: test].
    #[arg(long, help_heading = "Evaluation", value_name = "SPLIT", requires = "eval_data")]
    pub eval_data_split: Option<String>,
    /// Hold out the last N rows of --data instead, for the held-out loss (they are not trained on).
    #[arg(long, help_heading = "Evaluation", value_name = "N", conflicts_with = "eval_data")]
    pub eval_holdout: Option<usize>,
    /// The held-out rows are this split of --data (TRL's dataset_test_split): the same as --eval-data with --data's
    /// source and --eval-data-split SPLIT.
    #[arg(
        long,
        help_heading = "Evaluation",
        value_name = "SPLIT",
        requires = "data",
        conflicts_with_all = ["eval_data", "eval_data_split", "eval_holdout"]
    )]
    pub dataset_test_split: Option<String>,
    /// Also evaluate every N steps (0: after the last step only); needs --eval-data or --eval-holdout.
    #[arg(long, help_heading = "Evaluation", value_name = "N", default_value_t = 0, visible_alias = "eval-steps")]
    pub eval_every: u64,
    /// Also evaluate once before the first step, logged at step 0 (not again on --resume; transformers'
    /// eval_on_start); needs held-out rows.
    #[arg(long, help_heading = "Evaluation", visible_alias = "eval-before-train")]
    pub eval_on_start: bool,
    /// The best checkpoint by a held-out metric, and early stopping.
    #[command(flatten, next_help_heading = "Evaluation")]
    pub best_model: super::args::BestModelArgs,
    /// The run's folder, checkpoints and --resume (--run-name, --runs-dir, --checkpoint-path,
    /// --checkpoint-interval, --save-total-limit, --resume, ...).
    #[command(flatten, next_help_heading = "Run directory, checkpoints and resuming")]
    pub run_dir: RunDirArgs,
    /// Data parallel (under torchrun): seconds a rank waits in a collective or at the rendezvous before it gives up
    /// on a rank that died or hung (transformers' ddp_timeout).
    #[arg(long, help_heading = "Data parallel (torchrun)", default_value_t = 300.0, visible_alias = "ddp-timeout")]
    pub dist_timeout: f64,
    /// W&B and TensorBoard flags.
    #[command(flatten, next_help_heading = "Logging")]
    pub logging: LoggingArgs,
}

impl SftArgs {
    /// Check the flags and build the run's configuration.
    pub fn into_config(self) -> anyhow::Result<SftConfig> {
        let (batch_size, micro_batch_size) = self.batch_sizes()?;
        if self.micro_batch_tokens == Some(0) {
            return Err(user_error!("--micro-batch-tokens must be at least 1"));
        }
        super::args::check_micro_batch_tokens(self.micro_batch_tokens, self.max_length, "row")?;
        // TRL's test split of the training dataset is --eval-data on the same source.
        let (eval_data, eval_data_split) = match self.dataset_test_split {
            Some(split) => (self.data.clone(), Some(split)),
            None => (self.eval_data, self.eval_data_split),
        };
        let held_out = match (eval_data, self.eval_holdout) {
            (Some(source), _) => Some(HeldOutRows::Data(DatasetSpec {
                source,
                config: self.data_config.clone(),
                split: eval_data_split,
            })),
            (None, Some(0)) => return Err(user_error!("--eval-holdout must be at least 1")),
            (None, Some(_)) if self.data.is_none() => {
                return Err(user_error!("--eval-holdout holds out rows of --data; with --env give --eval-data"))
            }
            (None, Some(n)) => Some(HeldOutRows::Holdout(n)),
            (None, None) if self.eval_every > 0 => {
                return Err(user_error!("--eval-every needs held-out rows: give --eval-data or --eval-holdout"))
            }
            (None, None) if self.eval_on_start => {
                return Err(user_error!("--eval-on-start needs held-out rows: give --eval-data or --eval-holdout"))
            }
            (None, None) => None,
        };
        if let Some(epochs) = self.num_train_epochs {
            if !(epochs > 0.0 && epochs.is_finite()) {
                return Err(user_error!("--num-train-epochs {epochs}: must be a positive number, such as 3"));
            }
            if self.data.is_none() {
                return Err(user_error!(
                    "--num-train-epochs needs --data: an environment's demonstrations never run out; give --max-steps"
                ));
            }
        }
        if !(self.dist_timeout.is_finite() && self.dist_timeout > 0.0) {
            return Err(user_error!("--dist-timeout {}: give a positive number of seconds", self.dist_timeout));
        }
        let source = match (self.data, self.env) {
            (Some(source), _) => {
                SftSource::Data(DatasetSpec { source, config: self.data_config.clone(), split: self.data_split })
            }
            (None, Some(name)) => {
                SftSource::Environment { name, config: json_option(self.env_config.as_deref(), "--env-config")? }
            }
            (None, None) => return Err(user_error!("give --data FILE.jsonl or --env NAME")),
        };
        let mut model = self.model.settings(self.precision.mode())?;
        // sft's steps are optimizer steps: transformers' save_steps is the interval as it is.
        let save_steps = self.run_dir.save_steps;
        let mut checkpoints = self.run_dir.settings()?;
        checkpoints.interval = save_steps.unwrap_or(checkpoints.interval);
        self.lora.apply(&mut model, || RunPaths::resumed_model_settings(&checkpoints))?;
        model.gradient_checkpointing = self.gradient_checkpointing;
        model.deterministic = self.deterministic;
        self.router.apply(&mut model)?;
        checkpoints.best_model = self.best_model.settings(self.eval_every)?;
        let logging = super::args::log_settings(&self.logging, &checkpoints.runs_dir, 0)?;
        let config = SftConfig {
            source,
            plugin_dirs: self.plugins.plugin_dirs,
            model,
            max_steps: self.max_steps,
            epochs: self.num_train_epochs,
            batch_size,
            micro_batch_size,
            micro_batch_tokens: self.micro_batch_tokens,
            max_length: (self.max_length > 0).then_some(self.max_length),
            text_field: self.dataset_text_field,
            eval: held_out.map(|rows| SftEvalSettings { rows, every: self.eval_every, on_start: self.eval_on_start }),
            loss_on: LossOn { assistant_only: self.assistant_only_loss, completion_only: self.completion_only_loss },
            neftune_noise_alpha: self.neftune_noise_alpha,
            optimizer: self.schedule.optimizer(self.lr, self.weight_decay, self.max_norm)?,
            seed: self.seed,
            checkpoints,
            logging,
            dist_timeout_secs: self.dist_timeout,
        };
        config.optimizer.check()?;
        if let Some(alpha) = config.neftune_noise_alpha.filter(|a| !(*a > 0.0 && a.is_finite())) {
            return Err(user_error!("--neftune-noise-alpha {alpha}: must be a positive number (such as 5)"));
        }
        Ok(config)
    }

    /// Rows per step and per forward/backward: --batch-size and --micro-batch-size, or TRL's
    /// --per-device-train-batch-size P and --gradient-accumulation-steps G (P x G rows a step, P at a time).
    fn batch_sizes(&self) -> anyhow::Result<(usize, usize)> {
        let (batch, micro) = match (self.per_device_train_batch_size, self.gradient_accumulation_steps) {
            (None, None) => (self.batch_size, self.micro_batch_size),
            (per_device, accumulation) => {
                let (per_device, accumulation) = (per_device.unwrap_or(8), accumulation.unwrap_or(1));
                if per_device == 0 || accumulation == 0 {
                    return Err(user_error!(
                        "--per-device-train-batch-size and --gradient-accumulation-steps must be at least 1"
                    ));
                }
                (per_device * accumulation, per_device)
            }
        };
        if batch == 0 || micro == 0 {
            return Err(user_error!("--batch-size and --micro-batch-size must be at least 1"));
        }
        Ok((batch, micro))
    }
}
