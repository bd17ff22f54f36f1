//! How an episode's reward components add up to its return (`--reward-weights`, TRL's `reward_weights`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

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
