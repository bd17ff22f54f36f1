//! The [`Plugin`] trait: what every kind of plugin has, whatever it does.

use crate::{MetricSource, Result};

/// What algorithms and environments share: a name, a description, a constructor taking the user's JSON config and
/// the resolved config. [`Algorithm`](crate::Algorithm) and [`Environment`](crate::Environment) extend it, so the
/// boundary code for these items ([`crate::ffi`], and the host's wrappers) is written once for every kind.
///
/// Methods take `&self` and may be called from any thread, so state that changes (statistics for
/// [`MetricSource`]) needs interior mutability such as a `Mutex` or atomics.
///
/// ```
/// use grpo_sdk::{parse_config, Plugin, MetricSource};
///
/// /// Options of a plugin: `#[serde(default, deny_unknown_fields)]` rejects misspelt ones, naming them.
/// #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// struct Options {
///     scale: f64,
/// }
///
/// struct Scaled(Options);
///
/// impl MetricSource for Scaled {}
///
/// impl Plugin for Scaled {
///     const NAME: &'static str = "scaled";
///     const DESCRIPTION: &'static str = "shows the constructor and config contract";
///
///     fn new(config: serde_json::Value) -> grpo_sdk::Result<Self> {
///         Ok(Scaled(parse_config(config)?))
///     }
///     fn config(&self) -> serde_json::Value {
///         serde_json::to_value(&self.0).expect("plain data encodes")
///     }
/// }
///
/// assert_eq!(Scaled::new(serde_json::json!({"scale": 2.0}))?.config()["scale"], 2.0);
/// assert!(Scaled::new(serde_json::json!({"scail": 2.0})).is_err());
/// # Ok::<(), grpo_sdk::Error>(())
/// ```
pub trait Plugin: MetricSource + Send + Sync + Sized + 'static {
    /// The name users pass to `--algo` or `--env`; unique among loaded plugins. Letters, digits, `_` and `-`.
    const NAME: &'static str;
    /// One line for `grpo-host plugins list`.
    const DESCRIPTION: &'static str;

    /// Build the plugin from its JSON config (`--algo-config` or `--env-config`; `null` when none was given).
    /// Reject unknown or invalid options and load data files here, with a message naming the option or the file:
    /// this is the user's first feedback.
    fn new(config: serde_json::Value) -> Result<Self>;

    /// The resolved config, defaults filled in; saved with the run so that it can be reproduced.
    fn config(&self) -> serde_json::Value;
}
