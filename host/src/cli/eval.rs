//! `grpo-host eval`: score a checkpoint or a model on an environment's held-out tasks, as training's `--eval-every`
//! does, and write a JSON summary. Also the data and evaluation flags `train` shares with it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::args::{json_option, ModelArgs, RewardArgs, SamplingArgs};
use super::plugins::PluginDirArgs;
use crate::data::{DataSettings, DatasetSpec};
use crate::eval::{EpisodeLimits, EvalSettings, Evaluation};
use crate::generate::SamplingParams;
use crate::model::lora::PeftAdapter;
use crate::model::LoraConfig;
use crate::plugins::Registry;
use crate::rollout::RewardShaping;
use crate::train::config::ModelSettings;
use crate::train::policy::Policy;
use crate::train::precision::MixedPrecision;
use crate::user_error;

/// Where tasks come from besides the environment's own: `--dataset`, `--eval-data`, `--eval-holdout`.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Train on this dataset instead of the environment's own tasks (in `eval`: the training run's dataset, whose
    /// --eval-holdout rows are scored): a .jsonl, .json, .csv, .tsv, .txt, .parquet or .arrow file (the text ones also
    /// .gz or .zst), a directory or glob of them (a `save_to_disk` folder too), or a Hugging Face hub dataset id
    /// (openai/gsm8k) from the local hub cache (downloaded when online unless --offline). Rows reach the
    /// environment as JSON objects (see its column options).
    #[arg(long, value_name = "FILE|DIR|GLOB|ORG/NAME", visible_alias = "dataset-name")]
    pub dataset: Option<String>,
    /// The hub dataset's config (GSM8K: main); also used for --eval-data.
    #[arg(long, value_name = "NAME")]
    pub dataset_config: Option<String>,
    /// The split of --dataset to read [default: train].
    #[arg(long, value_name = "NAME", visible_alias = "dataset-train-split")]
    pub dataset_split: Option<String>,
    /// Evaluate on this dataset (same kinds as --dataset) instead of the environment's eval split.
    #[arg(long, value_name = "FILE|DIR|GLOB|ORG/NAME")]
    pub eval_data: Option<String>,
    /// The split of --eval-data to read [default: test].
    #[arg(long, value_name = "NAME")]
    pub eval_data_split: Option<String>,
    /// Hold out the last N rows of --dataset for evaluation (they are not trained on).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub eval_holdout: usize,
    /// Evaluate on this split of --dataset (TRL's dataset_test_split): the same as --eval-data with --dataset's
    /// source and --eval-data-split SPLIT.
    #[arg(
        long,
        value_name = "SPLIT",
        requires = "dataset",
        conflicts_with_all = ["eval_data", "eval_data_split", "eval_holdout"]
    )]
    pub dataset_test_split: Option<String>,
}

impl DataArgs {
    /// The typed settings.
    pub fn into_settings(self) -> DataSettings {
        let config = self.dataset_config;
        // TRL's test split of the training dataset is --eval-data on the same source.
        let (eval_data, eval_data_split) = match self.dataset_test_split {
            Some(split) => (self.dataset.clone(), Some(split)),
            None => (self.eval_data, self.eval_data_split),
        };
        DataSettings {
            dataset: self.dataset.map(|source| DatasetSpec {
                source,
                config: config.clone(),
                split: self.dataset_split,
            }),
            eval_data: eval_data.map(|source| DatasetSpec { source, config, split: eval_data_split }),
            eval_holdout: self.eval_holdout,
            filter_overlong_prompts: false,
            keep_order: false,
        }
    }
}

/// How evaluations run (shared by `train` and `eval`).
#[derive(Debug, Clone, Args)]
pub struct EvalRunArgs {
    /// Evaluate at most this many tasks, the first of the eval split [default: all of a finite split, 200 of a
    /// generator].
    #[arg(long, value_name = "N")]
    pub eval_tasks: Option<u64>,
    /// Sampled episodes per task for eval/pass@k and eval/mean@K, besides the greedy one (0: greedy only; TRL's
    /// num_generations_eval).
    #[arg(long, value_name = "K", default_value_t = 4, visible_alias = "num-generations-eval")]
    pub eval_samples: usize,
    /// Temperature of the sampled eval episodes [default: training's --temperature, 0.7].
    #[arg(long, value_name = "T")]
    pub eval_temperature: Option<f64>,
    /// Tasks per generation call during evaluation.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub eval_batch_tasks: usize,
}

impl EvalRunArgs {
    /// The settings, sampling like `sampling` (training's) at `--eval-temperature` when given.
    pub fn into_settings(
        self,
        sampling: SamplingParams,
        every: u64,
        before_train: bool,
        multi_step: usize,
    ) -> anyhow::Result<EvalSettings> {
        if self.eval_batch_tasks == 0 {
            return Err(user_error!("--eval-batch-tasks must be at least 1"));
        }
        if self.eval_tasks == Some(0) {
            return Err(user_error!("--eval-tasks must be at least 1 (leave it out for every task)"));
        }
        let temperature = self.eval_temperature.unwrap_or(sampling.temperature);
        if !(temperature > 0.0 && temperature.is_finite()) && self.eval_samples > 0 {
            return Err(user_error!(
                "--eval-temperature {temperature}: sampled eval episodes need a temperature > 0 (or --eval-samples 0)"
            ));
        }
        Ok(EvalSettings {
            every,
            before_train,
            tasks: self.eval_tasks,
            samples: self.eval_samples,
            sampling: SamplingParams { temperature, ..sampling },
            batch_tasks: self.eval_batch_tasks,
            multi_step,
        })
    }
}

/// `train`'s evaluation flags.
#[derive(Debug, Clone, Args)]
pub struct TrainEvalArgs {
    /// Evaluate on held-out tasks every N batches and after the last one (0: never). Logs eval/* metrics.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub eval_every: u64,
    /// Evaluate once before training starts (at step 0; transformers' eval_on_start).
    #[arg(long, visible_alias = "eval-on-start")]
    pub eval_before_train: bool,
    /// How evaluations run.
    #[command(flatten)]
    pub run: EvalRunArgs,
}

impl TrainEvalArgs {
    /// The settings, with training's sampling for the sampled episodes and its `--multi-step`.
    pub fn into_settings(self, sampling: SamplingParams, multi_step: usize) -> anyhow::Result<EvalSettings> {
        self.run.into_settings(sampling, self.eval_every, self.eval_before_train, multi_step)
    }
}

/// `grpo-host eval --checkpoint DIR --env E` (or `--model DIR|ORG/NAME`). The flags are declared by `--help` heading,
/// in the order `--help` shows them.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint directory written by training (full weights or a LoRA adapter over its base model), or a PEFT
    /// LoRA adapter as PEFT or TRL saved it.
    #[arg(long, help_heading = "What to score", value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// The model, device, dtype and threads (with --checkpoint of a LoRA run, --model overrides its base model).
    #[command(flatten, next_help_heading = "What to score")]
    pub model: ModelArgs,
    /// As the run's --mixed-precision (the precision the policy samples in).
    #[arg(long, help_heading = "What to score", default_value = "auto")]
    pub mixed_precision: MixedPrecision,
    /// The environment plugin.
    #[arg(long, help_heading = "Environment and plugins", default_value = "math")]
    pub env: String,
    /// JSON options for the environment (a JSON string or @FILE), as in training.
    #[arg(long, help_heading = "Environment and plugins")]
    pub env_config: Option<String>,
    /// Reward weights and the overlong penalty, as in training (eval/returns_*).
    #[command(flatten, next_help_heading = "Environment and plugins")]
    pub rewards: RewardArgs,
    /// Where plugins are searched besides the defaults.
    #[command(flatten, next_help_heading = "Environment and plugins")]
    pub plugins: PluginDirArgs,
    /// Datasets, as in training (--eval-data, or --dataset with --eval-holdout to score the rows a run held out).
    #[command(flatten, next_help_heading = "Datasets")]
    pub data: DataArgs,
    /// How the evaluation runs.
    #[command(flatten, next_help_heading = "Evaluation")]
    pub run: EvalRunArgs,
    /// The run's --seed: it picks generated eval tasks and the sampled episodes' seeds.
    #[arg(long, help_heading = "Evaluation", default_value_t = 42)]
    pub seed: u64,
    /// Temperature and filters of the sampled episodes (training's defaults; --eval-temperature wins).
    #[command(flatten, next_help_heading = "Sampling and episodes")]
    pub sampling: SamplingArgs,
    /// Decode scheduling.
    #[command(flatten, next_help_heading = "Sampling and episodes")]
    pub decode: super::args::DecodeArgs,
    /// How long an episode may run (as in the run evaluated).
    #[command(flatten, next_help_heading = "Sampling and episodes")]
    pub episode: super::args::EpisodeArgs,
    /// Write the JSON summary here.
    #[arg(long, help_heading = "Output", default_value = "eval.json")]
    pub output: PathBuf,
    /// Also write each task's greedy completion, return and solved samples here (JSON lines).
    #[arg(long, help_heading = "Output", value_name = "FILE")]
    pub completions: Option<PathBuf>,
}

/// Run `grpo-host eval`; returns the exit code.
pub fn run(args: EvalArgs) -> anyhow::Result<i32> {
    args.model.apply_threads()?;
    let limits = args.episode.limits()?;
    if args.sampling.ignore_eos {
        return Err(user_error!("--ignore-eos: evaluation always stops at end-of-sequence, as training's does"));
    }
    let sampling = args.sampling.resolve(super::train::TRAIN_SAMPLING)?;
    let settings = args.run.into_settings(sampling, 0, false, args.decode.multi_step()?)?;
    let env_config = json_option(args.env_config.as_deref(), "--env-config")?;
    let mut rewards = args.rewards.shaping(limits.max_new_tokens)?;
    let registry = Registry::discover(&args.plugins.discovery())?;
    let env = registry.environment(&args.env, &env_config)?;
    let allow_download = !args.model.offline;
    let data = args.data.into_settings();
    data.check_eval_source()?;
    let run_tasks = data.resolve(&env, allow_download)?;
    let tasks = crate::eval::eval_tasks(&env, run_tasks.eval.as_deref().map(Vec::as_slice), settings.tasks, args.seed)?;

    // A run directory scores its newest usable checkpoint, as `--resume DIR` would continue from it.
    let checkpoint = match &args.checkpoint {
        Some(named) if is_peft_adapter(named) => Some(named.clone()),
        Some(named) => {
            let resolved = crate::checkpoint::resolve_named(named, "--checkpoint")?;
            for line in &resolved.skipped {
                eprintln!("{line}");
            }
            if &resolved.checkpoint != named {
                eprintln!(
                    "--checkpoint {}: scoring its latest checkpoint, {}",
                    named.display(),
                    resolved.checkpoint.display()
                );
            }
            Some(resolved.checkpoint)
        }
        None => None,
    };
    let (model_spec, lora, checkpoint_step) = match &checkpoint {
        Some(dir) => checkpoint_model(dir, args.model.model.clone())?,
        None => (args.model.model.clone(), None, None),
    };
    let mut model_settings = ModelSettings {
        model: model_spec,
        lora: lora.as_ref().map(|(config, _)| *config),
        ..args.model.settings(args.mixed_precision)?
    };
    // An adapter's checkpoint keeps beside it the template its run rendered with (`--chat-template`), which the
    // base model does not have; a full checkpoint's is its own already.
    let adapter_template = checkpoint.as_ref().map(|d| d.join(crate::checkpoint::TEMPLATE_FILE));
    if let Some(file) = adapter_template.filter(|f| lora.is_some() && f.exists()) {
        if model_settings.chat_template.is_none() {
            model_settings.chat_template = Some(crate::tokenizer::read_chat_template(&file)?);
        }
    }
    let mut policy = Policy::load(&model_settings, false, args.seed)?;
    policy.model().check_max_length(Some(limits.max_length))?;
    let sampler = policy.sampler();
    rewards.load_reward_models(sampler.device(), sampler.kind(), model_settings.allow_download)?;
    policy.tokenizer().require_chat_template(crate::train::CHAT_NEEDED)?;
    if let Some((_, weights)) = &lora {
        policy.load_weights(weights, true)?;
    }
    policy.model().set_training(false);
    policy.refresh_sampler(None);
    if let Some(note) = checkpoint.as_deref().and_then(|dir| {
        let here = Decisive {
            env: env.name(),
            env_config: &env_config,
            rewards: &rewards,
            data: &data,
            limits,
            settings: &settings,
            seed: args.seed,
            mixed_precision: args.mixed_precision,
            chat_template_kwargs: &model_settings.chat_template_kwargs,
        };
        differences_from_run(dir, &here)
    }) {
        eprintln!("{note}");
    }
    eprintln!("evaluating {} tasks of `{}`", tasks.len(), env.name());
    let evaluation = Evaluation { tasks, settings, limits, seed: args.seed, rewards };
    let result = evaluation
        .run(policy.sampler(), policy.tokenizer(), &env, &|| false)?
        .context("the evaluation was abandoned")?;
    let summary = serde_json::json!({
        "checkpoint": checkpoint.as_ref().map(|d| d.display().to_string()),
        "model_dir": policy.model_dir().display().to_string(),
        "global_step": checkpoint_step,
        "env": env.name(),
        "env_config": env.config()?,
        "seed": args.seed,
        "settings": settings,
        "metrics": result.summary(),
    });
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(&args.output, format!("{text}\n"))
        .map_err(|e| user_error!("--output {}: cannot write it ({e})", args.output.display()))?;
    if let Some(path) = &args.completions {
        result.write_completions(path, checkpoint_step.unwrap_or(0))?;
    }
    println!("{}", crate::eval::describe(&result));
    println!("summary written to {}", args.output.display());
    Ok(0)
}

/// The settings that decide an evaluation's numbers, for comparing `eval` with the run a checkpoint comes from.
struct Decisive<'a> {
    env: &'a str,
    env_config: &'a serde_json::Value,
    rewards: &'a RewardShaping,
    data: &'a DataSettings,
    limits: EpisodeLimits,
    settings: &'a EvalSettings,
    seed: u64,
    mixed_precision: MixedPrecision,
    chat_template_kwargs: &'a serde_json::Map<String, serde_json::Value>,
}

impl Decisive<'_> {
    /// Each setting as the flag that sets it and its value.
    fn flags(&self) -> Vec<(&'static str, String)> {
        let source = |spec: &Option<DatasetSpec>| spec.as_ref().map_or("none".to_string(), |d| d.source.clone());
        let (s, sampling) = (self.settings, &self.settings.sampling);
        vec![
            ("--env", self.env.to_string()),
            ("--env-config", self.env_config.to_string()),
            ("--reward-weights", serde_json::json!(self.rewards.weights).to_string()),
            ("--overlong-buffer/--overlong-penalty-factor", serde_json::json!(self.rewards.overlong).to_string()),
            ("--reward-model", serde_json::json!(self.rewards.reward_models).to_string()),
            ("--dataset", source(&self.data.dataset)),
            ("--eval-data", source(&self.data.eval_data)),
            ("--eval-holdout", self.data.eval_holdout.to_string()),
            ("--seed", self.seed.to_string()),
            ("--max-new-tokens", self.limits.max_new_tokens.to_string()),
            ("--max-turns", self.limits.max_turns.to_string()),
            ("--max-length", self.limits.max_length.to_string()),
            ("--max-prompt-length/--prompt-truncation", prompt_limit(self.limits.prompt_limit)),
            ("--eval-tasks", s.tasks.map_or("all".to_string(), |n| n.to_string())),
            ("--eval-samples", s.samples.to_string()),
            ("--eval-batch-tasks", s.batch_tasks.to_string()),
            ("--eval-temperature", sampling.temperature.to_string()),
            ("--top-k", sampling.top_k.to_string()),
            ("--top-p", sampling.top_p.to_string()),
            ("--min-p", sampling.min_p.to_string()),
            ("--repetition-penalty", sampling.repetition_penalty.to_string()),
            ("--mixed-precision", self.mixed_precision.to_string()),
            ("--chat-template-kwargs", serde_json::Value::Object(self.chat_template_kwargs.clone()).to_string()),
        ]
    }
}

/// `--max-prompt-length N/--prompt-truncation T` as the note shows them: `N/T`, or `none`.
fn prompt_limit(limit: Option<crate::rollout::PromptLimit>) -> String {
    limit.map_or("none".to_string(), |l| format!("{}/{}", l.max_tokens, l.truncation))
}

/// A note naming the settings in which this evaluation differs from the in-training ones of the run that wrote the
/// checkpoint `dir` (its `<run>/config.json`), so that a user who wants the run's numbers knows what to pass; `None`
/// when they agree, or the run did not evaluate, or its config cannot be read.
fn differences_from_run(dir: &Path, here: &Decisive<'_>) -> Option<String> {
    let text = std::fs::read_to_string(dir.parent()?.parent()?.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let run: crate::train::RunConfig = serde_json::from_value(config.get("run")?.clone()).ok()?;
    if !run.eval.enabled() {
        return None;
    }
    let b = &run.batch;
    let theirs = Decisive {
        env: &run.plugins.env,
        env_config: &run.plugins.env_config,
        rewards: &run.rewards,
        data: &run.data,
        limits: b.episode_limits(),
        settings: &run.eval,
        seed: run.seed,
        mixed_precision: run.model.mixed_precision,
        chat_template_kwargs: &run.model.chat_template_kwargs,
    };
    let differ: Vec<String> = theirs
        .flags()
        .into_iter()
        .zip(here.flags())
        .filter(|((_, a), (_, b))| a != b)
        .map(|((flag, a), (_, b))| format!("{flag} {a} (here {b})"))
        .collect();
    (!differ.is_empty()).then(|| {
        format!(
            "note: the run's own evaluations used {}; pass the same to reproduce its eval/* numbers",
            differ.join(", ")
        )
    })
}

/// Whether `dir` holds a PEFT adapter alone (adapter_config.json, no trainer state of this host's checkpoints).
fn is_peft_adapter(dir: &Path) -> bool {
    dir.join("adapter_config.json").exists() && !dir.join("trainer_state.json").exists()
}

/// What to load for a checkpoint: the model to load (the checkpoint itself for full weights, the base model for an
/// adapter), the adapter's settings and weights, and the step it was taken at. A folder with an adapter_config.json
/// and no trainer state is a PEFT adapter as PEFT or TRL saved it, taken at no known step.
#[allow(clippy::type_complexity)]
fn checkpoint_model(
    dir: &Path,
    base_override: Option<String>,
) -> anyhow::Result<(Option<String>, Option<(LoraConfig, std::collections::BTreeMap<String, tch::Tensor>)>, Option<u64>)>
{
    let (weights, step) = if is_peft_adapter(dir) {
        (PeftAdapter::read_weights(dir)?, None)
    } else {
        let loaded = crate::checkpoint::load(dir)?;
        let step = Some(loaded.state.global_step);
        if !loaded.adapter {
            // A full-weights checkpoint is a Hugging Face model directory of its own.
            return Ok((Some(dir.display().to_string()), None, step));
        }
        (loaded.weights, step)
    };
    let adapter = PeftAdapter::read_config(dir)?;
    Ok((base_override.or(adapter.base_model), Some((LoraConfig { dropout: 0.0, ..adapter.config }, weights)), step))
}
