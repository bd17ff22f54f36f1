//! The [`Environment`] trait: tasks, episodes and rewards, text in and text out.

use crate::{Message, Plugin, Result, Split, StepOutcome, Task, ToolSpec};

/// A task world the model acts in: it hands out tasks, opens an episode for each, reads the model's turns and
/// answers with messages and rewards. Its name, constructor (`--env-config`) and config come from the parent trait
/// [`Plugin`]. See the crate-level example for a complete one.
///
/// Rules the host relies on:
///
/// - **Threads**: the host steps many episodes in parallel threads, so `Self: Send + Sync` and every method takes
///   `&self`; per-episode data lives in [`Environment::State`], which the host owns and passes back.
/// - **Determinism**: `task(split, seed, index)` always returns the same task for the same arguments, and `reset`
///   and `step` depend only on their inputs. Nothing reads the clock or an unseeded random source; this is what
///   makes a resumed run equal an uninterrupted one.
/// - **Ordering**: for a finite source (`task_count` is `Some(n)`), the host shuffles the indices `0..n` itself
///   with the run's seed; for an unbounded generator it asks for indices 0, 1, 2, ... and the seed picks the stream.
pub trait Environment: Plugin {
    /// The data of one episode (the reference answer, the turn count, the tool state).
    type State: Send + 'static;

    /// Tools the model may call, for chat templates that render tool declarations. Default: none.
    fn tools(&self) -> Vec<ToolSpec> {
        Vec::new()
    }

    /// How many tasks `split` has; `None` for an unbounded generator.
    fn task_count(&self, split: Split) -> Option<u64>;

    /// Task number `index` of `split` for `seed` (see the ordering rule above).
    fn task(&self, split: Split, seed: u64, index: u64) -> Result<Task>;

    /// Open an episode: its state and the opening chat messages (system and first user turn).
    fn reset(&self, task: &Task) -> Result<(Self::State, Vec<Message>)>;

    /// Read the model's turn (decoded text, special tokens removed) and answer it.
    fn step(&self, state: &mut Self::State, assistant_text: &str) -> Result<StepOutcome>;

    /// A demonstration for `task`: the assistant turns an expert would write, in order, each exactly as the model
    /// should produce it (the host replays them through [`reset`](Self::reset) and [`step`](Self::step), so tool
    /// results and later user turns come from the environment itself). Used for supervised warm-up
    /// (`grpo-host sft`, `--sft-warmup-steps`) before reinforcement learning. Played back, a demonstration should earn
    /// the environment's maximum return. Default: `None` (no demonstrations).
    fn demonstration(&self, task: &Task) -> Result<Option<Vec<String>>> {
        let _ = task;
        Ok(None)
    }

    /// Turn row `index` of a user's dataset into a task of `split`. The host reads the data (`--dataset`,
    /// `--eval-data`: JSONL, JSON arrays, Parquet, directories and globs of shards, Hugging Face hub datasets) and
    /// hands each row over as the JSON object it is (Parquet columns become keys; lists and structs become arrays
    /// and objects), so an environment needs no file code of its own. Return `Ok(None)` to skip a row (the host
    /// counts them) and an error naming the column for a row that cannot be used; the host adds the file and row.
    /// Default: an error saying the environment takes no datasets.
    fn task_from_row(&self, split: Split, index: u64, row: &serde_json::Value) -> Result<Option<Task>> {
        let _ = (split, index, row);
        Err(crate::Error::msg(format!(
            "environment `{}` does not read dataset rows (it does not implement Environment::task_from_row)",
            Self::NAME
        )))
    }
}
