//! Plugins: finding plugin libraries, loading and validating them, and the safe wrappers the trainer calls.
//!
//! ```text
//! DiscoveryOptions ──search_dirs──▶ files ──library::open──▶ validated descriptors ──▶ Registry
//! Registry::algorithm(name, config)   ──▶ AlgorithmPlugin   (advantages, loss)
//! Registry::environment(name, config) ──▶ EnvironmentPlugin (tasks, reset ──▶ Episode::step)
//! ```
//!
//! Both are [`PluginInstance`]s, one generic wrapper over the kind's function table: what the SDK's `Plugin` trait
//! gives every kind (name, config, metrics, creation, error and panic handling) is written once, in `handle.rs`.
//! A plugin defined in the host's own process goes through the very same tables ([`Registry::add_in_process`]), so
//! the host's code cannot tell it from a loaded library; tests use that.
//!
//! Unlike DataFusion's FFI crate, whose host-side `Foreign*` types implement the very trait the plugin implements,
//! the wrappers do not implement the SDK's traits: those have compile-time items a loaded library cannot supply
//! (`Plugin::NAME`, a constructor returning `Self`), and infallible methods (`config`) where every call across the
//! boundary can fail or find the plugin poisoned. Going through the tables for in-process plugins gives the same
//! indistinguishability without weakening the author-facing traits.
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
pub use handle::PluginInstance;
pub use library::EntryFn;
pub use registry::Registry;

use grpo_sdk::ffi;
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

impl PluginKind {
    /// The kind of an ABI kind number ([`grpo_sdk::ffi::PluginEntry::kind`]); `None` for one this host does not know.
    pub fn from_abi(kind: u32) -> Option<Self> {
        match kind {
            ffi::KIND_ALGORITHM => Some(PluginKind::Algorithm),
            ffi::KIND_ENVIRONMENT => Some(PluginKind::Environment),
            _ => None,
        }
    }

    /// Its ABI kind number.
    pub fn abi(self) -> u32 {
        match self {
            PluginKind::Algorithm => ffi::KIND_ALGORITHM,
            PluginKind::Environment => ffi::KIND_ENVIRONMENT,
        }
    }

    /// The smallest function table of this kind the host accepts: ABI 1.0's, whose fields every call relies on.
    /// Fields appended since (an environment's `demonstration`, an algorithm's `loss_on_device`) are called only when
    /// the library's table has them.
    fn vtable_size(self) -> usize {
        match self {
            PluginKind::Algorithm => ffi::ALGORITHM_VTABLE_V1_2_SIZE,
            PluginKind::Environment => ffi::ENVIRONMENT_VTABLE_V1_0_SIZE,
        }
    }
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
    /// The ABI minor version of that SDK: which appended fields the library knows.
    pub abi_minor: u32,
    /// The library file it was loaded from.
    pub file: PathBuf,
}

impl PluginInfo {
    /// "`name` (file)", the way errors name a plugin.
    pub fn label(&self) -> String {
        format!("{} `{}` ({})", self.kind, self.name, self.file.display())
    }
}
