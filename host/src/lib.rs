//! The grpo-rs host. Modules follow the data flow, one stage each: `model` and `tokenizer` (the policy),
//! `generate` (sampling), `rollout` (episodes), `train` (experience, losses and updates), `plugins` (the dynamically
//! loaded algorithms and environments), `logging` (sinks), `checkpoint`, `distributed` (the process group of a
//! data-parallel run) and `cli`.

pub mod calendar;
pub mod checkpoint;
pub mod choice;
pub mod cli;
pub mod data;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod generate;
pub mod logging;
pub mod model;
pub mod paths;
pub mod plugins;
pub mod rollout;
pub mod runtime;
pub mod sft;
pub mod tokenizer;
pub mod train;

/// Unit tests run on parallel threads, and libtorch's default generator is process-wide: a test that seeds it and
/// expects the same draws twice must not see another test draw in between. Every unit test that uses the generator
/// holds this lock while it does.
#[cfg(test)]
pub(crate) fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
