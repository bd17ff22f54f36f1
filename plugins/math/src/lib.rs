//! The `math` plugin.
