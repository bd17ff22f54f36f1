//! The host's handle on an environment plugin, and episodes, which the rollout driver may step in parallel.

use super::handle::Handle;
use super::PluginInfo;
use grpo_sdk::ffi::{EnvironmentVTable, FfiStr};
use grpo_sdk::{Message, Metric, Split, StepOutcome, Task, ToolSpec};
use std::ffi::c_void;
use std::sync::Arc;

/// A live environment. Cheap to clone (shared) and usable from any thread; episodes keep it alive.
#[derive(Clone)]
pub struct EnvironmentPlugin {
    handle: Arc<Handle>,
    vtable: &'static EnvironmentVTable,
}

/// One episode: the plugin's state for it, dropped through the plugin when the episode is dropped.
pub struct Episode {
    env: EnvironmentPlugin,
    state: *mut c_void,
}

// SAFETY: the SDK requires `Environment::State: Send`; the state is only used through `&mut Episode`.
unsafe impl Send for Episode {}

impl EnvironmentPlugin {
    pub(crate) fn create(
        info: PluginInfo,
        vtable: &'static EnvironmentVTable,
        config: &serde_json::Value,
    ) -> anyhow::Result<Self> {
        let handle = Handle::create(info, config, vtable.create, vtable.destroy)?;
        Ok(EnvironmentPlugin { handle: Arc::new(handle), vtable })
    }

    /// Name, version and file.
    pub fn info(&self) -> &PluginInfo {
        &self.handle.info
    }

    /// The name it was selected by.
    pub fn name(&self) -> &str {
        &self.handle.info.name
    }

    /// Whether it panicked (every later call fails).
    pub fn is_poisoned(&self) -> bool {
        self.handle.is_poisoned()
    }

    fn this(&self) -> *const c_void {
        self.handle.this
    }

    /// Its resolved config, to save with the run.
    pub fn config(&self) -> anyhow::Result<serde_json::Value> {
        // SAFETY: a validated vtable and a live instance (here and below).
        self.handle.call_json("config", |out, err| unsafe { (self.vtable.config)(self.this(), out, err) })
    }

    /// Its metrics since the previous call.
    pub fn metrics(&self) -> anyhow::Result<Vec<Metric>> {
        self.handle.call_json("metrics", |out, err| unsafe { (self.vtable.metrics)(self.this(), out, err) })
    }

    /// The tools it offers, for the chat template.
    pub fn tools(&self) -> anyhow::Result<Vec<ToolSpec>> {
        self.handle.call_json("tools", |out, err| unsafe { (self.vtable.tools)(self.this(), out, err) })
    }

    /// How many tasks `split` has; `None` for an unbounded generator (then ask for indices 0, 1, 2, ...).
    pub fn task_count(&self, split: Split) -> anyhow::Result<Option<u64>> {
        let mut n: i64 = -1;
        self.handle
            .call("task_count", |err| unsafe { (self.vtable.task_count)(self.this(), split as u32, &mut n, err) })?;
        Ok(u64::try_from(n).ok())
    }

    /// Task `index` of `split` for `seed`; the same arguments always give the same task.
    pub fn task(&self, split: Split, seed: u64, index: u64) -> anyhow::Result<Task> {
        self.handle.call_json("task", |out, err| unsafe {
            (self.vtable.task)(self.this(), split as u32, seed, index, out, err)
        })
    }

    /// Open an episode for `task`: the episode and its opening messages.
    pub fn reset(&self, task: &Task) -> anyhow::Result<(Episode, Vec<Message>)> {
        let task_json = serde_json::to_string(task)?;
        let mut state: *mut c_void = std::ptr::null_mut();
        let messages: anyhow::Result<Vec<Message>> = self.handle.call_json("reset", |out, err| unsafe {
            (self.vtable.reset)(self.this(), FfiStr::new(&task_json), &mut state, out, err)
        });
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                if !state.is_null() {
                    // The call succeeded but its messages did not decode: free the state it made.
                    unsafe { (self.vtable.drop_state)(self.this(), state) };
                }
                return Err(e);
            }
        };
        Ok((Episode { env: self.clone(), state }, messages))
    }
}

impl Episode {
    /// Give the model's turn (decoded text) to the environment; returns what to append, rewards and done.
    pub fn step(&mut self, assistant_text: &str) -> anyhow::Result<StepOutcome> {
        let env = &self.env;
        let state = self.state;
        env.handle.call_json("step", |out, err| unsafe {
            (env.vtable.step)(env.this(), state, FfiStr::new(assistant_text), out, err)
        })
    }

    /// The environment this episode belongs to.
    pub fn environment(&self) -> &EnvironmentPlugin {
        &self.env
    }
}

impl Drop for Episode {
    fn drop(&mut self) {
        // SAFETY: the state came from this environment's `reset` and is dropped once, here.
        unsafe { (self.env.vtable.drop_state)(self.env.this(), self.state) }
    }
}
