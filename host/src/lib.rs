//! The grpo-rs host. Modules follow the data flow, one stage each: `model` and `tokenizer` (the policy),
//! `generate` (sampling), `rollout` (episodes), `train` (experience, losses and updates), `plugins` (the dynamically
//! loaded algorithms and environments), `logging` (sinks), `checkpoint`, and `cli`.

pub mod calendar;
pub mod checkpoint;
pub mod choice;
pub mod cli;
pub mod error;
pub mod generate;
pub mod logging;
pub mod model;
pub mod paths;
pub mod plugins;
pub mod rollout;
pub mod runtime;
pub mod tokenizer;
pub mod train;
