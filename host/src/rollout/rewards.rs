//! How an episode's return is made from the environment's rewards: their weights (`--reward-weights`, TRL's
//! `reward_weights`) and DAPO's overlong penalty (`--overlong-buffer`), a component the host adds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The reward shaping of a run: the same in its rollouts and its evaluations, so their returns compare.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardShaping {
    /// Weights of the components in the return.
    #[serde(default)]
    pub weights: RewardWeights,
    /// DAPO's overlong penalty, when on.
    #[serde(default)]
    pub overlong: Option<OverlongPenalty>,
}

impl RewardShaping {
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
}
