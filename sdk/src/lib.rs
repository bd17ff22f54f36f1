//! grpo-sdk: the contract between the grpo-rs host and its plugins.
//!
//! A plugin is a `cdylib` crate that implements [`Algorithm`] (advantages and a loss) or [`Environment`] (tasks,
//! episodes and rewards), their common parent [`Plugin`] (name, description, constructor from JSON config, resolved
//! config), plus [`MetricSource`] for its own metrics, and names its types once with [`export_plugins!`]. The host
//! loads the library at run time through a small `#[repr(C)]` boundary ([`ffi`]); plugin authors never touch it:
//! they see safe Rust traits, `tch` tensors and plain data types.
//!
//! ```
//! use grpo_sdk::{Environment, Message, MetricSource, Plugin, Reward, Split, StepOutcome, Task};
//!
//! /// Asks for a word and rewards saying it back.
//! struct Echo;
//!
//! impl MetricSource for Echo {}
//!
//! impl Plugin for Echo {
//!     const NAME: &'static str = "echo";
//!     const DESCRIPTION: &'static str = "Say the word back";
//!
//!     fn new(_config: serde_json::Value) -> grpo_sdk::Result<Self> {
//!         Ok(Echo)
//!     }
//!     fn config(&self) -> serde_json::Value {
//!         serde_json::json!({})
//!     }
//! }
//!
//! impl Environment for Echo {
//!     type State = String;
//!
//!     fn task_count(&self, _split: Split) -> Option<u64> {
//!         Some(2)
//!     }
//!     fn task(&self, _split: Split, _seed: u64, index: u64) -> grpo_sdk::Result<Task> {
//!         let word = ["apple", "pear"][index as usize % 2];
//!         Ok(Task::new(index.to_string(), format!("Say {word}."), word))
//!     }
//!     fn reset(&self, task: &Task) -> grpo_sdk::Result<(String, Vec<Message>)> {
//!         Ok((task.answer.clone(), vec![Message::user(&task.question)]))
//!     }
//!     fn step(&self, word: &mut String, text: &str) -> grpo_sdk::Result<StepOutcome> {
//!         let value = if text.trim() == word.as_str() { 1.0 } else { 0.0 };
//!         Ok(StepOutcome::finished(vec![Reward::new("said_it", value)]))
//!     }
//! }
//!
//! let env = Echo::new(serde_json::Value::Null)?;
//! let task = env.task(Split::Train, 0, 1)?;
//! let (mut state, opening) = env.reset(&task)?;
//! assert_eq!(opening[0].content, "Say pear.");
//! let outcome = env.step(&mut state, "pear")?;
//! assert!(outcome.done);
//! assert_eq!(outcome.total_reward(), 1.0);
//! # Ok::<(), grpo_sdk::Error>(())
//! ```

mod algorithm;
mod environment;
mod error;
pub mod ffi;
mod metrics;
pub mod ops;
mod plugin;
pub mod rng;
mod types;

pub use algorithm::{Algorithm, DeferredLoss, LossOutput, LossSettings, PolicyBatch};
pub use environment::Environment;
pub use error::{Error, Result};
pub use metrics::{Metric, MetricSource, MetricValue};
pub use plugin::Plugin;
pub use types::{parse_config, Message, Reward, Role, Split, StepOutcome, Task, ToolSpec};

/// The `tch` crate this SDK is built with; plugins should use it (or the same version) for their tensors.
pub use tch;

/// The libtorch version this SDK was compiled against (read from the libtorch install at build time). A plugin
/// built against another one is refused by the host.
pub const LIBTORCH_VERSION: &str = env!("GRPO_SDK_LIBTORCH_VERSION");

/// Whether the libtorch C++ glue was compiled with the C++11 ABI of libstdc++ (`_GLIBCXX_USE_CXX11_ABI`). Host and
/// plugin must agree, because `at::Tensor` handles cross between them.
pub const LIBTORCH_CXX11_ABI: bool = matches!(env!("GRPO_SDK_LIBTORCH_CXX11_ABI").as_bytes(), b"1");

/// The plugin guide's examples compile and run as doctests of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../docs/plugins.md")]
pub struct PluginGuide;

/// This SDK's version; recorded in every plugin library for diagnostics.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");
