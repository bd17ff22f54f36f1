//! Flags that several commands share, declared once so they read the same everywhere: the model and where it runs,
//! the sampling settings, LoRA, the run's folder and checkpoints, and plugin options given as `JSON|@FILE`.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::eval::EpisodeLimits;
use crate::generate::SamplingParams;
use crate::logging::LoggingArgs;
use crate::model::lora::PeftAdapter;
use crate::model::{DeviceSpec, DtypeSpec, LoraConfig, LoraTargets};
use crate::rollout::{OverlongPenalty, PromptLimit, PromptTruncation, RewardShaping};
use crate::train::config::{
    BestModel, CheckpointSettings, EarlyStopping, LogSettings, LrSchedule, ModelSettings, OptimizerSettings,
    ScheduleOptions,
};
use crate::train::precision::MixedPrecision;
use crate::user_error;

/// The model, its device and dtype, and libtorch's threads.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory or Hugging Face hub id; default: the SmolLM2-135M-Instruct set up by `cargo xtask setup`.
    #[arg(long = "model", visible_aliases = ["model-name", "model-name-or-path"])]
    pub model: Option<String>,
    /// The revision of a hub id --model names: a branch, tag or commit hash (TRL's model_revision) [default: main].
    #[arg(long, value_name = "REV")]
    pub model_revision: Option<String>,
    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (bf16 on CUDA, f32 on CPU; training stores f32 parameters, see --mixed-precision), f32, bf16 or f16
    /// (also by torch's names: float32, bfloat16, float16).
    #[arg(long, default_value = "auto", visible_alias = "torch-dtype")]
    pub dtype: DtypeSpec,
    /// libtorch intra-op threads (default: libtorch's choice, one per core).
    #[arg(long)]
    pub threads: Option<i32>,
    /// Never download a hub id that is missing from the local Hugging Face cache.
    #[arg(long)]
    pub offline: bool,
    /// Variables for the chat template, as a JSON object or @FILE: transformers' apply_chat_template keyword
    /// arguments (TRL's chat_template_kwargs), such as '{"enable_thinking": false}' for Qwen3.
    #[arg(long, value_name = "JSON")]
    pub chat_template_kwargs: Option<String>,
    /// A Jinja chat template to render conversations with instead of the model's own (TRL's chat_template_path): a
    /// .jinja file, or a model directory whose template to take. A base model, which has none, can then train on
    /// conversations.
    #[arg(long, value_name = "FILE", visible_alias = "chat-template-path")]
    pub chat_template: Option<std::path::PathBuf>,
}

impl ModelArgs {
    /// `--threads` checked: at least 1 when given.
    pub fn checked_threads(&self) -> anyhow::Result<Option<i32>> {
        match self.threads {
            Some(t) if t < 1 => Err(user_error!("--threads {t}: must be at least 1")),
            t => Ok(t),
        }
    }

    /// Apply `--threads` to libtorch.
    pub fn apply_threads(&self) -> anyhow::Result<()> {
        crate::runtime::set_threads(self.checked_threads()?);
        Ok(())
    }

    /// `--chat-template-kwargs` checked: a JSON object whose keys are not the variables the host sets itself.
    pub fn template_vars(&self) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        const FLAG: &str = "--chat-template-kwargs";
        let serde_json::Value::Object(vars) = json_option(self.chat_template_kwargs.as_deref(), FLAG)? else {
            return match &self.chat_template_kwargs {
                None => Ok(serde_json::Map::new()),
                Some(spec) => {
                    Err(user_error!("{FLAG} {spec}: give a JSON object, such as '{{\"enable_thinking\": false}}'"))
                }
            };
        };
        let reserved = ["messages", "tools", "documents", "add_generation_prompt"];
        if let Some(key) = vars.keys().find(|k| reserved.contains(&k.as_str())) {
            return Err(user_error!("{FLAG}: `{key}` is set by grpo-host itself; leave it out"));
        }
        Ok(vars)
    }

    /// The text of `--chat-template`, when given.
    pub fn chat_template(&self) -> anyhow::Result<Option<String>> {
        self.chat_template.as_deref().map(crate::tokenizer::read_chat_template).transpose()
    }

    /// The tokenizer of `dir` with `--chat-template` and `--chat-template-kwargs` applied.
    pub fn tokenizer(&self, dir: &std::path::Path) -> anyhow::Result<crate::tokenizer::Tokenizer> {
        let mut tokenizer = crate::tokenizer::Tokenizer::from_dir(dir)?;
        if let Some(template) = self.chat_template()? {
            tokenizer.set_chat_template(&template)?;
        }
        tokenizer.set_template_vars(self.template_vars()?);
        Ok(tokenizer)
    }

    /// The policy settings these flags give a command that runs or fine-tunes a model outside `train` (`sft`,
    /// `eval`): `mixed_precision`, rollouts in its compute precision, no deterministic switch, no LoRA.
    pub fn settings(&self, mixed_precision: MixedPrecision) -> anyhow::Result<ModelSettings> {
        Ok(ModelSettings {
            chat_template_kwargs: self.template_vars()?,
            chat_template: self.chat_template()?,
            model: self.model.clone(),
            revision: self.model_revision.clone(),
            allow_download: !self.offline,
            device: self.device,
            dtype: self.dtype,
            mixed_precision,
            rollout_dtype: DtypeSpec::Auto,
            cast_lm_head_to_fp32: false,
            threads: self.checked_threads()?,
            deterministic: false,
            lora: None,
            lora_adapter: None,
            gradient_checkpointing: false,
            router_aux_loss_coef: crate::train::config::DEFAULT_ROUTER_AUX_LOSS_COEF,
        })
    }

    /// The model directory (resolving a hub id, downloading it unless `--offline`).
    pub fn model_dir(&self) -> anyhow::Result<PathBuf> {
        crate::model::resolve_model_dir(self.model.as_deref(), self.model_revision.as_deref(), !self.offline)
    }
}

/// How the environment's rewards make an episode's return, for training and evaluation alike.
#[derive(Debug, Clone, Args)]
pub struct RewardArgs {
    /// Weights of the environment's reward components in each episode's return, as TRL's reward_weights: a JSON
    /// object such as '{"correct": 1, "format": 0.2}' (or @FILE); a component not named weighs 1. The components
    /// are still logged unweighted (`rollout_rewards/<name>`).
    #[arg(long, value_name = "JSON")]
    pub reward_weights: Option<String>,
    /// DAPO's overlong reward shaping: a turn longer than --max-new-tokens minus this many tokens earns a penalty
    /// (the reward component overlong_penalty) growing linearly to -(--overlong-penalty-factor) at --max-new-tokens.
    #[arg(long, value_name = "TOKENS")]
    pub overlong_buffer: Option<usize>,
    /// The overlong penalty at --max-new-tokens (with --overlong-buffer).
    #[arg(long, default_value_t = 1.0)]
    pub overlong_penalty_factor: f64,
    /// A reward model (a *ForSequenceClassification directory or hub id, as TRL's reward_funcs takes one): each
    /// finished episode's conversation, rendered with its chat template, adds its score as the reward component
    /// NAME (reward_model without one). Repeat it for several.
    #[arg(long, value_name = "[NAME=]MODEL")]
    pub reward_model: Vec<String>,
}

impl RewardArgs {
    /// The shaping, checked against the turn limit `max_new_tokens`.
    pub fn shaping(&self, max_new_tokens: usize) -> anyhow::Result<RewardShaping> {
        let weights = json_option(self.reward_weights.as_deref(), "--reward-weights")?;
        let weights = crate::rollout::RewardWeights::from_json(weights, "--reward-weights")?;
        let factor = self.overlong_penalty_factor;
        if !(factor >= 0.0 && factor.is_finite()) {
            return Err(user_error!("--overlong-penalty-factor {factor}: must be a number >= 0, such as 1"));
        }
        let overlong = match self.overlong_buffer {
            Some(buffer) if buffer == 0 || buffer > max_new_tokens => {
                return Err(user_error!(
                    "--overlong-buffer {buffer}: must be from 1 to --max-new-tokens ({max_new_tokens}), the tokens \
                     before that limit where the penalty starts"
                ))
            }
            Some(buffer) => Some(OverlongPenalty { buffer, factor }),
            None => None,
        };
        Ok(RewardShaping {
            weights,
            overlong,
            aggregation: Default::default(),
            reward_models: crate::rollout::RewardModelSpec::parse_all(&self.reward_model)?,
            scorers: Vec::new(),
        })
    }
}

/// Temperature and the sampling filters. Each command has its own defaults (training samples at 0.7 with top-k 50,
/// `generate` is greedy), so unset flags stay `None` until [`SamplingArgs::resolve`].
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy decoding [default: 0.7 for training, 0 for generate, 0.2 for gen-qa].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass; 1 disables [default: 1, 0.9 for gen-qa].
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens; 0 disables [default: 50 for training (transformers' default when re-grpo
    /// sampled), else 0].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Drop tokens less likely than min-p times the most likely one; 0 disables [default: 0].
    #[arg(long)]
    pub min_p: Option<f64>,
    /// transformers' repetition penalty on every token already in the sequence, prompt included: a logit divided
    /// by it when positive, multiplied when negative; 1 disables [default: 1, 1.2 for gen-qa as re-grpo].
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    /// Keep generating past end-of-sequence to --max-new-tokens, so every sample costs the same (benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// The settings, with the command's `defaults` where a flag was not given; rejects values out of range.
    pub fn resolve(&self, defaults: SamplingParams) -> anyhow::Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        };
        if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
            return Err(user_error!("--temperature {}: must be a number >= 0 (0 is greedy)", p.temperature));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return Err(user_error!("--top-p {}: must be in (0, 1]", p.top_p));
        }
        if !(0.0..=1.0).contains(&p.min_p) {
            return Err(user_error!("--min-p {}: must be in [0, 1]", p.min_p));
        }
        if !(p.repetition_penalty > 0.0 && p.repetition_penalty.is_finite()) {
            return Err(user_error!("--repetition-penalty {}: must be a number > 0 (1 is none)", p.repetition_penalty));
        }
        Ok(p)
    }
}

/// How the engine schedules decoding (shared by the commands that sample).
#[derive(Debug, Clone, Copy, Args)]
pub struct DecodeArgs {
    /// Decode steps queued per host read of the sampled ids, as in vLLM's multi-step scheduling. Stop checks, and
    /// rows leaving or joining the batch, wait for the read, so a row that ends inside a block decodes up to K-1
    /// tokens for nothing. Meant for CUDA, where each read drains the device's queue; 1 reads after every step.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub multi_step: usize,
}

impl DecodeArgs {
    /// `--multi-step`, checked.
    pub fn multi_step(self) -> anyhow::Result<usize> {
        if self.multi_step == 0 {
            return Err(user_error!("--multi-step must be at least 1 (1 reads the sampled ids after every step)"));
        }
        Ok(self.multi_step)
    }
}

/// A mixture of experts' load-balancing loss (`train` and `sft`).
#[derive(Debug, Clone, Args)]
pub struct RouterArgs {
    /// The weight of a mixture of experts' load-balancing loss (the Switch Transformer's, transformers' aux_loss
    /// over each micro-batch's real tokens), added to the training loss as TRL's router_aux_loss_coef does: it
    /// keeps the routers from sending most tokens to a few experts. 0 turns it off; a dense model has none.
    #[arg(long, value_name = "C", default_value_t = crate::train::config::DEFAULT_ROUTER_AUX_LOSS_COEF)]
    pub router_aux_loss_coef: f64,
}

impl RouterArgs {
    /// Check the weight and put it in `model`.
    pub fn apply(&self, model: &mut ModelSettings) -> anyhow::Result<()> {
        let coef = self.router_aux_loss_coef;
        if !(coef >= 0.0 && coef.is_finite()) {
            return Err(user_error!(
                "--router-aux-loss-coef {coef}: must be a number >= 0, the weight of the load-balancing loss (0 is off)"
            ));
        }
        model.router_aux_loss_coef = coef;
        Ok(())
    }
}

/// LoRA: train low-rank adapters instead of every weight (`train` and `sft`).
#[derive(Debug, Clone, Args)]
pub struct LoraArgs {
    /// LoRA rank; 0 trains all weights (with a frozen copy as the KL reference in `train`).
    #[arg(long, default_value_t = 0, visible_alias = "lora-r")]
    pub lora_rank: i64,
    /// TRL's use_peft: train LoRA adapters, at rank 16 (TRL's lora_r) unless --lora-rank gives one. The other LoRA
    /// flags keep their defaults here: all linear layers where PEFT picks per architecture (q_proj and v_proj for
    /// most), and no dropout where TRL's is 0.05.
    #[arg(long)]
    pub use_peft: bool,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    /// LoRA dropout on the adapter input during training updates.
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// The projections that get adapters (PEFT's target_modules): all-linear, or some of q_proj, k_proj, v_proj,
    /// o_proj, gate_proj, up_proj and down_proj (Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj), comma- or (as
    /// TRL takes them) space-separated.
    #[arg(long, default_value = "all-linear", value_name = "NAMES", num_args = 1..)]
    pub lora_target_modules: Vec<LoraTargets>,
    /// Rank-stabilized LoRA (PEFT's and TRL's use_rslora): scale the update by alpha / sqrt(rank) instead of
    /// alpha / rank.
    #[arg(long)]
    pub use_rslora: bool,
    /// Weight-decomposed LoRA (DoRA; PEFT's and TRL's use_dora): each adapted layer also learns a magnitude per
    /// output, and its weight W + s B A is rescaled row by row to it.
    #[arg(long)]
    pub use_dora: bool,
    /// Start from this PEFT LoRA adapter (adapter_config.json and adapter_model.safetensors, as PEFT, TRL or a
    /// LoRA checkpoint saved it) instead of a fresh one: its rank, alpha, targets and dropout apply, and its base
    /// model is the default --model.
    #[arg(long, value_name = "DIR")]
    pub lora_adapter: Option<PathBuf>,
}

impl LoraArgs {
    /// The projections `--lora-target-modules` names, all its values together.
    fn targets(&self) -> LoraTargets {
        self.lora_target_modules.iter().fold(LoraTargets::NONE, |all, t| all.union(*t))
    }

    /// Set `settings`' adapter: none (full fine-tuning), a fresh one, or `--lora-adapter`'s, whose settings the
    /// other flags may repeat but not contradict (`--lora-dropout` other than 0 replaces its dropout), and whose base
    /// model stands in for a missing `--model`. A resumed run started from the adapter needs its folder no more
    /// (its checkpoints hold the adapter): when the folder is gone, `resumed` gives the run's saved settings.
    pub fn apply(
        &self,
        settings: &mut ModelSettings,
        resumed: impl FnOnce() -> Option<ModelSettings>,
    ) -> anyhow::Result<()> {
        settings.lora = self.config()?;
        let Some(dir) = &self.lora_adapter else {
            return Ok(());
        };
        // Absolute, so that a resume from another directory names the same adapter.
        let absolute = std::fs::canonicalize(dir)
            .or_else(|_| std::path::absolute(dir))
            .unwrap_or_else(|_| dir.clone())
            .display()
            .to_string();
        let adapter = match PeftAdapter::read_config(dir) {
            Err(_) if !dir.exists() => resumed()
                .filter(|saved| saved.lora_adapter.as_deref() == Some(absolute.as_str()))
                .and_then(|saved| Some(PeftAdapter { config: saved.lora?, base_model: saved.model }))
                .ok_or_else(|| {
                    user_error!(
                        "--lora-adapter {}: no such folder; give the folder of a PEFT LoRA adapter (only a run \
                         resumed from its checkpoints does without it)",
                        dir.display()
                    )
                })?,
            read => read?,
        };
        let theirs = adapter.config;
        let shown = dir.display();
        let contradicts = [
            ("--lora-rank", self.lora_rank != 0 && self.lora_rank != theirs.rank, theirs.rank.to_string()),
            ("--lora-alpha", self.lora_alpha != 32.0 && self.lora_alpha != theirs.alpha, theirs.alpha.to_string()),
            (
                "--lora-target-modules",
                self.targets() != LoraTargets::ALL && self.targets() != theirs.targets,
                theirs.targets.to_string(),
            ),
        ];
        if let Some((flag, _, value)) = contradicts.into_iter().find(|(_, differs, _)| *differs) {
            return Err(user_error!("--lora-adapter {shown} has {flag} {value}; leave {flag} out or give {value}"));
        }
        if self.use_rslora && !theirs.rslora {
            return Err(user_error!(
                "--lora-adapter {shown} scales by alpha / r (use_rslora false); leave --use-rslora out"
            ));
        }
        if self.use_dora && !theirs.dora {
            return Err(user_error!(
                "--lora-adapter {shown} is a plain LoRA adapter (use_dora false); leave --use-dora out"
            ));
        }
        let dropout = if self.lora_dropout > 0.0 { self.lora_dropout } else { theirs.dropout };
        if !(0.0..1.0).contains(&dropout) {
            return Err(user_error!("--lora-adapter {shown}: lora_dropout {dropout} must be in [0, 1)"));
        }
        settings.lora = Some(LoraConfig { dropout, ..theirs });
        settings.lora_adapter = Some(absolute);
        if settings.model.is_none() {
            settings.model = adapter.base_model;
        }
        Ok(())
    }

    /// The adapter's configuration from the flags alone; `None` for full fine-tuning.
    pub(crate) fn config(&self) -> anyhow::Result<Option<LoraConfig>> {
        if self.lora_rank < 0 {
            return Err(user_error!("--lora-rank {} must be >= 0 (0 trains all weights)", self.lora_rank));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(user_error!("--lora-dropout {} must be in [0, 1)", self.lora_dropout));
        }
        // TRL's ModelConfig.lora_r default.
        let rank = if self.use_peft && self.lora_rank == 0 { 16 } else { self.lora_rank };
        Ok((rank > 0).then_some(LoraConfig {
            rank,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.targets(),
            rslora: self.use_rslora,
            dora: self.use_dora,
        }))
    }
}

/// Mixed precision by accelerate's name, or by transformers' switches (`train` and `sft`).
#[derive(Debug, Clone, Args)]
pub struct PrecisionArgs {
    /// auto, no, bf16 or fp16: compute forward and backward in bf16/fp16 with f32 master weights, gradients and
    /// AdamW state (fp16 with dynamic loss scaling). auto: bf16 on CUDA, no on the CPU (docs/cli.md says
    /// why).
    #[arg(long, default_value = "auto")]
    pub mixed_precision: MixedPrecision,
    /// transformers' bf16: the same as --mixed-precision bf16.
    #[arg(long, conflicts_with_all = ["mixed_precision", "fp16"])]
    pub bf16: bool,
    /// transformers' fp16: the same as --mixed-precision fp16.
    #[arg(long, conflicts_with = "mixed_precision")]
    pub fp16: bool,
}

impl PrecisionArgs {
    /// The mode the flags name.
    pub fn mode(&self) -> MixedPrecision {
        match (self.bf16, self.fp16) {
            (true, _) => MixedPrecision::Bf16,
            (_, true) => MixedPrecision::Fp16,
            _ => self.mixed_precision,
        }
    }
}

/// The run's folder, its checkpoints and resuming (`train` and `sft`).
#[derive(Debug, Clone, Args)]
pub struct RunDirArgs {
    /// Name of the run; its files go to RUNS_DIR/NAME/. Default: ALGO-ENV-TIME (`sft-SOURCE-TIME` for sft).
    #[arg(long)]
    pub run_name: Option<String>,
    /// Parent directory of run directories.
    #[arg(long, default_value = "runs")]
    pub runs_dir: PathBuf,
    /// Where checkpoints go; default runs/NAME/checkpoints.
    #[arg(long)]
    pub checkpoint_path: Option<PathBuf>,
    /// Save a checkpoint every this many batches (sft: optimizer steps), and always at the end.
    #[arg(long, default_value_t = 20)]
    pub checkpoint_interval: u64,
    /// Instead of --checkpoint-interval: save every N optimizer steps (transformers' save_steps); in training a
    /// whole number of batches.
    #[arg(long, value_name = "N", conflicts_with = "checkpoint_interval")]
    pub save_steps: Option<u64>,
    /// Also save a checkpoint when this many minutes have passed since the last one (0 disables), so a long run
    /// can always be resumed.
    #[arg(long, default_value_t = 30.0)]
    pub checkpoint_every_minutes: f64,
    /// Keep at most this many checkpoints, deleting the oldest once a newer one is safely written (0 keeps all;
    /// transformers' save_total_limit).
    #[arg(long, default_value_t = 0)]
    pub save_total_limit: usize,
    /// On --resume, accept a learning rate, model, plugin option or other result-changing setting that differs from
    /// the run being resumed (the change is recorded in the run's config.json).
    #[arg(long)]
    pub allow_config_change: bool,
    /// For LoRA runs, also save the adapter merged into full weights.
    #[arg(long)]
    pub save_merged: bool,
    /// Save the weights (or adapter) alone in checkpoints, without the optimizer state (transformers'
    /// save_only_model): a third of the size under AdamW, but the run cannot be resumed from them.
    #[arg(long)]
    pub save_only_model: bool,
    /// Continue a run: a checkpoint directory, a run directory (its latest checkpoint), or `auto` (the latest
    /// checkpoint of --run-name, or in --checkpoint-path; never another run's).
    #[arg(long, num_args = 0..=1, default_missing_value = "auto", visible_alias = "resume-from-checkpoint")]
    pub resume: Option<String>,
    /// One folder for everything, as TRL's output_dir: the run's files and its checkpoints `DIR/step_N` (the same
    /// as --runs-dir PARENT --run-name NAME --checkpoint-path DIR).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["run_name", "checkpoint_path"], visible_alias = "output-dir")]
    pub output: Option<PathBuf>,
}

impl RunDirArgs {
    /// The checked settings.
    pub fn settings(self) -> anyhow::Result<CheckpointSettings> {
        if !(self.checkpoint_every_minutes >= 0.0 && self.checkpoint_every_minutes.is_finite()) {
            return Err(user_error!(
                "--checkpoint-every-minutes {} must be a number >= 0 (0 disables)",
                self.checkpoint_every_minutes
            ));
        }
        let (mut run_name, mut runs_dir, mut checkpoint_path) = (self.run_name, self.runs_dir, self.checkpoint_path);
        if let Some(dir) = self.output {
            let name = dir.file_name().map(|n| n.to_string_lossy().to_string());
            let Some(name) = name.filter(|n| n != "..") else {
                return Err(user_error!("--output {}: give a folder with a name, such as runs/my-run", dir.display()));
            };
            runs_dir = dir.parent().map(PathBuf::from).unwrap_or_default();
            run_name = Some(name);
            checkpoint_path = Some(dir);
        }
        Ok(CheckpointSettings {
            run_name,
            runs_dir,
            checkpoint_path,
            interval: self.checkpoint_interval,
            every_minutes: self.checkpoint_every_minutes,
            save_total_limit: self.save_total_limit,
            allow_config_change: self.allow_config_change,
            save_merged: self.save_merged,
            save_only_model: self.save_only_model,
            best_model: None,
            resume: self.resume,
        })
    }
}

/// A plugin's options from `--algo-config`/`--env-config`: inline JSON, or `@FILE` holding JSON; `Null` when
/// absent. `flag` names the option in errors.
pub fn json_option(spec: Option<&str>, flag: &str) -> anyhow::Result<serde_json::Value> {
    let Some(spec) = spec else { return Ok(serde_json::Value::Null) };
    let (text, origin) = match spec.strip_prefix('@') {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| user_error!("{flag} @{path}: cannot read the file ({e}); pass JSON or @FILE"))?;
            (text, format!("{flag} @{path}"))
        }
        None => (spec.to_string(), flag.to_string()),
    };
    serde_json::from_str(&text).map_err(|e| {
        let hint = if spec.starts_with('@') || spec.trim_start().starts_with(['{', '[']) {
            String::new()
        } else {
            format!("; to read the file {spec}, write {flag} @{spec}")
        };
        user_error!("{origin}: not valid JSON ({e}); example: {flag} '{{\"key\": 1}}' or {flag} @FILE{hint}")
    })
}

/// The loggers' settings from their flags (`train` and `sft`): `--report-to` checked, and TensorBoard's folder, the
/// runs folder `runs_dir` where `--report-to` names TensorBoard without `--log-dir`.
pub fn log_settings(logging: &LoggingArgs, runs_dir: &Path, completions_interval: u64) -> anyhow::Result<LogSettings> {
    logging.check()?;
    let (log_dir, tensorboard_with_wandb) = logging.tensorboard(runs_dir);
    Ok(LogSettings { wandb: logging.wandb_flags(), log_dir, tensorboard_with_wandb, completions_interval })
}

/// `--micro-batch-tokens` against `--max-length` (`train` and `sft`): the longest `item` (an episode, a row) must
/// fit in one micro-batch.
pub fn check_micro_batch_tokens(tokens: Option<usize>, max_length: usize, item: &str) -> anyhow::Result<()> {
    match tokens {
        Some(tokens) if tokens < max_length => Err(user_error!(
            "--micro-batch-tokens {tokens} is below --max-length {max_length}: the longest {item} must fit in one \
             micro-batch; raise it to {max_length} or more, or lower --max-length"
        )),
        _ => Ok(()),
    }
}

/// The best checkpoint by an evaluation metric, and early stopping (`train` and `sft`; transformers'
/// `metric_for_best_model`, `greater_is_better` and `EarlyStoppingCallback`).
#[derive(Debug, Clone, Args)]
pub struct BestModelArgs {
    /// Keep the checkpoint with the best value of this evaluation metric, such as eval/accuracy (train) or
    /// sft/eval_loss (sft): a new best is saved at once, --save-total-limit never deletes it, and the run's end
    /// names it. Needs --eval-every.
    #[arg(long, value_name = "METRIC")]
    pub metric_for_best_model: Option<String>,
    /// Whether a higher --metric-for-best-model is better [default: true, false for a name with "loss" in it].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub greater_is_better: Option<bool>,
    /// End the run when this many evaluations in a row have not improved --metric-for-best-model: a completed
    /// run, with its final checkpoint.
    #[arg(long, value_name = "N")]
    pub early_stopping_patience: Option<u64>,
    /// The least improvement of --metric-for-best-model that resets the patience [default: 0, any improvement].
    #[arg(long, value_name = "DELTA")]
    pub early_stopping_threshold: Option<f64>,
}

impl BestModelArgs {
    /// The checked settings for a run that evaluates every `eval_every` steps or batches (0: never between them).
    pub fn settings(self, eval_every: u64) -> anyhow::Result<Option<BestModel>> {
        let threshold = self.early_stopping_threshold.unwrap_or(0.0);
        if !(threshold >= 0.0 && threshold.is_finite()) {
            return Err(user_error!("--early-stopping-threshold {threshold}: must be a number >= 0, such as 0.01"));
        }
        let early_stopping = match self.early_stopping_patience {
            Some(0) => {
                return Err(user_error!("--early-stopping-patience must be at least 1 (evaluations without progress)"))
            }
            Some(patience) => Some(EarlyStopping { patience, threshold }),
            None => None,
        };
        let Some(metric) = self.metric_for_best_model else {
            let given = [
                ("--greater-is-better", self.greater_is_better.is_some()),
                ("--early-stopping-patience", self.early_stopping_patience.is_some()),
                ("--early-stopping-threshold", self.early_stopping_threshold.is_some()),
            ];
            return match given.iter().find(|(_, given)| *given) {
                Some((flag, _)) => Err(user_error!("{flag} needs --metric-for-best-model METRIC")),
                None => Ok(None),
            };
        };
        if self.early_stopping_threshold.is_some() && early_stopping.is_none() {
            return Err(user_error!("--early-stopping-threshold needs --early-stopping-patience N"));
        }
        if eval_every == 0 {
            return Err(user_error!(
                "--metric-for-best-model {metric} compares the evaluations of --eval-every N, which is not given"
            ));
        }
        Ok(Some(BestModel {
            greater_is_better: self.greater_is_better.unwrap_or(!metric.contains("loss")),
            metric,
            early_stopping,
        }))
    }
}

/// The learning-rate schedule (`train` and `sft`).
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// transformers' names: constant, linear, cosine, cosine_warmup_with_min_lr, cosine_with_restarts,
    /// polynomial, inverse_sqrt or warmup_stable_decay (also read: constant_with_warmup, cosine_with_min_lr). A
    /// decay ends at the run's last optimizer step, at 0 or --min-lr-ratio.
    #[arg(long, default_value = "constant", visible_alias = "lr-scheduler-type")]
    pub lr_schedule: LrSchedule,
    /// Optimizer steps of linear learning-rate warmup.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// The warmup as a share of the run's optimizer steps instead of --warmup-steps (transformers' warmup_ratio,
    /// such as 0.1).
    #[arg(long, conflicts_with = "warmup_steps")]
    pub warmup_ratio: Option<f64>,
    /// Where a linear or cosine decay ends, as a share of --lr (transformers' cosine_with_min_lr, verl's
    /// min_lr_ratio, such as 0.1); 0 decays to zero.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub min_lr_ratio: f64,
    /// The schedule's options as a JSON object or @FILE (transformers' lr_scheduler_kwargs): num_cycles,
    /// warmup_lr_rate, power, lr_end, timescale, num_decay_steps, num_stable_steps, warmup_type, decay_type, and the
    /// floor as min_lr_rate (or min_lr_ratio, or min_lr as a rate).
    #[arg(long, value_name = "JSON", visible_alias = "lr-schedule-kwargs")]
    pub lr_scheduler_kwargs: Option<String>,
}

impl ScheduleArgs {
    /// AdamW at `lr` with `weight_decay` on this schedule, clipping gradients to `max_norm`, with PyTorch's betas
    /// and epsilon. `--lr-scheduler-kwargs` that is not a JSON object of known keys is one line.
    pub fn optimizer(&self, lr: f64, weight_decay: f64, max_norm: f64) -> anyhow::Result<OptimizerSettings> {
        let (schedule_options, min_lr_ratio) = self.schedule_kwargs(lr)?;
        Ok(OptimizerSettings {
            lr,
            schedule: self.lr_schedule,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio,
            min_lr_ratio,
            schedule_options,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_norm,
        })
    }

    /// `--lr-scheduler-kwargs`' options, and the floor as a share of `lr`: `--min-lr-ratio`, or one of
    /// transformers' three names for it in the JSON (`min_lr` is a rate, divided by `lr`), never two.
    fn schedule_kwargs(&self, lr: f64) -> anyhow::Result<(ScheduleOptions, f64)> {
        let flag = "--lr-scheduler-kwargs";
        let mut kwargs = match json_option(self.lr_scheduler_kwargs.as_deref(), flag)? {
            serde_json::Value::Null => return Ok((ScheduleOptions::default(), self.min_lr_ratio)),
            serde_json::Value::Object(map) => map,
            other => return Err(user_error!("{flag} {other}: must be a JSON object such as '{{\"num_cycles\": 2}}'")),
        };
        let mut floors: Vec<(&str, f64)> = Vec::new();
        for key in ["min_lr_rate", "min_lr_ratio", "min_lr"] {
            let Some(value) = kwargs.remove(key) else { continue };
            let Some(number) = value.as_f64() else {
                return Err(user_error!("{flag} {key}: must be a number, not {value}"));
            };
            floors.push((key, if key == "min_lr" { number / lr } else { number }));
        }
        if self.min_lr_ratio != 0.0 {
            floors.push(("--min-lr-ratio", self.min_lr_ratio));
        }
        if let [(a, _), (b, _), ..] = floors.as_slice() {
            return Err(user_error!("{flag}: {a} and {b} both set where the decay ends; give one"));
        }
        let floor = floors.first().map_or(self.min_lr_ratio, |(_, ratio)| *ratio);
        let options = serde_json::from_value(serde_json::Value::Object(kwargs))
            .map_err(|e| user_error!("{flag}: {e}; min_lr_rate, min_lr_ratio and min_lr are also read"))?;
        Ok((options, floor))
    }
}

/// How long an episode may run: tokens per turn, turns, the whole context and its opening prompt (`train` and
/// `eval`, which must play episodes as the run did).
#[derive(Debug, Clone, Args)]
pub struct EpisodeArgs {
    /// Most tokens generated in one assistant turn; also DR-GRPO's constant normalizer.
    #[arg(long, default_value_t = 128, visible_alias = "max-completion-length")]
    pub max_new_tokens: usize,
    /// Most tokens in a whole episode (prompt, turns and environment replies): the context limit.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Most assistant turns in one episode (an environment usually ends it sooner).
    #[arg(long, default_value_t = 4)]
    pub max_turns: usize,
    /// The longest opening prompt (`--max-prompt-length`, `--prompt-truncation`).
    #[command(flatten)]
    pub prompt: PromptArgs,
}

impl EpisodeArgs {
    /// The limits these flags set, each checked; a mistake is one line naming the flag.
    pub fn limits(&self) -> anyhow::Result<EpisodeLimits> {
        for (flag, value) in [("--max-new-tokens", self.max_new_tokens), ("--max-turns", self.max_turns)] {
            if value == 0 {
                return Err(user_error!("{flag} must be at least 1"));
            }
        }
        if self.max_length <= self.max_new_tokens {
            return Err(user_error!(
                "--max-length {} must exceed --max-new-tokens {} (it bounds the whole episode, prompt included)",
                self.max_length,
                self.max_new_tokens
            ));
        }
        Ok(EpisodeLimits {
            max_new_tokens: self.max_new_tokens,
            max_turns: self.max_turns,
            max_length: self.max_length,
            prompt_limit: self.prompt.limit(self.max_length)?,
        })
    }
}

/// How long an episode's opening prompt may be.
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// Most tokens in an episode's opening prompt, chat template included (TRL's max_prompt_length, verl's
    /// data.max_prompt_length): a longer one is cut as --prompt-truncation says. Default: no limit but --max-length.
    #[arg(long, value_name = "N")]
    pub max_prompt_length: Option<usize>,
    /// What becomes of a prompt over --max-prompt-length: left (keep its end, TRL's), middle (keep its two ends,
    /// verl's) or error (stop, naming the task). Default: left.
    #[arg(long)]
    pub prompt_truncation: Option<PromptTruncation>,
}

impl PromptArgs {
    /// The limit these flags set, checked against the episode's `--max-length`; `None` without one.
    pub fn limit(&self, max_length: usize) -> anyhow::Result<Option<PromptLimit>> {
        let truncation = self.prompt_truncation;
        let Some(max_tokens) = self.max_prompt_length else {
            return match truncation {
                Some(t) => Err(user_error!("--prompt-truncation {t} needs --max-prompt-length N to apply to")),
                None => Ok(None),
            };
        };
        if max_tokens == 0 || max_tokens >= max_length {
            return Err(user_error!(
                "--max-prompt-length {max_tokens}: must be at least 1 and below --max-length {max_length}, which \
                 bounds the whole episode"
            ));
        }
        Ok(Some(PromptLimit { max_tokens, truncation: truncation.unwrap_or(PromptTruncation::Left) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_option_reads_inline_and_files() {
        assert_eq!(json_option(None, "--x").unwrap(), serde_json::Value::Null);
        assert_eq!(json_option(Some("{\"a\": 1}"), "--x").unwrap()["a"], 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, "{\"b\": 2}").unwrap();
        assert_eq!(json_option(Some(&format!("@{}", path.display())), "--x").unwrap()["b"], 2);
        let err = json_option(Some(&path.display().to_string()), "--env-config").unwrap_err().to_string();
        assert!(err.contains("--env-config @"), "{err}");
    }

    #[test]
    fn sampling_defaults_per_command() {
        let args = SamplingArgs {
            temperature: None,
            top_p: Some(0.5),
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            ignore_eos: false,
        };
        let p = args
            .resolve(SamplingParams { temperature: 0.7, top_k: 50, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 })
            .unwrap();
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.7, 50, 0.5));
        let bad = SamplingArgs { temperature: Some(-1.0), ..args };
        assert!(bad.resolve(SamplingParams::default()).is_err());
    }
}
