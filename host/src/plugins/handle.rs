//! What the algorithm and environment wrappers share: a live plugin instance and the rule for turning a call's
//! status into a Rust result.

use super::PluginInfo;
use crate::user_error;
use grpo_sdk::ffi::{status, StrSink};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

/// One instance made by a plugin's `create`, destroyed with its `destroy` when the last owner drops it.
pub(crate) struct Handle {
    pub info: PluginInfo,
    pub this: *mut c_void,
    destroy: unsafe extern "C" fn(*mut c_void),
    poisoned: AtomicBool,
}

// SAFETY: the SDK requires `Send + Sync` of every plugin type, so its instance may be used from any thread.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Handle {
    /// Create an instance with `create`, passing `config` as JSON text.
    pub fn create(
        info: PluginInfo,
        config: &serde_json::Value,
        create: unsafe extern "C" fn(grpo_sdk::ffi::FfiStr, *mut *mut c_void, StrSink) -> u32,
        destroy: unsafe extern "C" fn(*mut c_void),
    ) -> anyhow::Result<Handle> {
        let text = if config.is_null() { String::new() } else { config.to_string() };
        let mut this: *mut c_void = std::ptr::null_mut();
        let mut err = String::new();
        // SAFETY: `create` comes from a validated vtable; the arguments live through the call.
        let code = unsafe { create(grpo_sdk::ffi::FfiStr::new(&text), &mut this, StrSink::for_string(&mut err)) };
        if code != status::OK || this.is_null() {
            let shown = if text.is_empty() { "no config".to_string() } else { format!("config {text}") };
            return Err(user_error!(
                "{} could not be created with {shown}: {}",
                info.label(),
                if err.is_empty() { "no reason given" } else { &err }
            ));
        }
        Ok(Handle { info, this, destroy, poisoned: AtomicBool::new(false) })
    }

    /// Run one call, `f(err_sink) -> status`, and turn its status into a result naming the plugin and the call.
    pub fn call(&self, what: &str, f: impl FnOnce(StrSink) -> u32) -> anyhow::Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(user_error!("{} panicked earlier and is disabled; {what} was not called", self.info.label()));
        }
        let mut err = String::new();
        let code = f(StrSink::for_string(&mut err));
        match code {
            status::OK => Ok(()),
            status::ERROR => Err(user_error!("{} failed in {what}: {err}", self.info.label())),
            status::PANIC | status::POISONED => {
                self.poisoned.store(true, Ordering::Release);
                Err(user_error!("{} {err} (in {what})", self.info.label()))
            }
            other => {
                self.poisoned.store(true, Ordering::Release);
                Err(user_error!("{} returned unknown status {other} from {what}", self.info.label()))
            }
        }
    }

    /// Whether a panic disabled the plugin.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Run a call whose output is JSON text and decode it.
    pub fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        f: impl FnOnce(StrSink, StrSink) -> u32,
    ) -> anyhow::Result<T> {
        let mut out = String::new();
        let sink = StrSink::for_string(&mut out);
        self.call(what, |err| f(sink, err))?;
        serde_json::from_str(&out)
            .map_err(|e| user_error!("{} returned malformed data from {what}: {e}", self.info.label()))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `this` came from the matching `create` and is destroyed exactly once, here.
        unsafe { (self.destroy)(self.this) }
    }
}
