//! `grpo-host [train]`: the flags of a training run. Names follow re-grpo (`--model-name`, `--group-size`, ...)
//! so its commands carry over; `--config run.toml` sets the same keys and flags given on the command line win.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::plugins::PluginDirArgs;
use crate::logging::LoggingArgs;

/// Everything a training run is configured by. Serialized as the run's resolved `config.json`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct TrainArgs {
    /// Algorithm plugin by name (`grpo-host plugins list` shows them).
    #[arg(long, default_value = "grpo")]
    pub algo: String,
    /// Environment plugin by name.
    #[arg(long, default_value = "math")]
    pub env: String,
    /// JSON options for the algorithm plugin (a JSON string or @FILE).
    #[arg(long)]
    pub algo_config: Option<String>,
    /// JSON options for the environment plugin (a JSON string or @FILE).
    #[arg(long)]
    pub env_config: Option<String>,
    /// Where plugins are searched besides the defaults.
    #[command(flatten)]
    pub plugins: PluginDirArgs,
    /// A TOML file setting any of these flags by name (`group-size = 8`); flags on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Model directory or Hugging Face hub id; default: the SmolLM2-135M-Instruct set up by `cargo xtask setup`.
    #[arg(long = "model-name", visible_alias = "model")]
    pub model: Option<String>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// auto (bf16 on CUDA, f32 on CPU), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,

    /// Rollout batches to train on (each: sample tasks, generate, score, update).
    #[arg(long, default_value_t = 20)]
    pub max_steps: u64,
    /// Tasks per batch.
    #[arg(long, default_value_t = 4)]
    pub rollouts_per_step: usize,
    /// Episodes per task (the group whose rewards are compared).
    #[arg(long, default_value_t = 4)]
    pub group_size: usize,
    /// Sequences per forward/backward micro-batch.
    #[arg(long, default_value_t = 4)]
    pub train_batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// Passes over each batch's experience.
    #[arg(long, default_value_t = 1)]
    pub epochs_per_step: usize,

    /// Most tokens generated in one assistant turn; also DR-GRPO's constant normalizer.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Most tokens in a whole episode (prompt, turns and environment replies): the context limit.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Most assistant turns in one episode (an environment usually ends it sooner).
    #[arg(long, default_value_t = 4)]
    pub max_turns: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus sampling mass (1 disables).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Keep the k most likely tokens (0 disables). transformers' default when re-grpo sampled was 50.
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Minimum probability relative to the most likely token (0 disables).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f64,
    /// Keep generating past end-of-sequence to --max-new-tokens, so every rollout costs the same (benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// libtorch intra-op threads (default: libtorch's choice, one per core).
    #[arg(long)]
    pub threads: Option<i32>,

    /// Learning rate.
    #[arg(long, default_value_t = 5e-6)]
    pub lr: f64,
    /// constant, or cosine (decay to 0 over the run after warmup).
    #[arg(long, default_value = "constant")]
    pub lr_schedule: String,
    /// Optimizer steps of linear learning-rate warmup.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// AdamW beta1.
    #[arg(long, default_value_t = 0.9)]
    pub adam_beta1: f64,
    /// AdamW beta2.
    #[arg(long, default_value_t = 0.999)]
    pub adam_beta2: f64,
    /// AdamW epsilon.
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub max_norm: f64,
    /// PPO clip range (lower, and upper unless --clip-eps-high is given).
    #[arg(long, default_value_t = 0.2)]
    pub clip_eps: f64,
    /// Upper clip range (DAPO's clip-higher); default: --clip-eps.
    #[arg(long)]
    pub clip_eps_high: Option<f64>,
    /// Weight of the k3 KL penalty to the reference model; 0 loads no reference.
    #[arg(long, default_value_t = 0.01)]
    pub kl_weight: f64,
    /// Recompute the old log-probs with a forward pass instead of reusing the sampler's (auto: reuse in f32, where
    /// both are the same computation up to rounding; recompute in bf16/f16).
    #[arg(long, default_value = "auto")]
    pub recompute_old_logprobs: String,

    /// LoRA rank; 0 trains all weights (with a frozen copy as the reference).
    #[arg(long, default_value_t = 0)]
    pub lora_rank: i64,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    /// LoRA dropout on the adapter input during training updates.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,

    /// Random seed for task order, sampling and shuffling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Task file for the environment (its `data_path` option), e.g. re-grpo's math_tasks.jsonl.
    #[arg(long)]
    pub data_path: Option<PathBuf>,
    /// Use at most this many tasks from the data file.
    #[arg(long)]
    pub max_prompts: Option<usize>,

    /// Name of the run; its files go to runs/<run-name>/. Default: <algo>-<env>-<time>.
    #[arg(long)]
    pub run_name: Option<String>,
    /// Parent directory of run directories.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Where checkpoints go; default runs/<run-name>/checkpoints.
    #[arg(long)]
    pub checkpoint_path: Option<PathBuf>,
    /// Save a checkpoint every this many batches (and always at the end).
    #[arg(long, default_value_t = 20)]
    pub checkpoint_interval: u64,
    /// For LoRA runs, also save the adapter merged into full weights.
    #[arg(long)]
    pub save_merged: bool,
    /// Continue a run: a checkpoint directory, a run directory (its latest checkpoint), or `auto` (the latest
    /// checkpoint of --run-name, else of the most recent run).
    #[arg(long, num_args = 0..=1, default_missing_value = "auto")]
    pub resume: Option<String>,

    /// W&B and TensorBoard flags.
    #[command(flatten)]
    pub logging: LoggingArgs,
    /// Accepted for re-grpo compatibility: W&B is on unless --no-wandb or WANDB_MODE=disabled.
    #[arg(long)]
    pub wandb: bool,
    /// Log example completions every this many batches.
    #[arg(long, default_value_t = 10)]
    pub log_completions_interval: u64,
}
