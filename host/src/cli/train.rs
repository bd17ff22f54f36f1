//! `grpo-host [train]`: the flags of a training run. Names follow re-grpo (`--model-name`, `--group-size`, ...)
//! so its commands carry over; `--config run.toml` sets the same keys and flags given on the command line win.

use std::path::PathBuf;

use clap::Args;

use super::args::{json_option, LoraArgs, ModelArgs, RewardArgs, RunDirArgs, SamplingArgs};
use super::plugins::PluginDirArgs;
use crate::generate::SamplingParams;
use crate::logging::LoggingArgs;
use crate::model::DtypeSpec;
use crate::train::config::{
    BatchSettings, DistSettings, IsCorrection, LogprobTemperature, ModelSettings, ObjectiveSettings, OptimizerSettings,
    PluginSelection, RecomputeOld, ReferenceSync, RewardKl, RewardKlEstimator, RunConfig, SamplingSettings,
};
use crate::train::run_dir::RunPaths;
use crate::user_error;

/// The training command's flags; [`TrainArgs::into_config`] checks them and builds the run's [`RunConfig`]. They
/// are declared by `--help` heading, in the order of docs/cli.md's sections, which is the order `--help` shows.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// A TOML file setting any of these flags by name (`group-size = 8`), or a YAML recipe (`.yaml`, as TRL's
    /// --config); flags on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Algorithm plugin by name (`grpo-host plugins list` shows them).
    #[arg(long, help_heading = "Plugins", default_value = "grpo")]
    pub algo: String,
    /// Environment plugin by name.
    #[arg(long, help_heading = "Plugins", default_value = "math")]
    pub env: String,
    /// JSON options for the algorithm plugin (a JSON string or @FILE).
    #[arg(long, help_heading = "Plugins")]
    pub algo_config: Option<String>,
    /// JSON options for the environment plugin (a JSON string or @FILE).
    #[arg(long, help_heading = "Plugins")]
    pub env_config: Option<String>,
    /// Reward weights and DAPO's overlong penalty.
    #[command(flatten, next_help_heading = "Plugins")]
    pub rewards: RewardArgs,
    /// How the reward components become what the algorithm scores (TRL's multi_objective_aggregation):
    /// sum-then-normalize (the weighted sum, the default) or normalize-then-sum (GDPO: each component normalised
    /// within its group first, then the weighted sum).
    #[arg(long, help_heading = "Plugins", default_value = "sum-then-normalize", value_name = "HOW")]
    pub multi_objective_aggregation: crate::rollout::Aggregation,
    /// Where plugins are searched besides the defaults.
    #[command(flatten, next_help_heading = "Plugins")]
    pub plugins: PluginDirArgs,

    /// The model, device, dtype and threads.
    #[command(flatten, next_help_heading = "Model and device")]
    pub model: ModelArgs,
    /// Mixed precision: --mixed-precision, or transformers' --bf16 and --fp16.
    #[command(flatten, next_help_heading = "Model and device")]
    pub precision: super::args::PrecisionArgs,
    /// The dtype rollouts are sampled in: auto (the compute precision: bf16 under --mixed-precision bf16, f16
    /// under fp16, else --dtype), f32, bf16 or f16. A different one samples from a copy of the model in that dtype, refreshed from
    /// the trained weights before each batch, and the old log-probs are then recomputed in the training precision.
    #[arg(long, help_heading = "Model and device", default_value = "auto")]
    pub rollout_dtype: DtypeSpec,
    /// Keep the output projection's weight in f32 and compute the logits in f32 under bf16/fp16 (TRL's
    /// cast_lm_head_to_fp32): log-probs not rounded to the low precision's spacing.
    #[arg(long, help_heading = "Model and device")]
    pub cast_lm_head_to_fp32: bool,
    /// Use libtorch's deterministic algorithms (torch.use_deterministic_algorithms; on CUDA also a fixed cuBLAS
    /// workspace): slower on CUDA, and an operation with no deterministic kernel stops the run with an error.
    #[arg(long, help_heading = "Model and device", visible_alias = "full-determinism")]
    pub deterministic: bool,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping them from the forward
    /// pass (transformers' gradient_checkpointing): far less memory for long sequences, about one more forward
    /// pass of compute per update, the same results.
    #[arg(long, help_heading = "Model and device")]
    pub gradient_checkpointing: bool,

    /// LoRA flags (--lora-rank, --lora-alpha, --lora-dropout).
    #[command(flatten, next_help_heading = "Model and device")]
    pub lora: LoraArgs,
    /// A mixture of experts' load-balancing loss (--router-aux-loss-coef).
    #[command(flatten, next_help_heading = "Model and device")]
    pub router: super::args::RouterArgs,

    /// Rollout batches to train on (each: sample tasks, generate, score, update; TRL's max_steps counts optimizer
    /// steps, the same where a batch makes one).
    #[arg(long, help_heading = "Batches and rollouts", default_value_t = 20)]
    pub max_steps: u64,
    /// Train for this many passes over the training tasks instead of --max-steps (TRL's num_train_epochs, verl's
    /// total_epochs): the batches are the tasks times E over the global batch's tasks, rounded up.
    #[arg(long, help_heading = "Batches and rollouts", value_name = "E", conflicts_with = "max_steps")]
    pub num_train_epochs: Option<f64>,
    /// Tasks per batch.
    #[arg(long, help_heading = "Batches and rollouts", default_value_t = 4)]
    pub rollouts_per_step: usize,
    /// Instead of --rollouts-per-step: the batch's sequences over all ranks (TRL's generation_batch_size), N /
    /// (--group-size x ranks) tasks on each rank.
    #[arg(long, help_heading = "Batches and rollouts", value_name = "N", conflicts_with_all = ["rollouts_per_step", "steps_per_generation"])]
    pub generation_batch_size: Option<usize>,
    /// Instead of --rollouts-per-step: the micro-batches of --train-batch-size sequences each rank's batch makes
    /// (TRL's steps_per_generation), S x --train-batch-size / --group-size tasks on each rank.
    #[arg(long, help_heading = "Batches and rollouts", value_name = "S", conflicts_with = "rollouts_per_step")]
    pub steps_per_generation: Option<usize>,
    /// Episodes per task (the group whose rewards are compared).
    #[arg(long, help_heading = "Batches and rollouts", default_value_t = 4, visible_alias = "num-generations")]
    pub group_size: usize,
    /// Sequences per forward/backward micro-batch.
    #[arg(
        help_heading = "Batches and rollouts",
        long,
        default_value_t = 4,
        visible_alias = "per-device-train-batch-size"
    )]
    pub train_batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    #[arg(long, help_heading = "Batches and rollouts", default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// Passes over each batch's experience.
    #[arg(long, help_heading = "Batches and rollouts", default_value_t = 1, visible_alias = "num-iterations")]
    pub epochs_per_step: usize,
    /// Group each optimizer step's sequences (--train-batch-size x --gradient-accumulation-steps) longest first into
    /// micro-batches of at most this many padded tokens instead (verl's use_dynamic_bsz with
    /// ppo_max_token_len_per_gpu); the log-prob passes too. At least --max-length.
    #[arg(long, help_heading = "Batches and rollouts", value_name = "N")]
    pub micro_batch_tokens: Option<usize>,

    /// How long an episode may run.
    #[command(flatten, next_help_heading = "Batches and rollouts")]
    pub episode: super::args::EpisodeArgs,
    /// Leave the training tasks whose opening prompt is longer than --max-prompt-length out of the run before it
    /// starts (verl's filter_overlong_prompts), instead of cutting them; needs a finite task list.
    #[arg(long, help_heading = "Batches and rollouts")]
    pub filter_overlong_prompts: bool,
    /// Take the training tasks in a fresh seeded order every epoch (TRL's shuffle_dataset, verl's data.shuffle), or
    /// with false in their own order, as a curriculum sorted by difficulty wants.
    #[arg(long, help_heading = "Batches and rollouts", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub shuffle_dataset: bool,
    /// Episodes the rollout engine keeps in its batch at once, each with its cache slot (default: the whole
    /// batch, or as many as fit in a quarter of free memory, half of free GPU memory on CUDA).
    #[arg(long, help_heading = "Batches and rollouts")]
    pub max_batch_rows: Option<usize>,
    /// Decode scheduling of the rollouts and evaluations.
    #[command(flatten, next_help_heading = "Batches and rollouts")]
    pub decode: super::args::DecodeArgs,
    /// Temperature and sampling filters.
    #[command(flatten, next_help_heading = "Batches and rollouts")]
    pub sampling: SamplingArgs,

    /// Random seed for task order, sampling and shuffling.
    #[arg(long, help_heading = "Batches and rollouts", default_value_t = 42)]
    pub seed: u64,
    /// Task file for the environment (its `data_path` option), e.g. re-grpo's math_tasks.jsonl.
    #[arg(long, help_heading = "Batches and rollouts")]
    pub data_path: Option<PathBuf>,
    /// Use at most this many tasks from the data file.
    #[arg(long, help_heading = "Batches and rollouts")]
    pub max_prompts: Option<usize>,
    /// DAPO's dynamic sampling (verl's filter_groups): set aside groups whose rewards are all equal (they have no
    /// advantage to learn from) and roll out further tasks, a round at a time, until the batch has
    /// --rollouts-per-step groups whose rewards vary.
    #[arg(long, help_heading = "Optimisation and loss")]
    pub dynamic_sampling: bool,
    /// The most rollout rounds of one batch under --dynamic-sampling, the first included; a batch still short of
    /// varied groups then trains with equal-reward groups in their place, and the console says so.
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 10)]
    pub max_sampling_rounds: usize,

    /// Learning rate.
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 5e-6, visible_alias = "learning-rate")]
    pub lr: f64,
    /// The learning-rate schedule.
    #[command(flatten, next_help_heading = "Optimisation and loss")]
    pub schedule: super::args::ScheduleArgs,
    /// AdamW decoupled weight decay.
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 0.01)]
    pub weight_decay: f64,
    /// AdamW beta1.
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 0.9)]
    pub adam_beta1: f64,
    /// AdamW beta2.
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 0.999)]
    pub adam_beta2: f64,
    /// AdamW epsilon.
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 1e-8, visible_alias = "adam-epsilon")]
    pub adam_eps: f64,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 1.0, visible_alias = "max-grad-norm")]
    pub max_norm: f64,
    /// PPO clip range (lower, and upper unless --clip-eps-high is given).
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 0.2, visible_alias = "epsilon")]
    pub clip_eps: f64,
    /// Upper clip range (DAPO's clip-higher); default: --clip-eps.
    #[arg(long, help_heading = "Optimisation and loss", visible_alias = "epsilon-high")]
    pub clip_eps_high: Option<f64>,
    /// Weight of the k3 KL penalty to the reference model; 0 loads no reference.
    #[arg(long, help_heading = "Optimisation and loss", default_value_t = 0.01, visible_alias = "beta")]
    pub kl_weight: f64,
    /// TRL's loss_type, set in the algorithm's options (--algo-config's "loss_type"; the grpo plugin's grpo, bnpo,
    /// dr_grpo, dapo, cispo, sapo, vespo or luspo).
    #[arg(long, help_heading = "Optimisation and loss", value_name = "TYPE")]
    pub loss_type: Option<String>,
    /// TRL's scale_rewards, set in the algorithm's options: group, batch or none (TRL's true and false: group and
    /// none).
    #[arg(long, help_heading = "Optimisation and loss", value_name = "HOW")]
    pub scale_rewards: Option<String>,
    /// TRL's importance_sampling_level, set in the algorithm's options: token, or sequence (GSPO).
    #[arg(long, help_heading = "Optimisation and loss", value_name = "LEVEL")]
    pub importance_sampling_level: Option<String>,
    /// TRL's delta, set in the algorithm's options: two-sided clipping's cap on the probability ratio (verl's
    /// dual-clip clip_ratio_c, which verl applies by default at 3 and this host only when given).
    #[arg(long, visible_alias = "clip-ratio-c", help_heading = "Optimisation and loss", value_name = "DELTA")]
    pub delta: Option<f64>,
    /// Recompute the old log-probs with a forward pass instead of reusing the sampler's (auto: reuse in f32, where
    /// both are the same computation up to rounding; recompute in bf16/f16).
    #[arg(long, help_heading = "Optimisation and loss", default_value = "auto")]
    pub recompute_old_logprobs: RecomputeOld,
    /// Truncated importance sampling: when the old log-probs are recomputed (another rollout precision, or bf16),
    /// weight each token's policy-gradient term by min(p_old / p_sampler, CAP). 0 turns the correction off; the
    /// ratios are logged either way (rollouts/is_ratio_*).
    #[arg(
        long,
        help_heading = "Optimisation and loss",
        default_value_t = 0.0,
        visible_alias = "vllm-importance-sampling-cap"
    )]
    pub tis_cap: f64,
    /// How --tis-cap bounds the weights (TRL's vllm_importance_sampling_mode): token-truncate (the default),
    /// token-mask (0 over the cap), sequence-truncate or sequence-mask (one ratio per sequence, the product of its
    /// tokens').
    #[arg(
        long,
        help_heading = "Optimisation and loss",
        value_name = "MODE",
        visible_alias = "vllm-importance-sampling-mode"
    )]
    pub tis_mode: Option<IsCorrection>,
    /// Leave episodes that were cut off (a turn stopped at --max-new-tokens, or the episode at --max-length) out of
    /// the loss, as TRL's mask_truncated_completions and DAPO's overlong filtering: their rewards still count in
    /// their group's advantages, but their tokens get no gradient.
    #[arg(long, help_heading = "Optimisation and loss")]
    pub mask_truncated_completions: bool,
    /// The distribution the loss scores the sampled tokens under (and the old and reference log-probs and the
    /// entropy): one, the model's at temperature 1 (re-grpo); or sampling, its logits divided by --temperature,
    /// the distribution the tokens were drawn from, top-k/top-p/min-p aside (TRL and verl).
    #[arg(long, help_heading = "Optimisation and loss", default_value = "one")]
    pub logprob_temperature: LogprobTemperature,
    /// Train the policy-gradient term on the highest-entropy share Q of each micro-batch's action tokens only, as
    /// TRL's top_entropy_quantile ("Beyond the 80/20 rule"; 0.2 is its paper's); the KL term keeps every token.
    /// 1 keeps all.
    #[arg(long, help_heading = "Optimisation and loss", value_name = "Q", default_value_t = 1.0)]
    pub top_entropy_quantile: f64,
    /// Add an entropy bonus to the loss, as verl's entropy_coeff: the loss minus C times the policy's mean entropy
    /// (in nats) over each optimizer step's action tokens, on every rank, which keeps exploration from collapsing.
    /// 0 (the default) adds nothing; a small value such as 0.001 is usual.
    #[arg(long, help_heading = "Optimisation and loss", value_name = "C", default_value_t = 0.0)]
    pub entropy_coeff: f64,
    /// Move the KL reference toward the policy as training goes, as TRL's sync_ref_model (TR-DPO): after every
    /// --ref-model-sync-steps updates, reference = alpha * policy + (1 - alpha) * reference. The reference is then
    /// saved in every checkpoint, so a resumed run continues from the same one. Needs --kl-weight (or
    /// --reward-kl-coef) above 0.
    #[arg(long, help_heading = "Optimisation and loss")]
    pub sync_ref_model: bool,
    /// The policy's share alpha of the synced reference (--sync-ref-model); 1 copies the policy. Default 0.6.
    #[arg(long, help_heading = "Optimisation and loss", value_name = "ALPHA")]
    pub ref_model_mixup_alpha: Option<f64>,
    /// Updates between two syncs of the KL reference (--sync-ref-model). Default 512.
    #[arg(long, help_heading = "Optimisation and loss", value_name = "N")]
    pub ref_model_sync_steps: Option<u64>,
    /// A KL penalty in the reward, as verl's use_kl_in_reward: each episode's return loses B x the sum over its
    /// action tokens of the sampling policy's KL estimate from the reference, before advantages are computed. 0
    /// (the default) turns it off; it loads the reference model even at --kl-weight 0.
    #[arg(long, help_heading = "Optimisation and loss", value_name = "B", default_value_t = 0.0)]
    pub reward_kl_coef: f64,
    /// The per-token estimate for --reward-kl-coef: k1 (verl's kl, the default), k2 (mse), k3 (low_var_kl) or abs.
    #[arg(long, help_heading = "Optimisation and loss", value_name = "K")]
    pub reward_kl_estimator: Option<RewardKlEstimator>,
    /// Adapt --reward-kl-coef toward this mean KL per sequence, as verl's adaptive KL controller (target_kl).
    #[arg(long, help_heading = "Optimisation and loss", value_name = "KL")]
    pub reward_kl_target: Option<f64>,
    /// The adaptive controller's horizon in sequences (verl's horizon). Default 10000.
    #[arg(long, help_heading = "Optimisation and loss", value_name = "N")]
    pub reward_kl_horizon: Option<f64>,
    /// Supervised warm-up on the environment's demonstrations (`--sft-warmup-steps`, `--sft-batch-size`, `--sft-lr`).
    #[command(flatten, next_help_heading = "Supervised warm-up")]
    pub sft: super::sft::WarmupArgs,
    /// Datasets: --dataset, --dataset-config, --dataset-split, --eval-data, --eval-data-split, --eval-holdout.
    #[command(flatten, next_help_heading = "Datasets")]
    pub data: super::eval::DataArgs,
    /// Evaluation: --eval-every, --eval-before-train, --eval-tasks, --eval-samples, --eval-temperature.
    #[command(flatten, next_help_heading = "Evaluation")]
    pub eval: super::eval::TrainEvalArgs,
    /// The best checkpoint by an evaluation metric, and early stopping.
    #[command(flatten, next_help_heading = "Run directory, checkpoints and resuming")]
    pub best_model: super::args::BestModelArgs,

    /// The run's folder, checkpoints and --resume.
    #[command(flatten, next_help_heading = "Run directory, checkpoints and resuming")]
    pub run_dir: RunDirArgs,

    /// Data parallel (under torchrun): seconds a rank waits in a collective or at the rendezvous before it gives up
    /// on a rank that died or hung (transformers' ddp_timeout). Must exceed the longest wait for the slowest rank's
    /// rollouts.
    #[arg(long, help_heading = "Data parallel (torchrun)", default_value_t = 300.0, visible_alias = "ddp-timeout")]
    pub dist_timeout: f64,
    /// Data parallel: compare a fingerprint of every rank's weights every this many batches (and at each
    /// checkpoint); a difference stops the run naming the ranks (0: only at checkpoints).
    #[arg(long, help_heading = "Data parallel (torchrun)", default_value_t = 1)]
    pub dist_check_interval: u64,

    /// W&B and TensorBoard flags.
    #[command(flatten, next_help_heading = "Logging")]
    pub logging: LoggingArgs,
    /// Accepted for re-grpo compatibility: W&B is on unless --no-wandb or WANDB_MODE=disabled.
    #[arg(long, help_heading = "Logging")]
    pub wandb: bool,
    /// Log example completions every this many batches.
    #[arg(long, help_heading = "Logging", default_value_t = 10)]
    pub log_completions_interval: u64,
    /// Instead of --eval-every: evaluate every N optimizer steps (transformers' eval_steps), a whole number of
    /// batches.
    #[arg(long, help_heading = "Evaluation", value_name = "N", conflicts_with = "eval_every")]
    pub eval_steps: Option<u64>,
}

/// Training's sampling defaults: re-grpo's temperature, and transformers' top-k of 50 that its sampling used.
pub(crate) const TRAIN_SAMPLING: SamplingParams =
    SamplingParams { temperature: 0.7, top_k: 50, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 };

impl TrainArgs {
    /// Check the flags and build the run's configuration; every mistake is one line naming the flag.
    pub fn into_config(mut self) -> anyhow::Result<RunConfig> {
        self.validate()?;
        let rollouts_per_step = self.tasks_per_batch()?;
        if let Some(steps) = self.eval_steps {
            self.eval.eval_every = self.batches_for(("--eval-steps", "--eval-every"), steps, rollouts_per_step)?;
        }
        if let Some(steps) = self.run_dir.save_steps {
            let flags = ("--save-steps", "--checkpoint-interval");
            self.run_dir.checkpoint_interval = self.batches_for(flags, steps, rollouts_per_step)?;
        }
        let algo_config = self.algo_options()?;
        let episode = self.episode.limits()?;
        let mut env_config = json_option(self.env_config.as_deref(), "--env-config")?;
        if let Some(path) = &self.data_path {
            set_option(&mut env_config, "data_path", path.display().to_string().into());
        }
        if let Some(n) = self.max_prompts {
            set_option(&mut env_config, "max_prompts", n.into());
        }
        let sampling = self.sampling.resolve(TRAIN_SAMPLING)?;
        let multi_step = self.decode.multi_step()?;
        let (eval, mut data) = (self.eval.into_settings(sampling, multi_step)?, self.data.into_settings());
        data.filter_overlong_prompts = self.filter_overlong_prompts;
        data.keep_order = !self.shuffle_dataset;
        if eval.enabled() {
            data.check_eval_source()?;
        }
        let best_model = self.best_model.settings(eval.every)?;
        let mut checkpoints = self.run_dir.settings()?;
        let logging = super::args::log_settings(&self.logging, &checkpoints.runs_dir, self.log_completions_interval)?;
        checkpoints.best_model = best_model;
        let mut config = RunConfig {
            eval,
            data,
            plugins: PluginSelection {
                algo: self.algo,
                env: self.env,
                algo_config,
                env_config,
                plugin_dirs: self.plugins.plugin_dirs,
            },
            model: ModelSettings {
                chat_template_kwargs: self.model.template_vars()?,
                chat_template: self.model.chat_template()?,
                threads: self.model.checked_threads()?,
                deterministic: self.deterministic,
                gradient_checkpointing: self.gradient_checkpointing,
                revision: self.model.model_revision,
                model: self.model.model,
                allow_download: !self.model.offline,
                device: self.model.device,
                dtype: self.model.dtype,
                mixed_precision: self.precision.mode(),
                rollout_dtype: self.rollout_dtype,
                cast_lm_head_to_fp32: self.cast_lm_head_to_fp32,
                lora: None,
                lora_adapter: None,
                router_aux_loss_coef: crate::train::config::DEFAULT_ROUTER_AUX_LOSS_COEF,
            },
            sampling: SamplingSettings { params: sampling, ignore_eos: self.sampling.ignore_eos },
            batch: BatchSettings {
                max_steps: self.max_steps,
                epochs: self.num_train_epochs,
                rollouts_per_step,
                group_size: self.group_size,
                train_batch_size: self.train_batch_size,
                gradient_accumulation_steps: self.gradient_accumulation_steps,
                micro_batch_tokens: self.micro_batch_tokens,
                epochs_per_step: self.epochs_per_step,
                max_new_tokens: episode.max_new_tokens,
                max_length: episode.max_length,
                max_turns: episode.max_turns,
                prompt_limit: episode.prompt_limit,
                max_batch_rows: self.max_batch_rows,
                multi_step,
                dynamic_sampling: self.dynamic_sampling.then_some(crate::train::dynamic_sampling::DynamicSampling {
                    max_rounds: self.max_sampling_rounds,
                }),
            },
            optimizer: OptimizerSettings {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_eps,
                ..self.schedule.optimizer(self.lr, self.weight_decay, self.max_norm)?
            },
            loss: ObjectiveSettings {
                clip_eps_low: self.clip_eps,
                clip_eps_high: self.clip_eps_high.unwrap_or(self.clip_eps),
                kl_weight: self.kl_weight,
                recompute_old_logprobs: self.recompute_old_logprobs,
                tis_cap: self.tis_cap,
                tis_mode: self.tis_mode.unwrap_or_default(),
                mask_truncated_completions: self.mask_truncated_completions,
                logprob_temperature: self.logprob_temperature,
                top_entropy_quantile: self.top_entropy_quantile,
                entropy_coeff: self.entropy_coeff,
                sync_ref_model: self.sync_ref_model.then_some(ReferenceSync {
                    alpha: self.ref_model_mixup_alpha.unwrap_or(0.6),
                    every: self.ref_model_sync_steps.unwrap_or(512),
                }),
                reward_kl: (self.reward_kl_coef > 0.0).then_some(RewardKl {
                    coef: self.reward_kl_coef,
                    estimator: self.reward_kl_estimator.unwrap_or(RewardKlEstimator::K1),
                    target: self.reward_kl_target,
                    horizon: self.reward_kl_horizon.unwrap_or(10_000.0),
                }),
            },
            seed: self.seed,
            checkpoints,
            logging,
            sft: self.sft.into_settings()?,
            dist: DistSettings { timeout_secs: self.dist_timeout, check_interval: self.dist_check_interval },
            rewards: crate::rollout::RewardShaping {
                aggregation: self.multi_objective_aggregation,
                ..self.rewards.shaping(episode.max_new_tokens)?
            },
        };
        self.lora.apply(&mut config.model, || RunPaths::resumed_model_settings(&config.checkpoints))?;
        self.router.apply(&mut config.model)?;
        config.optimizer.check()?;
        if config.loss.logprob_temperature == LogprobTemperature::Sampling && config.sampling.params.is_greedy() {
            return Err(user_error!(
                "--logprob-temperature sampling divides the logits by --temperature, which is 0 (greedy); sample \
                 at a temperature above 0, or score at --logprob-temperature one"
            ));
        }
        Ok(config)
    }

    /// The batches of `tasks` tasks that `steps` optimizer steps make, for `flags.0` (transformers' save_steps or
    /// eval_steps) in place of `flags.1`, which counts batches: checkpoints and evaluations come between batches,
    /// so `steps` must be a whole number of them.
    fn batches_for(&self, flags: (&str, &str), steps: u64, tasks: usize) -> anyhow::Result<u64> {
        let sequences = tasks * self.group_size;
        let (micro, accumulation, epochs) =
            (self.train_batch_size, self.gradient_accumulation_steps, self.epochs_per_step);
        let per_batch = crate::train::config::updates_per_batch(sequences, micro, accumulation, epochs);
        if steps.is_multiple_of(per_batch) {
            return Ok(steps / per_batch);
        }
        let (flag, batches) = flags;
        Err(user_error!(
            "{flag} {steps}: checkpoints and evaluations come between batches, and a batch here makes {per_batch} \
             optimizer steps ({sequences} sequences, micro-batches of {micro}, --gradient-accumulation-steps \
             {accumulation}, --epochs-per-step {epochs}); give a multiple of {per_batch}, or {batches} in batches"
        ))
    }

    /// `--rollouts-per-step`, or the tasks on each rank that TRL's `--generation-batch-size` or
    /// `--steps-per-generation` make, which must be whole groups on every rank (TRL lets a group span ranks).
    fn tasks_per_batch(&self) -> anyhow::Result<usize> {
        let ranks = crate::distributed::Launch::from_env()?.map_or(1, |l| l.world_size);
        let (given, sequences, how) = match (self.generation_batch_size, self.steps_per_generation) {
            (Some(n), _) => (format!("--generation-batch-size {n}"), n, format!("{n} sequences")),
            (None, Some(s)) => {
                let n = s * self.train_batch_size * ranks;
                let how =
                    format!("{s} x {} (--train-batch-size) x {ranks} rank(s) = {n} sequences", self.train_batch_size);
                (format!("--steps-per-generation {s}"), n, how)
            }
            (None, None) => return Ok(self.rollouts_per_step),
        };
        let group = self.group_size * ranks;
        if sequences == 0 || sequences % group != 0 {
            return Err(user_error!(
                "{given}: a batch of {how} is not a whole number of groups of --group-size {} on each of {ranks} \
                 rank(s); make it a multiple of {group}",
                self.group_size
            ));
        }
        Ok(sequences / group)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(self.dist_timeout.is_finite() && self.dist_timeout > 0.0) {
            return Err(user_error!("--dist-timeout {}: give a positive number of seconds", self.dist_timeout));
        }
        let positive = [
            ("--group-size", self.group_size),
            ("--rollouts-per-step", self.rollouts_per_step),
            ("--train-batch-size", self.train_batch_size),
            ("--gradient-accumulation-steps", self.gradient_accumulation_steps),
            ("--epochs-per-step", self.epochs_per_step),
            ("--max-sampling-rounds", self.max_sampling_rounds),
        ];
        if self.max_batch_rows == Some(0) {
            return Err(user_error!("--max-batch-rows must be at least 1"));
        }
        for (flag, value) in positive {
            if value == 0 {
                return Err(user_error!("{flag} must be at least 1"));
            }
        }
        let max_length = self.episode.limits()?.max_length;
        if let Some(epochs) = self.num_train_epochs.filter(|e| !(*e > 0.0 && e.is_finite())) {
            return Err(user_error!("--num-train-epochs {epochs}: must be a positive number, such as 1"));
        }
        if self.filter_overlong_prompts && self.episode.prompt.max_prompt_length.is_none() {
            return Err(user_error!(
                "--filter-overlong-prompts needs --max-prompt-length N, the length past which a task is left out"
            ));
        }
        super::args::check_micro_batch_tokens(self.micro_batch_tokens, max_length, "episode")?;
        // The lower clip bound 1 - eps must stay above 0; the upper one (DAPO's clip-higher) has no such bound.
        if !((0.0..1.0).contains(&self.clip_eps)) {
            return Err(user_error!("--clip-eps {}: must be in [0, 1), such as 0.2", self.clip_eps));
        }
        if let Some(high) = self.clip_eps_high.filter(|h| !(*h >= 0.0 && h.is_finite())) {
            return Err(user_error!("--clip-eps-high {high}: must be a number >= 0, such as 0.28"));
        }
        if self.kl_weight < 0.0 {
            return Err(user_error!("--kl-weight {} must be >= 0", self.kl_weight));
        }
        if self.dynamic_sampling && self.group_size < 2 {
            return Err(user_error!(
                "--dynamic-sampling keeps groups whose rewards vary, which a group of one never does; raise \
                 --group-size to 2 or more"
            ));
        }
        if self.mask_truncated_completions && self.sampling.ignore_eos {
            return Err(user_error!(
                "--mask-truncated-completions with --ignore-eos would leave every episode out of the loss (each turn \
                 runs to --max-new-tokens); drop one of them"
            ));
        }
        if !(self.top_entropy_quantile > 0.0 && self.top_entropy_quantile <= 1.0) {
            return Err(user_error!(
                "--top-entropy-quantile {}: must be in (0, 1], the share of tokens kept (1 keeps all)",
                self.top_entropy_quantile
            ));
        }
        if !(self.entropy_coeff >= 0.0 && self.entropy_coeff.is_finite()) {
            return Err(user_error!(
                "--entropy-coeff {}: must be a number >= 0, the weight of the entropy bonus (0 is off)",
                self.entropy_coeff
            ));
        }
        self.validate_reference_sync()?;
        self.validate_reward_kl()?;
        // Below 1 the cap would down-weight even the tokens where sampler and trainer agree.
        if !(self.tis_cap == 0.0 || (self.tis_cap >= 1.0 && self.tis_cap.is_finite())) {
            return Err(user_error!("--tis-cap {} must be 0 (off) or a number >= 1, such as 2", self.tis_cap));
        }
        if let Some(mode) = self.tis_mode.filter(|_| self.tis_cap == 0.0) {
            return Err(user_error!("--tis-mode {mode} needs --tis-cap C, the bound it applies (such as 2)"));
        }
        Ok(())
    }

    fn validate_reward_kl(&self) -> anyhow::Result<()> {
        if !(self.reward_kl_coef >= 0.0 && self.reward_kl_coef.is_finite()) {
            return Err(user_error!("--reward-kl-coef {}: must be a number >= 0 (0 is off)", self.reward_kl_coef));
        }
        let tuning = [
            ("--reward-kl-estimator", self.reward_kl_estimator.is_some()),
            ("--reward-kl-target", self.reward_kl_target.is_some()),
            ("--reward-kl-horizon", self.reward_kl_horizon.is_some()),
        ];
        if let Some((flag, _)) = tuning.iter().find(|(_, given)| *given && self.reward_kl_coef == 0.0) {
            return Err(user_error!("{flag} tunes --reward-kl-coef, which is 0 (off); give it a coefficient"));
        }
        if let Some(target) = self.reward_kl_target.filter(|t| !(*t > 0.0 && t.is_finite())) {
            return Err(user_error!("--reward-kl-target {target}: must be a positive KL, such as 0.1"));
        }
        if let Some(horizon) = self.reward_kl_horizon.filter(|h| !(*h >= 1.0 && h.is_finite())) {
            return Err(user_error!("--reward-kl-horizon {horizon}: must be at least 1, such as 10000"));
        }
        Ok(())
    }

    fn validate_reference_sync(&self) -> anyhow::Result<()> {
        let tuning = [
            ("--ref-model-mixup-alpha", self.ref_model_mixup_alpha.is_some()),
            ("--ref-model-sync-steps", self.ref_model_sync_steps.is_some()),
        ];
        if let Some((flag, _)) = tuning.iter().find(|(_, given)| *given && !self.sync_ref_model) {
            return Err(user_error!("{flag} tunes --sync-ref-model, which is not on; add --sync-ref-model"));
        }
        if !self.sync_ref_model {
            return Ok(());
        }
        if self.kl_weight == 0.0 && self.reward_kl_coef == 0.0 {
            return Err(user_error!(
                "--sync-ref-model moves the KL reference, and --kl-weight 0 has none; set --kl-weight above 0 (such as \
                 0.04), or --reward-kl-coef, or drop --sync-ref-model"
            ));
        }
        if let Some(alpha) = self.ref_model_mixup_alpha.filter(|a| !(*a > 0.0 && *a <= 1.0)) {
            return Err(user_error!("--ref-model-mixup-alpha {alpha}: must be in (0, 1], such as 0.6"));
        }
        if self.ref_model_sync_steps == Some(0) {
            return Err(user_error!("--ref-model-sync-steps must be at least 1"));
        }
        Ok(())
    }
}

impl TrainArgs {
    /// `--algo-config`, with TRL's algorithm options given as flags (`--loss-type`, `--scale-rewards`,
    /// `--importance-sampling-level`, `--delta`) set under their TRL names, which the shipped `grpo` plugin reads. The
    /// plugin checks them as it checks its JSON; a flag that disagrees with the same key in `--algo-config` is one
    /// line.
    fn algo_options(&self) -> anyhow::Result<serde_json::Value> {
        let mut config = json_option(self.algo_config.as_deref(), "--algo-config")?;
        // TRL still reads its old booleans: true is "group", false "none".
        let scale = self.scale_rewards.as_deref().map(|s| match s {
            "true" => "group",
            "false" => "none",
            other => other,
        });
        let flags = [
            ("--loss-type", "loss_type", self.loss_type.as_deref().map(serde_json::Value::from)),
            ("--scale-rewards", "scale_rewards", scale.map(serde_json::Value::from)),
            (
                "--importance-sampling-level",
                "importance_sampling_level",
                self.importance_sampling_level.as_deref().map(serde_json::Value::from),
            ),
            ("--delta", "delta", self.delta.map(serde_json::Value::from)),
        ];
        for (flag, key, value) in flags {
            let Some(value) = value else { continue };
            if let Some(old) = config.get(key).filter(|old| **old != value) {
                return Err(user_error!(
                    "{flag} {value} and --algo-config's \"{key}\": {old} disagree; give one of them"
                ));
            }
            set_option(&mut config, key, value);
        }
        Ok(config)
    }
}

fn set_option(config: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if !config.is_object() {
        *config = serde_json::json!({});
    }
    config[key] = value;
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    /// The configuration `args` give, or the error's line.
    fn config(args: &[&str]) -> Result<(), String> {
        let cli = Cli::parse_from([&["grpo-host"], args].concat());
        let result = match cli.command {
            None => cli.train.into_config().map(drop),
            Some(Command::Sft(sft)) => sft.into_config().map(drop),
            Some(other) => panic!("{other:?}"),
        };
        result.map_err(|e| e.to_string())
    }

    #[test]
    fn out_of_range_optimizer_and_clip_settings_are_refused_naming_the_flag() {
        assert_eq!(config(&["--clip-eps", "0.2", "--clip-eps-high", "0.28", "--max-norm", "0"]), Ok(()));
        for (args, flag) in [
            (&["--clip-eps=-0.1"][..], "--clip-eps -0.1"),
            (&["--clip-eps", "1"], "--clip-eps 1"),
            (&["--clip-eps-high=-1"], "--clip-eps-high -1"),
            (&["--max-norm=-1"], "--max-norm -1"),
            (&["--weight-decay", "NaN"], "--weight-decay NaN"),
            (&["--adam-beta1", "1"], "--adam-beta1 1"),
            (&["--adam-beta2=-0.5"], "--adam-beta2 -0.5"),
            (&["--adam-eps", "0"], "--adam-eps 0"),
            (&["--lr", "0"], "--lr 0"),
            (&["sft", "--env", "math", "--max-norm=-2"], "--max-norm -2"),
            (&["sft", "--env", "math", "--lr=inf"], "--lr inf"),
        ] {
            let err = config(args).expect_err(flag);
            assert!(err.starts_with(&format!("{flag}: must be")), "{args:?}: {err}");
        }
    }

    #[test]
    fn trls_names_are_aliases_of_the_flags_they_match() {
        use crate::train::precision::MixedPrecision;
        let trl = [
            "--num-generations=8",
            "--per-device-train-batch-size=2",
            "--num-iterations=3",
            "--max-completion-length=256",
            "--learning-rate=1e-6",
            "--lr-scheduler-type=cosine",
            "--max-grad-norm=0.5",
            "--epsilon=0.1",
            "--epsilon-high=0.28",
            "--beta=0.04",
            "--num-generations-eval=6",
            "--model-name-or-path=Org/model",
            "--lora-r=16",
            "--dataset-name=openai/gsm8k",
            "--dataset-train-split=test",
            "--eval-on-start",
            "--output-dir=out/grpo",
            "--bf16",
            "--use-peft",
            "--adam-epsilon=1e-6",
            "--vllm-importance-sampling-cap=2",
            "--vllm-importance-sampling-mode=sequence_mask",
        ];
        let a = Cli::parse_from([&["grpo-host"], &trl[..]].concat()).train;
        assert_eq!(
            (a.model.model.as_deref(), a.lora.lora_rank, a.eval.eval_before_train),
            (Some("Org/model"), 16, true)
        );
        assert_eq!((a.data.dataset.as_deref(), a.data.dataset_split.as_deref()), (Some("openai/gsm8k"), Some("test")));
        let checkpoints = a.run_dir.clone().settings().unwrap();
        // TRL's test split of the training dataset: --eval-data on the same source.
        let split = ["grpo-host", "--dataset-name", "openai/gsm8k", "--dataset-config", "main", "--dataset-test-split"];
        let data = Cli::parse_from([&split[..], &["test"]].concat()).train.data.into_settings();
        let eval = data.eval_data.unwrap();
        assert_eq!(
            (eval.source.as_str(), eval.config.as_deref(), eval.split.as_deref()),
            ("openai/gsm8k", Some("main"), Some("test"))
        );
        assert!(Cli::try_parse_from([&split[..], &["test", "--eval-data", "x.jsonl"]].concat()).is_err());
        assert!(Cli::try_parse_from(["grpo-host", "--dataset-test-split", "test"]).is_err());
        let resume = Cli::parse_from(["grpo-host", "--resume-from-checkpoint", "runs/a/checkpoints/step_4"]).train;
        assert_eq!(resume.run_dir.resume.as_deref(), Some("runs/a/checkpoints/step_4"));
        assert_eq!((checkpoints.run_name.as_deref(), checkpoints.runs_dir.to_str()), (Some("grpo"), Some("out")));
        assert_eq!(checkpoints.checkpoint_path.as_deref(), Some(std::path::Path::new("out/grpo")));
        assert_eq!((a.precision.mode(), a.adam_eps), (MixedPrecision::Bf16, 1e-6));
        assert_eq!((a.tis_cap, a.tis_mode), (2.0, Some(super::IsCorrection::SequenceMask)));
        // transformers' report_to as a list, space-separated as in a recipe's command line.
        let both = Cli::parse_from(["grpo-host", "--report-to", "wandb", "tensorboard", "--lr", "1"]).train;
        assert_eq!(both.logging.report_to.map(|r| r.len()), Some(2));
        let lora = |args: &[&str]| Cli::parse_from([&["grpo-host"], args].concat()).train.lora.config().unwrap();
        assert_eq!(lora(&["--use-peft"]).map(|c| (c.rank, c.targets)), Some((16, crate::model::LoraTargets::ALL)));
        assert_eq!(lora(&["--use-peft", "--lora-r", "8"]).map(|c| c.rank), Some(8));
        assert_eq!(lora(&[]), None);
        // PEFT's target modules as TRL takes them (space-separated), as this host does (comma-separated), or with
        // the flag repeated, as a --config file's list gives them.
        let qv: crate::model::LoraTargets = "q_proj,v_proj".parse().unwrap();
        for targets in [
            &["--lora-target-modules", "q_proj", "v_proj"][..],
            &["--lora-target-modules", "q_proj,v_proj"],
            &["--lora-target-modules", "v_proj", "--lora-target-modules", "q_proj"],
        ] {
            assert_eq!(lora(&[&["--use-peft"], targets].concat()).map(|c| c.targets), Some(qv), "{targets:?}");
        }
        // TRL's spellings with underscores, as a recipe gives them.
        let recipe =
            ["grpo-host", "--learning_rate", "3e-6", "--lora_target_modules", "q_proj", "v_proj", "--use_peft"];
        let argv =
            super::super::trl_flags::normalize(recipe.iter().map(std::ffi::OsString::from).collect()).unwrap().argv;
        let t = Cli::parse_from(argv).train;
        assert_eq!((t.lr, t.lora.config().unwrap().map(|c| c.targets)), (3e-6, Some(qv)));
        let fp16 = Cli::parse_from(["grpo-host", "--fp16"]).train.precision.mode();
        assert_eq!(
            (fp16, Cli::parse_from(["grpo-host"]).train.precision.mode()),
            (MixedPrecision::Fp16, MixedPrecision::Auto)
        );
        assert!(Cli::try_parse_from(["grpo-host", "--bf16", "--mixed-precision", "no"]).is_err());
        assert!(Cli::try_parse_from(["grpo-host", "--bf16", "--fp16"]).is_err());
        assert_eq!((a.group_size, a.train_batch_size, a.epochs_per_step, a.episode.max_new_tokens), (8, 2, 3, 256));
        assert_eq!((a.lr, a.schedule.lr_schedule, a.max_norm), (1e-6, crate::train::config::LrSchedule::Cosine, 0.5));
        assert_eq!((a.clip_eps, a.clip_eps_high, a.kl_weight, a.eval.run.eval_samples), (0.1, Some(0.28), 0.04, 6));
    }

    /// TRL's generation batch, given as its sequences or as micro-batches, sets the tasks per batch: whole groups,
    /// or one line naming the flag.
    #[test]
    fn trls_generation_batch_sets_the_tasks_per_batch() {
        let tasks = |args: &[&str]| {
            let cli = Cli::parse_from([&["grpo-host"], args].concat());
            cli.train.into_config().map(|c| c.batch.rollouts_per_step).map_err(|e| e.to_string())
        };
        assert_eq!(tasks(&["--group-size", "8", "--generation-batch-size", "64"]), Ok(8));
        // 4 micro-batches of 6 sequences: 24 sequences, 3 groups of 8.
        let args = ["--num-generations", "8", "--per-device-train-batch-size", "6", "--steps-per-generation", "4"];
        assert_eq!(tasks(&args), Ok(3));
        assert_eq!(tasks(&[]), Ok(4));
        let err = tasks(&["--group-size", "8", "--steps-per-generation", "3"]).unwrap_err();
        assert!(
            err.starts_with(
                "--steps-per-generation 3: a batch of 3 x 4 (--train-batch-size) x 1 rank(s) = 12 sequences is not"
            ),
            "{err}"
        );
        let err = tasks(&["--generation-batch-size", "0"]).unwrap_err();
        assert!(err.contains("make it a multiple of 4"), "{err}");
        let both = ["grpo-host", "--generation-batch-size", "8", "--steps-per-generation", "2"];
        assert!(Cli::try_parse_from(both).is_err());
        assert!(Cli::try_parse_from(["grpo-host", "--rollouts-per-step", "2", "--steps-per-generation", "2"]).is_err());
    }

    /// transformers' save_steps and eval_steps count optimizer steps: a whole number of batches becomes
    /// --checkpoint-interval and --eval-every, and any other number is one line with the batch's arithmetic.
    #[test]
    fn save_and_eval_steps_count_optimizer_steps() {
        // 2 tasks x 8 episodes in micro-batches of 4: 4 optimizer steps a batch.
        let config = |extra: &[&str]| {
            let batch = ["grpo-host", "--rollouts-per-step", "2", "--group-size", "8", "--train-batch-size", "4"];
            Cli::try_parse_from([&batch[..], extra].concat()).unwrap().train.into_config()
        };
        let c = config(&["--save-steps", "8", "--eval-steps", "4"]).unwrap();
        assert_eq!((c.checkpoints.interval, c.eval.every), (2, 1));
        let err = config(&["--save-steps", "6"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "--save-steps 6: checkpoints and evaluations come between batches, and a batch here makes 4 optimizer \
             steps (16 sequences, micro-batches of 4, --gradient-accumulation-steps 1, --epochs-per-step 1); give a \
             multiple of 4, or --checkpoint-interval in batches"
        );
        // One step a batch, as in TRL's own layout: the same numbers.
        let c = config(&["--gradient-accumulation-steps", "4", "--eval-steps", "3", "--save-steps", "5"]).unwrap();
        assert_eq!((c.checkpoints.interval, c.eval.every), (5, 3));
        let c = config(&["--num-iterations", "2", "--eval-steps", "16"]).unwrap();
        assert_eq!(c.eval.every, 2);
        assert!(Cli::try_parse_from(["grpo-host", "--save-steps", "4", "--checkpoint-interval", "1"]).is_err());
        assert!(Cli::try_parse_from(["grpo-host", "--eval-steps", "4", "--eval-every", "1"]).is_err());
    }

    /// TRL's algorithm options as flags land in the algorithm's options under TRL's names (verl's clip_ratio_c as
    /// delta), its old booleans for scale_rewards read, and one that disagrees with --algo-config is refused.
    #[test]
    fn trls_algorithm_flags_set_the_algorithms_options() {
        let options = |args: &[&str]| {
            let cli = Cli::parse_from([&["grpo-host"], args].concat());
            cli.train.into_config().map(|c| c.plugins.algo_config).map_err(|e| e.to_string())
        };
        let trl = ["--loss-type", "dapo", "--scale-rewards", "false", "--importance-sampling-level", "sequence"];
        let want = serde_json::json!({"loss_type": "dapo", "scale_rewards": "none",
            "importance_sampling_level": "sequence", "delta": 2.0, "std_eps": 1e-4});
        let with = [&trl[..], &["--delta", "2", "--algo-config", r#"{"std_eps": 1e-4, "loss_type": "dapo"}"#]].concat();
        assert_eq!(options(&with), Ok(want));
        assert_eq!(options(&["--scale-rewards", "true"]), Ok(serde_json::json!({"scale_rewards": "group"})));
        assert_eq!(options(&["--clip-ratio-c", "3"]), Ok(serde_json::json!({"delta": 3.0})), "verl's name for delta");
        assert_eq!(options(&[]), Ok(serde_json::Value::Null));
        let err = options(&["--loss-type", "dapo", "--algo-config", r#"{"loss_type": "grpo"}"#]).unwrap_err();
        assert_eq!(err, r#"--loss-type "dapo" and --algo-config's "loss_type": "grpo" disagree; give one of them"#);
    }

    /// `sft` takes SFTConfig's names where they mean the same as its own flags (steps are optimizer steps there
    /// too).
    #[test]
    fn trls_sft_names_are_aliases_of_the_sft_flags() {
        let trl = ["--learning-rate=1e-5", "--max-grad-norm=0.3", "--eval-steps=5", "--output-dir=runs/x"];
        let cli = Cli::parse_from([&["grpo-host", "sft", "--env", "math"], &trl[..]].concat());
        let Some(Command::Sft(a)) = cli.command else { panic!("not sft") };
        assert_eq!((a.lr, a.max_norm, a.eval_every), (1e-5, 0.3, 5));
        assert_eq!(a.run_dir.output.as_deref(), Some(std::path::Path::new("runs/x")));
        let named = ["grpo-host", "sft", "--dataset-name", "org/chats", "--dataset-train-split", "train"];
        let Some(Command::Sft(a)) = Cli::parse_from(named).command else { panic!("not sft") };
        assert_eq!((a.data.as_deref(), a.data_split.as_deref()), (Some("org/chats"), Some("train")));
        let held_out = [&named[..], &["--dataset-test-split", "test"]].concat();
        let Some(Command::Sft(a)) = Cli::parse_from(held_out).command else { panic!("not sft") };
        let eval = a.into_config().unwrap().eval.unwrap();
        let want = crate::data::DatasetSpec { source: "org/chats".into(), config: None, split: Some("test".into()) };
        assert_eq!(eval.rows, crate::sft::run::HeldOutRows::Data(want));
    }

    #[test]
    fn masking_truncated_completions_is_refused_where_every_completion_is_truncated() {
        assert_eq!(config(&["--mask-truncated-completions"]), Ok(()));
        let err = config(&["--mask-truncated-completions", "--ignore-eos"]).unwrap_err();
        assert!(err.contains("every episode out of the loss") && err.contains("drop one"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn dynamic_sampling_is_refused_for_groups_of_one_and_without_rounds() {
        assert_eq!(config(&["--dynamic-sampling", "--max-sampling-rounds", "3"]), Ok(()));
        let err = config(&["--dynamic-sampling", "--group-size", "1"]).unwrap_err();
        assert!(err.contains("--dynamic-sampling") && err.contains("--group-size to 2"), "{err}");
        let err = config(&["--dynamic-sampling", "--max-sampling-rounds", "0"]).unwrap_err();
        assert_eq!(err, "--max-sampling-rounds must be at least 1");
    }

    #[test]
    fn chat_template_kwargs_are_a_json_object_without_the_hosts_own_variables() {
        assert_eq!(config(&["--chat-template-kwargs", r#"{"enable_thinking": false}"#]), Ok(()));
        for (value, wanted) in [
            ("[1]", "--chat-template-kwargs [1]: give a JSON object"),
            (r#"{"messages": []}"#, "--chat-template-kwargs: `messages` is set by grpo-host itself"),
            ("{enable_thinking", "--chat-template-kwargs"),
        ] {
            let err = config(&["--chat-template-kwargs", value]).expect_err(value);
            assert!(err.starts_with(wanted), "{value}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn the_reward_kl_flags_need_a_coefficient_and_sane_values() {
        assert_eq!(config(&["--reward-kl-coef", "0.1", "--reward-kl-estimator", "low_var_kl"]), Ok(()));
        assert_eq!(config(&["--reward-kl-coef", "0.1", "--kl-weight", "0", "--sync-ref-model"]), Ok(()));
        for (args, wanted) in [
            (&["--reward-kl-coef=-1"][..], "--reward-kl-coef -1: must be a number >= 0"),
            (&["--reward-kl-target", "0.1"], "--reward-kl-target tunes --reward-kl-coef"),
            (&["--reward-kl-estimator", "k2"], "--reward-kl-estimator tunes --reward-kl-coef"),
            (&["--reward-kl-coef", "0.1", "--reward-kl-target", "0"], "--reward-kl-target 0: must be a positive"),
            (&["--reward-kl-coef", "0.1", "--reward-kl-horizon", "0.5"], "--reward-kl-horizon 0.5: must be at"),
        ] {
            let err = config(args).expect_err(wanted);
            assert!(err.starts_with(wanted), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn an_entropy_bonus_is_a_finite_weight_of_at_least_0() {
        assert_eq!(config(&["--entropy-coeff", "0.001"]), Ok(()));
        for value in ["-0.01", "inf", "NaN"] {
            let err = config(&[&format!("--entropy-coeff={value}")]).expect_err(value);
            assert!(err.starts_with(&format!("--entropy-coeff {value}: must be a number >= 0")), "{err}");
        }
    }

    #[test]
    fn reference_sync_needs_a_reference_and_sane_settings() {
        assert_eq!(config(&["--sync-ref-model"]), Ok(()));
        assert_eq!(
            config(&["--sync-ref-model", "--ref-model-mixup-alpha", "1", "--ref-model-sync-steps", "1"]),
            Ok(())
        );
        for (args, wanted) in [
            (&["--ref-model-mixup-alpha", "0.5"][..], "--ref-model-mixup-alpha tunes --sync-ref-model"),
            (&["--ref-model-sync-steps", "8"], "--ref-model-sync-steps tunes --sync-ref-model"),
            (&["--sync-ref-model", "--kl-weight", "0"], "--sync-ref-model moves the KL reference"),
            (&["--sync-ref-model", "--ref-model-mixup-alpha", "0"], "--ref-model-mixup-alpha 0: must be in (0, 1]"),
            (&["--sync-ref-model", "--ref-model-mixup-alpha", "1.5"], "--ref-model-mixup-alpha 1.5: must be"),
            (&["--sync-ref-model", "--ref-model-sync-steps", "0"], "--ref-model-sync-steps must be at least 1"),
        ] {
            let err = config(args).expect_err(wanted);
            assert!(err.starts_with(wanted), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
