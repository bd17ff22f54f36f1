//! grpo-sdk: the contract between the grpo-rs host and its plugins.

/// The libtorch version this SDK is built against; a plugin built against another one is refused.
pub const LIBTORCH_VERSION: &str = "2.11.0";
