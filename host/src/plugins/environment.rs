//! The calls the rollout driver makes on an environment plugin, and episodes, which it may step in parallel. Name,
//! info, config and metrics are common to every kind ([`PluginInstance`]).

use super::handle::PluginInstance;
use grpo_sdk::ffi::{EnvironmentVTable, FfiStr};
use grpo_sdk::{Message, Split, StepOutcome, Task, ToolSpec};
use std::ffi::c_void;

/// A live environment. Cheap to clone (shared) and usable from any thread; episodes keep it alive.
pub type EnvironmentPlugin = PluginInstance<EnvironmentVTable>;

/// One episode: the plugin's state for it, dropped through the plugin when the episode is dropped.
pub struct Episode {
    env: EnvironmentPlugin,
    state: *mut c_void,
}

// SAFETY: the SDK requires `Environment::State: Send`; the state is only used through `&mut Episode`.
unsafe impl Send for Episode {}

impl PluginInstance<EnvironmentVTable> {
    /// The tools it offers, for the chat template.
    pub fn tools(&self) -> anyhow::Result<Vec<ToolSpec>> {
        let tools = self.vtable().tools;
        // SAFETY: a validated vtable and a live instance (here and below).
        self.call_json("tools", |this, out, err| unsafe { tools(this, out, err) })
    }

    /// How many tasks `split` has; `None` for an unbounded generator (then ask for indices 0, 1, 2, ...).
    pub fn task_count(&self, split: Split) -> anyhow::Result<Option<u64>> {
        let mut n: i64 = -1;
        let task_count = self.vtable().task_count;
        self.call("task_count", |this, err| unsafe { task_count(this, split as u32, &mut n, err) })?;
        Ok(u64::try_from(n).ok())
    }

    /// Task `index` of `split` for `seed`; the same arguments always give the same task.
    pub fn task(&self, split: Split, seed: u64, index: u64) -> anyhow::Result<Task> {
        let task = self.vtable().task;
        self.call_json("task", |this, out, err| unsafe { task(this, split as u32, seed, index, out, err) })
    }

    /// Whether the library's table has the `demonstration` call (SDKs after ABI 1.0; older libraries have none).
    pub fn has_demonstrations(&self) -> bool {
        self.vtable().plugin.size > grpo_sdk::ffi::ENVIRONMENT_VTABLE_V1_0_SIZE
    }

    /// Whether the library's table has the `task_from_row` call (ABI 1.2 and later), so it can take `--dataset`.
    pub fn reads_rows(&self) -> bool {
        self.vtable().plugin.size > grpo_sdk::ffi::ENVIRONMENT_VTABLE_V1_1_SIZE
    }

    /// Row `index` of a dataset turned into a task of `split` by the environment; `None` when it skips the row.
    /// An environment built before the call existed is an error that says to rebuild it.
    pub fn task_from_row(&self, split: Split, index: u64, row: &serde_json::Value) -> anyhow::Result<Option<Task>> {
        if !self.reads_rows() {
            return Err(crate::user_error!(
                "environment `{}` ({}) was built before dataset rows existed; rebuild it against this grpo-sdk to \
                 use --dataset or --eval-data",
                self.name(),
                self.info().file.display()
            ));
        }
        let row_json = serde_json::to_string(row)?;
        let task_from_row = self.vtable().task_from_row;
        self.call_json("task_from_row", |this, out, err| unsafe {
            task_from_row(this, split as u32, index, FfiStr::new(&row_json), out, err)
        })
    }

    /// The environment's demonstration for `task` (the assistant turns an expert would write); `None` when it has
    /// none, and always `None` for a library built before the call existed.
    pub fn demonstration(&self, task: &Task) -> anyhow::Result<Option<Vec<String>>> {
        if !self.has_demonstrations() {
            return Ok(None);
        }
        let task_json = serde_json::to_string(task)?;
        let demonstration = self.vtable().demonstration;
        self.call_json("demonstration", |this, out, err| unsafe {
            demonstration(this, FfiStr::new(&task_json), out, err)
        })
    }

    /// Open an episode for `task`: the episode and its opening messages.
    pub fn reset(&self, task: &Task) -> anyhow::Result<(Episode, Vec<Message>)> {
        let task_json = serde_json::to_string(task)?;
        let mut state: *mut c_void = std::ptr::null_mut();
        let reset = self.vtable().reset;
        let messages: anyhow::Result<Vec<Message>> = self
            .call_json("reset", |this, out, err| unsafe { reset(this, FfiStr::new(&task_json), &mut state, out, err) });
        // The episode owns whatever state the call made, so a reply that does not decode still frees it.
        let episode = Episode { env: self.clone(), state };
        Ok((episode, messages?))
    }
}

impl Episode {
    /// Give the model's turn (decoded text) to the environment; returns what to append, rewards and done.
    pub fn step(&mut self, assistant_text: &str) -> anyhow::Result<StepOutcome> {
        let state = self.state;
        let step = self.env.vtable().step;
        self.env.call_json("step", |this, out, err| unsafe { step(this, state, FfiStr::new(assistant_text), out, err) })
    }

    /// The environment this episode belongs to.
    pub fn environment(&self) -> &EnvironmentPlugin {
        &self.env
    }
}

impl Drop for Episode {
    fn drop(&mut self) {
        if !self.state.is_null() {
            // SAFETY: the state came from this environment's `reset` and is dropped once, here.
            unsafe { (self.env.vtable().drop_state)(self.env.this(), self.state) }
        }
    }
}
