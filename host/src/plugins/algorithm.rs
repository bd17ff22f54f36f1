//! The host's handle on an algorithm plugin: the calls the trainer makes, with tensors passed across the boundary.

use super::handle::Handle;
use super::PluginInfo;
use crate::user_error;
use grpo_sdk::ffi::{AlgorithmVTable, FfiPolicyBatch, FfiSlice, TensorPtr};
use grpo_sdk::{LossOutput, Metric, PolicyBatch};
use std::ffi::c_void;
use std::sync::Arc;
use tch::Tensor;

/// A live algorithm. Cheap to clone (shared); usable from any thread.
#[derive(Clone)]
pub struct AlgorithmPlugin {
    handle: Arc<Handle>,
    vtable: &'static AlgorithmVTable,
}

/// Borrow a host tensor for the duration of a call.
fn borrow(t: &Tensor) -> TensorPtr {
    t.as_ptr() as TensorPtr
}

/// Take ownership of a tensor handle the plugin gave up.
///
/// # Safety
/// `ptr` must be an owned `at::Tensor*` from the plugin (the SDK's `into_raw_tensor`).
unsafe fn adopt(ptr: TensorPtr) -> Option<Tensor> {
    (!ptr.is_null()).then(|| Tensor::from_ptr(ptr as *mut torch_sys::C_tensor))
}

impl AlgorithmPlugin {
    pub(crate) fn create(
        info: PluginInfo,
        vtable: &'static AlgorithmVTable,
        config: &serde_json::Value,
    ) -> anyhow::Result<Self> {
        let handle = Handle::create(info, config, vtable.create, vtable.destroy)?;
        Ok(AlgorithmPlugin { handle: Arc::new(handle), vtable })
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

    /// Its resolved config, to save with the run.
    pub fn config(&self) -> anyhow::Result<serde_json::Value> {
        let this = self.handle.this;
        // SAFETY: a validated vtable and a live instance.
        self.handle.call_json("config", |out, err| unsafe { (self.vtable.config)(this, out, err) })
    }

    /// Its metrics since the previous call.
    pub fn metrics(&self) -> anyhow::Result<Vec<Metric>> {
        let this = self.handle.this;
        // SAFETY: as above.
        self.handle.call_json("metrics", |out, err| unsafe { (self.vtable.metrics)(this, out, err) })
    }

    /// Advantages of `[N]` rewards laid out as consecutive groups of the given sizes; returns `[N]`.
    pub fn advantages(&self, rewards: &Tensor, groups: &[usize]) -> anyhow::Result<Tensor> {
        let groups: Vec<u64> = groups.iter().map(|&g| g as u64).collect();
        let mut out: TensorPtr = std::ptr::null_mut();
        let this = self.handle.this as *const c_void;
        self.handle.call("advantages", |err| {
            // SAFETY: `rewards` and `groups` outlive the call; `out` receives an owned handle.
            unsafe { (self.vtable.advantages)(this, borrow(rewards), FfiSlice::new(&groups), &mut out, err) }
        })?;
        // SAFETY: on OK the plugin wrote an owned handle.
        let adv = unsafe { adopt(out) }
            .ok_or_else(|| user_error!("{} returned no advantages tensor", self.handle.info.label()))?;
        if adv.size() != rewards.size() {
            return Err(user_error!(
                "{} returned advantages of shape {:?} for rewards of shape {:?}",
                self.handle.info.label(),
                adv.size(),
                rewards.size()
            ));
        }
        Ok(adv)
    }

    /// The loss of one micro-batch (a scalar connected to `batch.log_probs`) and its metrics.
    pub fn loss(&self, batch: &PolicyBatch) -> anyhow::Result<LossOutput> {
        let ffi_batch = FfiPolicyBatch {
            size: std::mem::size_of::<FfiPolicyBatch>(),
            log_probs: borrow(&batch.log_probs),
            old_log_probs: borrow(&batch.old_log_probs),
            ref_log_probs: batch.ref_log_probs.as_ref().map_or(std::ptr::null_mut(), borrow),
            advantages: borrow(&batch.advantages),
            action_mask: borrow(&batch.action_mask),
            settings: batch.settings,
        };
        let mut out: TensorPtr = std::ptr::null_mut();
        let mut metrics_json = String::new();
        let metrics_sink = grpo_sdk::ffi::StrSink::for_string(&mut metrics_json);
        let this = self.handle.this as *const c_void;
        self.handle.call("loss", |err| {
            // SAFETY: the batch and the tensors it borrows outlive the call.
            unsafe { (self.vtable.loss)(this, &ffi_batch, &mut out, metrics_sink, err) }
        })?;
        // SAFETY: on OK the plugin wrote an owned handle.
        let loss =
            unsafe { adopt(out) }.ok_or_else(|| user_error!("{} returned no loss tensor", self.handle.info.label()))?;
        if loss.numel() != 1 {
            return Err(user_error!(
                "{} returned a loss of shape {:?}; it must be a scalar",
                self.handle.info.label(),
                loss.size()
            ));
        }
        let metrics = grpo_sdk::ffi::decode_metrics(&metrics_json)
            .map_err(|e| user_error!("{} returned malformed loss metrics: {e}", self.handle.info.label()))?;
        Ok(LossOutput { loss, metrics })
    }
}
