//! Which tasks each batch trains on. A finite task set is walked in a fresh seeded permutation every epoch (or in
//! its own order, `--shuffle-dataset false`); an unbounded generator is asked for indices 0, 1, 2, ... Either way
//! batch `b` always gets the same tasks for the same seed, which is what lets a resumed run continue with exactly
//! the data an uninterrupted one would see.
//!
//! Under data parallelism a batch is global: `per_batch` tasks for each of the world's ranks, rank `r` taking the
//! `r`-th share of the global order, so no two ranks roll out the same task and a task's group stays on one rank.

use anyhow::{bail, Result};
use grpo_sdk::rng::{mix, SplitMix64};
use grpo_sdk::{Split, Task};

use crate::data::TaskSet;
use crate::plugins::EnvironmentPlugin;
use crate::tokenizer::Tokenizer;

/// What [`without_overlong_prompts`] kept.
pub struct Filtered {
    /// The tasks whose prompt fits, in their order.
    pub tasks: TaskSet,
    /// How many there were before.
    pub before: usize,
    /// How many were left out.
    pub left_out: usize,
}

/// `tasks` without those whose opening prompt, rendered as the rollouts render it, has more than `max_tokens`
/// tokens (`--filter-overlong-prompts`, verl's `filter_overlong_prompts`). Every task is rendered once, so the list
/// must be finite; an unbounded generator, or a list with no prompt short enough, is one line saying what to change.
pub fn without_overlong_prompts(
    tasks: TaskSet,
    seed: u64,
    env: &EnvironmentPlugin,
    tokenizer: &Tokenizer,
    max_tokens: usize,
) -> Result<Filtered> {
    let why = "they cannot be filtered before the run; give it a task file or --dataset, or cut long prompts with \
               --prompt-truncation";
    let count = finite_count(&tasks, env, "--filter-overlong-prompts", why)?;
    let all: Vec<Task> = (0..count).map(|i| tasks.task(seed, i)).collect::<Result<_>>()?;
    let lengths = crate::rollout::prompt_lengths(tokenizer, env, &all)?;
    let kept: Vec<Task> = all.into_iter().zip(&lengths).filter(|(_, &n)| n <= max_tokens).map(|(t, _)| t).collect();
    if kept.is_empty() {
        let shortest = lengths.iter().min().copied().unwrap_or(0);
        bail!(crate::user_error!(
            "--filter-overlong-prompts left out all {count} training tasks: the shortest prompt has {shortest} tokens, \
             more than --max-prompt-length {max_tokens}; raise it"
        ));
    }
    let (before, left_out) = (lengths.len(), lengths.len() - kept.len());
    Ok(Filtered { tasks: TaskSet::Fixed(std::sync::Arc::new(kept)), before, left_out })
}

/// How many tasks `tasks` holds, for `flag`, which needs them all; an unbounded generator is one line saying
/// `why` that fails and what to do instead.
pub fn finite_count(tasks: &TaskSet, env: &EnvironmentPlugin, flag: &str, why: &str) -> Result<u64> {
    match tasks.count()? {
        Some(count) => Ok(count),
        None => bail!(crate::user_error!(
            "{flag}: environment `{}` generates its training tasks without end, so {why}",
            env.name()
        )),
    }
}

/// The task order of a run.
pub struct TaskSource {
    tasks: TaskSet,
    seed: u64,
    count: Option<u64>,
    permutation: Option<(u64, Vec<u64>)>,
    /// Every epoch in the list's own order instead of a permutation.
    keep_order: bool,
    /// This rank's share: (rank, world size).
    shard: (usize, usize),
}

impl TaskSource {
    /// Tasks of the train split of `env`, ordered by `seed`.
    pub fn new(env: EnvironmentPlugin, seed: u64) -> Result<Self> {
        Self::from_set(TaskSet::Env { env, split: Split::Train }, seed)
    }

    /// The tasks of `tasks` (the environment's train split, or a dataset's), ordered by `seed`.
    pub fn from_set(tasks: TaskSet, seed: u64) -> Result<Self> {
        let count = tasks.count()?;
        if count == Some(0) {
            let name = match &tasks {
                TaskSet::Env { env, .. } => format!("environment `{}`", env.name()),
                TaskSet::Fixed(_) => "--dataset".to_string(),
            };
            bail!(crate::user_error!(
                "{name} has no training tasks; check its data file (--data-path or --env-config)"
            ));
        }
        Ok(TaskSource { tasks, seed, count, permutation: None, keep_order: false, shard: (0, 1) })
    }

    /// With `keep` true, every epoch walks the tasks in their own order (`--shuffle-dataset false`).
    pub fn in_order(self, keep: bool) -> Self {
        TaskSource { keep_order: keep, ..self }
    }

    /// Rank `rank`'s share of every batch of a `world`-rank job.
    pub fn sharded(self, rank: usize, world: usize) -> Self {
        TaskSource { shard: (rank, world.max(1)), ..self }
    }

    /// This rank's `per_batch` tasks of batch `batch` (positions `rank * per_batch..` of the global batch).
    pub fn batch(&mut self, batch: u64, per_batch: usize) -> Result<Vec<Task>> {
        let (rank, world) = (self.shard.0 as u64, self.shard.1 as u64);
        let start = (batch * world + rank) * per_batch as u64;
        (start..start + per_batch as u64).map(|i| self.nth(i)).collect()
    }

    /// This rank's `count` further tasks for round `round` (1, 2, ...) of batch `batch` under dynamic sampling,
    /// where `first` is this rank's first position in the global batch. They are drawn at random, with replacement,
    /// from a stream of their own keyed by the seed, the batch, the round and the position, so the regular batches'
    /// tasks stay where they are and a resumed run draws the same ones.
    pub fn extra(&mut self, batch: u64, round: usize, first: u64, count: usize) -> Result<Vec<Task>> {
        // A constant apart from the regular order's keys (`mix(seed, epoch)`).
        const EXTRA_STREAM: u64 = 0x6479_6e61_6d69_6373;
        let base = mix(mix(mix(self.seed, EXTRA_STREAM), batch), round as u64);
        (first..first + count as u64)
            .map(|position| {
                let key = mix(base, position);
                let index = self.count.map_or(key, |n| key % n);
                self.tasks.task(self.seed, index)
            })
            .collect()
    }

    fn nth(&mut self, i: u64) -> Result<Task> {
        let Some(count) = self.count else {
            return self.tasks.task(self.seed, i);
        };
        if self.keep_order {
            return self.tasks.task(self.seed, i % count);
        }
        let epoch = i / count;
        if self.permutation.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut order: Vec<u64> = (0..count).collect();
            // The SDK's generator, not a library RNG: a resumed run must re-derive this order exactly, whatever
            // version of a dependency it is built with.
            SplitMix64::new(mix(self.seed, epoch)).shuffle(&mut order);
            self.permutation = Some((epoch, order));
        }
        let index = self.permutation.as_ref().expect("set above").1[(i % count) as usize];
        self.tasks.task(self.seed, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn source(n: usize) -> TaskSource {
        let tasks: Vec<Task> = (0..n).map(|i| Task::new(i.to_string(), "?", "!")).collect();
        TaskSource::from_set(TaskSet::Fixed(Arc::new(tasks)), 7).unwrap()
    }

    fn ids(tasks: &[Task]) -> Vec<String> {
        tasks.iter().map(|t| t.id.clone()).collect()
    }

    /// By default every epoch is a permutation of its own; in order, every epoch is the list as given, and the
    /// ranks of a data-parallel job take consecutive shares of each global batch.
    #[test]
    fn epochs_are_shuffled_unless_the_order_is_kept() {
        let epochs = |mut s: TaskSource| ids(&s.batch(0, 10).unwrap());
        let (first, second) = (epochs(source(5)), ids(&source(5).batch(1, 5).unwrap()));
        assert_ne!(first[..5], first[5..], "two epochs in the same order");
        assert_ne!(first[..5], ["0", "1", "2", "3", "4"]);
        assert_eq!(first[5..], second);
        assert_eq!(epochs(source(5).in_order(true)), ["0", "1", "2", "3", "4", "0", "1", "2", "3", "4"]);
        let rank = |r| ids(&source(5).in_order(true).sharded(r, 2).batch(1, 2).unwrap());
        assert_eq!((rank(0), rank(1)), (vec!["4".to_string(), "0".into()], vec!["1".to_string(), "2".into()]));
    }

    #[test]
    fn extra_tasks_follow_batch_round_and_position_and_leave_the_regular_order_alone() {
        let mut a = source(1000);
        let regular = ids(&a.batch(3, 4).unwrap());
        let extra = ids(&a.extra(3, 1, 0, 4).unwrap());
        assert_eq!(ids(&a.batch(3, 4).unwrap()), regular, "drawing extra tasks moved the regular ones");
        assert_eq!(ids(&source(1000).extra(3, 1, 0, 4).unwrap()), extra, "the same draw in a new run");
        assert_eq!(ids(&a.extra(3, 1, 2, 2).unwrap()), extra[2..], "a rank's share is its positions' draws");
        assert_ne!(ids(&a.extra(3, 2, 0, 4).unwrap()), extra);
        assert_ne!(ids(&a.extra(4, 1, 0, 4).unwrap()), extra);
        assert_ne!(extra, regular);
    }
}
