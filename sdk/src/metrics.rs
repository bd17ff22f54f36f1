//! Metrics: named numbers or texts that the host pulls from plugins (and its own components) at logging points.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One metric: a name such as `dr_grpo/advantages_variance` and its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The full metric key, `section/name`, as dashboards show it.
    pub name: String,
    /// The value.
    pub value: MetricValue,
}

impl Metric {
    /// A numeric metric.
    pub fn number(name: impl Into<String>, value: f64) -> Self {
        Metric { name: name.into(), value: MetricValue::Number(value) }
    }

    /// A text metric (a configuration choice, an example completion).
    pub fn text(name: impl Into<String>, value: impl Into<String>) -> Self {
        Metric { name: name.into(), value: MetricValue::Text(value.into()) }
    }

    /// The number, if this is a numeric metric.
    pub fn as_number(&self) -> Option<f64> {
        self.value.as_f64()
    }
}

/// A metric's value. Numbers may be NaN or infinite (they survive the JSON boundary; see [`crate::ffi`]). The host
/// logs this very type, so a plugin's value reaches the sinks unconverted.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricValue {
    /// A number, logged as a scalar; non-finite values are kept.
    Number(f64),
    /// A text (a configuration choice, an example completion), logged where the sink supports text.
    Text(String),
}

impl MetricValue {
    /// The number, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetricValue::Number(x) => Some(*x),
            MetricValue::Text(_) => None,
        }
    }
}

macro_rules! number_from {
    ($($t:ty),*) => {$(
        impl From<$t> for MetricValue {
            fn from(x: $t) -> Self {
                MetricValue::Number(x as f64)
            }
        }
    )*};
}
number_from!(f64, f32, i64, i32, u64, u32, usize);

impl From<bool> for MetricValue {
    /// Flags such as `ddp/sync_gradients` are logged as 1 or 0 so every sink can plot them.
    fn from(x: bool) -> Self {
        MetricValue::Number(if x { 1.0 } else { 0.0 })
    }
}

impl From<&str> for MetricValue {
    fn from(x: &str) -> Self {
        MetricValue::Text(x.to_string())
    }
}

impl From<String> for MetricValue {
    fn from(x: String) -> Self {
        MetricValue::Text(x)
    }
}

/// Something that reports metrics when the host asks: algorithms, environments and host components.
///
/// The host calls [`MetricSource::metrics`] at its logging points (once per logged step) and logs every entry under
/// its name. A source that accumulates (counts, sums) reports what it saw since the previous call and starts over.
///
/// ```
/// use grpo_sdk::{Metric, MetricSource};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// struct Counter(AtomicU64);
///
/// impl MetricSource for Counter {
///     fn metrics(&self) -> Vec<Metric> {
///         vec![Metric::number("demo/calls", self.0.swap(0, Ordering::Relaxed) as f64)]
///     }
/// }
///
/// let c = Counter(AtomicU64::new(3));
/// assert_eq!(c.metrics()[0].as_number(), Some(3.0));
/// assert_eq!(c.metrics()[0].as_number(), Some(0.0));
/// ```
pub trait MetricSource {
    /// The metrics since the previous call. The default reports none.
    fn metrics(&self) -> Vec<Metric> {
        Vec::new()
    }
}

/// JSON has no NaN or infinity, so non-finite numbers travel as the strings "NaN", "inf" and "-inf" inside an
/// object, which cannot be confused with a text metric.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire {
    Number(f64),
    Text(String),
    NonFinite { nonfinite: String },
}

impl Serialize for MetricValue {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            MetricValue::Number(v) if v.is_finite() => Wire::Number(*v).serialize(s),
            MetricValue::Number(v) => Wire::NonFinite {
                nonfinite: if v.is_nan() {
                    "NaN".into()
                } else if *v > 0.0 {
                    "inf".into()
                } else {
                    "-inf".into()
                },
            }
            .serialize(s),
            MetricValue::Text(t) => Wire::Text(t.clone()).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for MetricValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::Number(v) => MetricValue::Number(v),
            Wire::Text(t) => MetricValue::Text(t),
            Wire::NonFinite { nonfinite } => MetricValue::Number(match nonfinite.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                _ => f64::NAN,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_numbers_round_trip_through_json() {
        let metrics = vec![
            Metric::number("a", f64::NAN),
            Metric::number("b", f64::NEG_INFINITY),
            Metric::number("c", 1.5),
            Metric::text("d", "inf"),
        ];
        let json = serde_json::to_string(&metrics).unwrap();
        let back: Vec<Metric> = serde_json::from_str(&json).unwrap();
        assert!(back[0].as_number().unwrap().is_nan());
        assert_eq!(back[1].as_number(), Some(f64::NEG_INFINITY));
        assert_eq!(back[2].as_number(), Some(1.5));
        assert_eq!(back[3].value, MetricValue::Text("inf".into()));
    }
}
