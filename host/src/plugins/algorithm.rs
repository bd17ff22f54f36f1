//! The calls the trainer makes on an algorithm plugin, with tensors passed across the boundary. Name, info, config
//! and metrics are common to every kind ([`PluginInstance`]).

use super::handle::PluginInstance;
use crate::user_error;
use grpo_sdk::ffi::{AlgorithmVTable, FfiPolicyBatch, FfiSlice, StrSink, TensorPtr};
use grpo_sdk::{DeferredLoss, PolicyBatch};
use tch::Tensor;

/// A live algorithm. Cheap to clone (shared); usable from any thread.
pub type AlgorithmPlugin = PluginInstance<AlgorithmVTable>;

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

impl PluginInstance<AlgorithmVTable> {
    /// Advantages of `[N]` rewards laid out as consecutive groups of the given sizes; returns `[N]`.
    pub fn advantages(&self, rewards: &Tensor, groups: &[usize]) -> anyhow::Result<Tensor> {
        let groups: Vec<u64> = groups.iter().map(|&g| g as u64).collect();
        let mut out: TensorPtr = std::ptr::null_mut();
        let advantages = self.vtable().advantages;
        self.call("advantages", |this, err| {
            // SAFETY: `rewards` and `groups` outlive the call; `out` receives an owned handle.
            unsafe { advantages(this, borrow(rewards), FfiSlice::new(&groups), &mut out, err) }
        })?;
        let label = || self.info().label();
        // SAFETY: on OK the plugin wrote an owned handle.
        let adv = unsafe { adopt(out) }.ok_or_else(|| user_error!("{} returned no advantages tensor", label()))?;
        if adv.size() != rewards.size() {
            return Err(user_error!(
                "{} returned advantages of shape {:?} for rewards of shape {:?}",
                label(),
                adv.size(),
                rewards.size()
            ));
        }
        Ok(adv)
    }

    /// An error naming `flag`, the setting that needs them, unless the library's batch has
    /// [`PolicyBatch::is_weights`] (ABI 1.1 and later): an older loss would ignore them without a word.
    pub fn check_takes_importance_weights(&self, flag: &str) -> anyhow::Result<()> {
        let info = self.info();
        if info.abi_minor >= 1 {
            return Ok(());
        }
        Err(user_error!(
            "{flag}: {} was built against grpo-sdk {} (ABI 1.{}), whose loss cannot receive per-token weights; \
             rebuild it against this SDK, or drop {flag}",
            info.label(),
            info.sdk_version,
            info.abi_minor
        ))
    }

    /// The loss of one micro-batch (a scalar connected to `batch.log_probs`) and its metrics, those the plugin
    /// computed from tensors still on the device (a library older than ABI 1.3 reads them itself).
    pub fn loss(&self, batch: &PolicyBatch) -> anyhow::Result<DeferredLoss> {
        if batch.is_weights.is_some() {
            self.check_takes_importance_weights("--tis-cap or --top-entropy-quantile")?;
        }
        let ffi_batch = FfiPolicyBatch {
            size: std::mem::size_of::<FfiPolicyBatch>(),
            log_probs: borrow(&batch.log_probs),
            old_log_probs: borrow(&batch.old_log_probs),
            ref_log_probs: batch.ref_log_probs.as_ref().map_or(std::ptr::null_mut(), borrow),
            advantages: borrow(&batch.advantages),
            action_mask: borrow(&batch.action_mask),
            settings: batch.settings,
            is_weights: batch.is_weights.as_ref().map_or(std::ptr::null_mut(), borrow),
            step_token_divisor: batch.step_token_divisor.unwrap_or(0.0),
        };
        let mut out: TensorPtr = std::ptr::null_mut();
        let mut values: TensorPtr = std::ptr::null_mut();
        let (mut metrics_json, mut names_json) = (String::new(), String::new());
        let metrics_sink = StrSink::for_string(&mut metrics_json);
        let names_sink = StrSink::for_string(&mut names_json);
        let vtable = self.vtable();
        if self.keeps_metrics_on_device() {
            let loss = vtable.loss_on_device;
            self.call("loss", |this, err| {
                // SAFETY: the batch and the tensors it borrows outlive the call.
                unsafe { loss(this, &ffi_batch, &mut out, metrics_sink, &mut values, names_sink, err) }
            })?;
        } else {
            let loss = vtable.loss;
            self.call("loss", |this, err| {
                // SAFETY: as above.
                unsafe { loss(this, &ffi_batch, &mut out, metrics_sink, err) }
            })?;
        }
        let label = || self.info().label();
        // SAFETY: on OK the plugin wrote owned handles (or null).
        let (loss, values) = unsafe { (adopt(out), adopt(values)) };
        let loss = loss.ok_or_else(|| user_error!("{} returned no loss tensor", label()))?;
        if loss.numel() != 1 {
            return Err(user_error!("{} returned a loss of shape {:?}; it must be a scalar", label(), loss.size()));
        }
        if batch.log_probs.requires_grad() && !loss.requires_grad() {
            return Err(user_error!(
                "{} returned a loss with no gradient: compute it from batch.log_probs without detaching it \
                 (`grpo-host plugins check` tests this)",
                label()
            ));
        }
        let metrics = grpo_sdk::ffi::decode_metrics(&metrics_json)
            .map_err(|e| user_error!("{} returned malformed loss metrics: {e}", label()))?;
        let names: Vec<String> = if names_json.is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&names_json)
                .map_err(|e| user_error!("{} returned malformed device metric names: {e}", label()))?
        };
        let device_metrics = match values {
            Some(v) if v.size() == [names.len() as i64] => {
                names.into_iter().enumerate().map(|(i, name)| (name, v.get(i as i64))).collect()
            }
            None if names.is_empty() => Vec::new(),
            v => {
                let shape = v.map(|v| v.size());
                return Err(user_error!(
                    "{} returned {} device metric names but values of shape {shape:?}",
                    label(),
                    names.len()
                ));
            }
        };
        Ok(DeferredLoss { loss, metrics, device_metrics })
    }

    /// Whether the library's table has `loss_on_device` (ABI 1.3 and later); older libraries read their metrics
    /// to the host themselves.
    pub fn keeps_metrics_on_device(&self) -> bool {
        self.vtable().plugin.size > grpo_sdk::ffi::ALGORITHM_VTABLE_V1_2_SIZE
    }
}
