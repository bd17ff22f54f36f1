//! Stage: rollouts -> the groups a batch trains on, under DAPO's dynamic sampling (`--dynamic-sampling`; verl's
//! `filter_groups`). A group whose returns are all equal has no advantage under group normalisation and teaches the
//! policy-gradient term nothing, so it is set aside and further tasks are rolled out, a round at a time, until the
//! batch has `rollouts_per_step` groups whose returns vary. The trainer runs the rounds ([`crate::train`]); this
//! module keeps the groups and decides which ones the batch keeps.

use serde::{Deserialize, Serialize};

use crate::rollout::{Episodes, Rollout, RolloutStats};

/// The dynamic-sampling settings of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicSampling {
    /// The most rollout rounds of one batch, its first included (`--max-sampling-rounds`). A batch still short of
    /// groups whose returns vary after them trains with equal-return groups in the missing places.
    pub max_rounds: usize,
}

/// Whether a group's returns differ: exactly, as the `grpo` plugin decides that a group gets advantages.
pub fn returns_vary(returns: &[f64]) -> bool {
    returns.iter().any(|&r| r != returns[0])
}

/// One batch's groups on this rank, over its rounds.
pub struct Pool {
    group_size: usize,
    wanted: usize,
    varied: Vec<Vec<Rollout>>,
    equal: Vec<Vec<Rollout>>,
    stats: RolloutStats,
}

/// What the rounds of one batch did, for its metrics (summed over the ranks when merged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingSummary {
    /// Rollout rounds run (the same on every rank: the ranks agree after each round whether to go on).
    pub rounds: usize,
    /// Groups rolled out over the rounds.
    pub sampled_groups: usize,
    /// Groups whose returns varied, kept or not.
    pub varied_groups: usize,
    /// Equal-return groups the batch kept because the rounds ran out.
    pub filled_groups: usize,
}

impl SamplingSummary {
    /// The ranks' summaries as one: counts added, the rounds the ranks ran together.
    pub fn merge(parts: impl IntoIterator<Item = SamplingSummary>) -> SamplingSummary {
        parts.into_iter().fold(SamplingSummary::default(), |a, p| SamplingSummary {
            rounds: a.rounds.max(p.rounds),
            sampled_groups: a.sampled_groups + p.sampled_groups,
            varied_groups: a.varied_groups + p.varied_groups,
            filled_groups: a.filled_groups + p.filled_groups,
        })
    }
}

impl Pool {
    /// An empty pool for `wanted` groups of `group_size` episodes.
    pub fn new(group_size: usize, wanted: usize) -> Pool {
        Pool {
            group_size: group_size.max(1),
            wanted,
            varied: Vec::new(),
            equal: Vec::new(),
            stats: RolloutStats::default(),
        }
    }

    /// Add one round's episodes (groups consecutive, as the rollout stage returns them).
    pub fn add(&mut self, episodes: Episodes) {
        self.stats.engine.add(&episodes.stats.engine);
        self.stats.env_secs += episodes.stats.env_secs;
        let mut rollouts = episodes.rollouts.into_iter().peekable();
        while rollouts.peek().is_some() {
            let group: Vec<Rollout> = rollouts.by_ref().take(self.group_size).collect();
            let returns: Vec<f64> = group.iter().map(|r| r.total_reward).collect();
            if returns_vary(&returns) {
                self.varied.push(group);
            } else {
                self.equal.push(group);
            }
        }
    }

    /// Groups whose returns vary that the batch still lacks.
    pub fn missing(&self) -> usize {
        self.wanted.saturating_sub(self.varied.len())
    }

    /// The batch: the first `wanted` groups whose returns vary, in the order they were rolled out, then, when the
    /// rounds ran out first, equal-return groups in the same order. Each episode's `group` is its group's place in
    /// the batch. `rounds` is how many rounds the ranks ran (a rank that lacked nothing sat some out).
    pub fn finish(self, rounds: usize) -> (Episodes, SamplingSummary) {
        let summary = SamplingSummary {
            rounds,
            sampled_groups: self.varied.len() + self.equal.len(),
            varied_groups: self.varied.len(),
            filled_groups: self.missing().min(self.equal.len()),
        };
        let groups = self.varied.into_iter().chain(self.equal).take(self.wanted);
        let mut rollouts = Vec::with_capacity(self.wanted * self.group_size);
        for (place, group) in groups.enumerate() {
            rollouts.extend(group.into_iter().map(|r| Rollout { group: place, ..r }));
        }
        (Episodes { rollouts, stats: self.stats }, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::EndReason;
    use grpo_sdk::Task;

    fn episode(task: &str, group: usize, reward: f64) -> Rollout {
        Rollout {
            group,
            task: Task::new(task, "?", "!"),
            tokens: vec![1, 2],
            prompt_len: 1,
            action: vec![false, true],
            sample_logprobs: vec![0.0, -1.0],
            rewards: Default::default(),
            total_reward: reward,
            turns: 1,
            cut_turns: 0,
            tool_messages: 0,
            end: EndReason::Done,
            solved: None,
            prompt_text: String::new(),
            transcript: String::new(),
        }
    }

    /// A round of groups of two, one per `(task, first return, second return)`.
    fn round(groups: &[(&str, f64, f64)], generated: u64) -> Episodes {
        let mut rollouts = Vec::new();
        for (i, &(task, a, b)) in groups.iter().enumerate() {
            rollouts.extend([episode(task, i, a), episode(task, i, b)]);
        }
        let mut stats = RolloutStats::default();
        stats.engine.generated_tokens = generated;
        Episodes { rollouts, stats }
    }

    fn tasks(episodes: &Episodes) -> Vec<(String, usize)> {
        episodes.rollouts.iter().map(|r| (r.task.id.clone(), r.group)).collect()
    }

    #[test]
    fn keeps_the_first_varied_groups_in_rollout_order_and_renumbers_them() {
        let mut pool = Pool::new(2, 3);
        pool.add(round(&[("a", 1.0, 1.0), ("b", 0.0, 1.0), ("c", 0.5, 0.5)], 10));
        assert_eq!(pool.missing(), 2);
        pool.add(round(&[("d", 0.0, 0.0), ("e", 2.0, 0.0)], 7));
        assert_eq!(pool.missing(), 1);
        pool.add(round(&[("f", 0.0, -1.0), ("g", 3.0, 1.0)], 5));
        assert_eq!(pool.missing(), 0);
        let (episodes, summary) = pool.finish(3);
        let want: Vec<(String, usize)> =
            [("b", 0), ("b", 0), ("e", 1), ("e", 1), ("f", 2), ("f", 2)].map(|(t, g)| (t.to_string(), g)).into();
        assert_eq!(tasks(&episodes), want);
        assert_eq!(episodes.stats.engine.generated_tokens, 22);
        let want = SamplingSummary { rounds: 3, sampled_groups: 7, varied_groups: 4, filled_groups: 0 };
        assert_eq!(summary, want);
    }

    #[test]
    fn a_batch_short_of_varied_groups_is_filled_with_equal_ones_in_order() {
        let mut pool = Pool::new(2, 3);
        pool.add(round(&[("a", 1.0, 1.0), ("b", 0.0, 1.0), ("c", 0.5, 0.5)], 1));
        pool.add(round(&[("d", 0.0, 0.0), ("e", 0.0, 0.0)], 1));
        let (episodes, summary) = pool.finish(2);
        let kept: Vec<String> = episodes.rollouts.iter().step_by(2).map(|r| r.task.id.clone()).collect();
        assert_eq!(kept, ["b", "a", "c"]);
        let want = SamplingSummary { rounds: 2, sampled_groups: 5, varied_groups: 1, filled_groups: 2 };
        assert_eq!(summary, want);
        let merged = SamplingSummary::merge([summary, SamplingSummary { rounds: 2, ..Default::default() }, summary]);
        assert_eq!(merged, SamplingSummary { rounds: 2, sampled_groups: 10, varied_groups: 2, filled_groups: 4 });
    }

    #[test]
    fn returns_vary_only_when_some_differ_exactly() {
        assert!(!returns_vary(&[0.3, 0.3, 0.3]));
        assert!(returns_vary(&[0.3, 0.3, 0.30000000000000004]));
        assert!(!returns_vary(&[1.0]));
    }
}
