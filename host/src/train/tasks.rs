//! Which tasks each batch trains on. A finite task set is walked in a fresh seeded permutation every epoch; an
//! unbounded generator is asked for indices 0, 1, 2, ... Either way batch `b` always gets the same tasks for the
//! same seed, which is what lets a resumed run continue with exactly the data an uninterrupted one would see.
//!
//! Under data parallelism a batch is global: `per_batch` tasks for each of the world's ranks, rank `r` taking the
//! `r`-th share of the global order, so no two ranks roll out the same task and a task's group stays on one rank.

use anyhow::{bail, Result};
use grpo_sdk::rng::{mix, SplitMix64};
use grpo_sdk::{Split, Task};

use crate::data::TaskSet;
use crate::plugins::EnvironmentPlugin;

/// The task order of a run.
pub struct TaskSource {
    tasks: TaskSet,
    seed: u64,
    count: Option<u64>,
    permutation: Option<(u64, Vec<u64>)>,
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
        Ok(TaskSource { tasks, seed, count, permutation: None, shard: (0, 1) })
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

    fn nth(&mut self, i: u64) -> Result<Task> {
        let Some(count) = self.count else {
            return self.tasks.task(self.seed, i);
        };
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
