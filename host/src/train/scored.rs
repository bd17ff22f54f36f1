//! Stage: rollouts -> scored rollouts. Each episode's return, and the algorithm's advantage for it from its group.

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use crate::plugins::AlgorithmPlugin;
use crate::rollout::Rollout;

/// A batch's rollouts with their returns and advantages, in rollout order (groups consecutive).
pub struct Scored {
    /// The episodes.
    pub rollouts: Vec<Rollout>,
    /// Each episode's return (the sum of its reward components).
    pub returns: Vec<f64>,
    /// `[N]` advantages as the algorithm returned them.
    pub advantages: Tensor,
    /// The same advantages as numbers, for metrics and tables.
    pub advantage_values: Vec<f32>,
    /// Episodes per group.
    pub group_size: usize,
}

impl Scored {
    /// Action tokens (sampled by the model) in each episode.
    pub fn completion_lengths(&self) -> Vec<f64> {
        self.rollouts.iter().map(|r| r.action.iter().filter(|&&a| a).count() as f64).collect()
    }
}

/// Score `rollouts` in groups of `group_size` with `algo`'s advantages; the count must match.
pub fn score(algo: &AlgorithmPlugin, rollouts: Vec<Rollout>, group_size: usize) -> Result<Scored> {
    let returns: Vec<f64> = rollouts.iter().map(|r| r.total_reward).collect();
    let groups = vec![group_size; rollouts.len() / group_size.max(1)];
    let rewards = Tensor::from_slice(&returns.iter().map(|&r| r as f32).collect::<Vec<_>>());
    let advantages = algo.advantages(&rewards, &groups)?;
    let advantage_values = Vec::<f32>::try_from(&advantages.to_kind(Kind::Float).flatten(0, -1))
        .context("the algorithm's advantages are not a float tensor")?;
    if advantage_values.len() != rollouts.len() {
        anyhow::bail!(
            "algorithm `{}` returned {} advantages for {} rollouts",
            algo.name(),
            advantage_values.len(),
            rollouts.len()
        );
    }
    Ok(Scored { rollouts, returns, advantages, advantage_values, group_size })
}
