//! Plugins: finding plugin libraries, loading and validating them, and the safe wrappers the trainer calls.
//!
//! ```text
//! DiscoveryOptions ──search_dirs──▶ files ──library::open──▶ validated descriptors ──▶ Registry
//! Registry::algorithm(name, config)   ──▶ AlgorithmPlugin   (advantages, loss, metrics)
//! Registry::environment(name, config) ──▶ EnvironmentPlugin (tasks, reset ──▶ Episode::step)
//! ```
//!
//! Every plugin, the shipped ones included, is loaded from its shared library; nothing is linked statically.
//! Libraries are never unloaded. A problem with a library is one line naming the file and the cause (a user error,
//! exit code 2); a plugin that fails or panics during the run gives an error naming the plugin, its file and the
//! call, and a plugin that panicked is poisoned: every later call fails at once.

mod algorithm;
pub mod check;
mod discovery;
mod environment;
mod handle;
mod library;
mod registry;

pub use algorithm::AlgorithmPlugin;
pub use discovery::{user_plugin_dir, DiscoveryOptions, PLUGIN_PATH_ENV};
pub use environment::{EnvironmentPlugin, Episode};
pub use library::EntryFn;
pub use registry::Registry;

use std::fmt;
use std::path::PathBuf;

/// What a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// An `Algorithm` (`--algo`).
    Algorithm,
    /// An `Environment` (`--env`).
    Environment,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Algorithm => "algorithm",
            PluginKind::Environment => "environment",
        })
    }
}

/// What a library says about one of its plugins, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// The name users select it by.
    pub name: String,
    /// Algorithm or environment.
    pub kind: PluginKind,
    /// The plugin crate's version.
    pub version: String,
    /// One line describing it.
    pub description: String,
    /// The grpo-sdk version it was built with.
    pub sdk_version: String,
    /// The library file it was loaded from.
    pub file: PathBuf,
}

impl PluginInfo {
    /// "`name` (file)", the way errors name a plugin.
    pub fn label(&self) -> String {
        format!("{} `{}` ({})", self.kind, self.name, self.file.display())
    }
}
