//! `grpo-host sft`: supervised fine-tuning on chat conversations (TRL's JSONL format or an environment's own
//! demonstrations), with the loss on assistant tokens only; and the `--sft-*` warm-up flags of `train`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::args::{json_option, ModelArgs};
use super::plugins::PluginDirArgs;
use crate::checkpoint::{self, CheckpointData, TrainerState};
use crate::distributed::World;
use crate::plugins::Registry;
use crate::sft::warmup::WarmupSettings;
use crate::sft::{data, tools_json, Conversation, Demonstrations, Renderer, SftStep};
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::policy::Policy;
use crate::train::precision::{LossScaler, MixedPrecision};
use crate::user_error;

/// `train`'s supervised warm-up: N steps on the environment's demonstrations before the first rollout batch.
#[derive(Debug, Clone, Args)]
pub struct WarmupArgs {
    /// Supervised steps on the environment's demonstrations before reinforcement learning (0: none).
    #[arg(long, default_value_t = 0)]
    pub sft_warmup_steps: u64,
    /// Demonstrations per warm-up step.
    #[arg(long, default_value_t = 8)]
    pub sft_batch_size: usize,
    /// The warm-up's learning rate (constant).
    #[arg(long, default_value_t = 5e-5)]
    pub sft_lr: f64,
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
        Ok(WarmupSettings { steps: self.sft_warmup_steps, batch_size: self.sft_batch_size, lr: self.sft_lr })
    }
}

/// `grpo-host sft (--data FILE.jsonl | --env NAME) [--max-steps N] [--output DIR]`.
#[derive(Debug, Args)]
pub struct SftArgs {
    /// A JSONL file of conversations in TRL's format: `{"messages": [{"role": "user", "content": ...}, ...]}`.
    #[arg(long, value_name = "FILE", conflicts_with = "env", required_unless_present = "env")]
    pub data: Option<PathBuf>,
    /// Train on this environment's demonstrations instead of a file.
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// The environment's options (JSON or @FILE).
    #[arg(long, value_name = "JSON|@FILE", requires = "env")]
    pub env_config: Option<String>,
    #[command(flatten)]
    pub plugins: PluginDirArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// auto, no, bf16 or fp16 (as in training).
    #[arg(long, default_value = "auto")]
    pub mixed_precision: MixedPrecision,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    pub max_steps: u64,
    /// Conversations per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Conversations per forward/backward (a step's gradient is the same whatever it is).
    #[arg(long, default_value_t = 8)]
    pub micro_batch_size: usize,
    /// Learning rate (constant).
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    pub max_norm: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Seed for the order of the data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the fine-tuned model is saved (a checkpoint in Hugging Face layout, loadable with `--model DIR`).
    #[arg(long, value_name = "DIR", default_value = "runs/sft")]
    pub output: PathBuf,
}

/// Where conversations come from, for a step.
enum Source {
    File { rows: Vec<Conversation>, next: usize },
    Env(Box<Demonstrations>),
}

impl Source {
    fn take(&mut self, n: usize) -> anyhow::Result<Vec<Conversation>> {
        match self {
            Source::File { rows, next } => {
                let out = (0..n).map(|k| rows[(*next + k) % rows.len()].clone()).collect();
                *next += n;
                Ok(out)
            }
            Source::Env(demos) => demos.take(n),
        }
    }
}

/// Run the fine-tuning; returns the exit code.
pub fn run(args: SftArgs) -> anyhow::Result<i32> {
    args.model.apply_threads()?;
    if args.batch_size == 0 || args.micro_batch_size == 0 {
        return Err(user_error!("--batch-size and --micro-batch-size must be at least 1"));
    }
    let settings = args.model.settings(args.mixed_precision)?;
    let policy = Policy::load(&settings, 0.0, args.seed)?;
    let (mut source, tools) = match (&args.data, &args.env) {
        (Some(path), _) => {
            let mut rows = data::read_jsonl(path)?;
            grpo_sdk::rng::SplitMix64::new(args.seed).shuffle(&mut rows);
            (Source::File { rows, next: 0 }, None)
        }
        (None, Some(name)) => {
            let registry = Registry::discover(&args.plugins.discovery())?;
            let env = registry.environment(name, &json_option(args.env_config.as_deref(), "--env-config")?)?;
            let tools = tools_json(&env.tools()?);
            (Source::Env(Box::new(Demonstrations::new(env, args.seed)?)), tools)
        }
        (None, None) => return Err(user_error!("give --data FILE.jsonl or --env NAME")),
    };
    let renderer = Renderer::new(policy.tokenizer(), tools.as_deref())?;
    let adamw = AdamWConfig { lr: args.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: args.weight_decay };
    let mut optimizer = if policy.precision().master_weights {
        AdamW::new(policy.trainable(), adamw)
    } else {
        AdamW::without_master_weights(policy.trainable(), adamw)
    };
    if let Some(weights) = policy.initial_master_weights()? {
        optimizer.load_master_weights(&weights)?;
    }
    let mut scaler = LossScaler::new(policy.precision().mode);
    let start = Instant::now();
    let mut taken = 0u64;
    {
        let single = World::single();
        let mut step = SftStep {
            model: policy.model(),
            optimizer: &mut optimizer,
            scaler: &mut scaler,
            micro_batch: args.micro_batch_size,
            max_norm: args.max_norm,
            world: &single,
        };
        for index in 0..args.max_steps {
            let conversations = source.take(args.batch_size)?;
            let rows = conversations
                .iter()
                .map(|c| renderer.render(&c.messages).map_err(|e| user_error!("conversation {}: {e}", c.origin)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            match step.run(&rows, args.lr)? {
                Some(r) => {
                    taken += 1;
                    println!(
                        "sft step {}/{}: sft/loss {:.4} sft/accuracy {:.3} sft/tokens {} grad_norm {:.3} ({:.1}s)",
                        index + 1,
                        args.max_steps,
                        r.loss,
                        r.accuracy,
                        r.tokens,
                        r.grad_norm,
                        start.elapsed().as_secs_f64()
                    );
                }
                None => {
                    println!("sft step {}/{}: skipped (the loss or gradient was not finite)", index + 1, args.max_steps)
                }
            }
        }
    }
    let data = CheckpointData {
        weights: if optimizer.has_master_weights() { optimizer.master_weights() } else { policy.weights() },
        adapter: None,
        base_model: policy.model_dir(),
        merged: None,
        optimizer: optimizer.state(),
        state: TrainerState { global_step: taken, seed: args.seed, ..Default::default() },
    };
    let dir = checkpoint::save(&args.output, data)?;
    println!("saved the fine-tuned model to {} (use it with --model {})", dir.display(), dir.display());
    Ok(0)
}
