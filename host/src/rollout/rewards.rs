//! How an episode's return is made from the environment's rewards: their weights (`--reward-weights`, TRL's
//! `reward_weights`), DAPO's overlong penalty (`--overlong-buffer`) and a learned reward model's score
//! (`--reward-model`), components the host adds.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use super::reward_model::{RewardModel, RewardModelSpec};

/// The reward shaping of a run: the same in its rollouts and its evaluations, so their returns compare.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RewardShaping {
    /// Weights of the components in the return.
    #[serde(default)]
    pub weights: RewardWeights,
    /// DAPO's overlong penalty, when on.
    #[serde(default)]
    pub overlong: Option<OverlongPenalty>,
    /// How the components become what the algorithm scores in training (`--multi-objective-aggregation`).
    #[serde(default)]
    pub aggregation: Aggregation,
    /// Sequence-classification models scoring each finished episode (`--reward-model`), each score its own
    /// component.
    #[serde(default)]
    pub reward_models: Vec<RewardModelSpec>,
    /// Those models with their components once [`RewardShaping::load_reward_models`] has loaded them; not saved.
    #[serde(skip)]
    pub scorers: Vec<(String, Rc<RewardModel>)>,
}

crate::choice_enum! {
    /// How the reward components of a group's episodes become the returns the algorithm turns into advantages
    /// (`--multi-objective-aggregation`, TRL's `multi_objective_aggregation`, whose underscored names are accepted).
    #[derive(Default)]
    pub enum Aggregation {
        /// The weighted sum of each episode's components, the algorithm normalising that sum: a component with a
        /// larger spread drowns the others.
        #[default]
        SumThenNormalize = "sum-then-normalize" | "sum_then_normalize",
        /// Each component normalised within its group first (its group mean subtracted, divided by its group's
        /// unbiased standard deviation plus 1e-4), then the weighted sum (GDPO, group reward-decoupled
        /// normalisation): every component moves the advantages by its weight, whatever its scale.
        NormalizeThenSum = "normalize-then-sum" | "normalize_then_sum",
    }
}

/// Added to a component's group standard deviation before dividing (TRL's).
const GROUP_STD_EPS: f64 = 1e-4;

impl RewardShaping {
    /// What the algorithm scores for each of `rollouts` (consecutive groups of `group_size`): its return, or under
    /// [`Aggregation::NormalizeThenSum`] the weighted sum of its components normalised within the group. A
    /// component an episode did not report counts 0 for it and is left out of its group's mean and deviation; one
    /// that fewer than two episodes of the group reported has no spread and adds nothing.
    pub fn scored_returns(&self, rollouts: &[super::Rollout], group_size: usize) -> Vec<f64> {
        if self.aggregation == Aggregation::SumThenNormalize {
            return rollouts.iter().map(|r| r.total_reward).collect();
        }
        let mut out = Vec::with_capacity(rollouts.len());
        for group in rollouts.chunks(group_size.max(1)) {
            let mut sums = vec![0.0; group.len()];
            let names: BTreeSet<&str> = group.iter().flat_map(|r| r.rewards.keys().map(String::as_str)).collect();
            for name in names {
                let values: Vec<(usize, f64)> =
                    group.iter().enumerate().filter_map(|(i, r)| Some((i, *r.rewards.get(name)?))).collect();
                if values.len() < 2 {
                    continue;
                }
                let n = values.len() as f64;
                let mean = values.iter().map(|(_, v)| v).sum::<f64>() / n;
                let std = (values.iter().map(|(_, v)| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
                for (i, v) in values {
                    sums[i] += self.weights.weight(name) * (v - mean) / (std + GROUP_STD_EPS);
                }
            }
            out.extend(sums);
        }
        out
    }

    /// Load the `reward_models` onto `device` in `kind` (the policy's), downloading a hub id when `allow_download`.
    pub fn load_reward_models(&mut self, device: Device, kind: Kind, allow_download: bool) -> anyhow::Result<()> {
        for spec in &self.reward_models {
            let dir = crate::model::resolve_model_dir(Some(&spec.model), None, allow_download)?;
            self.scorers.push((spec.name.clone(), RewardModel::load(&dir, device, kind)?));
        }
        Ok(())
    }

    /// Add `value` to the episode's component `name` (`rewards`, logged unweighted) and, weighted, to its return.
    pub fn add(&self, rewards: &mut BTreeMap<String, f64>, total: &mut f64, name: &str, value: f64) {
        *rewards.entry(name.to_string()).or_insert(0.0) += value;
        *total += self.weights.weight(name) * value;
    }
}

/// DAPO's overlong reward shaping (verl's `overlong_buffer`, TRL's `get_soft_overlong_punishment`): a turn that
/// samples more than `max_new_tokens - buffer` tokens earns a penalty growing linearly from 0 to `-factor` at
/// `max_new_tokens`, so the policy learns to finish within the limit instead of being cut off by it. It is the
/// reward component [`OVERLONG_PENALTY`], 0 for a turn within the limit, summed over the episode's turns.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverlongPenalty {
    /// Tokens before `max_new_tokens` where the penalty starts (`--overlong-buffer`).
    pub buffer: usize,
    /// The penalty at `max_new_tokens` (`--overlong-penalty-factor`).
    pub factor: f64,
}

/// The name of the overlong penalty's reward component.
pub const OVERLONG_PENALTY: &str = "overlong_penalty";

impl OverlongPenalty {
    /// The penalty of a turn that sampled `tokens` tokens (its end-of-sequence token included) out of at most
    /// `max_new_tokens`.
    pub fn of(&self, tokens: usize, max_new_tokens: usize) -> f64 {
        let free = max_new_tokens.saturating_sub(self.buffer);
        if tokens <= free {
            return 0.0;
        }
        -((tokens - free) as f64 / self.buffer.max(1) as f64) * self.factor
    }
}

/// Weights of the environment's reward components in an episode's return, by component name. A component not named
/// weighs 1, so no weights at all is the plain sum the environment intends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RewardWeights(BTreeMap<String, f64>);

impl RewardWeights {
    /// From the JSON given to `flag`: `null` (none), or an object of finite numbers by component name.
    pub fn from_json(value: serde_json::Value, flag: &str) -> anyhow::Result<RewardWeights> {
        let usage = "an object of numbers by reward component, such as {\"correct\": 1, \"format\": 0.2}";
        let object = match value {
            serde_json::Value::Null => return Ok(RewardWeights::default()),
            serde_json::Value::Object(object) => object,
            other => return Err(crate::user_error!("{flag} {other}: must be {usage}")),
        };
        let mut weights = BTreeMap::new();
        for (name, weight) in object {
            match weight.as_f64().filter(|w| w.is_finite()) {
                Some(w) => weights.insert(name, w),
                None => {
                    return Err(crate::user_error!("{flag}: the weight of `{name}` is {weight}; it must be {usage}"))
                }
            };
        }
        Ok(RewardWeights(weights))
    }

    /// The weight of component `name`.
    pub fn weight(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(1.0)
    }

    /// The named components missing from `seen`, the components some episodes reported: a misspelt name changes
    /// nothing, which deserves a warning.
    pub fn unknown(&self, seen: &BTreeSet<&str>) -> Vec<&str> {
        self.0.keys().map(String::as_str).filter(|name| !seen.contains(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_overlong_penalty_grows_linearly_over_the_buffer() {
        let p = OverlongPenalty { buffer: 4, factor: 2.0 };
        let penalties: Vec<f64> = (5..=10).map(|n| p.of(n, 10)).collect();
        assert_eq!(penalties, [0.0, 0.0, -0.5, -1.0, -1.5, -2.0]);
        // verl's formula: min(-(len - (max - buffer)) / buffer * factor, 0).
        for n in 0..=10 {
            let verl = (-((n as f64) - 6.0) / 4.0 * 2.0).min(0.0);
            assert_eq!(p.of(n, 10), verl, "{n} tokens");
        }
        // A weighted component: logged as it is, its weight in the return.
        let shaping = RewardShaping {
            weights: RewardWeights::from_json(json!({OVERLONG_PENALTY: 0.5}), "--reward-weights").unwrap(),
            overlong: Some(p),
            aggregation: Aggregation::SumThenNormalize,
            ..Default::default()
        };
        let (mut rewards, mut total) = (BTreeMap::new(), 1.0);
        shaping.add(&mut rewards, &mut total, OVERLONG_PENALTY, -2.0);
        shaping.add(&mut rewards, &mut total, OVERLONG_PENALTY, -1.0);
        assert_eq!((rewards[OVERLONG_PENALTY], total), (-3.0, -0.5));
    }

    #[test]
    fn named_components_are_weighted_the_rest_weigh_one() {
        let w = RewardWeights::from_json(json!({"format": 0.25, "correct": -2}), "--reward-weights").unwrap();
        assert_eq!((w.weight("format"), w.weight("correct"), w.weight("other")), (0.25, -2.0, 1.0));
        assert_eq!(RewardWeights::from_json(json!(null), "--reward-weights").unwrap(), RewardWeights::default());
        let seen: BTreeSet<&str> = ["correct", "other"].into();
        assert_eq!(w.unknown(&seen), ["format"]);
        // Saved in config.json as the plain object.
        assert_eq!(serde_json::to_value(&w).unwrap(), json!({"correct": -2.0, "format": 0.25}));
    }

    #[test]
    fn anything_but_an_object_of_finite_numbers_is_one_line_naming_the_flag() {
        for bad in [json!([1, 2]), json!(3), json!({"format": "high"}), json!({"format": null})] {
            let err = RewardWeights::from_json(bad.clone(), "--reward-weights").unwrap_err().to_string();
            assert!(err.starts_with("--reward-weights"), "{bad}: {err}");
            assert!(err.contains("an object of numbers by reward component"), "{bad}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    /// Normalize-then-sum against tests/oracles/gdpo.py (TRL's formula in PyTorch): components missing from some
    /// episodes, one reported once in its group, a group whose components are all equal; sum-then-normalize hands
    /// the algorithm the plain returns.
    #[test]
    fn normalize_then_sum_matches_the_oracle() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/rewards/gdpo.json");
        let case: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let weights = RewardWeights::from_json(case["weights"].clone(), "--reward-weights").unwrap();
        let shaping =
            RewardShaping { weights, overlong: None, aggregation: Aggregation::NormalizeThenSum, ..Default::default() };
        let mut start = 0;
        for size in case["groups"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap() as usize) {
            let episodes: Vec<crate::rollout::Rollout> = case["components"].as_array().unwrap()[start..start + size]
                .iter()
                .map(|c| {
                    let rewards: BTreeMap<String, f64> = serde_json::from_value(c.clone()).unwrap();
                    let total_reward = rewards.iter().map(|(name, v)| shaping.weights.weight(name) * v).sum();
                    crate::rollout::Rollout { rewards, total_reward, ..crate::rollout::Rollout::empty() }
                })
                .collect();
            let got = shaping.scored_returns(&episodes, size);
            let want: Vec<f64> = case["expected_returns"].as_array().unwrap()[start..start + size]
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-9, "group at {start}: {got:?} vs {want:?}");
            }
            let plain = RewardShaping { aggregation: Aggregation::SumThenNormalize, ..shaping.clone() };
            let totals: Vec<f64> = episodes.iter().map(|r| r.total_reward).collect();
            assert_eq!(plain.scored_returns(&episodes, size), totals);
            start += size;
        }
        assert_eq!(start, 9);
    }
}
