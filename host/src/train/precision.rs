//! Mixed precision: which low precision the forward and backward passes compute in, dynamic loss scaling for fp16,
//! and the check for the pure-low-precision defect (updates smaller than the weights' spacing rounding away).
//!
//! The design is low-precision working copies: the model's own parameters hold bf16 or f16 values, and
//! [`AdamW`](super::optimizer::AdamW) keeps f32 master weights, f32 gradients and f32 moments, copying the masters
//! into the working parameters after each step. Only the optimizer ever adds an update to a weight, and it adds it in
//! f32, so an update of 5e-6 on a weight of 0.02 survives.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::DtypeSpec;
use crate::user_error;

crate::choice_enum! {
    /// `--mixed-precision`: the precision forward and backward compute in, with f32 master weights kept by the
    /// optimizer (accelerate's names).
    pub enum MixedPrecision {
        /// Decided by the machine: bf16 on CUDA, the measured CPU default on the CPU (see [`Precision::resolve`]).
        Auto = "auto",
        /// No mixed precision: the parameters' own dtype (`--dtype`) throughout.
        No = "no",
        /// bf16 compute; f32's exponent range, so no loss scaling is needed.
        Bf16 = "bf16",
        /// f16 compute; small gradients underflow without dynamic loss scaling.
        Fp16 = "fp16" | "f16",
    }
}

impl MixedPrecision {
    /// The dtype of the working parameters, or `None` when there is no mixed precision (or it is not resolved).
    pub fn compute_kind(self) -> Option<Kind> {
        match self {
            MixedPrecision::Auto | MixedPrecision::No => None,
            MixedPrecision::Bf16 => Some(Kind::BFloat16),
            MixedPrecision::Fp16 => Some(Kind::Half),
        }
    }

    /// Whether this precision needs dynamic loss scaling (only f16: its smallest normal value is 6e-5).
    pub fn needs_loss_scaling(self) -> bool {
        self == MixedPrecision::Fp16
    }
}

/// The distance between adjacent values of a floating-point `kind` at magnitude `magnitude` (its ulp), or `None` for
/// a kind that is not floating point. Below the smallest normal number the spacing is that of the subnormals.
pub fn spacing(kind: Kind, magnitude: f64) -> Option<f64> {
    // (explicit mantissa bits, exponent of the smallest normal number)
    let (mantissa, min_exp) = match kind {
        Kind::BFloat16 => (7, -126),
        Kind::Half => (10, -14),
        Kind::Float => (23, -126),
        Kind::Double => (52, -1022),
        _ => return None,
    };
    // log2(0) is -inf and max() takes min_exp, the subnormal spacing, which is what zero's neighbours are.
    let exp = magnitude.abs().log2().floor().max(min_exp as f64);
    Some(2f64.powf(exp - mantissa as f64))
}

/// Whether AdamW updates at learning rate `lr` round away on weights of dtype `kind` and magnitude `typical_weight`
/// when added to them directly (no f32 master weights).
///
/// An Adam update is about `lr` per element (the moments normalise the gradient), and adding a value below half the
/// spacing rounds back to the same number; so this is `lr < spacing(kind, typical_weight) / 2`. At bf16 and
/// |w| ~ 0.02 the spacing is 1.2e-4, and re-grpo's lr of 5e-6 is far below half of it: such a run does not learn. For
/// a start-up warning when low-precision weights are trained without master weights. False for non-float kinds.
pub fn update_too_small_for(kind: Kind, lr: f64, typical_weight: f64) -> bool {
    spacing(kind, typical_weight).is_some_and(|s| lr < s / 2.0)
}

/// A [`LossScaler`]'s state, as plain numbers for a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScalerState {
    /// The current loss scale.
    pub scale: f64,
    /// Consecutive good steps since the scale last changed.
    pub growth_tracker: u64,
    /// Updates skipped for inf/NaN gradients over the run.
    pub skipped_steps: u64,
}

/// Dynamic loss scaling, as `torch.cuda.amp.GradScaler`: the loss is multiplied by `scale` before backward so small
/// f16 gradients do not underflow; gradients are divided by it again as they are accumulated in f32
/// (`AdamW::accumulate_grads(scaler.unscale_factor())`). When the gradients hold an inf or NaN the scale was too
/// large: the update is skipped and the scale multiplied by `backoff_factor`. After `growth_interval` consecutive
/// good updates it is multiplied by `growth_factor`, to find again the largest scale that does not overflow.
///
/// Disabled (no mixed precision, or bf16, whose exponent range is f32's) it is the identity: scale 1, never grown or
/// lowered, nothing counted; [`LossScaler::update`] still refuses non-finite gradients, which the loop treats as an
/// invalid step as without it.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    enabled: bool,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
    state: LossScalerState,
}

impl LossScaler {
    /// GradScaler's default initial scale, 2^16.
    pub const INIT_SCALE: f64 = 65536.0;
    /// GradScaler's default growth factor.
    pub const GROWTH_FACTOR: f64 = 2.0;
    /// GradScaler's default backoff factor.
    pub const BACKOFF_FACTOR: f64 = 0.5;
    /// GradScaler's default growth interval, in good updates.
    pub const GROWTH_INTERVAL: u64 = 2000;

    /// The scaler `precision` needs: GradScaler's defaults for fp16, disabled otherwise.
    pub fn new(precision: MixedPrecision) -> Self {
        if precision.needs_loss_scaling() {
            Self::with_config(Self::INIT_SCALE, Self::GROWTH_FACTOR, Self::BACKOFF_FACTOR, Self::GROWTH_INTERVAL)
        } else {
            Self::disabled()
        }
    }

    /// The identity scaler: scale 1, never changes, never skips a finite update.
    pub fn disabled() -> Self {
        LossScaler {
            enabled: false,
            growth_factor: 1.0,
            backoff_factor: 1.0,
            growth_interval: u64::MAX,
            state: LossScalerState { scale: 1.0, growth_tracker: 0, skipped_steps: 0 },
        }
    }

    /// An enabled scaler with explicit settings (GradScaler's constructor arguments).
    pub fn with_config(init_scale: f64, growth_factor: f64, backoff_factor: f64, growth_interval: u64) -> Self {
        assert!(init_scale > 0.0 && growth_factor > 1.0 && backoff_factor > 0.0 && backoff_factor < 1.0);
        assert!(growth_interval > 0);
        LossScaler {
            enabled: true,
            growth_factor,
            backoff_factor,
            growth_interval,
            state: LossScalerState { scale: init_scale, growth_tracker: 0, skipped_steps: 0 },
        }
    }

    /// Whether loss scaling is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The current loss scale (logged as `training_step/loss_scale`).
    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    /// The factor to pass to `AdamW::accumulate_grads`: `1 / scale`.
    pub fn unscale_factor(&self) -> f64 {
        1.0 / self.state.scale
    }

    /// Updates skipped for inf/NaN gradients so far.
    pub fn skipped_steps(&self) -> u64 {
        self.state.skipped_steps
    }

    /// The loss to call `backward` on: `loss * scale`, or `loss` itself when disabled (so the f32 path is unchanged
    /// bit for bit).
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        if self.enabled {
            loss * self.state.scale
        } else {
            loss.shallow_clone()
        }
    }

    /// Record one update's outcome and return whether the optimizer should step. `found_inf` is whether the
    /// accumulated f32 gradients hold an inf or NaN (a non-finite `AdamW::clip_grad_norm`). On `true` the caller
    /// must not step and should zero the gradients; weights and moments stay as they are.
    pub fn update(&mut self, found_inf: bool) -> bool {
        if !self.enabled {
            return !found_inf;
        }
        let s = &mut self.state;
        if found_inf {
            s.scale *= self.backoff_factor;
            s.growth_tracker = 0;
            s.skipped_steps += 1;
            return false;
        }
        s.growth_tracker += 1;
        if s.growth_tracker >= self.growth_interval {
            // GradScaler keeps its scale in an f32 tensor and grows it only while that stays finite.
            let grown = s.scale * self.growth_factor;
            if grown <= f32::MAX as f64 {
                s.scale = grown;
            }
            s.growth_tracker = 0;
        }
        true
    }

    /// The state to checkpoint.
    pub fn state(&self) -> LossScalerState {
        self.state
    }

    /// Restore what [`LossScaler::state`] saved. A disabled scaler keeps scale 1 whatever was saved (a run resumed
    /// without fp16 has nothing to scale) but keeps the skipped-step count.
    pub fn load_state(&mut self, state: LossScalerState) {
        if self.enabled {
            self.state = state;
        } else {
            self.state.skipped_steps = state.skipped_steps;
        }
    }
}

/// The CPU default. bf16 mixed precision measured 1.5x faster per GRPO step in a release build on a 2-core
/// AVX512-BF16 machine and learnt the same (docs/benchmarks.md, "Mixed precision on the CPU"), but with LoRA its merged
/// checkpoint (`--save-merged`) is built from the bf16 working copy of the base weights, which transformers' f32 merge
/// does not reproduce to 1e-4; until that merge uses f32 base weights, f32 stays the default everywhere.
fn cpu_default() -> MixedPrecision {
    MixedPrecision::No
}

/// A run's precision once the device is known: what the model's parameters hold and whether the optimizer keeps
/// f32 master weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Precision {
    /// The mode in effect (never `Auto`).
    pub mode: MixedPrecision,
    /// The dtype of the model's parameters: the low-precision working copies under mixed precision, else `--dtype`.
    pub working: Kind,
    /// The optimizer keeps f32 master weights (mixed precision); without, updates are added to the parameters in
    /// their own dtype (pure low precision loses updates below half the dtype's spacing).
    pub master_weights: bool,
    /// The dtype rollouts sample in (`--rollout-dtype`; by default `working`).
    pub rollout: Kind,
}

impl Precision {
    /// Resolve `--mixed-precision` and `--dtype` on `device`. `auto` means bf16 mixed precision on CUDA and the
    /// measured default on the CPU, unless `--dtype` names a dtype, which then holds the parameters as given; `no`
    /// with `--dtype auto` is f32 on every device. Mixed precision keeps f32 masters, so it rejects a non-f32
    /// `--dtype`.
    pub fn resolve(mode: MixedPrecision, dtype: DtypeSpec, device: Device) -> anyhow::Result<Precision> {
        let mode = match (mode, dtype) {
            (MixedPrecision::Auto, DtypeSpec::Auto) if device.is_cuda() => MixedPrecision::Bf16,
            (MixedPrecision::Auto, DtypeSpec::Auto) => cpu_default(),
            (MixedPrecision::Auto, _) => MixedPrecision::No,
            (mode, _) => mode,
        };
        match mode.compute_kind() {
            Some(kind) => {
                if !matches!(dtype, DtypeSpec::Auto | DtypeSpec::F32) {
                    return Err(user_error!(
                        "--mixed-precision {mode} keeps f32 master weights, so --dtype {dtype} contradicts it; drop \
                         --dtype, or pass --mixed-precision no to hold the parameters in {dtype}"
                    ));
                }
                Ok(Precision { mode, working: kind, master_weights: true, rollout: kind })
            }
            None => {
                // Accelerate's `no` is f32: `--dtype auto`'s bf16 on CUDA is for inference, and pure bf16 training
                // (which loses small updates) only when asked for by name.
                let working = if dtype == DtypeSpec::Auto { Kind::Float } else { dtype.resolve(device) };
                Ok(Precision { mode, working, master_weights: false, rollout: working })
            }
        }
    }

    /// Sample rollouts in `spec` (`Auto`: the compute precision, `working`).
    pub fn with_rollout(self, spec: DtypeSpec, device: Device) -> Precision {
        let rollout = if spec == DtypeSpec::Auto { self.working } else { spec.resolve(device) };
        Precision { rollout, ..self }
    }

    /// Whether rollouts sample in another dtype than the training forward computes in (a second model copy).
    pub fn separate_rollout(&self) -> bool {
        self.rollout != self.working
    }

    /// A one-line warning when updates at `lr` round away on the parameters (pure low precision, no masters).
    pub fn small_update_warning(&self, lr: f64) -> Option<String> {
        // 0.02 is a typical weight magnitude of a transformer's linear layers at initialisation.
        (!self.master_weights && update_too_small_for(self.working, lr, 0.02)).then(|| {
            format!(
                "warning: --lr {lr:e} is below half the {:?} spacing at |w| ~ 0.02, so most updates round away in \
                 parameters held in that dtype; use --mixed-precision bf16 (f32 master weights) instead",
                self.working
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_follows_device_and_dtype() {
        let cpu = Precision::resolve(MixedPrecision::Auto, DtypeSpec::Auto, Device::Cpu).unwrap();
        assert_eq!(cpu.mode, cpu_default());
        let cuda = Precision::resolve(MixedPrecision::Auto, DtypeSpec::Auto, Device::Cuda(0)).unwrap();
        assert_eq!((cuda.mode, cuda.working, cuda.master_weights), (MixedPrecision::Bf16, Kind::BFloat16, true));
        let pure = Precision::resolve(MixedPrecision::Auto, DtypeSpec::Bf16, Device::Cuda(0)).unwrap();
        assert_eq!((pure.mode, pure.working, pure.master_weights), (MixedPrecision::No, Kind::BFloat16, false));
        assert!(pure.small_update_warning(5e-6).is_some());
        assert!(cuda.small_update_warning(5e-6).is_none());
        let fp16 = Precision::resolve(MixedPrecision::Fp16, DtypeSpec::F32, Device::Cpu).unwrap();
        assert_eq!((fp16.working, fp16.master_weights), (Kind::Half, true));
        assert!(Precision::resolve(MixedPrecision::Bf16, DtypeSpec::F16, Device::Cpu).is_err());
        // Rollouts sample in the compute precision unless told otherwise.
        let mixed = Precision::resolve(MixedPrecision::Bf16, DtypeSpec::Auto, Device::Cpu).unwrap();
        assert_eq!(mixed.with_rollout(DtypeSpec::Auto, Device::Cpu).rollout, Kind::BFloat16);
        assert!(!mixed.with_rollout(DtypeSpec::Bf16, Device::Cpu).separate_rollout());
        // `no` is f32 on CUDA too, whatever `--dtype auto` means for inference there.
        let no = Precision::resolve(MixedPrecision::No, DtypeSpec::Auto, Device::Cuda(0)).unwrap();
        assert_eq!((no.working, no.master_weights, no.rollout), (Kind::Float, false, Kind::Float));
        let f32 = Precision::resolve(MixedPrecision::No, DtypeSpec::Auto, Device::Cpu).unwrap();
        let f32_bf16 = f32.with_rollout(DtypeSpec::Bf16, Device::Cpu);
        assert!(f32_bf16.separate_rollout() && f32_bf16.working == Kind::Float);
    }

    #[test]
    fn names_and_kinds() {
        assert_eq!(serde_json::to_string(&MixedPrecision::Bf16).unwrap(), "\"bf16\"");
        assert_eq!(serde_json::from_str::<MixedPrecision>("\"fp16\"").unwrap(), MixedPrecision::Fp16);
        assert_eq!(serde_json::from_str::<MixedPrecision>("\"no\"").unwrap(), MixedPrecision::No);
        assert_eq!(MixedPrecision::NAMES, ["auto", "no", "bf16", "fp16"]);
        assert_eq!(MixedPrecision::No.compute_kind(), None);
        assert_eq!(MixedPrecision::Bf16.compute_kind(), Some(Kind::BFloat16));
        assert_eq!(MixedPrecision::Fp16.compute_kind(), Some(Kind::Half));
    }

    #[test]
    fn spacing_and_the_small_update_check() {
        // 0.02 = 1.28 * 2^-6: bf16 keeps 7 mantissa bits, so the spacing is 2^-13.
        assert_eq!(spacing(Kind::BFloat16, 0.02), Some(2f64.powi(-13)));
        assert_eq!(spacing(Kind::Half, 0.02), Some(2f64.powi(-16)));
        assert_eq!(spacing(Kind::Float, 1.0), Some(f32::EPSILON as f64));
        assert_eq!(spacing(Kind::Half, 0.0), Some(2f64.powi(-24)));
        assert_eq!(spacing(Kind::Int64, 1.0), None);
        assert!(update_too_small_for(Kind::BFloat16, 5e-6, 0.02));
        assert!(update_too_small_for(Kind::Half, 5e-6, 0.02));
        assert!(!update_too_small_for(Kind::Float, 5e-6, 0.02));
        assert!(!update_too_small_for(Kind::BFloat16, 1e-3, 0.02));
    }

    #[test]
    fn defaults_are_grad_scalers() {
        let s = LossScaler::new(MixedPrecision::Fp16);
        assert!(s.enabled());
        assert_eq!(s.scale(), 65536.0);
        assert_eq!((s.growth_factor, s.backoff_factor, s.growth_interval), (2.0, 0.5, 2000));
        for p in [MixedPrecision::No, MixedPrecision::Bf16] {
            let mut d = LossScaler::new(p);
            assert!(!d.enabled() && d.scale() == 1.0);
            assert!(d.update(false));
            assert!(!d.update(true), "a non-finite gradient is never applied");
            assert_eq!((d.scale(), d.skipped_steps()), (1.0, 0));
        }
    }

    #[test]
    fn backoff_growth_and_state_round_trip() {
        let mut s = LossScaler::with_config(8.0, 2.0, 0.5, 3);
        assert!(!s.update(true));
        assert_eq!((s.scale(), s.skipped_steps()), (4.0, 1));
        assert!(s.update(false) && s.update(false));
        assert_eq!(s.scale(), 4.0);
        assert!(s.update(false));
        assert_eq!(s.scale(), 8.0, "grown after growth_interval good steps");
        assert!(s.update(false));
        let saved = serde_json::to_string(&s.state()).unwrap();
        let mut restored = LossScaler::with_config(65536.0, 2.0, 0.5, 3);
        restored.load_state(serde_json::from_str(&saved).unwrap());
        assert_eq!(restored, s);
        assert_eq!(restored.state(), LossScalerState { scale: 8.0, growth_tracker: 1, skipped_steps: 1 });
    }
}
