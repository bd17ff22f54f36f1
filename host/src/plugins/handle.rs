//! What every plugin kind shares on the host's side: a live instance, its kind's function table, the rule for turning
//! a call's status into a Rust result, and the calls of the SDK's `Plugin` trait (config and metrics). The
//! kind-specific calls are in `algorithm.rs` and `environment.rs`, as `impl` blocks on [`PluginInstance`].

use super::PluginInfo;
use crate::user_error;
use grpo_sdk::ffi::{status, FfiStr, KindVTable, StrSink};
use grpo_sdk::Metric;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A live plugin instance of the kind whose function table is `V` (see the aliases
/// [`AlgorithmPlugin`](super::AlgorithmPlugin) and [`EnvironmentPlugin`](super::EnvironmentPlugin)). Cheap to clone
/// (shared) and usable from any thread; destroyed through the plugin when the last clone is dropped.
pub struct PluginInstance<V: KindVTable> {
    inner: Arc<Inner<V>>,
}

/// One instance made by a plugin's `create`, destroyed with its `destroy` when the last owner drops it.
struct Inner<V: KindVTable> {
    info: PluginInfo,
    this: *mut c_void,
    vtable: &'static V,
    poisoned: AtomicBool,
}

// SAFETY: the SDK requires `Send + Sync` of every plugin type, so its instance may be used from any thread; the
// vtable is immutable `'static` data.
unsafe impl<V: KindVTable> Send for Inner<V> {}
unsafe impl<V: KindVTable> Sync for Inner<V> {}

// Not derived: a derive would demand `V: Clone`, and only the `Arc` is cloned.
impl<V: KindVTable> Clone for PluginInstance<V> {
    fn clone(&self) -> Self {
        PluginInstance { inner: Arc::clone(&self.inner) }
    }
}

impl<V: KindVTable> PluginInstance<V> {
    /// Create an instance with the table's `create`, passing `config` as JSON text (empty for `null`).
    pub(crate) fn create(info: PluginInfo, vtable: &'static V, config: &serde_json::Value) -> anyhow::Result<Self> {
        let text = if config.is_null() { String::new() } else { config.to_string() };
        let mut this: *mut c_void = std::ptr::null_mut();
        let mut err = String::new();
        // SAFETY: `create` comes from a validated vtable; the arguments live through the call.
        let code = unsafe { (vtable.plugin().create)(FfiStr::new(&text), &mut this, StrSink::for_string(&mut err)) };
        if code != status::OK || this.is_null() {
            let shown = if text.is_empty() { "no config".to_string() } else { format!("config {text}") };
            return Err(user_error!(
                "{} could not be created with {shown}: {}",
                info.label(),
                if err.is_empty() { "no reason given" } else { &err }
            ));
        }
        Ok(PluginInstance { inner: Arc::new(Inner { info, this, vtable, poisoned: AtomicBool::new(false) }) })
    }

    /// Name, kind, version and file.
    pub fn info(&self) -> &PluginInfo {
        &self.inner.info
    }

    /// The name it was selected by.
    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    /// Whether it panicked (every later call fails).
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Its resolved config, to save with the run.
    pub fn config(&self) -> anyhow::Result<serde_json::Value> {
        let config = self.inner.vtable.plugin().config;
        // SAFETY: a validated vtable and a live instance.
        self.call_json("config", |this, out, err| unsafe { config(this, out, err) })
    }

    /// Its metrics since the previous call.
    pub fn metrics(&self) -> anyhow::Result<Vec<Metric>> {
        let metrics = self.inner.vtable.plugin().metrics;
        // SAFETY: as above.
        self.call_json("metrics", |this, out, err| unsafe { metrics(this, out, err) })
    }

    /// The kind's function table.
    pub(crate) fn vtable(&self) -> &'static V {
        self.inner.vtable
    }

    /// The instance pointer, for functions of the table that are called outside [`Self::call`] (destructors).
    pub(crate) fn this(&self) -> *const c_void {
        self.inner.this
    }

    /// Run one call, `f(this, err_sink) -> status`, and turn its status into a result naming the plugin and the
    /// call. A panic (or an unknown status) poisons the instance on this side too, so that later calls fail
    /// without reaching the plugin.
    pub(crate) fn call(&self, what: &str, f: impl FnOnce(*const c_void, StrSink) -> u32) -> anyhow::Result<()> {
        let info = &self.inner.info;
        if self.is_poisoned() {
            return Err(user_error!("{} panicked earlier and is disabled; {what} was not called", info.label()));
        }
        let mut err = String::new();
        let code = f(self.inner.this, StrSink::for_string(&mut err));
        match code {
            status::OK => Ok(()),
            status::ERROR => Err(user_error!("{} failed in {what}: {err}", info.label())),
            status::PANIC | status::POISONED => {
                self.inner.poisoned.store(true, Ordering::Release);
                Err(user_error!("{} {err} (in {what})", info.label()))
            }
            other => {
                self.inner.poisoned.store(true, Ordering::Release);
                Err(user_error!("{} returned unknown status {other} from {what}", info.label()))
            }
        }
    }

    /// Run a call whose output is JSON text, `f(this, out_sink, err_sink) -> status`, and decode it.
    pub(crate) fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        f: impl FnOnce(*const c_void, StrSink, StrSink) -> u32,
    ) -> anyhow::Result<T> {
        let mut out = String::new();
        let sink = StrSink::for_string(&mut out);
        self.call(what, |this, err| f(this, sink, err))?;
        serde_json::from_str(&out)
            .map_err(|e| user_error!("{} returned malformed data from {what}: {e}", self.inner.info.label()))
    }
}

impl<V: KindVTable> Drop for Inner<V> {
    fn drop(&mut self) {
        // SAFETY: `this` came from the matching `create` and is destroyed exactly once, here.
        unsafe { (self.vtable.plugin().destroy)(self.this) }
    }
}
