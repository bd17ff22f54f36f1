//! Stage: rollouts -> the groups a batch trains on, under DAPO's dynamic sampling (`--dynamic-sampling`; verl's
//! `filter_groups`). A group whose returns are all equal has no advantage under group normalisation and teaches the
//! policy-gradient term nothing, so it is set aside and further tasks are rolled out, a round at a time, until the
//! batch has `rollouts_per_step` groups whose returns vary. The trainer runs the rounds ([`crate::train`]); this
//! module keeps the groups and decides which ones the batch keeps.
//!
//! Under data parallelism the batch is global, as one process's would be: the ranks count the varied groups of every
//! rank after each round, deal the next round's extra tasks out among themselves (the positions one process would
//! roll out, each with the seed it would use), keep the first varied groups in the global order, and send each other
//! the groups that another rank trains on. So two ranks keep the groups one process with twice the batch keeps.

use serde::{Deserialize, Serialize};

use crate::rollout::{Episodes, RewardShaping, Rollout, RolloutStats};

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

/// A group some rank rolled out, in the global order of the batch's rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The rank that holds it.
    rank: usize,
    /// Its place among that rank's groups.
    index: usize,
    /// Its returns vary.
    varied: bool,
}

/// A group on its way to the rank that trains on it: its place in the global batch, and its episodes.
pub type Transfer = (usize, Vec<Rollout>);

/// One batch's groups: this rank's own, and a ledger of every rank's.
pub struct Pool {
    group_size: usize,
    /// Groups each rank trains on.
    per_rank: usize,
    rank: usize,
    world: usize,
    /// This rank's groups in the order it rolled them out (`None` once sent to another rank).
    local: Vec<Option<Vec<Rollout>>>,
    /// Every rank's groups, round after round, each round's in rank order: one process's rollout order.
    ledger: Vec<Entry>,
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
    /// An empty pool for rank `rank` of `world`, each training on `per_rank` groups of `group_size` episodes.
    pub fn new(group_size: usize, per_rank: usize, rank: usize, world: usize) -> Pool {
        Pool {
            group_size: group_size.max(1),
            per_rank,
            rank,
            world: world.max(1),
            local: Vec::new(),
            ledger: Vec::new(),
            stats: RolloutStats::default(),
        }
    }

    /// Add this rank's episodes of one round (groups consecutive, as the rollout stage returns them); returns
    /// whether each group's returns vary, for [`Pool::record`] on every rank. The returns are those the algorithm
    /// will score, as `shaping` aggregates them: under normalize-then-sum a group whose components trade off
    /// against each other has varied returns though their plain sums are equal.
    pub fn add(&mut self, episodes: Episodes, shaping: &RewardShaping) -> Vec<bool> {
        self.stats.engine.add(&episodes.stats.engine);
        self.stats.env_secs += episodes.stats.env_secs;
        let mut rollouts = episodes.rollouts.into_iter().peekable();
        let mut varied = Vec::new();
        while rollouts.peek().is_some() {
            let group: Vec<Rollout> = rollouts.by_ref().take(self.group_size).collect();
            varied.push(returns_vary(&shaping.scored_returns(&group, self.group_size)));
            self.local.push(Some(group));
        }
        varied
    }

    /// Enter one round's groups of every rank, in rank order (what [`Pool::add`] returned on each).
    pub fn record(&mut self, ranks: Vec<Vec<bool>>) {
        for (rank, flags) in ranks.into_iter().enumerate() {
            let held = self.ledger.iter().filter(|e| e.rank == rank).count();
            let entries = flags.into_iter().enumerate().map(|(i, varied)| Entry { rank, index: held + i, varied });
            self.ledger.extend(entries);
        }
    }

    /// Groups whose returns vary that the global batch still lacks.
    pub fn missing(&self) -> usize {
        (self.per_rank * self.world).saturating_sub(self.ledger.iter().filter(|e| e.varied).count())
    }

    /// This rank's part of a round's `missing` extra tasks, as (first position, count): the ranks deal the
    /// positions `0..missing` out in contiguous shares, so together they roll out what one process would.
    pub fn extra_share(&self, missing: usize) -> (u64, usize) {
        let share = missing.div_ceil(self.world);
        let first = (self.rank * share).min(missing);
        (first as u64, share.min(missing - first))
    }

    /// The global batch as places in the ledger: the first groups whose returns vary, in rollout order, then, when
    /// the rounds ran out first, equal-return groups in the same order. Place `p` is trained on by rank
    /// `p / per_rank`.
    fn selection(&self) -> Vec<Entry> {
        let varied = self.ledger.iter().filter(|e| e.varied);
        let equal = self.ledger.iter().filter(|e| !e.varied);
        varied.chain(equal).take(self.per_rank * self.world).copied().collect()
    }

    /// Take out the groups this rank holds that another rank trains on, for the exchange (none in one process).
    pub fn outgoing(&mut self) -> Vec<Transfer> {
        let mut out = Vec::new();
        for (place, entry) in self.selection().into_iter().enumerate() {
            if entry.rank == self.rank && place / self.per_rank != self.rank {
                out.extend(self.local[entry.index].take().map(|group| (place, group)));
            }
        }
        out
    }

    /// This rank's batch: its places of the global batch in order, from its own groups and `incoming` (every
    /// rank's [`Pool::outgoing`]; the ones for other ranks are passed over). Each episode's `group` is its group's
    /// place in this rank's batch. `rounds` is how many rounds the ranks ran. The summary counts this rank's share:
    /// the groups it rolled out, and the equal-return groups it trains on.
    pub fn finish(mut self, rounds: usize, incoming: Vec<Transfer>) -> anyhow::Result<(Episodes, SamplingSummary)> {
        let selection = self.selection();
        let mine = self.rank * self.per_rank..(self.rank + 1) * self.per_rank;
        let mut arrived: std::collections::BTreeMap<usize, Vec<Rollout>> =
            incoming.into_iter().filter(|(place, _)| mine.contains(place)).collect();
        let own: Vec<&Entry> = self.ledger.iter().filter(|e| e.rank == self.rank).collect();
        let summary = SamplingSummary {
            rounds,
            sampled_groups: own.len(),
            varied_groups: own.iter().filter(|e| e.varied).count(),
            filled_groups: selection.get(mine.clone()).unwrap_or_default().iter().filter(|e| !e.varied).count(),
        };
        let mut rollouts = Vec::with_capacity(self.per_rank * self.group_size);
        for (slot, place) in mine.enumerate() {
            let Some(entry) = selection.get(place) else { break };
            let group = if entry.rank == self.rank { self.local[entry.index].take() } else { arrived.remove(&place) };
            let group = group.ok_or_else(|| {
                anyhow::anyhow!("internal: group {place} of the batch is on rank {} and was not sent", entry.rank)
            })?;
            rollouts.extend(group.into_iter().map(|r| Rollout { group: slot, ..r }));
        }
        Ok((Episodes { rollouts, stats: self.stats }, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grpo_sdk::Task;

    fn episode(task: &str, group: usize, reward: f64) -> Rollout {
        Rollout {
            group,
            task: Task::new(task, "?", "!"),
            tokens: vec![1, 2],
            prompt_len: 1,
            action: vec![false, true],
            sample_logprobs: vec![0.0, -1.0],
            total_reward: reward,
            ..Rollout::empty()
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

    /// One process's pool after `rounds`, each round's groups added and recorded.
    fn alone(wanted: usize, rounds: Vec<Episodes>) -> Pool {
        let mut pool = Pool::new(2, wanted, 0, 1);
        for round in rounds {
            let flags = pool.add(round, &RewardShaping::default());
            pool.record(vec![flags]);
        }
        pool
    }

    #[test]
    fn keeps_the_first_varied_groups_in_rollout_order_and_renumbers_them() {
        let mut pool = alone(3, vec![round(&[("a", 1.0, 1.0), ("b", 0.0, 1.0), ("c", 0.5, 0.5)], 10)]);
        assert_eq!(pool.missing(), 2);
        assert_eq!(pool.extra_share(2), (0, 2));
        for r in [round(&[("d", 0.0, 0.0), ("e", 2.0, 0.0)], 7), round(&[("f", 0.0, -1.0), ("g", 3.0, 1.0)], 5)] {
            let flags = pool.add(r, &RewardShaping::default());
            pool.record(vec![flags]);
        }
        assert_eq!(pool.missing(), 0);
        assert!(pool.outgoing().is_empty(), "one process sends nothing");
        let (episodes, summary) = pool.finish(3, Vec::new()).unwrap();
        let want: Vec<(String, usize)> =
            [("b", 0), ("b", 0), ("e", 1), ("e", 1), ("f", 2), ("f", 2)].map(|(t, g)| (t.to_string(), g)).into();
        assert_eq!(tasks(&episodes), want);
        assert_eq!(episodes.stats.engine.generated_tokens, 22);
        let want = SamplingSummary { rounds: 3, sampled_groups: 7, varied_groups: 4, filled_groups: 0 };
        assert_eq!(summary, want);
    }

    #[test]
    fn a_batch_short_of_varied_groups_is_filled_with_equal_ones_in_order() {
        let rounds = vec![
            round(&[("a", 1.0, 1.0), ("b", 0.0, 1.0), ("c", 0.5, 0.5)], 1),
            round(&[("d", 0.0, 0.0), ("e", 0.0, 0.0)], 1),
        ];
        let (episodes, summary) = alone(3, rounds).finish(2, Vec::new()).unwrap();
        let kept: Vec<String> = episodes.rollouts.iter().step_by(2).map(|r| r.task.id.clone()).collect();
        assert_eq!(kept, ["b", "a", "c"]);
        let want = SamplingSummary { rounds: 2, sampled_groups: 5, varied_groups: 1, filled_groups: 2 };
        assert_eq!(summary, want);
        let merged = SamplingSummary::merge([summary, SamplingSummary { rounds: 2, ..Default::default() }, summary]);
        assert_eq!(merged, SamplingSummary { rounds: 2, sampled_groups: 10, varied_groups: 2, filled_groups: 4 });
    }

    /// Two ranks with 2 groups each keep the groups one process with 4 keeps, in its order: the ranks record each
    /// other's rounds, split the extra tasks as one process's positions, and exchange the groups the other trains
    /// on. Their summaries add up to the process's.
    #[test]
    fn two_ranks_keep_one_processs_groups() {
        // One process: round 0 has 4 tasks, 1 varied; round 1 rolls out 3 more, 2 varied; round 2 one more, varied.
        let round0 = [("a", 1.0, 1.0), ("b", 0.0, 1.0), ("c", 0.5, 0.5), ("d", 2.0, 2.0)];
        let round1 = [("e", 0.0, 3.0), ("f", 1.0, 1.0), ("g", 0.0, -1.0)];
        let round2 = [("h", 5.0, 4.0)];
        let one = alone(4, vec![round(&round0, 4), round(&round1, 3), round(&round2, 1)]);
        assert_eq!(one.missing(), 0);
        let (one, one_summary) = one.finish(3, Vec::new()).unwrap();

        let mut ranks = [Pool::new(2, 2, 0, 2), Pool::new(2, 2, 1, 2)];
        // Each round, each rank rolls out its share of the positions one process rolls out.
        let rounds_of = |shares: [&[(&str, f64, f64)]; 2], ranks: &mut [Pool; 2]| {
            let flags: Vec<Vec<bool>> =
                ranks.iter_mut().zip(shares).map(|(p, s)| p.add(round(s, 1), &RewardShaping::default())).collect();
            for pool in ranks.iter_mut() {
                pool.record(flags.clone());
            }
        };
        rounds_of([&round0[..2], &round0[2..]], &mut ranks);
        assert_eq!(ranks.iter().map(|p| p.missing()).collect::<Vec<_>>(), [3, 3]);
        assert_eq!([ranks[0].extra_share(3), ranks[1].extra_share(3)], [(0, 2), (2, 1)]);
        rounds_of([&round1[..2], &round1[2..]], &mut ranks);
        assert_eq!([ranks[0].extra_share(1), ranks[1].extra_share(1)], [(0, 1), (1, 0)]);
        rounds_of([&round2[..], &[]], &mut ranks);
        assert_eq!(ranks[0].missing(), 0);
        let sent: Vec<Transfer> = ranks.iter_mut().flat_map(|p| p.outgoing()).collect();
        // The batch is b, e, g, h; rank 0 rolled out b, e and h, rank 1 g. Places 2 and 3 are rank 1's: h moves.
        let places: Vec<usize> = sent.iter().map(|(place, _)| *place).collect();
        assert_eq!(places, [3]);
        let [zero, first] = ranks;
        let (a, sa) = zero.finish(3, sent.iter().map(|(p, g)| (*p, g.clone())).collect()).unwrap();
        let (b, sb) = first.finish(3, sent).unwrap();
        let both: Vec<(String, usize)> =
            tasks(&a).into_iter().chain(tasks(&b).into_iter().map(|(t, g)| (t, g + 2))).collect();
        assert_eq!(both, tasks(&one));
        let merged = SamplingSummary::merge([sa, sb]);
        assert_eq!(merged, SamplingSummary { rounds: 3, ..one_summary });
        assert_eq!(merged.sampled_groups, 8);
    }

    #[test]
    fn returns_vary_only_when_some_differ_exactly() {
        assert!(!returns_vary(&[0.3, 0.3, 0.3]));
        assert!(returns_vary(&[0.3, 0.3, 0.30000000000000004]));
        assert!(!returns_vary(&[1.0]));
    }
}
