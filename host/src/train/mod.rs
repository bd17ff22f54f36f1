//! The training loop, as stages that each turn one typed value into the next:
//!
//! ```text
//! tasks (TaskSource) -> rollouts (crate::rollout) -> Experience (experience::prepare_rollouts)
//!       -> Scored (scored::score, its returns less reward_kl's penalty) -> Experience::set_advantages
//!       -> Updates (update::Updater) -> metrics (metrics::*)
//! ```
//!
//! One batch: sample `rollouts_per_step` tasks, run `group_size` episodes of each, compute reference log-probs (and
//! old log-probs when the sampler's cannot be reused), ask the algorithm plugin for advantages, then
//! `epochs_per_step` shuffled passes over the experience in micro-batches; every `gradient_accumulation_steps`
//! micro-batches make one optimizer step. Metrics are logged on the optimizer-step axis: a batch's rollout metrics
//! at the step it starts from, each update's at its own step. A run is configured by one [`RunConfig`]; nothing
//! here knows about the command line.

pub mod best;
pub mod config;
pub mod dynamic_sampling;
pub mod experience;
pub mod metrics;
pub mod optimizer;
pub mod policy;
pub mod precision;
pub mod reward_kl;
pub mod run_dir;
pub mod scored;
pub mod stats;
pub mod stop;
pub mod tasks;
pub mod update;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use grpo_sdk::rng::mix;
use grpo_sdk::Task;

use crate::checkpoint::{self, TrainerState};
use crate::distributed::{fingerprint, World};
use crate::error::RunFailed;
use crate::logging::system::PhasePeak;
use crate::logging::{DistInfo, Loggers, SystemMetrics};
use crate::plugins::{AlgorithmPlugin, EnvironmentPlugin, Registry};
use crate::rollout::{run_episodes, task_seeds, Episodes, RolloutConfig};
use crate::user_error;
pub use config::RunConfig;
use dynamic_sampling::{Pool, SamplingSummary};
use experience::Experience;
use metrics::{BatchSummary, Timings};
use optimizer::{AdamW, Schedule};
use policy::Policy;
use precision::LossScaler;
use run_dir::RunPaths;

/// Why reinforcement learning and evaluation need the model's chat template (for
/// [`crate::tokenizer::Tokenizer::require_chat_template`]).
pub const CHAT_NEEDED: &str = "the environment's conversations are rendered with it for every episode";
use stop::drop_work;
pub use stop::{StopRequest, EXIT_INTERRUPTED, EXIT_TERMINATED};
use tasks::TaskSource;
use update::{Updater, Updates};

/// Run a training job; returns the process exit code. Under torchrun, this process is one rank of a data-parallel
/// job (crate::distributed): each rank rolls out its own share of every batch, the gradients are averaged over the
/// ranks, and rank 0 alone writes the run's files.
pub fn run(mut config: RunConfig) -> Result<i32> {
    crate::runtime::set_threads(config.model.threads);
    crate::runtime::set_deterministic(config.model.deterministic)?;
    let world = World::for_run(&mut config.model.device, Duration::from_secs_f64(config.dist.timeout_secs))?;
    if world.is_distributed() && config.batch.micro_batch_tokens.is_some() && config.loss.top_entropy_quantile < 1.0 {
        // The quantile is taken over each micro-batch's tokens on every rank, while each rank cuts its own sequences
        // by length into as many micro-batches as they need.
        return Err(crate::user_error!(
            "--top-entropy-quantile with --micro-batch-tokens cannot run data-parallel: the ranks' micro-batches \
             differ in number; drop --micro-batch-tokens (or the quantile)"
        ));
    }
    let mut trainer = Trainer::start(config, world)?;
    // A libtorch failure (out of memory, above all) ends the run as an error does: logs closed, checkpoints kept.
    let outcome = crate::error::catch_panics(|| trainer.train());
    trainer.finish(outcome)
}

/// The pieces of a running training job.
struct Trainer {
    config: RunConfig,
    algo: AlgorithmPlugin,
    env: EnvironmentPlugin,
    policy: Policy,
    optimizer: AdamW,
    scaler: LossScaler,
    schedule: Schedule,
    state: TrainerState,
    tasks: TaskSource,
    system: SystemMetrics,
    checkpoints: PathBuf,
    loggers: Loggers,
    stop: StopRequest,
    /// The data-parallel ranks (a world of one in a single process).
    world: World,
    /// Every rank has agreed to stop at this batch boundary (a signal reached at least one of them).
    stopping: bool,
    /// The model or the counters have changed since the last batch boundary: a checkpoint now would not be one a
    /// resumed run could continue exactly from.
    mid_batch: bool,
    /// When the last checkpoint was written (or the run started), for `--checkpoint-every-minutes`.
    last_save: Instant,
    /// The batch counter this process last wrote a checkpoint at, and where: a stop that drops the next batch's
    /// rollouts leaves the state of that boundary, which need not be written again.
    last_checkpoint: Option<(u64, PathBuf)>,
    /// The KL reference the warm-up just made, for the next checkpoint to write beside it (once).
    new_reference: Option<std::collections::BTreeMap<String, tch::Tensor>>,
    /// `--sft-data`'s rows for the warm-up: read before the model on a fresh start, at the warm-up on a resume.
    sft_rows: Option<Vec<crate::sft::Example>>,
    /// Evaluation on held-out tasks (`--eval-every`, `--eval-before-train`), when asked for.
    evaluator: Option<crate::eval::InTraining>,
    /// `--reward-weights`' names were compared with the components the episodes reported (once per process).
    reward_names_checked: bool,
    /// The last evaluation was the best so far by `--metric-for-best-model`: a checkpoint is due at this boundary.
    new_best: bool,
}

/// How the loop ended.
enum Outcome {
    Completed,
    /// A signal asked for a stop; the batch in flight was finished first.
    Stopped,
    /// A signal came before the batch's updates began: its rollouts were dropped, and the state is still the last
    /// boundary's (whose row is already committed).
    Abandoned,
    /// Resumed from the run's final checkpoint: nothing left to train or log.
    AlreadyComplete,
    /// A signal came during the supervised warm-up, which stopped after this many steps. No checkpoint exists before
    /// the warm-up ends, so the run starts over.
    WarmupStopped(u64),
}

impl Trainer {
    /// Load the plugins and the model, restore a checkpoint when resuming, write `config.json`, open the loggers.
    fn start(mut config: RunConfig, world: World) -> Result<Trainer> {
        // First, so that a SIGTERM while the model loads is a stop (exit 143 at the first boundary), not a kill.
        let stop = StopRequest::install().context("installing the SIGINT/SIGTERM handlers")?;
        let registry = Registry::discover(&config.plugins.discovery())?;
        let algo = registry.algorithm(&config.plugins.algo, &config.plugins.algo_config)?;
        let env = registry.environment(&config.plugins.env, &config.plugins.env_config)?;
        let (paths, history) = resolve_on_main(&config, &world)?;
        let _unused = paths.unused_folder(world.is_main());
        // Datasets and evaluation tasks before the model: a bad file or a missing column fails in seconds.
        let run_tasks = config.data.resolve(&env, config.model.allow_download)?;
        let mut evaluator = in_training_evaluator(&config, &env, run_tasks.eval.as_deref(), &paths.run_dir, &world)?;
        // A resumed run has usually warmed up already and needs no `--sft-data`: it is read then only if the
        // warm-up turns out to be due (`sft_warm_up`).
        let sft_rows = if paths.resume.is_none() { sft_data_rows(&config)? } else { None };
        let mut policy = Policy::load(&config.model, config.loss.needs_reference(), config.seed)?;
        policy.model().check_max_length(Some(config.batch.max_length))?;
        policy.tokenizer().require_chat_template(CHAT_NEEDED)?;
        let sampler = policy.sampler();
        config.rewards.load_reward_models(sampler.device(), sampler.kind(), config.model.allow_download)?;
        if let Some(evaluator) = &mut evaluator {
            evaluator.set_reward_models(&config.rewards);
        }
        let train_tasks = training_tasks(&config, run_tasks.train, &env, &policy, &world)?;
        if let Some(epochs) = config.batch.epochs {
            config.batch.max_steps = batches_for_epochs(&config, epochs, &train_tasks, &env, &world)?;
        }
        if config.loss.logprob_temperature == config::LogprobTemperature::Sampling {
            policy.set_logprob_temperature(config.sampling.params.temperature);
        }
        let precision = policy.precision();
        if let Some(warning) = precision.small_update_warning(config.optimizer.lr).filter(|_| world.is_main()) {
            eprintln!("{warning}");
        }
        if config.batch.group_size == 1 && world.is_main() {
            // Not refused: an algorithm plugin may compare rewards with something other than the group.
            eprintln!(
                "warning: --group-size 1: each task's reward is compared with itself only, so group-relative \
                 advantages (GRPO's, DR-GRPO's) are all 0 and nothing is learnt; use 2 or more"
            );
        }
        if let Some(lora) = config.model.lora.filter(|l| l.dropout > 0.0 && world.is_main()) {
            // The old log-probs come from passes without dropout, the update's from passes with it: the ratio
            // carries the dropout's noise, and clipping acts on that noise too.
            eprintln!(
                "warning: --lora-dropout {}: the policy ratio compares the update's forward pass (adapter inputs \
                 dropped) with old log-probs taken without dropout, so it is not 1 even on-policy and the clip acts \
                 on that noise; 0 (the default) keeps the ratio exact",
                lora.dropout
            );
        }
        if config.loss.tis_cap > 0.0 {
            algo.check_takes_importance_weights("--tis-cap")?;
        }
        if config.loss.top_entropy_quantile < 1.0 {
            algo.check_takes_importance_weights("--top-entropy-quantile")?;
        }
        let mut optimizer = policy.optimizer(config.optimizer.adamw());
        let mut scaler = LossScaler::new(precision.mode);
        let state = starting_state(&paths, config.seed, &mut policy, &mut optimizer, &mut scaler)?;
        if let Some(ckpt) = &paths.resume.as_ref().filter(|_| config.loss.needs_reference()) {
            // The reference as the checkpoint's run left it: moved by `--sync-ref-model`, or the warm-up's when the
            // run is past it.
            if let Some(reference) = checkpoint::load_checkpoint_reference(ckpt)? {
                policy.set_reference(&reference)?;
            } else if config.sft.steps > 0 && warmed_up(&state, config.sft.steps) {
                policy.set_reference(&checkpoint::load_reference(ckpt)?)?;
            }
        }
        if config.loss.sync_ref_model.is_some() {
            policy.own_reference()?;
        }
        if let Some(ckpt) = &paths.resume {
            if world.is_main() {
                eprintln!("resuming from {} (batch {}, step {})", ckpt.display(), state.batch, state.global_step);
            }
        }
        synchronize_start(&world, &policy, &optimizer)?;
        if let (Some(evaluator), Some(step)) = (&evaluator, paths.cut_back_to(&state)) {
            evaluator.cut_back(step)?;
        }
        let total_steps = config.batch.max_steps * config.batch.updates_per_batch();
        // The run's global steps: the supervised warm-up's, then the updates'.
        let run_steps = config.sft.steps + total_steps;
        let loggers = if world.is_main() {
            open_loggers(&config, &paths, &state, (&algo, &env, &policy), run_steps, history, world.size)?
        } else {
            // Rank 0 writes the run's files and logs; the others compute and send it their numbers.
            Loggers::silent()
        };
        let dist =
            DistInfo { num_processes: world.size, process_index: world.rank, local_process_index: world.local_rank };
        Ok(Trainer {
            // The updates' schedule starts after the supervised warm-up's steps.
            schedule: config.optimizer.schedule(total_steps, config.sft.steps)?,
            system: SystemMetrics::new(policy.device(), dist),
            tasks: TaskSource::from_set(train_tasks, config.seed)?
                .in_order(config.data.keep_order)
                .sharded(world.rank, world.size),
            evaluator,
            checkpoints: paths.checkpoints,
            // A resumed run starts at its checkpoint's boundary: a stop before its first batch need not rewrite it.
            last_checkpoint: paths.resume.map(|dir| (state.batch, dir)),
            config,
            algo,
            env,
            policy,
            optimizer,
            scaler,
            state,
            loggers,
            stop,
            world,
            stopping: false,
            mid_batch: false,
            reward_names_checked: false,
            new_best: false,
            new_reference: None,
            sft_rows,
            last_save: Instant::now(),
        })
    }

    fn train(&mut self) -> Result<Outcome> {
        let max_steps = self.config.batch.max_steps;
        self.state.early_stopped = best::still_stopped(self.config.checkpoints.best_model.as_ref(), &self.state);
        if (self.state.batch >= max_steps || self.state.early_stopped) && self.state.global_step > 0 {
            return Ok(Outcome::AlreadyComplete);
        }
        if self.evaluator.as_ref().is_some_and(|e| e.due_before_training(self.state.batch, self.state.global_step)) {
            self.evaluate(self.state.global_step)?;
            // A stop asked for during that evaluation is honoured now, not after the warm-up and a first batch.
            self.agree_at_boundary()?;
            if self.stopping {
                return Ok(Outcome::Stopped);
            }
        }
        if let Some(done) = self.sft_warm_up()? {
            return Ok(Outcome::WarmupStopped(done));
        }
        while self.state.batch < max_steps {
            if !self.batch()? {
                // Every rank dropped the batch (a signal reached one of them before its updates): stop at the
                // boundary the batch started from.
                self.check_weights_agree()?;
                return Ok(Outcome::Abandoned);
            }
            // Before the ranks agree on stopping, so that a signal arriving during the evaluation (which abandons it)
            // stops the run at this boundary.
            if self.evaluator.as_ref().is_some_and(|e| e.due_after_batch(self.state.batch, max_steps)) {
                self.evaluate(self.state.global_step.saturating_sub(1))?;
            }
            let checkpoint_due = self.agree_at_boundary()?;
            // The last batch's row stays open for `finish`, which adds the final metrics. Every rank saw the same
            // evaluation, so all stop early together.
            if self.state.batch >= max_steps || self.state.early_stopped {
                break;
            }
            if checkpoint_due {
                // The row is complete and committed before the checkpoint exists, so a kill at any point leaves
                // either the previous checkpoint (and the resumed run logs this row again, the sinks having cut
                // their history back to it) or this one with its row: each row lands exactly once.
                self.loggers.log(self.state.global_step.saturating_sub(1), metrics::checkpoint_saved(&self.state));
                if self.stopping {
                    // `finish` commits the row, then writes this checkpoint: the row is what an uninterrupted run
                    // logs here.
                    break;
                }
                self.loggers.flush_durable();
                let dir = self.save()?;
                self.loggers.println(&format!("checkpoint saved: {}", dir.display()));
            } else if self.stopping {
                break;
            }
            self.loggers.commit();
        }
        let cut_short = self.state.batch < max_steps && !self.state.early_stopped;
        Ok(if self.stopping && cut_short { Outcome::Stopped } else { Outcome::Completed })
    }

    /// At a batch boundary, every rank takes the same decisions: whether to stop (a signal reached any rank),
    /// whether a checkpoint is due (rank 0's clock), and that the weights are still the same everywhere. Returns
    /// whether a checkpoint is due.
    fn agree_at_boundary(&mut self) -> Result<bool> {
        let mine = (self.stop.signal(), self.checkpoint_due());
        let all = self.world.gather("agreeing at the batch boundary", mine)?;
        self.stop.adopt(all.iter().find_map(|&(signal, _)| signal));
        self.stopping = self.stop.requested();
        let due = all[0].1;
        let every = self.config.dist.check_interval;
        if due || self.stopping || (every > 0 && self.state.batch.is_multiple_of(every)) {
            self.check_weights_agree()?;
        }
        Ok(due)
    }

    /// Data parallel: the ranks' trained weights, f32 masters and moments must be bit-identical; a difference
    /// stops the run naming the ranks that diverged.
    fn check_weights_agree(&self) -> Result<()> {
        if !self.world.is_distributed() {
            return Ok(());
        }
        let what = format!("after batch {}", self.state.batch);
        self.world.check_same(&what, fingerprint(&trained_state(&self.policy, &self.optimizer)))
    }

    /// `--sft-warmup-steps`: supervised steps on the environment's demonstrations before the first batch
    /// (`crate::sft::warmup`), on the optimizer-step axis under `sft/*`, then a checkpoint; a run resumed past them
    /// skips them. A stop (on any rank) ends the warm-up after the step in flight and returns the steps done: no
    /// checkpoint is taken mid-warm-up (its own optimizer is not the run's), so the run then starts over.
    fn sft_warm_up(&mut self) -> Result<Option<u64>> {
        let steps = self.config.sft.steps;
        if steps == 0 || warmed_up(&self.state, steps) {
            return Ok(None);
        }
        if self.sft_rows.is_none() {
            self.sft_rows = sft_data_rows(&self.config)?;
        }
        self.mid_batch = true;
        let warmup = crate::sft::warmup::Warmup {
            settings: &self.config.sft,
            policy: &self.policy,
            env: &self.env,
            data: self.sft_rows.as_deref(),
            max_length: self.config.batch.max_length,
            adamw: self.config.optimizer.adamw(),
            micro_batch: self.config.batch.chunking(),
            max_norm: self.config.optimizer.max_norm,
            seed: self.config.seed,
            world: &self.world,
        };
        let (loggers, state, stop, world) = (&mut self.loggers, &mut self.state, &self.stop, &self.world);
        let mut stop_now = || -> Result<bool> {
            let first =
                world.gather("agreeing on a stop during the warm-up", stop.signal())?.into_iter().flatten().next();
            stop.adopt(first);
            Ok(first.is_some())
        };
        let end = warmup.run(
            &mut |index, record, seconds| {
                loggers.println(&format!(
                    "sft warm-up {}/{steps}: loss {:.4} accuracy {:.3} ({seconds:.1}s)",
                    index + 1,
                    record.loss,
                    record.accuracy
                ));
                loggers.log(state.global_step, record.metrics());
                state.global_step += 1;
            },
            &mut stop_now,
        )?;
        use crate::sft::warmup::WarmupEnd;
        match end {
            WarmupEnd::Stopped(done) => return Ok(Some(done)),
            WarmupEnd::Done(Some(masters)) => self.optimizer.load_master_weights(&masters)?,
            WarmupEnd::Done(None) => {}
        }
        // The KL term now holds RL near the warmed-up model; the checkpoint below writes it for resumes (rank 0
        // writes the run's files).
        self.new_reference = self.policy.rebase_reference()?.filter(|_| self.world.is_main());
        // The demonstrations were played through the environment; its counters (`group_rates/*`, episodes) must
        // start from the first batch's rollouts, not include them.
        self.env.metrics()?;
        // A skipped (non-finite) step still counts, so a resumed run knows the warm-up is over.
        self.state.global_step = self.state.global_step.max(steps);
        self.loggers.commit();
        self.loggers.flush_durable();
        self.mid_batch = false;
        let dir = self.save()?;
        self.loggers.println(&format!("sft warm-up done: checkpoint saved: {}", dir.display()));
        Ok(None)
    }

    /// Under `--reward-kl-coef`, every rank's returns less their KL penalties (what the algorithm scores), this
    /// rank's KL numbers for the metrics, and under `--reward-kl-target` the coefficient for the next batch (the
    /// adaptive controller's step on the global batch's mean KL); otherwise `all_returns` as they are.
    #[allow(clippy::type_complexity)]
    fn kl_penalised(
        &self,
        exp: &Experience,
        all_returns: Vec<Vec<f64>>,
    ) -> Result<(Vec<Vec<f64>>, Option<(reward_kl::RewardKlSummary, Option<f64>)>)> {
        let Some(settings) = self.config.loss.reward_kl else { return Ok((all_returns, None)) };
        let (sums, means) = reward_kl::sequence_kl(exp, settings.estimator)?
            .context("internal: --reward-kl-coef without reference log-probs")?;
        // A fixed coefficient is the flag's (a resume may change it); an adaptive one continues where it was.
        let coef = match settings.target {
            Some(_) => self.state.reward_kl_coef.unwrap_or(settings.coef),
            None => settings.coef,
        };
        let mine = all_returns.get(self.world.rank).context("internal: no returns of this rank")?;
        let penalised: Vec<f64> = mine.iter().zip(&sums).map(|(r, kl)| r - coef * kl).collect();
        let local = reward_kl::RewardKlSummary {
            coef,
            sequences: sums.len() as f64,
            penalty_sum: coef * sums.iter().sum::<f64>(),
            kl_sum: means.iter().sum(),
        };
        let ranks = self.world.gather("gathering the KL-penalised returns", (penalised, local))?;
        let total = ranks.iter().fold(Default::default(), |a, (_, s)| reward_kl::RewardKlSummary::merge(a, *s));
        let next = settings.target.map(|_| reward_kl::adapted(coef, &settings, total.mean_kl(), total.sequences));
        Ok((ranks.into_iter().map(|(returns, _)| returns).collect(), Some((local, next))))
    }

    /// Every `--checkpoint-interval` batches, and when `--checkpoint-every-minutes` have passed since the last one.
    fn checkpoint_due(&self) -> bool {
        let c = &self.config.checkpoints;
        let by_count = self.state.batch.is_multiple_of(c.interval.max(1));
        let by_time = c.every_minutes > 0.0 && self.last_save.elapsed().as_secs_f64() >= c.every_minutes * 60.0;
        by_count || by_time || self.new_best
    }

    /// One batch through every stage, its metrics logged as each stage ends. Returns `false` when a stop request
    /// came (on any rank) before the updates began: the batch is then dropped with nothing logged or changed, so the
    /// state is still the boundary it started from and a resumed run plays the same batch again.
    fn batch(&mut self) -> Result<bool> {
        let step0 = self.state.global_step;
        let mut timings = Timings::default();
        let (t, peak) = (Instant::now(), PhasePeak::start());
        let sampled = self.sample()?;
        timings.rollout = t.elapsed().as_secs_f64();
        timings.rollout_peak_rss = peak.end();
        // Every rank's returns, so that the algorithm scores the global batch as one process would; a stop on any
        // rank drops the batch on all of them here.
        let (group_size, shaping) = (self.config.batch.group_size, &self.config.rewards);
        let returns = sampled.as_ref().map(|(e, _)| shaping.scored_returns(&e.rollouts, group_size));
        let Some(all_returns) = self.gather_unless_dropped("gathering the batch's returns", returns)? else {
            return Ok(false);
        };
        // Every rank's returns arrived, this one's included.
        let Some((episodes, sampling)) = sampled else { return Ok(false) };
        timings.rollout_stats = episodes.stats;
        let (rollouts, group_size, rank) = (episodes.rollouts, self.config.batch.group_size, self.world.rank);
        let (t, peak) = (Instant::now(), PhasePeak::start());
        let (loss, chunks) = (&self.config.loss, self.config.batch.chunking());
        // The log-probs before the advantages: a KL penalty in the reward needs them.
        let mut exp = experience::prepare_rollouts(&rollouts, &self.policy, loss, chunks)?;
        timings.logprob = t.elapsed().as_secs_f64();
        timings.logprob_peak_rss = peak.end();
        let (scored_returns, reward_kl) = self.kl_penalised(&exp, all_returns)?;
        let scored = scored::score_within(&self.algo, rollouts, group_size, &scored_returns, rank)?;
        exp.set_advantages(&scored.advantages);
        // The last point at which stopping costs no more than the work already done.
        let local = (!drop_work(&self.stop, &self.world)()).then(|| BatchSummary {
            sampling,
            reward_kl: reward_kl.map(|(summary, _)| summary),
            ..BatchSummary::new(&scored, &exp, timings)
        });
        let Some(ranks) = self.gather_unless_dropped("gathering the batch's rollout metrics", local)? else {
            return Ok(false);
        };
        if let Some((_, Some(next))) = reward_kl {
            // The adaptive controller's step, once the batch is certain to be trained on.
            self.state.reward_kl_coef = Some(next);
        }
        let batch = BatchSummary::merge(ranks);
        self.log_rollouts(step0, &batch, exp.len());

        let (t, peak) = (Instant::now(), PhasePeak::start());
        let updates = self.update(&exp)?;
        let mut m = metrics::epoch(&updates, &self.state, t.elapsed().as_secs_f64(), peak.end());
        let mut plugin = Vec::new();
        for source in [self.algo.metrics()?, self.env.metrics()?] {
            plugin.extend(source.into_iter().map(|metric| (metric.name, metric.value)));
        }
        // The plugins' numbers averaged over the ranks.
        let ranks = self.world.gather("gathering the plugins' metrics", plugin)?;
        m.extend(crate::logging::weighted_mean(ranks.into_iter().map(|r| (1.0, r))));
        self.loggers.log(self.state.global_step.saturating_sub(1).max(step0), m);
        self.state.batch += 1;
        self.mid_batch = false;
        Ok(true)
    }

    /// Every rank's share of work that a stop may drop (`local`, `None` where this rank dropped it), or `None` when
    /// any rank dropped its own: a dropping rank sends the signal that made it, and every rank adopts it and stops.
    fn gather_unless_dropped<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        what: &str,
        local: Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let ranks = self.world.gather(what, local.ok_or(self.stop.signal()))?;
        match ranks.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(all) => Ok(Some(all)),
            Err(signal) => {
                self.stop.adopt(signal);
                Ok(None)
            }
        }
    }

    /// Put the model in inference mode and bring the sampling copy (when rollouts run in another dtype) up to the
    /// trained weights, from the f32 masters when there are some.
    fn ready_sampler(&self) {
        self.policy.model().set_training(false);
        let masters = (self.policy.precision().separate_rollout() && self.optimizer.has_master_weights())
            .then(|| self.optimizer.master_weights());
        self.policy.refresh_sampler(masters.as_ref());
    }

    /// Stage: tasks -> rollouts for this rank's share of the batch. Under dynamic sampling further rounds follow
    /// until the global batch has its groups whose returns vary, or the rounds run out: after each round the ranks
    /// learn which of every rank's groups vary, share the next round's extra tasks out, and at the end send each
    /// other the groups another rank trains on (module [`dynamic_sampling`]), so that they keep what one process
    /// would. `None`: a stop request abandoned the batch (on any rank, once the rounds are compared; otherwise the
    /// returns' gather that follows tells the others).
    fn sample(&mut self) -> Result<Option<(Episodes, Option<SamplingSummary>)>> {
        let per_rank = self.config.batch.rollouts_per_step;
        let first = (self.world.rank * per_rank) as u64;
        let tasks = self.tasks.batch(self.state.batch, per_rank)?;
        self.ready_sampler();
        let Some(dynamic) = self.config.batch.dynamic_sampling else {
            return Ok(self.rollouts(&tasks, first, 0)?.map(|e| (e, None)));
        };
        let mut regular = Some(tasks);
        let (rank, world) = (self.world.rank, self.world.size);
        let mut pool = Pool::new(self.config.batch.group_size, per_rank, rank, world);
        let mut rounds = 0;
        for round in 0..dynamic.max_rounds.max(1) {
            let missing = pool.missing();
            if round > 0 && missing == 0 {
                break;
            }
            rounds += 1;
            let (tasks, first) = match round {
                0 => (regular.take().unwrap_or_default(), first),
                _ => {
                    let (start, count) = pool.extra_share(missing);
                    (self.tasks.extra(self.state.batch, round, start, count)?, start)
                }
            };
            let flags = match tasks.is_empty() {
                true => Some(Vec::new()),
                false => self.rollouts(&tasks, first, round)?.map(|episodes| pool.add(episodes, &self.config.rewards)),
            };
            // Every rank learns which groups of the round vary (or that one was stopped, and all stop here).
            let Some(flags) = self.gather_unless_dropped("comparing the ranks' sampled groups", flags)? else {
                return Ok(None);
            };
            pool.record(flags);
        }
        let outgoing = pool.outgoing();
        let incoming = match self.world.is_distributed() {
            true => self.world.gather("sending groups to the ranks that train on them", outgoing)?.concat(),
            false => outgoing,
        };
        let (episodes, summary) = pool.finish(rounds, incoming)?;
        Ok(Some((episodes, Some(summary))))
    }

    /// Rollouts of `tasks` in round `round` of the batch, each task sampled with its own seed from the batch's, the
    /// round's and its position `first..` in the global batch (so the same whichever rank runs it). `None`: a stop
    /// request abandoned them. The sampler must be ready ([`Trainer::ready_sampler`]).
    fn rollouts(&mut self, tasks: &[Task], first: u64, round: usize) -> Result<Option<Episodes>> {
        let (b, s) = (&self.config.batch, &self.config.sampling);
        let cfg = RolloutConfig {
            group_size: b.group_size,
            max_new_tokens: b.max_new_tokens,
            max_turns: b.max_turns,
            max_length: b.max_length,
            sampling: s.params,
            ignore_eos: s.ignore_eos,
            max_batch_rows: b.max_batch_rows,
            multi_step: b.multi_step,
            rewards: self.config.rewards.clone(),
            prompt_limit: b.prompt_limit,
        };
        let batch_seed = mix(self.config.seed, self.state.batch);
        let round_seed = if round == 0 { batch_seed } else { mix(batch_seed, round as u64) };
        let seeds = task_seeds(round_seed, first, tasks.len());
        let (model, tokenizer) = (self.policy.sampler(), self.policy.tokenizer());
        run_episodes(model, tokenizer, &self.env, tasks, &cfg, &seeds, &drop_work(&self.stop, &self.world))
    }

    /// Evaluate the current weights on the held-out tasks and log `eval/*` at `step` (the batch's last step, so a
    /// checkpoint taken after it scores the same with `grpo-host eval`). Every rank plays its share (chunks of tasks
    /// dealt round-robin) and rank 0 logs the combined numbers, which do not depend on the number of ranks.
    ///
    /// A stop request skips the evaluation or abandons it at its next decode step: the run then stops at this
    /// boundary, and `grpo-host eval` on the checkpoint it writes gives the numbers the evaluation would have logged.
    fn evaluate(&mut self, step: u64) -> Result<()> {
        let Some(evaluator) = &self.evaluator else { return Ok(()) };
        // The console counts optimizer steps done, as its progress line and the checkpoints' names do; `step` is
        // the logging axis's 0-based index.
        let done = self.state.global_step;
        let stopped_before = drop_work(&self.stop, &self.world)();
        let t = Instant::now();
        let shard = if stopped_before {
            None
        } else {
            self.ready_sampler();
            let ranks = (self.world.rank, self.world.size);
            let (model, tokenizer) = (self.policy.sampler(), self.policy.tokenizer());
            let drop = drop_work(&self.stop, &self.world);
            evaluator.evaluation().run_shard(model, tokenizer, &self.env, ranks, &drop)?
        };
        let shards = self.gather_unless_dropped("gathering the evaluation's outcomes", shard)?;
        let seconds = t.elapsed().as_secs_f64();
        let Some(shards) = shards else {
            let how = if stopped_before { "skipped".to_string() } else { format!("abandoned after {seconds:.1}s") };
            self.loggers.println(&format!(
                "eval at step {done} {how}: stopping on {}; `grpo-host eval --checkpoint DIR --env {}` with the \
                 run's eval flags gives its numbers from the checkpoint this stop saves",
                self.stop.name(),
                self.env.name()
            ));
            return Ok(());
        };
        let ranks = shards.iter().filter(|s| !s.outcomes.is_empty()).count();
        let result = evaluator.finish(shards, step)?;
        let on = match (self.world.is_distributed(), ranks) {
            (false, _) => String::new(),
            (true, 1) => " on 1 rank".to_string(),
            (true, k) => format!(" on {k} ranks"),
        };
        let line = format!("eval at step {done}{on}: {} ({seconds:.1}s)", crate::eval::describe(&result));
        self.loggers.println(&line);
        let metrics = result.metrics();
        // Evaluations after a batch only: the one before training has no checkpoint to keep.
        if self.state.batch > 0 {
            self.track_best(&metrics)?;
        }
        self.loggers.log(step, metrics);
        self.loggers.log_table(step, &result.table(step));
        Ok(())
    }

    /// Under `--metric-for-best-model`, make this boundary's checkpoint the best one when the evaluation's
    /// `metrics` beat the best so far, and under `--early-stopping-patience` count the evaluations without progress
    /// and end the run when they reach it (every rank decides alike: each has the whole evaluation).
    fn track_best(&mut self, metrics: &crate::logging::Metrics) -> Result<()> {
        let Some(best_model) = &self.config.checkpoints.best_model else { return Ok(()) };
        let (step, last) = (self.state.global_step, self.state.batch >= self.config.batch.max_steps);
        let verdict = best::judge(best_model, &mut self.state, metrics, step, last)?;
        self.new_best |= verdict.new_best;
        if let Some(line) = verdict.stop {
            self.loggers.println(&line);
        }
        Ok(())
    }

    /// Log a batch's rollout metrics (and, at the interval, its completions) at its first step; `batch` is the
    /// global batch (every rank's), `replay` this rank's experience size.
    fn log_rollouts(&mut self, step0: u64, batch: &BatchSummary, replay: usize) {
        self.mid_batch = true;
        let mean = stats::summarize(&batch.returns()).mean;
        let best = self.state.best_mean_return.map_or(mean, |b| b.max(mean));
        self.state.best_mean_return = Some(best);
        self.state.total_rollouts += batch.rollouts.len() as u64;
        if self.config.loss.mask_truncated_completions {
            let cut = batch.rollouts.iter().filter(|r| r.was_cut()).count();
            if cut == batch.rollouts.len() {
                self.loggers.println(&format!(
                    "warning: batch {}: all {cut} episodes were cut off, so --mask-truncated-completions leaves every \
                     one out of the loss and this batch teaches nothing; raise --max-new-tokens (or --max-length)",
                    self.state.batch
                ));
            }
        }
        if !self.reward_names_checked {
            self.reward_names_checked = true;
            let seen: std::collections::BTreeSet<&str> =
                batch.rollouts.iter().flat_map(|r| r.rewards.keys().map(String::as_str)).collect();
            let unknown = self.config.rewards.weights.unknown(&seen);
            if !unknown.is_empty() {
                self.loggers.println(&format!(
                    "warning: --reward-weights names {}, which no episode of batch {} reported: a misspelt name \
                     weighs nothing (a component the environment gives only in some episodes is fine); the \
                     components reported were: {}",
                    unknown.join(", "),
                    self.state.batch,
                    seen.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if let Some(s) = batch.sampling.filter(|s| s.filled_groups > 0) {
            self.loggers.println(&format!(
                "warning: batch {}: dynamic sampling found too few groups whose rewards vary ({} of {} sampled in {} \
                 rounds), so {} with equal rewards train in their place; raise --max-sampling-rounds, or the tasks \
                 may be too hard or too easy for the model",
                self.state.batch, s.varied_groups, s.sampled_groups, s.rounds, s.filled_groups
            ));
        }
        let mut m = metrics::rollout(batch, best);
        m.extend(metrics::progress(&self.state));
        m.extend(metrics::timing(batch));
        m.extend(self.system.sample(replay, true));
        let interval = self.config.logging.completions_interval;
        if interval > 0 && self.state.batch.is_multiple_of(interval) {
            let (rows, example) = metrics::completions(step0, batch);
            if let Some(example) = example {
                m.insert("examples/completion".into(), example.into());
            }
            self.loggers.log_completions(step0, &rows);
        }
        self.loggers.log(step0, m);
    }

    /// Stage: experience -> updates, each optimizer step logged as it is taken.
    fn update(&mut self, exp: &Experience) -> Result<Updates> {
        let Trainer { config, algo, policy, optimizer, scaler, schedule, state, loggers, world, .. } = self;
        let mut updater = Updater {
            policy,
            optimizer,
            scaler,
            algo,
            schedule,
            batch: &config.batch,
            loss: config.loss.for_algorithm(config.batch.max_new_tokens),
            max_norm: config.optimizer.max_norm,
            top_entropy_quantile: config.loss.top_entropy_quantile,
            entropy_coeff: config.loss.entropy_coeff,
            reference_sync: config.loss.sync_ref_model,
            warmup_steps: config.sft.steps,
            seed: config.seed,
            world,
        };
        let log = &mut |record: &update::StepRecord, state: &TrainerState| {
            loggers.log(record.step, metrics::step(record, state))
        };
        updater.run(exp, state, log)
    }

    /// Write a checkpoint of the state at this batch boundary: rank 0 writes it once every rank has reached the
    /// boundary, and no rank goes on before it is durable (so a rank killed next leaves it complete). Rank 0's
    /// outcome is every rank's.
    fn save(&mut self) -> Result<PathBuf> {
        let dir = self.save_on_main()?;
        self.last_checkpoint = Some((self.state.batch, dir.clone()));
        Ok(dir)
    }

    fn save_on_main(&mut self) -> Result<PathBuf> {
        if self.world.is_distributed() {
            self.world.barrier("waiting for every rank before a checkpoint")?;
        }
        let written = self.world.is_main().then(|| self.write_checkpoint());
        self.world.share_from_main("writing the checkpoint", written)
    }

    fn write_checkpoint(&mut self) -> Result<PathBuf> {
        self.state.wandb_run_id = self.loggers.wandb_run_id().map(String::from);
        let settings = &self.config.checkpoints;
        let mut data = self.policy.checkpoint_data(&self.optimizer, &self.scaler, self.state.clone(), settings);
        if self.config.loss.sync_ref_model.is_some() {
            data.reference = self.policy.reference_weights();
        }
        if let Some(reference) = &self.new_reference {
            checkpoint::save_reference(&self.checkpoints, reference)?;
        }
        let dir = checkpoint::save(&self.checkpoints, data)?;
        self.new_reference = None;
        self.new_best = false;
        self.last_save = Instant::now();
        // Only after the new checkpoint is durable, and never the newest nor the best.
        let best = self.state.best.as_ref().map(|b| b.step);
        checkpoint::prune(&self.checkpoints, self.config.checkpoints.save_total_limit, best)?;
        Ok(dir)
    }

    /// End of the run, however it ended: final metrics, a checkpoint, flushed logs, and the exit code.
    fn finish(&mut self, outcome: Result<Outcome>) -> Result<i32> {
        if outcome.is_err() && self.mid_batch {
            return self.fail_mid_batch(outcome.err().expect("checked above"));
        }
        if matches!(outcome, Ok(Outcome::AlreadyComplete)) {
            self.loggers.println(best::nothing_to_do(&self.state));
            self.loggers.finish(0);
            return Ok(0);
        }
        if let Ok(Outcome::WarmupStopped(done)) = outcome {
            self.loggers.flush_durable();
            self.loggers.set_summary(metrics::final_summary(&self.state, false, false));
            let (code, name) = (self.stop.exit_code(), self.stop.name());
            let when = stop_point(Outcome::WarmupStopped(done), self.state.batch, self.config.batch.max_steps);
            self.loggers.println(&format!(
                "stopped by {name} {when}: no checkpoint exists before the warm-up ends, so the run starts over; run \
                 the same command again (without --resume)"
            ));
            self.loggers.finish(code);
            return Ok(code);
        }
        // A completed run closes its last row with the final metrics, committed before the final checkpoint as in
        // `train`. A stopped run's rows stay what an uninterrupted run logs (a resumed run then equals one row for
        // row), and after an error at a batch boundary the last row is already committed: the summary alone
        // records how those ended.
        let completed = matches!(outcome, Ok(Outcome::Completed));
        let abandoned = matches!(outcome, Ok(Outcome::Abandoned));
        if completed && self.state.global_step > 0 {
            let mut row = metrics::final_summary(&self.state, true, true);
            // Whether the save worked is known only after the row is committed: the summary records it.
            row.remove("checkpoint/saved");
            self.loggers.log(self.state.global_step.saturating_sub(1), row);
        }
        self.loggers.flush_durable();
        let saved = match &self.last_checkpoint {
            // Preempted jobs have seconds to exit: the boundary's checkpoint is on disk already.
            Some((batch, dir)) if abandoned && *batch == self.state.batch => Ok(dir.clone()),
            _ => self.save(),
        };
        let loggers = &mut self.loggers;
        loggers.set_summary(metrics::final_summary(&self.state, saved.is_ok(), completed));
        let resume_hint =
            |dir: &Path| format!("resume with: grpo-host --resume {} (and the same flags)", dir.display());
        match (outcome, saved) {
            (Ok(Outcome::Completed | Outcome::AlreadyComplete), Ok(dir)) => {
                if let Some(best) = &self.state.best {
                    let at = self.checkpoints.join(format!("step_{}", best.step));
                    loggers.println(&format!("best {} {:.4}: {}", best.metric, best.value, at.display()));
                }
                loggers.println(&format!("done: final checkpoint {}", dir.display()));
                loggers.finish(0);
                Ok(0)
            }
            (Ok(stopped @ (Outcome::Stopped | Outcome::Abandoned | Outcome::WarmupStopped(_))), Ok(dir)) => {
                let (code, name) = (self.stop.exit_code(), self.stop.name());
                let when = stop_point(stopped, self.state.batch, self.config.batch.max_steps);
                loggers.println(&format!("stopped by {name} {when}: checkpoint saved; {}", resume_hint(&dir)));
                loggers.finish(code);
                Ok(code)
            }
            (Err(err), Ok(dir)) => {
                let hint = format!("the run failed; checkpoint saved; {}", resume_hint(&dir));
                loggers.println(&hint);
                loggers.finish(1);
                Err(err.context(RunFailed(hint)))
            }
            (outcome, Err(save_err)) => {
                loggers.finish(1);
                match outcome {
                    Err(err) => {
                        Err(err.context(RunFailed(format!("and saving a checkpoint failed too: {save_err:#}"))))
                    }
                    Ok(_) => Err(save_err.context(RunFailed("saving the final checkpoint".into()))),
                }
            }
        }
    }
}

impl Trainer {
    /// A failure inside a batch (after its rollouts were counted or its updates began): the model and counters are
    /// between two boundaries, so no checkpoint is written from them; the last one stays the one to resume from.
    fn fail_mid_batch(&mut self, err: anyhow::Error) -> Result<i32> {
        let summary = metrics::final_summary(&self.state, false, false);
        self.loggers.log(self.state.global_step.saturating_sub(1), summary.clone());
        self.loggers.commit();
        self.loggers.set_summary(summary);
        let hint = match checkpoint::latest(&self.checkpoints) {
            Some(dir) => format!(
                "the last consistent checkpoint is {}; resume with: grpo-host --resume {} (and the same flags)",
                dir.display(),
                dir.display()
            ),
            None => "no checkpoint was written before it; the run must start again".to_string(),
        };
        self.loggers.println(&format!("the run failed in batch {}; {hint}", self.state.batch));
        self.loggers.finish(1);
        Err(err.context(RunFailed(format!("batch {} failed; {hint}", self.state.batch))))
    }
}

/// Where a stop left the run, for the console: `batch` batches are done out of `max_steps`.
fn stop_point(stopped: Outcome, batch: u64, max_steps: u64) -> String {
    match stopped {
        Outcome::Abandoned => {
            format!("during batch {}/{max_steps}, whose rollouts were dropped (it runs again on resume)", batch + 1)
        }
        Outcome::WarmupStopped(done) => format!("during the sft warm-up, after step {done}"),
        _ if batch == 0 => "before the first batch".to_string(),
        _ => "after the batch".to_string(),
    }
}

/// The in-training evaluator (`--eval-every`, `--eval-before-train`), if asked for: every rank plays its share of
/// each evaluation, and rank 0 writes the eval files. Warns when the evaluation before training and the one after a
/// one-update first batch would both be logged at step 0.
fn in_training_evaluator(
    config: &RunConfig,
    env: &EnvironmentPlugin,
    given: Option<&Vec<Task>>,
    run_dir: &Path,
    world: &World,
) -> Result<Option<crate::eval::InTraining>> {
    let b = &config.batch;
    let limits = b.episode_limits();
    let outcomes_dir = world.is_main().then_some(run_dir);
    let given = given.map(Vec::as_slice);
    let rewards = config.rewards.clone();
    let evaluator = crate::eval::InTraining::new(env, given, config.eval, limits, config.seed, rewards, outcomes_dir)?;
    let first_batch_at_step_0 = config.sft.steps == 0 && b.updates_per_batch() == 1;
    if evaluator.as_ref().is_some_and(|e| e.due_before_training(0, 0) && e.due_after_batch(1, b.max_steps))
        && first_batch_at_step_0
        && world.is_main()
    {
        eprintln!(
            "warning: --eval-before-train: the first batch has one update (step 0) and an evaluation after it, \
             which is logged at step 0 too and replaces the one before training; a smaller --train-batch-size \
             (several updates per batch) or --eval-every N that skips the first batch keeps both"
        );
    }
    Ok(evaluator)
}

/// The counters a run starts from, named after the run: a resumed run's checkpoint put back (its weights, masters,
/// moments and loss scale), or a new run's, whose masters start from the weights on disk.
pub(crate) fn starting_state(
    paths: &RunPaths,
    seed: u64,
    policy: &mut Policy,
    optimizer: &mut AdamW,
    scaler: &mut LossScaler,
) -> Result<TrainerState> {
    let mut state = match &paths.resume {
        Some(ckpt) => restore(ckpt, policy, optimizer, scaler, seed)?,
        None => {
            policy.load_initial_adapter()?;
            if let Some(weights) = policy.initial_master_weights()? {
                optimizer.load_master_weights(&weights)?;
            }
            TrainerState { seed, ..Default::default() }
        }
    };
    state.run_name = Some(paths.run_name.clone());
    Ok(state)
}

/// Whether a run at `state` is past its `steps` warm-up steps (a checkpoint is only ever taken after all of them).
fn warmed_up(state: &TrainerState, steps: u64) -> bool {
    state.batch > 0 || state.global_step >= steps
}

/// Put a checkpoint's weights (and f32 masters), moments, loss scale and counters back; the seed must be the run's.
fn restore(
    ckpt: &Path,
    policy: &mut Policy,
    optimizer: &mut AdamW,
    scaler: &mut LossScaler,
    seed: u64,
) -> Result<TrainerState> {
    let loaded = checkpoint::load(ckpt)?;
    if loaded.model_only {
        return Err(user_error!(
            "--resume {}: the checkpoint holds the weights alone (saved with --save-only-model), not the optimizer \
             state a run continues from; start a new run from its weights (--model takes a full-weights checkpoint)",
            ckpt.display()
        ));
    }
    if loaded.state.seed != seed {
        return Err(user_error!(
            "--resume {}: that run used --seed {}, this command --seed {}; pass --seed {} to continue it exactly",
            ckpt.display(),
            loaded.state.seed,
            seed,
            loaded.state.seed
        ));
    }
    policy.load_weights(&loaded.weights, loaded.adapter)?;
    if optimizer.has_master_weights() {
        optimizer.load_master_weights(&loaded.weights)?;
    }
    optimizer.load_state(loaded.optimizer_steps, &loaded.optimizer)?;
    if let Some(s) = loaded.state.loss_scaler {
        scaler.load_state(s);
    }
    Ok(loaded.state)
}

/// Rank 0 picks the run directory and the checkpoint to resume from (and checks the resume guard); every rank
/// takes its choice, so a default run name with the time in it and `--resume auto` mean the same run everywhere.
/// Checkpoints must be on a filesystem every rank can read.
fn resolve_on_main(config: &RunConfig, world: &World) -> Result<(RunPaths, Vec<serde_json::Value>)> {
    world.on_main("choosing the run directory", || {
        let paths = RunPaths::resolve(&config.checkpoints, || default_run_name(config))?;
        let history = match &paths.resume {
            Some(_) => resume_guard(config, &paths.run_dir, world.size)?,
            None => Vec::new(),
        };
        Ok((paths, history))
    })
}

/// Data parallel: every rank starts from rank 0's trained weights (and f32 masters), then checks that all its
/// weights, frozen ones included, are the same as rank 0's.
pub(crate) fn synchronize_start(world: &World, policy: &Policy, optimizer: &AdamW) -> Result<()> {
    if !world.is_distributed() {
        return Ok(());
    }
    let mut trained: Vec<tch::Tensor> = policy.trainable().into_iter().map(|(_, t)| t).collect();
    if optimizer.has_master_weights() {
        trained.extend(optimizer.master_weights().into_values());
    }
    tch::no_grad(|| world.broadcast("broadcasting rank 0's weights", &trained))?;
    // Sorted by name: the fingerprint depends on the order, and a VarStore's map has none.
    let frozen: std::collections::BTreeMap<String, tch::Tensor> =
        policy.model().var_store().variables().into_iter().collect();
    let mut all: Vec<tch::Tensor> = frozen.into_values().collect();
    all.extend(trained_state(policy, optimizer));
    world.check_same("at start", fingerprint(&all))
}

/// What the ranks of a data-parallel run must hold bit-identical, in a fixed order: the trained weights, their f32
/// masters (when the precision keeps them) and AdamW's moments.
pub(crate) fn trained_state(policy: &Policy, optimizer: &AdamW) -> Vec<tch::Tensor> {
    let mut tensors: Vec<tch::Tensor> = policy.trainable().into_iter().map(|(_, t)| t).collect();
    if optimizer.has_master_weights() {
        tensors.extend(optimizer.master_weights().into_values());
    }
    tensors.extend(optimizer.state().1.into_values());
    tensors
}

/// The tasks the run trains on: `tasks`, without those whose prompt is over `--max-prompt-length` under
/// `--filter-overlong-prompts` (rank 0 says how many it left out).
fn training_tasks(
    config: &RunConfig,
    tasks: crate::data::TaskSet,
    env: &EnvironmentPlugin,
    policy: &Policy,
    world: &World,
) -> Result<crate::data::TaskSet> {
    let Some(limit) = config.batch.prompt_limit.filter(|_| config.data.filter_overlong_prompts) else {
        return Ok(tasks);
    };
    let kept = tasks::without_overlong_prompts(tasks, config.seed, env, policy.tokenizer(), limit.max_tokens)?;
    if world.is_main() {
        eprintln!(
            "--filter-overlong-prompts: left out {} of {} training tasks, whose prompt has more than {} tokens",
            kept.left_out, kept.before, limit.max_tokens
        );
    }
    Ok(kept.tasks)
}

/// The batches that make `epochs` passes over `tasks` (`--num-train-epochs`); rank 0 says how many. Only a finite
/// task list has passes.
fn batches_for_epochs(
    config: &RunConfig,
    epochs: f64,
    tasks: &crate::data::TaskSet,
    env: &EnvironmentPlugin,
    world: &World,
) -> Result<u64> {
    let why = "a pass over them has no end either; give it a task file or --dataset, or give --max-steps";
    let count = tasks::finite_count(tasks, env, "--num-train-epochs", why)?;
    let global_batch = config.batch.rollouts_per_step * world.size;
    let (batches, line) = config::steps_for_epochs(epochs, count as usize, global_batch, "tasks", "batches");
    if world.is_main() {
        eprintln!("{line}");
    }
    Ok(batches)
}

/// `--sft-data`'s rows when the run warms up on them (`None` without a warm-up or without the flag).
fn sft_data_rows(config: &RunConfig) -> Result<Option<Vec<crate::sft::Example>>> {
    match (&config.sft.data, config.sft.steps) {
        (Some(spec), steps) if steps > 0 => {
            Ok(Some(crate::sft::data::examples(spec, "--sft-data", "train", config.model.allow_download, "text")?))
        }
        _ => Ok(None),
    }
}

/// On resume: the saved run's result-changing settings must equal these, unless `--allow-config-change`, which
/// records each accepted change. Batch sizes are compared as global ones (per process times the world size), so
/// a data-parallel run may continue in another number of processes with the same global batch. Returns the run's
/// change history for its new `config.json` (a run directory whose config.json predates the typed config has no
/// history and is not checked here; the seed is checked on restore).
fn resume_guard(config: &RunConfig, run_dir: &Path, world_size: usize) -> Result<Vec<serde_json::Value>> {
    let Some((saved, history)) = run_dir::saved_config(run_dir) else { return Ok(Vec::new()) };
    let Ok(before) = serde_json::from_value::<RunConfig>(saved["run"].clone()) else { return Ok(history) };
    let saved_world = saved["world_size"].as_u64().unwrap_or(1) as usize;
    let mut differences = global_batch(config, world_size).differences_from(&global_batch(&before, saved_world));
    if !differences.is_empty() && (world_size > 1 || saved_world > 1) {
        differences.push(format!(
            "batch sizes compared per process times the world size ({saved_world} process(es) then, {world_size} now)"
        ));
    }
    run_dir::accept_changes(differences, history, config.checkpoints.allow_config_change, run_dir)
}

/// `config` with its per-process batch sizes scaled to the whole world's.
fn global_batch(config: &RunConfig, world_size: usize) -> RunConfig {
    let mut global = config.clone();
    global.batch.rollouts_per_step *= world_size;
    global.batch.train_batch_size *= world_size;
    global.batch.micro_batch_tokens = global.batch.micro_batch_tokens.map(|tokens| tokens * world_size);
    if global.sft.steps > 0 {
        global.sft.batch_size *= world_size;
    }
    global
}

/// The run's resolved settings for `config.json`, and its loggers.
fn open_loggers(
    config: &RunConfig,
    paths: &RunPaths,
    state: &TrainerState,
    (algo, env, policy): (&AlgorithmPlugin, &EnvironmentPlugin, &Policy),
    total_steps: u64,
    changes: Vec<serde_json::Value>,
    world_size: usize,
) -> Result<Loggers> {
    let resolved = run_dir::resolved_config(
        serde_json::json!({"run": config, "run_name": paths.run_name}),
        policy,
        serde_json::json!({
            "world_size": world_size,
            "algorithm": {"name": algo.name(), "version": algo.info().version, "config": algo.config()?},
            "environment": {"name": env.name(), "version": env.info().version, "config": env.config()?},
            "config_changes": changes,
        }),
    );
    paths.open_loggers(run_dir::LogStart {
        resolved,
        names: (algo.name(), env.name()),
        logging: &config.logging,
        run_name_flag: config.checkpoints.run_name.as_deref(),
        state,
        total_steps,
    })
}

fn default_run_name(config: &RunConfig) -> String {
    let now = crate::calendar::UtcDateTime::now().compact();
    format!("{}-{}-{}", config.plugins.algo, config.plugins.env, now)
}
