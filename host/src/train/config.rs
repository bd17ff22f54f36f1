//! What a training run is configured by: one typed value, built once by whoever starts the run (the command line,
//! a test, a benchmark) and read by every stage. It is also the run's resolved `config.json`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::generate::SamplingParams;
use crate::logging::WandbFlags;
use crate::model::{DeviceSpec, DtypeSpec, LoraConfig};
use crate::plugins::DiscoveryOptions;
use crate::train::precision::MixedPrecision;

/// A whole training run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// The algorithm and environment plugins and their options.
    pub plugins: PluginSelection,
    /// The policy model.
    pub model: ModelSettings,
    /// How rollouts sample.
    pub sampling: SamplingSettings,
    /// Batch sizes, lengths and the number of batches.
    pub batch: BatchSettings,
    /// AdamW and the learning-rate schedule.
    pub optimizer: OptimizerSettings,
    /// The clipped objective and the KL penalty.
    pub loss: ObjectiveSettings,
    /// Seed for task order, sampling, shuffles and LoRA initialisation.
    pub seed: u64,
    /// Where the run's files go and how it is checkpointed and resumed.
    pub checkpoints: CheckpointSettings,
    /// W&B, TensorBoard and completion tables.
    pub logging: LogSettings,
    /// Supervised warm-up on the environment's demonstrations before the first batch (`--sft-warmup-steps`).
    #[serde(default)]
    pub sft: crate::sft::warmup::WarmupSettings,
    /// Tasks from datasets (`--dataset`, `--eval-data`, `--eval-holdout`) instead of the environment's own.
    #[serde(default)]
    pub data: crate::data::DataSettings,
    /// Evaluation on held-out tasks (`--eval-every`, `--eval-before-train`, ...).
    #[serde(default)]
    pub eval: crate::eval::EvalSettings,
    /// Data parallelism under torchrun (ignored in one process).
    #[serde(default)]
    pub dist: DistSettings,
    /// How the environment's rewards make a return: `--reward-weights`, DAPO's `--overlong-buffer`.
    #[serde(default)]
    pub rewards: crate::rollout::RewardShaping,
}

/// Data-parallel settings; none of them changes what a run computes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DistSettings {
    /// Seconds a rank waits in a collective (or at the rendezvous) before it stops, naming the lost rank.
    pub timeout_secs: f64,
    /// Compare the ranks' weight fingerprints every this many batches (0: only at checkpoints).
    pub check_interval: u64,
}

impl Default for DistSettings {
    fn default() -> Self {
        DistSettings { timeout_secs: 300.0, check_interval: 1 }
    }
}

/// Which plugins, with which options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginSelection {
    /// Algorithm plugin name.
    pub algo: String,
    /// Environment plugin name.
    pub env: String,
    /// The algorithm's options (JSON; `null` for its defaults).
    pub algo_config: serde_json::Value,
    /// The environment's options (JSON; `null` for its defaults).
    pub env_config: serde_json::Value,
    /// Extra directories searched for plugin libraries, first.
    pub plugin_dirs: Vec<PathBuf>,
}

impl PluginSelection {
    /// The plugin search with [`PluginSelection::plugin_dirs`] first.
    pub fn discovery(&self) -> DiscoveryOptions {
        DiscoveryOptions::new(self.plugin_dirs.clone())
    }
}

/// The policy model and where it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelSettings {
    /// Model directory or hub id; `None` for the default model.
    pub model: Option<String>,
    /// The hub id's revision (a branch, tag or commit); `None` for `main`. A directory is used as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Whether a hub id may be downloaded.
    pub allow_download: bool,
    /// Requested device.
    pub device: DeviceSpec,
    /// Requested parameter dtype (of the stored parameters; f32 master weights under mixed precision).
    pub dtype: DtypeSpec,
    /// The precision forward and backward compute in.
    pub mixed_precision: MixedPrecision,
    /// The dtype rollouts sample in (`Auto`: the compute precision).
    #[serde(default)]
    pub rollout_dtype: DtypeSpec,
    /// Keep the output projection in f32 under a lower precision (TRL's `cast_lm_head_to_fp32`).
    #[serde(default)]
    pub cast_lm_head_to_fp32: bool,
    /// libtorch intra-op threads (`None`: libtorch's choice).
    pub threads: Option<i32>,
    /// libtorch's deterministic algorithms (and a fixed cuBLAS workspace on CUDA).
    pub deterministic: bool,
    /// LoRA adapters, or `None` to train all weights.
    pub lora: Option<LoraConfig>,
    /// The PEFT adapter folder `lora` starts from (`--lora-adapter`), or `None` for a fresh adapter.
    #[serde(default)]
    pub lora_adapter: Option<String>,
    /// Recompute each layer's activations in the backward pass instead of keeping them (memory for compute; the
    /// results are the same, so a resumed run may switch it).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// The weight of a mixture of experts' load-balancing loss in training (`--router-aux-loss-coef`, TRL's
    /// `router_aux_loss_coef`); a dense model ignores it.
    #[serde(default = "default_router_aux_loss_coef")]
    pub router_aux_loss_coef: f64,
    /// Variables every rendering of the chat template gets (`--chat-template-kwargs`).
    #[serde(default)]
    pub chat_template_kwargs: serde_json::Map<String, serde_json::Value>,
    /// The chat template's text where `--chat-template` replaces the model's own; checkpoints save it as
    /// chat_template.jinja.
    #[serde(default)]
    pub chat_template: Option<String>,
}

/// TRL's default weight of the load-balancing loss.
pub const DEFAULT_ROUTER_AUX_LOSS_COEF: f64 = 0.001;

fn default_router_aux_loss_coef() -> f64 {
    DEFAULT_ROUTER_AUX_LOSS_COEF
}

/// How rollouts sample.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SamplingSettings {
    /// Temperature and filters.
    pub params: SamplingParams,
    /// Generate every turn to `max_new_tokens`, past end-of-sequence (benchmarks).
    pub ignore_eos: bool,
}

/// Sizes of a batch and of its pieces.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BatchSettings {
    /// Batches to train on.
    pub max_steps: u64,
    /// Passes over the training tasks to train for (`--num-train-epochs`), which set `max_steps` once the tasks are
    /// known.
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Tasks per batch.
    pub rollouts_per_step: usize,
    /// Episodes per task.
    pub group_size: usize,
    /// Sequences per forward/backward micro-batch.
    pub train_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// `--micro-batch-tokens`: each optimizer step's sequences (`train_batch_size` times
    /// `gradient_accumulation_steps`) regrouped longest first into micro-batches of at most this many padded tokens,
    /// and the log-prob passes grouped the same way; `None`: micro-batches of `train_batch_size` sequences.
    #[serde(default)]
    pub micro_batch_tokens: Option<usize>,
    /// Passes over each batch's experience.
    pub epochs_per_step: usize,
    /// Most tokens per assistant turn; DR-GRPO's constant normalizer.
    pub max_new_tokens: usize,
    /// Most tokens in one episode.
    pub max_length: usize,
    /// Most assistant turns per episode.
    pub max_turns: usize,
    /// The longest opening prompt and how a longer one is cut (`--max-prompt-length`); `None`: no limit.
    #[serde(default)]
    pub prompt_limit: Option<crate::rollout::PromptLimit>,
    /// Episodes holding a rollout cache slot at once; `None`: the whole batch, as memory allows. Not a result
    /// setting: it changes only which rows share a forward pass, so a resumed run may change it.
    #[serde(default)]
    pub max_batch_rows: Option<usize>,
    /// Decode steps per host read in rollouts (`--multi-step`). Not a result setting, for the same reason.
    #[serde(default = "crate::generate::engine::one_read_per_step")]
    pub multi_step: usize,
    /// DAPO's dynamic sampling (`--dynamic-sampling`): groups whose returns are all equal are replaced by groups of
    /// further tasks; `None` when off.
    #[serde(default)]
    pub dynamic_sampling: Option<crate::train::dynamic_sampling::DynamicSampling>,
}

impl BatchSettings {
    /// The limits of one episode, as the run's evaluations play them too.
    pub fn episode_limits(&self) -> crate::eval::EpisodeLimits {
        crate::eval::EpisodeLimits {
            max_new_tokens: self.max_new_tokens,
            max_turns: self.max_turns,
            max_length: self.max_length,
            prompt_limit: self.prompt_limit,
        }
    }

    /// How the log-prob passes over a batch group its sequences.
    pub fn chunking(&self) -> crate::train::experience::Chunking {
        use crate::train::experience::Chunking;
        self.micro_batch_tokens.map_or(Chunking::Rows(self.train_batch_size), Chunking::Tokens)
    }

    /// Episodes in one batch.
    pub fn sequences(&self) -> usize {
        self.rollouts_per_step * self.group_size
    }

    /// Optimizer steps one batch makes.
    pub fn updates_per_batch(&self) -> u64 {
        updates_per_batch(
            self.sequences(),
            self.train_batch_size,
            self.gradient_accumulation_steps,
            self.epochs_per_step,
        )
    }
}

/// Optimizer steps a batch of `sequences` makes: its micro-batches of `micro_batch` per epoch, grouped by the
/// accumulation window, times the epochs over the batch.
pub fn updates_per_batch(sequences: usize, micro_batch: usize, accumulation: usize, epochs: usize) -> u64 {
    (sequences.div_ceil(micro_batch.max(1)).div_ceil(accumulation.max(1)) * epochs) as u64
}

/// `--num-train-epochs E` over `count` items (rows or tasks) taken `global_batch` at a time: the batches or steps
/// that make E passes, rounded up, and the console line that says so (`items` and `steps` name the two).
pub fn steps_for_epochs(epochs: f64, count: usize, global_batch: usize, items: &str, steps: &str) -> (u64, String) {
    let n = (epochs * count as f64 / global_batch.max(1) as f64).ceil() as u64;
    (n, format!("--num-train-epochs {epochs}: {count} {items} in global batches of {global_batch}: {n} {steps}"))
}

crate::choice_enum! {
    /// The learning rate after warmup, by transformers' `lr_scheduler_type` names. Warmup, where there is one, is
    /// linear for all of them and reaches the base rate at its last step (see [`Schedule`](super::optimizer::Schedule)).
    pub enum LrSchedule {
        /// The base rate throughout (transformers' `constant_with_warmup`: the warmup flags apply).
        Constant = "constant" | "constant_with_warmup",
        /// Linear decay to 0 at the end of the run (transformers' and TRL's default; to `--min-lr-ratio` of the
        /// rate with it).
        Linear = "linear",
        /// Cosine decay to 0 at the end of the run (to `--min-lr-ratio` of the rate with it, which is what
        /// transformers' `cosine_with_min_lr` adds), over `num_cycles` waves (0.5: one half-wave down).
        Cosine = "cosine" | "cosine_with_min_lr",
        /// transformers' other cosine to a floor: the decay reaches it at the run's last update (one update earlier
        /// than `cosine`), and with `warmup_lr_rate` the warmup rises straight from that share of the rate.
        CosineWarmupWithMinLr = "cosine_warmup_with_min_lr",
        /// Cosine decays that restart from the base rate `num_cycles` times (1 by default), then 0.
        CosineWithRestarts = "cosine_with_restarts",
        /// `(lr - lr_end) * (1 - progress)^power + lr_end` (power 1, lr_end 1e-7 by default).
        Polynomial = "polynomial",
        /// `1 / sqrt((step + timescale - warmup) / timescale)` after warmup, with no end.
        InverseSqrt = "inverse_sqrt",
        /// Warmup, then the base rate, then a decay over the last `num_decay_steps` updates (WSD).
        WarmupStableDecay = "warmup_stable_decay",
    }
}

crate::choice_enum! {
    /// The curve of a warmup-stable-decay schedule's warmup or decay (transformers' `warmup_type`, `decay_type`).
    pub enum Ramp {
        /// Straight.
        Linear = "linear",
        /// A half cosine wave (the decay's: `num_cycles` waves).
        Cosine = "cosine",
        /// `1 - sqrt(1 - p)` up, `1 - sqrt(p)` down: fast at the start of the decay.
        OneMinusSqrt = "1-sqrt",
    }
}

/// A schedule's shape beyond its name (`--lr-scheduler-kwargs`, transformers' `lr_scheduler_kwargs`); `None` is
/// the schedule's default. Each applies to the schedules named; [`OptimizerSettings::check`] refuses the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleOptions {
    /// Cosine waves over the decay: `cosine` 0.5, `cosine_with_restarts` 1, the WSD decay's 0.5.
    pub num_cycles: Option<f64>,
    /// `cosine_warmup_with_min_lr`: where its warmup starts, as a share of the rate (none: at `1 / warmup`).
    pub warmup_lr_rate: Option<f64>,
    /// `polynomial`'s exponent (1).
    pub power: Option<f64>,
    /// `polynomial`'s last rate (1e-7), below `--lr`.
    pub lr_end: Option<f64>,
    /// `inverse_sqrt`'s time scale in updates (the warmup's length, else 10,000).
    pub timescale: Option<u64>,
    /// WSD: updates of the decay (required).
    pub num_decay_steps: Option<u64>,
    /// WSD: updates at the base rate (the run's updates less the warmup and the decay).
    pub num_stable_steps: Option<u64>,
    /// WSD: the warmup's curve (linear).
    pub warmup_type: Option<Ramp>,
    /// WSD: the decay's curve (cosine).
    pub decay_type: Option<Ramp>,
}

impl ScheduleOptions {
    /// The options given, by their keys in `--lr-scheduler-kwargs`, in declaration order: read from the serialized
    /// struct, so the keys cannot drift from the fields' names.
    fn given(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(fields)) => {
                fields.into_iter().filter(|(_, value)| !value.is_null()).map(|(key, _)| key).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl LrSchedule {
    /// The `--lr-scheduler-kwargs` keys this schedule reads, and whether `--min-lr-ratio` applies to it.
    fn takes(self) -> (&'static [&'static str], bool) {
        match self {
            LrSchedule::Constant => (&[], false),
            LrSchedule::Linear => (&[], true),
            LrSchedule::Cosine | LrSchedule::CosineWithRestarts => (&["num_cycles"], true),
            LrSchedule::CosineWarmupWithMinLr => (&["num_cycles", "warmup_lr_rate"], true),
            LrSchedule::Polynomial => (&["power", "lr_end"], false),
            LrSchedule::InverseSqrt => (&["timescale"], false),
            LrSchedule::WarmupStableDecay => {
                (&["num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "num_cycles"], true)
            }
        }
    }
}

/// AdamW and its schedule.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct OptimizerSettings {
    /// Base learning rate.
    pub lr: f64,
    /// Shape after warmup.
    pub schedule: LrSchedule,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// The warmup as a share of the schedule's updates instead (`--warmup-ratio`, transformers' `warmup_ratio`):
    /// `ceil(ratio * updates)` steps.
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    /// Where a linear or cosine decay ends, as a share of `lr` (transformers' `min_lr_rate`, verl's
    /// `min_lr_ratio`); 0: at zero.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// The schedule's other options (`--lr-scheduler-kwargs`).
    #[serde(default)]
    pub schedule_options: ScheduleOptions,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Global gradient-norm clip (0 disables).
    pub max_norm: f64,
}

impl OptimizerSettings {
    /// An error naming the flag when a setting is out of its range (train's warm-up learning rate, `--sft-lr`, is
    /// checked where it is read).
    pub fn check(&self) -> anyhow::Result<()> {
        let warmup_ratio = self.warmup_ratio.unwrap_or(0.0);
        let checks = [
            ("--lr", self.lr, self.lr > 0.0, "a positive number"),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0.0, "a number >= 0"),
            ("--adam-beta1", self.beta1, (0.0..1.0).contains(&self.beta1), "in [0, 1)"),
            ("--adam-beta2", self.beta2, (0.0..1.0).contains(&self.beta2), "in [0, 1)"),
            ("--adam-eps", self.eps, self.eps > 0.0, "a positive number"),
            ("--max-norm", self.max_norm, self.max_norm >= 0.0, "a number >= 0 (0 disables clipping)"),
            ("--warmup-ratio", warmup_ratio, (0.0..1.0).contains(&warmup_ratio), "in [0, 1)"),
            ("--min-lr-ratio", self.min_lr_ratio, (0.0..1.0).contains(&self.min_lr_ratio), "in [0, 1)"),
        ];
        if let Some((flag, value, _, want)) = checks.into_iter().find(|(_, value, ok, _)| !(*ok && value.is_finite())) {
            return Err(crate::user_error!("{flag} {value}: must be {want}"));
        }
        let (keys, floor) = self.schedule.takes();
        if self.min_lr_ratio > 0.0 && !floor {
            let instead = match self.schedule {
                LrSchedule::Polynomial => "; polynomial ends at lr_end in --lr-scheduler-kwargs",
                _ => "; add --lr-schedule cosine (or linear)",
            };
            return Err(crate::user_error!(
                "--min-lr-ratio {} sets where a decay ends, which --lr-schedule {} does not take{instead}",
                self.min_lr_ratio,
                self.schedule
            ));
        }
        let o = &self.schedule_options;
        if let Some(key) = o.given().into_iter().find(|key| !keys.contains(&key.as_str())) {
            let takes = match keys {
                [] => "none".to_string(),
                keys => keys.join(", "),
            };
            return Err(crate::user_error!(
                "--lr-scheduler-kwargs {key}: --lr-schedule {} does not take it (it takes {takes})",
                self.schedule
            ));
        }
        // A given value that is not finite or fails `ok`.
        let outside = |value: Option<f64>, ok: fn(f64) -> bool| value.filter(|v| !(ok(*v) && v.is_finite()));
        let ranges = [
            ("num_cycles", outside(o.num_cycles, |v| v > 0.0), "a positive number"),
            ("warmup_lr_rate", outside(o.warmup_lr_rate, |v| (0.0..1.0).contains(&v)), "in [0, 1)"),
            ("power", outside(o.power, |v| v > 0.0), "a positive number"),
            ("lr_end", outside(o.lr_end, |v| v >= 0.0), "a number >= 0"),
        ];
        if let Some((key, Some(value), want)) = ranges.into_iter().find(|(_, bad, _)| bad.is_some()) {
            return Err(crate::user_error!("--lr-scheduler-kwargs {key} {value}: must be {want}"));
        }
        if let Some(end) = o.lr_end.filter(|end| *end >= self.lr) {
            return Err(crate::user_error!(
                "--lr-scheduler-kwargs lr_end {end}: must be below --lr {} (the polynomial decays from it)",
                self.lr
            ));
        }
        if o.timescale == Some(0) || o.num_decay_steps == Some(0) {
            return Err(crate::user_error!("--lr-scheduler-kwargs: timescale and num_decay_steps must be at least 1"));
        }
        if self.schedule == LrSchedule::WarmupStableDecay && o.num_decay_steps.is_none() {
            return Err(crate::user_error!(
                "--lr-schedule warmup_stable_decay needs the decay's length: --lr-scheduler-kwargs \
                 '{{\"num_decay_steps\": N}}' (and optionally num_stable_steps, warmup_type, decay_type)"
            ));
        }
        Ok(())
    }

    /// AdamW's hyper-parameters (its learning rate the base one; the schedule scales it per step).
    pub fn adamw(&self) -> super::optimizer::AdamWConfig {
        let (lr, beta1, beta2, eps, weight_decay) = (self.lr, self.beta1, self.beta2, self.eps, self.weight_decay);
        super::optimizer::AdamWConfig { lr, beta1, beta2, eps, weight_decay }
    }

    /// The learning-rate schedule over `total_steps` updates, the first at global step `start`. A
    /// warmup-stable-decay schedule whose warmup and decay do not fit in the run is one line.
    pub fn schedule(&self, total_steps: u64, start: u64) -> anyhow::Result<super::optimizer::Schedule> {
        let warmup_steps = match self.warmup_ratio {
            Some(ratio) => (ratio * total_steps as f64).ceil() as u64,
            None => self.warmup_steps,
        };
        let o = self.schedule_options;
        if let (LrSchedule::WarmupStableDecay, Some(decay), None) =
            (self.schedule, o.num_decay_steps, o.num_stable_steps)
        {
            if warmup_steps + decay > total_steps {
                return Err(crate::user_error!(
                    "--lr-scheduler-kwargs num_decay_steps {decay}: the run has {total_steps} updates, {warmup_steps} \
                     of them warmup, which leaves {} for the decay; give fewer decay steps or more --max-steps",
                    total_steps.saturating_sub(warmup_steps)
                ));
            }
        }
        Ok(super::optimizer::Schedule {
            base_lr: self.lr,
            warmup_steps,
            decay: self.schedule,
            options: o,
            min_lr_ratio: self.min_lr_ratio,
            total_steps,
            start,
        })
    }
}

crate::choice_enum! {
    /// Whether the old log-probs are recomputed with a forward pass or taken from the sampler.
    pub enum RecomputeOld {
        /// Reuse the sampler's in f32, recompute in lower precision.
        Auto = "auto",
        /// Always recompute.
        Always = "always",
        /// Never recompute.
        Never = "never",
    }
}

crate::choice_enum! {
    /// How the importance weights of a sampler in another precision are formed and bounded by `--tis-cap`
    /// (`--tis-mode`, TRL's `vllm_importance_sampling_mode`, with its underscores accepted too): each token's own
    /// ratio or its sequence's (the product of its tokens'), and above the cap cut to the cap or set to 0.
    #[derive(Default)]
    pub enum IsCorrection {
        /// `min(rho_t, cap)` per token: truncated importance sampling (TIS).
        #[default]
        TokenTruncate = "token-truncate" | "token_truncate",
        /// `rho_t`, or 0 where it exceeds the cap: masked importance sampling per token.
        TokenMask = "token-mask" | "token_mask",
        /// `min(prod_t rho_t, cap)` for every token of the sequence.
        SequenceTruncate = "sequence-truncate" | "sequence_truncate",
        /// `prod_t rho_t` for every token of the sequence, or 0 for all of them where it exceeds the cap (TRL's
        /// default): a sequence the sampler drew far from the trainer's policy teaches nothing.
        SequenceMask = "sequence-mask" | "sequence_mask",
    }
}

impl IsCorrection {
    /// Whether one ratio covers a whole sequence.
    pub fn per_sequence(self) -> bool {
        matches!(self, IsCorrection::SequenceTruncate | IsCorrection::SequenceMask)
    }

    /// Whether a weight over the cap becomes 0 rather than the cap.
    pub fn masks(self) -> bool {
        matches!(self, IsCorrection::TokenMask | IsCorrection::SequenceMask)
    }
}

crate::choice_enum! {
    /// The distribution the loss scores sampled tokens under (`--logprob-temperature`).
    #[derive(Default)]
    pub enum LogprobTemperature {
        /// The model's own, at temperature 1, whatever the sampling temperature (re-grpo).
        #[default]
        One = "one",
        /// The model's at the sampling temperature (`--temperature`), the one the tokens were drawn from, filters
        /// aside (TRL and verl).
        Sampling = "sampling",
    }
}

/// The clipped objective, the KL penalty and the old log-probs it compares against.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ObjectiveSettings {
    /// Lower PPO clip range.
    pub clip_eps_low: f64,
    /// Upper PPO clip range.
    pub clip_eps_high: f64,
    /// Weight of the k3 KL penalty; 0 loads no reference model.
    pub kl_weight: f64,
    /// Old log-probs' source.
    pub recompute_old_logprobs: RecomputeOld,
    /// Cap of the truncated importance weights `min(p_old / p_sampler, cap)` on recomputed old log-probs; 0: none.
    #[serde(default)]
    pub tis_cap: f64,
    /// How `tis_cap` bounds the weights, and whether a weight is a token's or its sequence's (`--tis-mode`).
    #[serde(default)]
    pub tis_mode: IsCorrection,
    /// Leave episodes with a turn cut at `--max-new-tokens` or `--max-length` out of the loss (TRL's
    /// `mask_truncated_completions`, DAPO's overlong filtering); they still count in their group's advantages.
    #[serde(default)]
    pub mask_truncated_completions: bool,
    /// The temperature of the distribution the loss, the old and reference log-probs and the entropy score tokens
    /// under.
    #[serde(default)]
    pub logprob_temperature: LogprobTemperature,
    /// The share of each micro-batch's action tokens, those of highest entropy, whose policy-gradient term is kept
    /// (`--top-entropy-quantile`, TRL's `top_entropy_quantile`); 1 keeps all.
    #[serde(default = "all_tokens")]
    pub top_entropy_quantile: f64,
    /// The weight of an entropy bonus (`--entropy-coeff`, verl's `entropy_coeff`): the loss minus this times the
    /// policy's mean entropy over each optimizer step's action tokens; 0: none.
    #[serde(default)]
    pub entropy_coeff: f64,
    /// Move the KL reference toward the policy during training (`--sync-ref-model`); `None`: it stays fixed.
    #[serde(default)]
    pub sync_ref_model: Option<ReferenceSync>,
    /// A KL penalty in each episode's return (`--reward-kl-coef`); `None`: none.
    #[serde(default)]
    pub reward_kl: Option<RewardKl>,
}

crate::choice_enum! {
    /// The per-token estimate of the KL a return is penalised by (`--reward-kl-estimator`; verl's `kl_penalty`),
    /// with `d = old - ref` the sampling policy's log-probability over the reference's.
    pub enum RewardKlEstimator {
        /// `d` (verl's `"kl"`): its sum over a sequence is the sequence's log-ratio, an unbiased KL estimate.
        K1 = "k1" | "kl",
        /// `d^2 / 2` (`"mse"`).
        K2 = "k2" | "mse",
        /// `exp(-d) + d - 1` (`"low_var_kl"`), clamped to [-10, 10] as verl does.
        K3 = "k3" | "low_var_kl",
        /// `|d|` (`"abs"`).
        Abs = "abs",
    }
}

/// The KL penalty in the reward (verl's `use_kl_in_reward`, the InstructGPT-style penalty): each episode's return
/// loses `coef * sum_t kl_t` over its action tokens before the algorithm computes advantages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardKl {
    /// The coefficient, or its starting value under the adaptive controller (`--reward-kl-coef`).
    pub coef: f64,
    /// The per-token estimate (`--reward-kl-estimator`).
    pub estimator: RewardKlEstimator,
    /// The KL the adaptive controller steers toward (`--reward-kl-target`); `None`: a fixed coefficient.
    pub target: Option<f64>,
    /// The adaptive controller's horizon in sequences (`--reward-kl-horizon`).
    pub horizon: f64,
}

/// TRL's `sync_ref_model` (from TR-DPO, Gorbatovski et al. 2024): after every `every`-th update of the
/// reinforcement-learning phase, `reference = alpha * policy + (1 - alpha) * reference`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReferenceSync {
    /// The policy's share of the new reference (`--ref-model-mixup-alpha`); 1 copies the policy.
    pub alpha: f64,
    /// Updates between syncs (`--ref-model-sync-steps`).
    pub every: u64,
}

impl ReferenceSync {
    /// Whether the reference is synced once `updates` updates of the reinforcement-learning phase are done (the
    /// supervised warm-up's steps not counted).
    pub fn due_after(&self, updates: u64) -> bool {
        updates > 0 && updates.is_multiple_of(self.every.max(1))
    }
}

/// 1: every action token in the policy-gradient term (and what settings saved before the option read back as).
fn all_tokens() -> f64 {
    1.0
}

impl ObjectiveSettings {
    /// Whether the run needs a reference model: a KL term in the loss or in the reward.
    pub fn needs_reference(&self) -> bool {
        self.kl_weight != 0.0 || self.reward_kl.is_some()
    }

    /// What the algorithm plugin receives with every micro-batch; `max_new_tokens` is DR-GRPO's normalizer.
    pub fn for_algorithm(&self, max_new_tokens: usize) -> grpo_sdk::LossSettings {
        grpo_sdk::LossSettings {
            clip_eps_low: self.clip_eps_low,
            clip_eps_high: self.clip_eps_high,
            kl_weight: self.kl_weight,
            generate_max_length: max_new_tokens as i64,
        }
    }
}

/// The run directory, checkpoints and resuming.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointSettings {
    /// Run name; `None` for `<algo>-<env>-<time>`.
    pub run_name: Option<String>,
    /// Parent of run directories.
    pub runs_dir: PathBuf,
    /// Checkpoint directory; `None` for `<run>/checkpoints`.
    pub checkpoint_path: Option<PathBuf>,
    /// Save every this many batches (and at the end).
    pub interval: u64,
    /// Also save when this many minutes have passed since the last checkpoint (0 disables).
    pub every_minutes: f64,
    /// Keep at most this many checkpoints, deleting the oldest (0 keeps all).
    pub save_total_limit: usize,
    /// On resume, accept settings that differ from the saved run's (recorded in `config.json`).
    pub allow_config_change: bool,
    /// With LoRA, also save the merged full weights.
    pub save_merged: bool,
    /// Save the weights alone, without the optimizer state (transformers' `save_only_model`): smaller
    /// checkpoints that a run cannot resume from.
    #[serde(default)]
    pub save_only_model: bool,
    /// The evaluation metric whose best checkpoint is kept (`--metric-for-best-model`); `None`: none is.
    #[serde(default)]
    pub best_model: Option<BestModel>,
    /// A checkpoint, run directory or `auto` to resume from.
    pub resume: Option<String>,
}

/// Which evaluation metric picks the best checkpoint (transformers' `metric_for_best_model` and
/// `greater_is_better`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestModel {
    /// A metric the in-training evaluation logs, such as `eval/accuracy`.
    pub metric: String,
    /// Whether a higher value is better.
    pub greater_is_better: bool,
    /// End the run once the metric stops improving (`--early-stopping-patience`); `None`: train to the end.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
}

impl BestModel {
    /// Whether `value` beats `best` (any finite value beats none).
    pub fn improves(&self, value: f64, best: Option<f64>) -> bool {
        value.is_finite() && best.is_none_or(|b| if self.greater_is_better { value > b } else { value < b })
    }

    /// Whether `value` counts as progress for early stopping: the first evaluation always does, a later one when
    /// it beats `best` by more than `threshold` (transformers' `EarlyStoppingCallback` rule).
    pub fn improves_by(&self, value: f64, best: Option<f64>, threshold: f64) -> bool {
        match best {
            None => true,
            Some(b) => self.improves(value, best) && (value - b).abs() > threshold,
        }
    }
}

/// transformers' `EarlyStoppingCallback`: stop when `patience` evaluations in a row have not improved the best
/// metric by more than `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Evaluations in a row without progress that end the run (at least 1).
    pub patience: u64,
    /// The least change of the metric that counts as progress (0: any improvement).
    pub threshold: f64,
}

/// The loggers' settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSettings {
    /// W&B flags (`None` fields: the environment decides).
    pub wandb: WandbFlags,
    /// TensorBoard directory when W&B is disabled.
    pub log_dir: Option<PathBuf>,
    /// TensorBoard writes beside W&B too (`--report-to` naming both); runs saved before the flag read false.
    #[serde(default)]
    pub tensorboard_with_wandb: bool,
    /// Log a completions table every this many batches (0 never).
    pub completions_interval: u64,
}

impl RunConfig {
    /// The settings that change what a run computes, by the flag that sets them: a resumed run must keep them (the
    /// resume guard). Logging, checkpoint cadence, `--max-steps`, threads and the plugin search path may change.
    pub fn result_settings(&self) -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        let (m, s, b, o, l) = (&self.model, &self.sampling, &self.batch, &self.optimizer, &self.loss);
        vec![
            ("--algo", json!(self.plugins.algo)),
            ("--env", json!(self.plugins.env)),
            ("--algo-config", self.plugins.algo_config.clone()),
            ("--env-config", self.plugins.env_config.clone()),
            ("--reward-weights", json!(self.rewards.weights)),
            ("--overlong-buffer/--overlong-penalty-factor", json!(self.rewards.overlong)),
            ("--multi-objective-aggregation", json!(self.rewards.aggregation)),
            ("--reward-model", json!(self.rewards.reward_models)),
            ("--model", json!(m.model)),
            ("--model-revision", json!(m.revision)),
            ("--dtype", json!(m.dtype)),
            ("--mixed-precision", json!(m.mixed_precision)),
            ("--rollout-dtype", json!(m.rollout_dtype)),
            ("--cast-lm-head-to-fp32", json!(m.cast_lm_head_to_fp32)),
            ("--router-aux-loss-coef", json!(m.router_aux_loss_coef)),
            ("--lora-rank/--lora-alpha/--lora-dropout/--lora-target-modules/--use-rslora/--use-dora", json!(m.lora)),
            ("--lora-adapter", json!(m.lora_adapter)),
            ("--chat-template-kwargs", json!(m.chat_template_kwargs)),
            ("--chat-template", json!(m.chat_template)),
            ("--temperature/--top-k/--top-p/--min-p", json!(s.params)),
            ("--ignore-eos", json!(s.ignore_eos)),
            ("--rollouts-per-step", json!(b.rollouts_per_step)),
            ("--group-size", json!(b.group_size)),
            ("--train-batch-size", json!(b.train_batch_size)),
            ("--gradient-accumulation-steps", json!(b.gradient_accumulation_steps)),
            ("--micro-batch-tokens", json!(b.micro_batch_tokens)),
            ("--epochs-per-step", json!(b.epochs_per_step)),
            ("--max-new-tokens", json!(b.max_new_tokens)),
            ("--max-length", json!(b.max_length)),
            ("--max-turns", json!(b.max_turns)),
            ("--max-prompt-length/--prompt-truncation", json!(b.prompt_limit)),
            ("--dynamic-sampling/--max-sampling-rounds", json!(b.dynamic_sampling)),
            ("--lr", json!(o.lr)),
            ("--lr-schedule/--min-lr-ratio", json!([o.schedule, o.min_lr_ratio])),
            ("--lr-scheduler-kwargs", json!(o.schedule_options)),
            ("--warmup-steps/--warmup-ratio", json!([o.warmup_steps, o.warmup_ratio])),
            ("--weight-decay", json!(o.weight_decay)),
            ("--adam-beta1/--adam-beta2/--adam-eps", json!([o.beta1, o.beta2, o.eps])),
            ("--max-norm", json!(o.max_norm)),
            ("--clip-eps/--clip-eps-high", json!([l.clip_eps_low, l.clip_eps_high])),
            ("--kl-weight", json!(l.kl_weight)),
            ("--recompute-old-logprobs", json!(l.recompute_old_logprobs)),
            ("--tis-cap/--tis-mode", json!([l.tis_cap, l.tis_mode])),
            ("--mask-truncated-completions", json!(l.mask_truncated_completions)),
            ("--logprob-temperature", json!(l.logprob_temperature)),
            ("--top-entropy-quantile", json!(l.top_entropy_quantile)),
            ("--entropy-coeff", json!(l.entropy_coeff)),
            ("--sync-ref-model/--ref-model-mixup-alpha/--ref-model-sync-steps", json!(l.sync_ref_model)),
            ("--reward-kl-coef/--reward-kl-estimator/--reward-kl-target/--reward-kl-horizon", json!(l.reward_kl)),
            ("--seed", json!(self.seed)),
            ("--sft-warmup-steps/--sft-batch-size/--sft-lr/--sft-data", json!(self.sft)),
            (
                "--dataset/--dataset-config/--dataset-split/--eval-holdout",
                json!([self.data.dataset, self.data.eval_holdout]),
            ),
            ("--filter-overlong-prompts", json!(self.data.filter_overlong_prompts)),
            ("--shuffle-dataset", json!(!self.data.keep_order)),
        ]
    }

    /// Each result-changing setting where `self` differs from `saved`, as `FLAG: SAVED -> NOW`.
    pub fn differences_from(&self, saved: &RunConfig) -> Vec<String> {
        self.result_settings()
            .into_iter()
            .zip(saved.result_settings())
            .filter(|((_, now), (_, was))| now != was)
            .map(|((flag, now), (_, was))| format!("{flag}: {was} -> {now}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' early-stopping rule: the first evaluation is progress, a later one only when it is better by
    /// more than the threshold, in the metric's direction; NaN never is.
    #[test]
    fn progress_for_early_stopping_needs_a_better_value_by_more_than_the_threshold() {
        let higher = BestModel { metric: "eval/accuracy".into(), greater_is_better: true, early_stopping: None };
        let lower = BestModel { greater_is_better: false, ..higher.clone() };
        assert!(higher.improves_by(0.0, None, 0.5));
        assert!(higher.improves_by(0.3, Some(0.2), 0.0));
        assert!(!higher.improves_by(0.3, Some(0.2), 0.1 + 1e-9));
        assert!(higher.improves_by(0.31, Some(0.2), 0.1));
        assert!(!higher.improves_by(0.2, Some(0.2), 0.0));
        assert!(!higher.improves_by(0.1, Some(0.2), 0.0));
        assert!(lower.improves_by(0.1, Some(0.2), 0.05));
        assert!(!lower.improves_by(0.3, Some(0.2), 0.0));
        assert!(!higher.improves_by(f64::NAN, Some(0.2), 0.0));
    }
}
