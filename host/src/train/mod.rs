//! The training loop: tasks -> rollouts -> rewards -> advantages -> experience -> updates -> metrics.
//!
//! One batch: sample `rollouts_per_step` tasks, run `group_size` episodes of each in batched generation, ask the
//! algorithm plugin for advantages, compute reference log-probs (and old log-probs when the sampler's cannot be
//! reused), then `epochs_per_step` shuffled passes over the experience in micro-batches; every
//! `gradient_accumulation_steps` micro-batches make one optimizer step. Metrics are logged on the optimizer-step
//! axis: a batch's rollout metrics at the step it starts from, each update's at its own step.

pub mod experience;
pub mod optimizer;
pub mod policy;
pub mod stats;
pub mod tasks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use grpo_sdk::{LossSettings, MetricValue as SdkValue, PolicyBatch};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Kind, Tensor};

use crate::checkpoint::{self, CheckpointData, TrainerState};
use crate::cli::train::TrainArgs;
use crate::generate::SamplingParams;
use crate::logging::{CompletionRow, Loggers, LoggingConfig, MetricValue, Metrics, SystemMetrics};
use crate::plugins::{AlgorithmPlugin, EnvironmentPlugin, Registry};
use crate::rollout::{run_episodes, EndReason, Rollout, RolloutConfig};
use crate::user_error;
use experience::{sequence_kl, Experience};
use optimizer::{AdamW, AdamWConfig, Schedule};
use policy::Policy;
use stats::summarize;
use tasks::TaskSource;

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Run a training job from its flags; returns the process exit code.
pub fn run(args: TrainArgs) -> Result<i32> {
    validate(&args)?;
    crate::cli::set_threads(args.threads)?;
    let algo_config = plugin_config(args.algo_config.as_deref(), "--algo-config")?;
    let mut env_config = plugin_config(args.env_config.as_deref(), "--env-config")?;
    if let Some(path) = &args.data_path {
        set_option(&mut env_config, "data_path", path.display().to_string().into());
    }
    if let Some(n) = args.max_prompts {
        set_option(&mut env_config, "max_prompts", n.into());
    }

    let registry = Registry::discover(&args.plugins.discovery())?;
    let algo = registry.algorithm(&args.algo, &algo_config)?;
    let env = registry.environment(&args.env, &env_config)?;

    let resume = match &args.resume {
        Some(spec) => {
            let named = args.run_name.as_ref().map(|n| args.runs_dir.join(n));
            Some(checkpoint::resolve_resume(spec, &args.runs_dir, named.as_deref())?)
        }
        None => None,
    };
    let run_dir = match &resume {
        // A checkpoint lives in <run>/checkpoints/step_N unless --checkpoint-path moved it.
        Some(ckpt) if ckpt.parent().and_then(Path::file_name).is_some_and(|n| n == "checkpoints") => {
            ckpt.parent().and_then(Path::parent).expect("checked above").to_path_buf()
        }
        _ => args.runs_dir.join(args.run_name.clone().unwrap_or_else(|| default_run_name(&args))),
    };
    let run_name = run_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let checkpoints = args.checkpoint_path.clone().unwrap_or_else(|| run_dir.join("checkpoints"));

    let mut policy = Policy::load(&args)?;
    let mut optimizer = AdamW::new(
        policy.trainable(),
        AdamWConfig {
            lr: args.lr,
            beta1: args.adam_beta1,
            beta2: args.adam_beta2,
            eps: args.adam_eps,
            weight_decay: args.weight_decay,
        },
    );
    let mut state = TrainerState { seed: args.seed, ..Default::default() };
    if let Some(ckpt) = &resume {
        let loaded = checkpoint::load(ckpt)?;
        if loaded.state.seed != args.seed {
            return Err(user_error!(
                "--resume {}: that run used --seed {}, this command --seed {}; pass --seed {} to continue it exactly",
                ckpt.display(),
                loaded.state.seed,
                args.seed,
                loaded.state.seed
            ));
        }
        policy.load_weights(&loaded.weights, loaded.adapter)?;
        optimizer.load_state(loaded.optimizer_steps, &loaded.optimizer)?;
        state = loaded.state;
        eprintln!("resuming from {} (batch {}, step {})", ckpt.display(), state.batch, state.global_step);
    }

    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    let resolved = serde_json::json!({
        "args": args,
        "run_name": run_name,
        "model_dir": policy.model_dir().display().to_string(),
        "device": format!("{:?}", policy.device()),
        "dtype": format!("{:?}", policy.kind()),
        "algorithm": {"name": algo.name(), "version": algo.info().version, "config": algo.config()?},
        "environment": {"name": env.name(), "version": env.info().version, "config": env.config()?},
    });
    std::fs::write(run_dir.join("config.json"), serde_json::to_string_pretty(&resolved)?)?;

    let updates_per_batch = updates_per_batch(&args);
    let total_steps = args.max_steps * updates_per_batch;
    let mut log_cfg = LoggingConfig::new(&run_dir, &run_name, algo.name(), env.name());
    log_cfg.config = resolved;
    args.logging.apply(&mut log_cfg);
    log_cfg.total_steps = Some(total_steps);
    log_cfg.resume = resume.is_some();
    let mut loggers = Loggers::new(&log_cfg)?;

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // A second handler registration (tests running several trainings in one process) is harmless to skip.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }

    let mut trainer = Trainer {
        schedule: Schedule {
            base_lr: args.lr,
            warmup_steps: args.warmup_steps,
            cosine: args.lr_schedule == "cosine",
            total_steps,
        },
        system: SystemMetrics::new(policy.device(), Default::default()),
        tasks: TaskSource::new(env.clone(), args.seed)?,
        args,
        algo,
        env,
        policy,
        optimizer,
        state,
        checkpoints,
        interrupted,
    };
    let outcome = trainer.train(&mut loggers);
    trainer.finish(&mut loggers, outcome)
}

/// The pieces of a running training job.
struct Trainer {
    args: TrainArgs,
    algo: AlgorithmPlugin,
    env: EnvironmentPlugin,
    policy: Policy,
    optimizer: AdamW,
    schedule: Schedule,
    state: TrainerState,
    tasks: TaskSource,
    system: SystemMetrics,
    checkpoints: PathBuf,
    interrupted: Arc<AtomicBool>,
}

/// How the loop ended.
enum Outcome {
    Completed,
    Interrupted,
}

impl Trainer {
    fn train(&mut self, loggers: &mut Loggers) -> Result<Outcome> {
        while self.state.batch < self.args.max_steps {
            self.batch(loggers)?;
            let saved = self.state.batch.is_multiple_of(self.args.checkpoint_interval.max(1));
            if saved && self.state.batch < self.args.max_steps {
                let dir = self.save()?;
                loggers.log(
                    self.state.global_step.saturating_sub(1),
                    crate::metrics! {"checkpoint/saved" => 1, "checkpoint/step" => self.state.global_step},
                );
                loggers.println(&format!("checkpoint saved: {}", dir.display()));
            }
            if self.interrupted.load(Ordering::SeqCst) {
                return Ok(Outcome::Interrupted);
            }
            // The last batch's row stays open: `finish` adds the final metrics to it, so a resumed run's first
            // batch never lands on a step that W&B already holds.
            if self.state.batch < self.args.max_steps {
                loggers.commit();
            }
        }
        Ok(Outcome::Completed)
    }

    /// One batch: rollouts, advantages, log-probs, updates, metrics.
    fn batch(&mut self, loggers: &mut Loggers) -> Result<()> {
        let args = self.args.clone();
        let step0 = self.state.global_step;
        let batch_seed = mix(args.seed, self.state.batch);
        let tasks = self.tasks.batch(self.state.batch, args.rollouts_per_step)?;

        let t_rollout = Instant::now();
        let cfg = RolloutConfig {
            group_size: args.group_size,
            max_new_tokens: args.max_new_tokens,
            max_turns: args.max_turns,
            max_length: args.max_length,
            sampling: SamplingParams {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
                min_p: args.min_p,
            },
            ignore_eos: args.ignore_eos,
        };
        self.policy.model().set_training(false);
        let rollouts = run_episodes(self.policy.model(), self.policy.tokenizer(), &self.env, &tasks, &cfg, batch_seed)?;
        let rollout_secs = t_rollout.elapsed().as_secs_f64();

        let returns: Vec<f64> = rollouts.iter().map(|r| r.total_reward).collect();
        let groups = vec![args.group_size; tasks.len()];
        let rewards = Tensor::from_slice(&returns.iter().map(|&r| r as f32).collect::<Vec<_>>());
        let advantages = self.algo.advantages(&rewards, &groups)?;
        let adv_values = Vec::<f32>::try_from(&advantages.to_kind(Kind::Float))
            .context("the algorithm's advantages are not a float tensor")?;
        if adv_values.len() != rollouts.len() {
            anyhow::bail!(
                "algorithm `{}` returned {} advantages for {} rollouts",
                self.algo.name(),
                adv_values.len(),
                rollouts.len()
            );
        }

        let t_logprob = Instant::now();
        let mut exp = Experience::build(&rollouts, &advantages, self.policy.device());
        if self.policy.recompute_old(&args) {
            exp.old_log_probs = self.policy.log_probs(&exp, args.train_batch_size)?;
        }
        exp.ref_log_probs = self.policy.reference_log_probs(&exp, args.train_batch_size, args.kl_weight)?;
        let logprob_secs = t_logprob.elapsed().as_secs_f64();

        let mut m = Metrics::new();
        self.rollout_metrics(&mut m, &rollouts, &returns, &adv_values, &exp);
        self.state.total_rollouts += rollouts.len() as u64;
        m.insert("rollouts/total_rollouts".into(), self.state.total_rollouts.into());
        m.insert("rollouts/batch_step".into(), self.state.batch.into());
        m.insert("timing/rollout_s".into(), rollout_secs.into());
        m.insert("timing/logprob_s".into(), logprob_secs.into());
        let generated: usize = rollouts.iter().map(|r| r.action.iter().filter(|&&a| a).count()).sum();
        m.insert("timing/generated_tokens_per_s".into(), (generated as f64 / rollout_secs.max(1e-9)).into());
        m.extend(self.system.sample(exp.len(), true));
        if args.log_completions_interval > 0 && self.state.batch.is_multiple_of(args.log_completions_interval) {
            let rows = completion_rows(step0, &rollouts, &adv_values);
            if let Some(first) = rollouts.first() {
                m.insert("examples/completion".into(), example_text(first).into());
            }
            loggers.log_completions(step0, &rows);
        }
        loggers.log(step0, m);

        let t_train = Instant::now();
        let epoch = self.update(&exp, loggers)?;
        let train_secs = t_train.elapsed().as_secs_f64();

        let mut m = Metrics::new();
        let loss = summarize(&epoch.losses);
        let kl = summarize(&epoch.kls);
        let grad = summarize(&epoch.grad_norms);
        m.insert("training_epoch/loss_mean".into(), loss.mean.into());
        m.insert("training_epoch/loss_std".into(), loss.std.into());
        m.insert("training_epoch/kl_mean".into(), kl.mean.into());
        m.insert("training_epoch/kl_std".into(), kl.std.into());
        m.insert("training_epoch/grad_norm_mean".into(), grad.mean.into());
        m.insert(
            "training_epoch/grad_norm_max".into(),
            if epoch.grad_norms.is_empty() { 0.0 } else { grad.max }.into(),
        );
        m.insert("training/invalid_loss_count".into(), self.state.invalid_loss_count.into());
        m.insert("timing/train_s".into(), train_secs.into());
        for source in [self.algo.metrics()?, self.env.metrics()?] {
            for metric in source {
                m.insert(metric.name, sdk_value(metric.value));
            }
        }
        loggers.log(self.state.global_step.saturating_sub(1).max(step0), m);
        self.state.batch += 1;
        Ok(())
    }

    fn rollout_metrics(
        &mut self,
        m: &mut Metrics,
        rollouts: &[Rollout],
        returns: &[f64],
        adv: &[f32],
        exp: &Experience,
    ) {
        let r = summarize(returns);
        let best = self.state.best_mean_return.map_or(r.mean, |b| b.max(r.mean));
        self.state.best_mean_return = Some(best);
        for (k, v) in [("sum", r.sum), ("mean", r.mean), ("std", r.std), ("max", r.max), ("min", r.min)] {
            m.insert(format!("rollouts/returns_{k}"), v.into());
        }
        m.insert("rollouts/returns_best_mean".into(), best.into());
        // re-grpo's multi-turn logger names for the same quantities, so its dashboards carry over.
        m.insert("batch_returns/mean".into(), r.mean.into());
        m.insert("batch_returns/max".into(), r.max.into());
        m.insert("batch_returns/best_mean".into(), best.into());
        let group_means: Vec<f64> =
            returns.chunks(self.args.group_size.max(1)).map(|g| g.iter().sum::<f64>() / g.len() as f64).collect();
        m.insert("group_avg/reward".into(), summarize(&group_means).mean.into());

        let a = summarize(&adv.iter().map(|&x| x as f64).collect::<Vec<_>>());
        m.insert("rollouts/advantages_mean".into(), a.mean.into());
        m.insert("rollouts/advantages_std".into(), a.std.into());
        if let Some(reference) = &exp.ref_log_probs {
            let kl = sequence_kl(&exp.old_log_probs, reference, &exp.action_mask);
            let kl = Vec::<f64>::try_from(&kl.to_kind(Kind::Double)).unwrap_or_default();
            let k = summarize(&kl);
            m.insert("rollouts/kl_mean".into(), k.mean.into());
            m.insert("rollouts/kl_std".into(), k.std.into());
            m.insert("rollouts/kl_max".into(), k.max.into());
        }

        let mut components: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in rollouts {
            for (name, value) in &r.rewards {
                components.entry(name).or_default().push(*value);
            }
        }
        for (name, values) in components {
            // Averaged over the rollouts that reported the component (an episode that ended early reports fewer).
            m.insert(format!("rollout_rewards/{name}"), summarize(&values).mean.into());
        }

        let lengths: Vec<f64> = rollouts.iter().map(|r| r.action.iter().filter(|&&a| a).count() as f64).collect();
        let l = summarize(&lengths);
        m.insert("completions/mean_length".into(), l.mean.into());
        m.insert("completions/max_length".into(), l.max.into());
        let turns: usize = rollouts.iter().map(|r| r.turns).sum();
        let cut: usize = rollouts.iter().map(|r| r.cut_turns).sum();
        m.insert("completions/clipped_ratio".into(), (cut as f64 / turns.max(1) as f64).into());
        let n = rollouts.len().max(1) as f64;
        m.insert("episodes/turns_mean".into(), (turns as f64 / n).into());
        let tools: usize = rollouts.iter().map(|r| r.tool_messages).sum();
        m.insert("episodes/tool_messages_mean".into(), (tools as f64 / n).into());
        let truncated = rollouts.iter().filter(|r| r.end == EndReason::ContextLimit).count();
        m.insert("episodes/truncated_share".into(), (truncated as f64 / n).into());
    }

    /// The passes over one batch's experience.
    fn update(&mut self, exp: &Experience, loggers: &mut Loggers) -> Result<EpochStats> {
        let args = self.args.clone();
        let settings = LossSettings {
            clip_eps_low: args.clip_eps,
            clip_eps_high: args.clip_eps_high.unwrap_or(args.clip_eps),
            kl_weight: args.kl_weight,
            generate_max_length: args.max_new_tokens as i64,
        };
        let mut epoch = EpochStats::default();
        let accum = args.gradient_accumulation_steps.max(1);
        self.policy.model().set_training(true);
        for pass in 0..args.epochs_per_step {
            let mut order: Vec<usize> = (0..exp.len()).collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(mix(mix(args.seed, self.state.batch), pass as u64 + 1));
            order.shuffle(&mut rng);
            let micro: Vec<&[usize]> = order.chunks(args.train_batch_size.max(1)).collect();
            for window in micro.chunks(accum) {
                let mut step = StepStats::default();
                self.optimizer.zero_grad();
                for rows in window {
                    let mb = exp.select(rows);
                    let log_probs = self.policy.model().token_log_probs(&mb.tokens, &mb.attention_mask);
                    let kl = mb.ref_log_probs.as_ref().map(|r| {
                        sequence_kl(&log_probs.detach(), r, &mb.action_mask).mean(Kind::Float).double_value(&[])
                    });
                    let batch = PolicyBatch {
                        log_probs,
                        old_log_probs: mb.old_log_probs,
                        ref_log_probs: mb.ref_log_probs,
                        advantages: mb.advantages,
                        action_mask: mb.action_mask,
                        settings,
                    };
                    let out = self.algo.loss(&batch)?;
                    let value = out.loss.double_value(&[]);
                    if !value.is_finite() {
                        self.state.invalid_loss_count += 1;
                        continue;
                    }
                    (out.loss / window.len() as f64).backward();
                    step.add(value, kl, out.metrics);
                }
                if step.count == 0 {
                    continue;
                }
                let grad_norm = self.optimizer.clip_grad_norm(args.max_norm);
                if !grad_norm.is_finite() {
                    self.state.invalid_loss_count += 1;
                    self.optimizer.zero_grad();
                    continue;
                }
                let lr = self.schedule.lr(self.state.global_step);
                self.optimizer.step(lr);
                let (loss, kl) = (step.loss / step.count as f64, step.kl.map(|k| k / step.count as f64));
                let mut m = crate::metrics! {
                    "training_step/loss" => loss,
                    "training_step/grad_norm" => grad_norm,
                    "training_step/learning_rate" => lr,
                    "training/invalid_loss_count" => self.state.invalid_loss_count,
                };
                if let Some(kl) = kl {
                    m.insert("training_step/kl".into(), kl.into());
                    epoch.kls.push(kl);
                }
                for (name, (sum, n)) in step.plugin {
                    m.insert(name, (sum / n as f64).into());
                }
                for (name, text) in step.plugin_text {
                    m.insert(name, text.into());
                }
                loggers.log(self.state.global_step, m);
                epoch.losses.push(loss);
                epoch.grad_norms.push(grad_norm);
                self.state.global_step += 1;
                if self.interrupted.load(Ordering::SeqCst) {
                    // Finish the batch's bookkeeping; the caller saves and exits.
                    self.policy.model().set_training(false);
                    return Ok(epoch);
                }
            }
        }
        self.policy.model().set_training(false);
        Ok(epoch)
    }

    fn save(&mut self) -> Result<PathBuf> {
        let data = CheckpointData {
            weights: self.policy.weights(),
            adapter: self.policy.adapter_info(),
            base_model: self.policy.model_dir(),
            merged: if self.args.save_merged { self.policy.merged_weights() } else { None },
            optimizer: self.optimizer.state(),
            state: self.state.clone(),
        };
        checkpoint::save(&self.checkpoints, data)
    }

    /// End of the run, however it ended: final metrics, a checkpoint, flushed logs, and the exit code.
    fn finish(&mut self, loggers: &mut Loggers, outcome: Result<Outcome>) -> Result<i32> {
        let step = self.state.global_step;
        let last_step = step.saturating_sub(1);
        let saved = self.save();
        let mut summary = crate::metrics! {
            "final/total_steps" => self.state.global_step,
            "final/total_batches" => self.state.batch,
            "final/total_rollouts" => self.state.total_rollouts,
            "final/best_mean_return" => self.state.best_mean_return.unwrap_or(f64::NAN),
            "checkpoint/saved" => saved.is_ok(),
            "checkpoint/step" => step,
        };
        summary.insert("training/completed".into(), matches!(outcome, Ok(Outcome::Completed)).into());
        loggers.log(last_step, summary.clone());
        loggers.commit();
        loggers.set_summary(summary);
        let resume_hint =
            |dir: &Path| format!("resume with: grpo-host --resume {} (and the same flags)", dir.display());
        match (outcome, saved) {
            (Ok(Outcome::Completed), Ok(dir)) => {
                loggers.println(&format!("done: final checkpoint {}", dir.display()));
                loggers.finish(0);
                Ok(0)
            }
            (Ok(Outcome::Interrupted), Ok(dir)) => {
                loggers.println(&format!("interrupted: checkpoint saved; {}", resume_hint(&dir)));
                loggers.finish(EXIT_INTERRUPTED);
                Ok(EXIT_INTERRUPTED)
            }
            (Err(err), Ok(dir)) => {
                loggers.println(&format!("the run failed; checkpoint saved; {}", resume_hint(&dir)));
                loggers.finish(1);
                Err(err)
            }
            (outcome, Err(save_err)) => {
                loggers.finish(1);
                match outcome {
                    Err(err) => Err(err.context(format!("and saving a checkpoint failed too: {save_err:#}"))),
                    Ok(_) => Err(save_err.context("saving the final checkpoint")),
                }
            }
        }
    }
}

#[derive(Default)]
struct EpochStats {
    losses: Vec<f64>,
    kls: Vec<f64>,
    grad_norms: Vec<f64>,
}

/// The micro-batches of one optimizer step, accumulated for logging.
#[derive(Default)]
struct StepStats {
    count: usize,
    loss: f64,
    kl: Option<f64>,
    plugin: BTreeMap<String, (f64, usize)>,
    plugin_text: BTreeMap<String, String>,
}

impl StepStats {
    fn add(&mut self, loss: f64, kl: Option<f64>, metrics: Vec<grpo_sdk::Metric>) {
        self.count += 1;
        self.loss += loss;
        if let Some(kl) = kl {
            *self.kl.get_or_insert(0.0) += kl;
        }
        for metric in metrics {
            match metric.value {
                SdkValue::Number(x) => {
                    let e = self.plugin.entry(metric.name).or_insert((0.0, 0));
                    e.0 += x;
                    e.1 += 1;
                }
                SdkValue::Text(t) => {
                    self.plugin_text.insert(metric.name, t);
                }
            }
        }
    }
}

fn sdk_value(v: SdkValue) -> MetricValue {
    match v {
        SdkValue::Number(x) => MetricValue::Number(x),
        SdkValue::Text(t) => MetricValue::Text(t),
    }
}

fn completion_rows(step: u64, rollouts: &[Rollout], adv: &[f32]) -> Vec<CompletionRow> {
    rollouts
        .iter()
        .zip(adv)
        .map(|(r, &a)| {
            let mut rewards = r.rewards.clone();
            rewards.insert("total".into(), r.total_reward);
            CompletionRow {
                step,
                prompt: r.prompt_text.clone(),
                completion: r.transcript.clone(),
                rewards,
                advantage: a as f64,
            }
        })
        .collect()
}

fn example_text(r: &Rollout) -> String {
    format!(
        "**Question:** {}\n\n**Transcript:**\n```\n{}\n```\n\n**Reward:** {:.3} (oracle answer: {})",
        r.task.question, r.transcript, r.total_reward, r.task.answer
    )
}

/// Optimizer steps one batch makes: micro-batches per epoch, grouped by the accumulation window.
fn updates_per_batch(args: &TrainArgs) -> u64 {
    let sequences = args.rollouts_per_step * args.group_size;
    let micro = sequences.div_ceil(args.train_batch_size.max(1));
    (micro.div_ceil(args.gradient_accumulation_steps.max(1)) * args.epochs_per_step) as u64
}

/// A well-mixed seed for a sub-stream (splitmix64 of the pair).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn default_run_name(args: &TrainArgs) -> String {
    let now = chrono_like_timestamp();
    format!("{}-{}-{}", args.algo, args.env, now)
}

/// `YYYYmmdd-HHMMSS` in UTC, without a date crate: days from the Unix epoch to a civil date (Howard Hinnant's
/// algorithm).
fn chrono_like_timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn validate(args: &TrainArgs) -> Result<()> {
    let positive = [
        ("--group-size", args.group_size),
        ("--rollouts-per-step", args.rollouts_per_step),
        ("--train-batch-size", args.train_batch_size),
        ("--gradient-accumulation-steps", args.gradient_accumulation_steps),
        ("--epochs-per-step", args.epochs_per_step),
        ("--max-new-tokens", args.max_new_tokens),
        ("--max-turns", args.max_turns),
    ];
    for (flag, value) in positive {
        if value == 0 {
            return Err(user_error!("{flag} must be at least 1"));
        }
    }
    if args.max_length <= args.max_new_tokens {
        return Err(user_error!(
            "--max-length {} must exceed --max-new-tokens {} (it bounds the whole episode, prompt included)",
            args.max_length,
            args.max_new_tokens
        ));
    }
    if !matches!(args.lr_schedule.as_str(), "constant" | "cosine") {
        return Err(user_error!("--lr-schedule {}: expected constant or cosine", args.lr_schedule));
    }
    if !matches!(args.recompute_old_logprobs.as_str(), "auto" | "always" | "never") {
        return Err(user_error!(
            "--recompute-old-logprobs {}: expected auto, always or never",
            args.recompute_old_logprobs
        ));
    }
    if args.lr <= 0.0 || !args.lr.is_finite() {
        return Err(user_error!("--lr {} must be a positive number", args.lr));
    }
    if args.kl_weight < 0.0 {
        return Err(user_error!("--kl-weight {} must be >= 0", args.kl_weight));
    }
    Ok(())
}

/// `--algo-config` / `--env-config`: inline JSON, or `@FILE` holding JSON.
fn plugin_config(spec: Option<&str>, flag: &str) -> Result<serde_json::Value> {
    let Some(spec) = spec else { return Ok(serde_json::Value::Null) };
    let text = match spec.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| user_error!("{flag} @{path}: cannot read the file ({e}); pass JSON or @FILE"))?,
        None => spec.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| user_error!("{flag}: not valid JSON ({e}); example: '{{\"key\": 1}}'"))
}

fn set_option(config: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if !config.is_object() {
        *config = serde_json::json!({});
    }
    config[key] = value;
}
