//! The `multiturn_qa` plugin.
