//! The `grpo` plugin.
