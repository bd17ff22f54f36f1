//! The grpo-rs host. Modules follow the data flow, one stage each:
//! `model` and `tokenizer` (the policy), `generate` (sampling), `rollout` (episodes), `train` (losses and updates),
//! `plugins` (the dynamically loaded algorithms and environments), `logging` (sinks), `checkpoint`, and `cli`.

pub mod cli;
pub mod error;
pub mod paths;
pub mod plugins;
pub mod runtime;
