//! The corpus and its chunks live in the `grpo-corpus` crate, which `grpo-host gen-qa` uses too: questions it
//! generates name chunks by the same ids this environment gives them.

pub use grpo_corpus::*;
