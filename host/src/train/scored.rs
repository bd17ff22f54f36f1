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
    score_within(algo, rollouts, group_size, std::slice::from_ref(&returns), 0)
}

/// [`score`] as part of a data-parallel batch: `all_returns` holds every rank's returns in rank order, this rank's
/// (those of `rollouts`) at index `rank`. The algorithm scores the whole batch, as one process would: an advantage
/// that depends on more than its group (a batch-wide scale, a global baseline), and the statistics the plugin
/// reports of them, do not depend on how the batch is split. This rank keeps its own slice.
pub fn score_within(
    algo: &AlgorithmPlugin,
    rollouts: Vec<Rollout>,
    group_size: usize,
    all_returns: &[Vec<f64>],
    rank: usize,
) -> Result<Scored> {
    let returns: Vec<f64> = rollouts.iter().map(|r| r.total_reward).collect();
    // By length: a plugin's NaN reward is not equal to itself, and reaches the loss's non-finite check as before.
    anyhow::ensure!(
        all_returns.get(rank).map(Vec::len) == Some(returns.len()),
        "rank {rank}'s share of the returns is not its rollouts' (internal error)"
    );
    let everyone: Vec<f32> = all_returns.iter().flatten().map(|&r| r as f32).collect();
    let groups = vec![group_size; everyone.len() / group_size.max(1)];
    let all = algo.advantages(&Tensor::from_slice(&everyone), &groups)?;
    let values = Vec::<f32>::try_from(&all.to_kind(Kind::Float).flatten(0, -1))
        .context("the algorithm's advantages are not a float tensor")?;
    if values.len() != everyone.len() {
        anyhow::bail!(
            "algorithm `{}` returned {} advantages for {} rollouts",
            algo.name(),
            values.len(),
            everyone.len()
        );
    }
    let start = all_returns[..rank].iter().map(Vec::len).sum::<usize>();
    let advantage_values = values[start..start + returns.len()].to_vec();
    let advantages = all.flatten(0, -1).narrow(0, start as i64, returns.len() as i64);
    Ok(Scored { rollouts, returns, advantages, advantage_values, group_size })
}
