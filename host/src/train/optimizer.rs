//! AdamW with decoupled weight decay, gradient-norm clipping and the learning-rate schedule.
//!
//! Hand-written rather than tch's `nn::AdamW`: a resumed run must continue with the same first and second moments,
//! and tch gives no access to the C++ optimizer's state. The update is PyTorch's `torch.optim.AdamW` (bias-corrected
//! moments, `eps` added to the square root, decay applied as `p *= 1 - lr * wd`), so a checkpoint's moments mean the
//! same thing as theirs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use super::config::{LrSchedule, Ramp, ScheduleOptions};

/// The optimizer's hyper-parameters (`--lr`, `--weight-decay`, `--adam-beta1`, `--adam-beta2`, `--adam-eps`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The learning rate over the run: constant by default; a linear warmup, then one of transformers' schedules
/// ([`LrSchedule`]).
///
/// After the warmup each schedule's rate at an update equals transformers' `get_scheduler` at the same step. The
/// warmup differs by one step: its update `k` (0-based) takes `(k + 1) / warmup` of the rate, so the first update
/// learns and the last reaches the full rate, where transformers' `k / warmup` spends the first update at rate 0
/// (its own `cosine_warmup_with_min_lr` counts as here). tests/oracles/lr_schedules.py holds both to that.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// The rate after warmup (`--lr`).
    pub base_lr: f64,
    /// Updates of linear warmup.
    pub warmup_steps: u64,
    /// The shape after warmup.
    pub decay: LrSchedule,
    /// Its options (`--lr-scheduler-kwargs`), `None` for their defaults.
    pub options: ScheduleOptions,
    /// Where a decay ends, as a share of `base_lr` (`--min-lr-ratio`; 0: at zero), for the schedules that take one.
    pub min_lr_ratio: f64,
    /// Updates the schedule spans.
    pub total_steps: u64,
    /// The global step of its first update. The supervised warm-up's steps come before it, at their own rate, so
    /// reinforcement learning still gets its whole warmup and decay.
    pub start: u64,
}

impl Schedule {
    /// `base_lr` for each of `total_steps` updates from step 0: no warmup, no decay.
    pub fn constant(base_lr: f64, total_steps: u64) -> Schedule {
        let (warmup_steps, decay, options, min_lr_ratio, start) = (0, LrSchedule::Constant, Default::default(), 0.0, 0);
        Schedule { base_lr, warmup_steps, decay, options, min_lr_ratio, total_steps, start }
    }

    /// The learning rate for global optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step.saturating_sub(self.start))
    }

    /// The share of the base rate at update `step` of the schedule.
    fn factor(&self, step: u64) -> f64 {
        let (o, warmup, floor) = (&self.options, self.warmup_steps, self.min_lr_ratio);
        // transformers' cosine_with_min_lr and verl's min_lr_ratio: a decay spans base to floor, not base to zero.
        let floored = |factor: f64| floor + (1.0 - floor) * factor;
        if step < warmup {
            let up = (step + 1) as f64 / warmup as f64;
            return match self.decay {
                // WSD's warmup rises from the floor along its own curve.
                LrSchedule::WarmupStableDecay => floored(ramp_up(o.warmup_type.unwrap_or(Ramp::Linear), up)),
                LrSchedule::CosineWarmupWithMinLr if o.warmup_lr_rate.is_some() => {
                    let start = o.warmup_lr_rate.unwrap_or(0.0);
                    start + (1.0 - start) * step as f64 / warmup.saturating_sub(1).max(1) as f64
                }
                _ => up,
            };
        }
        let after = (step - warmup) as f64;
        // How far the decay has gone, from 0 after warmup to 1 at the last update and beyond.
        let progress = || (after / self.total_steps.saturating_sub(warmup).max(1) as f64).min(1.0);
        match self.decay {
            LrSchedule::Constant => 1.0,
            LrSchedule::Linear => floored(1.0 - progress()),
            LrSchedule::Cosine => floored(cosine(o.num_cycles.unwrap_or(0.5), progress())),
            LrSchedule::CosineWarmupWithMinLr => {
                let progress = ((after + 1.0) / self.total_steps.saturating_sub(warmup).max(1) as f64).min(1.0);
                floored(cosine(o.num_cycles.unwrap_or(0.5), progress))
            }
            LrSchedule::CosineWithRestarts => {
                let p = progress();
                // Each restart begins a fresh half-wave; the run's end is 0, not the next restart's top.
                let wave = if p < 1.0 { (o.num_cycles.unwrap_or(1.0) * p) % 1.0 } else { 1.0 };
                floored(0.5 * (1.0 + (std::f64::consts::PI * wave).cos()))
            }
            LrSchedule::Polynomial => {
                let end = o.lr_end.unwrap_or(1e-7) / self.base_lr;
                (1.0 - end) * (1.0 - progress()).powf(o.power.unwrap_or(1.0)) + end
            }
            LrSchedule::InverseSqrt => {
                let timescale = o.timescale.unwrap_or(if warmup > 0 { warmup } else { 10_000 }) as f64;
                1.0 / ((after + timescale) / timescale).sqrt()
            }
            LrSchedule::WarmupStableDecay => {
                let decay = o.num_decay_steps.unwrap_or(1).max(1);
                let stable = o.num_stable_steps.unwrap_or(self.total_steps.saturating_sub(warmup + decay));
                let into_decay = (step - warmup).checked_sub(stable);
                match into_decay.filter(|k| *k < decay) {
                    None if into_decay.is_none() => 1.0,
                    None => floor,
                    Some(k) => {
                        let p = k as f64 / decay as f64;
                        floored(match o.decay_type.unwrap_or(Ramp::Cosine) {
                            Ramp::Linear => 1.0 - p,
                            Ramp::Cosine => cosine(o.num_cycles.unwrap_or(0.5), p),
                            Ramp::OneMinusSqrt => 1.0 - p.sqrt(),
                        })
                    }
                }
            }
        }
    }
}

/// `cycles` cosine waves at `progress` in [0, 1], from 1 (0.5 cycles: a half-wave down to 0), never below 0.
fn cosine(cycles: f64, progress: f64) -> f64 {
    (0.5 * (1.0 + (std::f64::consts::PI * 2.0 * cycles * progress).cos())).max(0.0)
}

/// A warmup's curve at `p` in (0, 1].
fn ramp_up(ramp: Ramp, p: f64) -> f64 {
    match ramp {
        Ramp::Linear => p,
        Ramp::Cosine => 0.5 * (1.0 - (std::f64::consts::PI * p).cos()),
        Ramp::OneMinusSqrt => 1.0 - (1.0 - p).sqrt(),
    }
}

/// AdamW over a fixed set of named parameters, with f32 master weights for low-precision parameters.
///
/// A parameter whose dtype is not f32 (a bf16 or f16 working copy the model computes with) gets an f32 master copy,
/// an f32 gradient buffer and f32 moments; the update is applied to the master and the working parameter is
/// refreshed from it, so updates far below the low-precision spacing still accumulate. f32 parameters are updated in
/// place, exactly as without mixed precision. [`AdamW::without_master_weights`] keeps the pure-low-precision path
/// (updates added straight into bf16 weights, which loses those below half their spacing; see
/// [`update_too_small_for`](super::precision::update_too_small_for)).
///
/// The loop calls the same methods in every precision, for each optimizer step:
/// 1. [`zero_grad`](AdamW::zero_grad) at the start of the accumulation window;
/// 2. per micro-batch: `backward` on the loss (times the loss scale under fp16, see
///    [`LossScaler::scale_loss`](super::precision::LossScaler::scale_loss)), then
///    [`accumulate_grads`](AdamW::accumulate_grads)`(1 / loss_scale)` (1 without loss scaling), which moves the
///    low-precision gradients into the f32 buffers;
/// 3. [`clip_grad_norm`](AdamW::clip_grad_norm): the norm of the f32 gradients, non-finite when any holds an inf or
///    NaN (the one host sync of the check);
/// 4. [`LossScaler::update`](super::precision::LossScaler::update)`(!norm.is_finite())`; if it says to step,
///    [`step`](AdamW::step), which updates the masters and copies them into the working parameters; otherwise
///    `zero_grad` and no step (weights and moments untouched).
///
/// A loop that never calls `accumulate_grads` still works without loss scaling: gradients left on the working
/// parameters are taken at scale 1 by `clip_grad_norm` and `step`.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<(String, Tensor)>,
    /// The f32 master weight of each low-precision parameter; `None` for f32 parameters (and without master weights).
    masters: Vec<Option<Tensor>>,
    /// The f32 gradient of each parameter with a master; allocated at its first gradient.
    master_grads: Vec<Option<Tensor>>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    steps: i64,
    accumulation: Accumulation,
}

/// Where the current accumulation window stands, so the gradients are finished (moved and unscaled) exactly once.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Accumulation {
    /// Since `zero_grad`, no `accumulate_grads`: gradients may be waiting on the working parameters at scale 1.
    Implicit,
    /// `accumulate_grads(scale)` was called; the f32 parameters' own `.grad()` still holds `1 / scale` times theirs.
    Explicit(f64),
    /// The f32 gradients are final for this window.
    Finished,
}

impl AdamW {
    /// An optimizer for `params` (the trainable tensors, by name), with f32 master weights for every parameter whose
    /// dtype is not f32; moments start at zero, in f32.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        Self::build(params, config, true)
    }

    /// An optimizer that adds updates straight into the parameters whatever their dtype: no master weights, so half
    /// the memory of mixed precision for bf16 weights, but an update smaller than half the weight's bf16 spacing
    /// (5e-6 against 6e-5 at |w| ~ 0.02) rounds away. The moments are still f32; it is the applied step that is lost.
    pub fn without_master_weights(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        Self::build(params, config, false)
    }

    fn build(params: Vec<(String, Tensor)>, config: AdamWConfig, master_weights: bool) -> Self {
        let zeros = |p: &Tensor| Tensor::zeros(p.size(), (Kind::Float, p.device()));
        let exp_avg = params.iter().map(|(_, p)| zeros(p)).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| zeros(p)).collect();
        let masters = params
            .iter()
            .map(|(_, p)| (master_weights && p.kind() != Kind::Float).then(|| p.detach().to_kind(Kind::Float)))
            .collect();
        let master_grads = params.iter().map(|_| None).collect();
        AdamW {
            config,
            params,
            masters,
            master_grads,
            exp_avg,
            exp_avg_sq,
            steps: 0,
            accumulation: Accumulation::Implicit,
        }
    }

    /// Number of updates taken so far.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Whether any parameter has an f32 master copy.
    pub fn has_master_weights(&self) -> bool {
        self.masters.iter().any(Option::is_some)
    }

    /// Clear the gradients of every parameter (working and f32), starting a new accumulation window.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
        for g in self.master_grads.iter_mut().flatten() {
            let _ = g.zero_();
        }
        self.accumulation = Accumulation::Implicit;
    }

    /// After each micro-batch's backward: add `scale` times each low-precision parameter's gradient into its f32
    /// buffer and zero the low-precision one, so the sum over micro-batches is taken in f32 rather than rounded at
    /// every addition. `scale` is `1 / loss_scale` (1 without loss scaling) and must be the same for every
    /// micro-batch of a window (the scale only changes between updates). f32 parameters keep accumulating in their
    /// own `.grad()`, multiplied by `scale` once when the window is finished.
    pub fn accumulate_grads(&mut self, scale: f64) {
        match self.accumulation {
            Accumulation::Implicit => self.accumulation = Accumulation::Explicit(scale),
            Accumulation::Explicit(s) => {
                assert!(s == scale, "accumulate_grads: the scale changed within a window ({s} then {scale})")
            }
            Accumulation::Finished => panic!("accumulate_grads after clip_grad_norm or step; call zero_grad first"),
        }
        self.move_grads(scale);
    }

    /// Move the working gradients of the parameters with masters into their f32 buffers.
    fn move_grads(&mut self, scale: f64) {
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                if self.masters[i].is_none() {
                    continue;
                }
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                // One f32 temporary; scaling it before the cast would round the product in bf16/f16.
                let mut g32 = g.to_kind(Kind::Float);
                if scale != 1.0 {
                    let _ = g32.g_mul_scalar_(scale);
                }
                match &mut self.master_grads[i] {
                    Some(buf) => {
                        let _ = buf.g_add_(&g32);
                    }
                    // The first gradient becomes the buffer: no zeros to allocate and add to.
                    slot @ None => *slot = Some(g32),
                }
                let _ = g.detach_().zero_();
            }
        });
    }

    /// Make the f32 gradients final for this window (once): take gradients still on the working parameters at
    /// scale 1 when `accumulate_grads` was never called, and unscale the f32 parameters' own gradients.
    fn finish_grads(&mut self) {
        match self.accumulation {
            Accumulation::Implicit => self.move_grads(1.0),
            Accumulation::Explicit(scale) if scale != 1.0 => tch::no_grad(|| {
                for (i, (_, p)) in self.params.iter().enumerate() {
                    let mut g = p.grad();
                    if self.masters[i].is_none() && g.defined() {
                        let _ = g.g_mul_scalar_(scale);
                    }
                }
            }),
            Accumulation::Explicit(_) | Accumulation::Finished => {}
        }
        self.accumulation = Accumulation::Finished;
    }

    /// The gradient the update uses for parameter `i`: the f32 buffer for a parameter with a master, else its own.
    fn grad(&self, i: usize) -> Option<Tensor> {
        match &self.masters[i] {
            Some(_) => self.master_grads[i].as_ref().map(Tensor::shallow_clone),
            None => Some(self.params[i].1.grad()).filter(Tensor::defined),
        }
    }

    /// Data parallel: make the gradients final and average them over `world`'s ranks, in flat buckets, before the
    /// norm is taken (so clipping and the logged norm are global). A parameter this rank has no gradient for (its
    /// every micro-batch was skipped) joins with zeros, so every rank reduces the same tensors in the same order.
    /// Nothing to do in one process.
    pub fn average_grads(&mut self, world: &crate::distributed::World) -> Result<()> {
        if !world.is_distributed() {
            return Ok(());
        }
        self.finish_grads();
        let mut grads = Vec::with_capacity(self.params.len());
        for i in 0..self.params.len() {
            let g = match self.grad(i) {
                Some(g) => g,
                None => {
                    let (_, p) = &self.params[i];
                    let zeros = Tensor::zeros(p.size(), (Kind::Float, p.device()));
                    if self.masters[i].is_some() {
                        self.master_grads[i] = Some(zeros.shallow_clone());
                    } else {
                        // An f32 parameter's gradient lives on the parameter: define it through autograd.
                        (p * 0.0).sum(Kind::Float).backward();
                    }
                    self.grad(i).unwrap_or(zeros)
                }
            };
            grads.push(g);
        }
        world.average("averaging the gradients over the ranks", &grads)
    }

    /// The global L2 norm of the (f32) gradients, and, when it exceeds `max_norm`, scale them down to it (as
    /// `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping. A non-finite norm, the sign of an inf or
    /// NaN gradient, leaves the gradients as they are; the caller skips that update.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let Some(norm) = self.grad_norm() else { return 0.0 };
        let norm = norm.double_value(&[]);
        self.clip_to(norm, max_norm);
        norm
    }

    /// The global L2 norm of the (f32) gradients as an f32 scalar on their device, `None` without gradients. Makes
    /// the gradients final; reads nothing to the host, so the caller can fetch it with other values in one copy.
    pub fn grad_norm(&mut self) -> Option<Tensor> {
        self.finish_grads();
        let grads: Vec<Tensor> = (0..self.params.len()).filter_map(|i| self.grad(i)).collect();
        if grads.is_empty() {
            return None;
        }
        // One reduction per tensor, accumulated in f32 without a squared copy of each gradient.
        Some(tch::no_grad(|| {
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm_scalaropt_dtype(2.0, Kind::Float)).collect();
            Tensor::stack(&norms, 0).norm()
        }))
    }

    /// Scale the gradients down to `max_norm` when `norm`, their [`AdamW::grad_norm`] read by the caller, is finite
    /// and exceeds it (`max_norm` 0 disables clipping).
    pub fn clip_to(&mut self, norm: f64, max_norm: f64) {
        if !(norm.is_finite() && max_norm > 0.0 && norm > max_norm) {
            return;
        }
        let scale = max_norm / (norm + 1e-6);
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                if let Some(mut g) = self.grad(i) {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        });
    }

    /// One AdamW update with learning rate `lr`, applied to the f32 masters (copied into the working parameters
    /// afterwards) or to the parameters themselves.
    ///
    /// Every f32 target (a master, or an f32 parameter) goes through ATen's fused AdamW kernel in one call
    /// (train/fused_adamw.cpp): one pass over each tensor and its moments, and on CUDA a few kernel launches for the
    /// whole model rather than about a dozen per tensor. Its rule is `torch.optim.AdamW`'s (bias-corrected moments,
    /// `eps` added to the square root, decay as `p *= 1 - lr * wd`). Only the pure-low-precision path (a bf16/f16
    /// parameter without a master) is updated tensor by tensor, since the kernel keeps the moments in the parameter's
    /// dtype.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.finish_grads();
        self.steps += 1;
        let config = self.config;
        let mut fused: Vec<[Tensor; 4]> = Vec::new();
        let mut refreshed = Vec::new();
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let Some(g) = self.grad(i) else { continue };
                let m = self.exp_avg[i].shallow_clone();
                let v = self.exp_avg_sq[i].shallow_clone();
                match &self.masters[i] {
                    Some(master) => {
                        fused.push([master.shallow_clone(), g, m, v]);
                        refreshed.push(i);
                    }
                    None if self.params[i].1.kind() == Kind::Float => {
                        fused.push([self.params[i].1.shallow_clone(), g, m, v])
                    }
                    None => low_precision_step(&self.params[i].1, &g, m, v, config, lr, self.steps),
                }
            }
            fused_adamw(&fused, self.steps, lr, config)?;
            for i in refreshed {
                if let Some(master) = &self.masters[i] {
                    // Round the new master into the bf16/f16 working copy the next forward computes with.
                    self.params[i].1.copy_(master);
                }
            }
            Ok(())
        })
    }

    /// The weights in f32 by parameter name, for a checkpoint: the master of each low-precision parameter, the
    /// parameter itself (converted to f32 when it has no master) otherwise. Shares storage where no conversion is
    /// needed; save or copy before the next step.
    pub fn master_weights(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (i, (name, p)) in self.params.iter().enumerate() {
            let w = match &self.masters[i] {
                Some(m) => m.shallow_clone(),
                None => p.detach().to_kind(Kind::Float),
            };
            out.insert(name.clone(), w);
        }
        out
    }

    /// Restore what [`AdamW::master_weights`] saved: every parameter must be present with its shape. Masters are
    /// restored exactly and the working parameters refreshed from them; a parameter without a master is
    /// overwritten (rounded to its dtype).
    pub fn load_master_weights(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        // Check everything before writing anything, so a bad checkpoint leaves the model as it was.
        for (name, p) in &self.params {
            let t = tensors.get(name).with_context(|| format!("the checkpoint's master weights have no {name}"))?;
            if t.size() != p.size() {
                anyhow::bail!(
                    "the checkpoint's master weight {name} has shape {:?}, the model's {:?}",
                    t.size(),
                    p.size()
                );
            }
        }
        tch::no_grad(|| {
            for (i, (name, p)) in self.params.iter_mut().enumerate() {
                let t = &tensors[name];
                match &mut self.masters[i] {
                    Some(master) => {
                        master.copy_(t);
                        p.copy_(master);
                    }
                    None => p.copy_(t),
                }
            }
        });
        Ok(())
    }

    /// The moments and the step count, by parameter name, for a checkpoint.
    pub fn state(&self) -> (i64, BTreeMap<String, Tensor>) {
        let mut out = BTreeMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("exp_avg.{name}"), self.exp_avg[i].shallow_clone());
            out.insert(format!("exp_avg_sq.{name}"), self.exp_avg_sq[i].shallow_clone());
        }
        (self.steps, out)
    }

    /// Restore what [`AdamW::state`] saved; every parameter must be present with its shape.
    pub fn load_state(&mut self, steps: i64, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (prefix, slot) in [("exp_avg", &mut self.exp_avg[i]), ("exp_avg_sq", &mut self.exp_avg_sq[i])] {
                let key = format!("{prefix}.{name}");
                let t = tensors.get(&key).with_context(|| format!("the checkpoint's optimizer state has no {key}"))?;
                if t.size() != p.size() {
                    anyhow::bail!(
                        "the checkpoint's {key} has shape {:?}, the model's parameter {:?}",
                        t.size(),
                        p.size()
                    );
                }
                *slot = t.to_kind(Kind::Float).to_device(p.device());
            }
        }
        self.steps = steps;
        Ok(())
    }
}

extern "C" {
    fn grpo_fused_adamw(
        params: *const *mut torch_sys::C_tensor,
        grads: *const *mut torch_sys::C_tensor,
        exp_avgs: *const *mut torch_sys::C_tensor,
        exp_avg_sqs: *const *mut torch_sys::C_tensor,
        n: usize,
        step: *mut torch_sys::C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> i32;
}

/// ATen's fused AdamW over `[param, grad, exp_avg, exp_avg_sq]` f32 quadruples, all on one device, as update number
/// `step` (1-based).
fn fused_adamw(tensors: &[[Tensor; 4]], step: i64, lr: f64, config: AdamWConfig) -> Result<()> {
    let Some(first) = tensors.first() else { return Ok(()) };
    // Filled on the device, not copied there: a copy from host memory would wait for the queued kernels on CUDA.
    let step = Tensor::full([], step as f64, (Kind::Float, first[0].device()));
    let column = |k: usize| tensors.iter().map(|t| t[k].as_ptr() as *mut torch_sys::C_tensor).collect::<Vec<_>>();
    let (p, g, m, v) = (column(0), column(1), column(2), column(3));
    let mut err = crate::runtime::ErrBuf::new();
    // SAFETY: four arrays of `n` live tensor handles and a live step tensor, all outliving the call; the shim
    // catches every C++ exception and writes at most 1024 bytes of message.
    let rc = unsafe {
        grpo_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            tensors.len(),
            step.as_ptr() as *mut torch_sys::C_tensor,
            lr,
            config.beta1,
            config.beta2,
            config.weight_decay,
            config.eps,
            err.ptr(),
            1024,
        )
    };
    if rc != 0 {
        anyhow::bail!("the fused AdamW update failed: {}", err.text());
    }
    Ok(())
}

/// The pure-low-precision update of one bf16/f16 parameter without a master, in PyTorch's single-tensor order: the
/// moments in f32, the step rounded into the weight (and lost when it is below half the weight's spacing).
fn low_precision_step(p: &Tensor, g: &Tensor, mut m: Tensor, mut v: Tensor, config: AdamWConfig, lr: f64, step: i64) {
    let AdamWConfig { beta1, beta2, eps, weight_decay, .. } = config;
    let bias1 = 1.0 - beta1.powi(step as i32);
    let bias2_sqrt = (1.0 - beta2.powi(step as i32)).sqrt();
    let mut p = p.shallow_clone();
    let g = g.to_kind(Kind::Float);
    if weight_decay != 0.0 {
        let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
    }
    let _ = m.lerp_(&g, 1.0 - beta1);
    let _ = v.lerp_(&g.square(), 1.0 - beta2);
    let mut denom = v.sqrt();
    let step_size = lr / bias1;
    let _ = denom.g_div_scalar_(bias2_sqrt).g_add_scalar_(eps).g_mul_scalar_(-1.0 / step_size);
    let _ = p.g_add_(&(&m / &denom).to_kind(p.kind()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::OptimizerSettings;
    use serde_json::json;

    #[test]
    fn schedule_warmup_then_cosine_or_linear_to_zero() {
        let s = Schedule {
            base_lr: 1.0,
            warmup_steps: 2,
            decay: LrSchedule::Cosine,
            options: ScheduleOptions::default(),
            min_lr_ratio: 0.0,
            total_steps: 6,
            start: 0,
        };
        assert_eq!(s.lr(0), 0.5);
        assert_eq!(s.lr(1), 1.0);
        assert!((s.lr(2) - 1.0).abs() < 1e-12);
        assert!((s.lr(4) - 0.5).abs() < 1e-12);
        assert!(s.lr(6).abs() < 1e-12);
        let constant = Schedule { decay: LrSchedule::Constant, warmup_steps: 0, ..s };
        assert_eq!(constant.lr(5), 1.0);
        // transformers' get_linear_schedule_with_warmup after its warmup: (total - step) / (total - warmup).
        let linear = Schedule { decay: LrSchedule::Linear, ..s };
        let after: Vec<f64> = (2..8).map(|k| linear.lr(k)).collect();
        assert_eq!(after, [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        // --warmup-ratio: transformers' ceil(ratio * updates) steps, in place of --warmup-steps.
        let settings = OptimizerSettings {
            lr: 1.0,
            schedule: LrSchedule::Linear,
            warmup_steps: 5,
            warmup_ratio: Some(0.25),
            min_lr_ratio: 0.0,
            schedule_options: ScheduleOptions::default(),
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            max_norm: 1.0,
        };
        assert_eq!(settings.schedule(10, 0).unwrap().warmup_steps, 3);
        assert_eq!(OptimizerSettings { warmup_ratio: None, ..settings }.schedule(10, 0).unwrap().warmup_steps, 5);
        let err = OptimizerSettings { warmup_ratio: Some(1.0), ..settings }.check().unwrap_err();
        assert_eq!(err.to_string(), "--warmup-ratio 1: must be in [0, 1)");
        // --min-lr-ratio 0.1: transformers' cosine_with_min_lr, 0.1 + 0.9 x the cosine factor; linear the same way.
        let floored = Schedule { min_lr_ratio: 0.1, ..s };
        let after: Vec<f64> = (2..8).map(|k| floored.lr(k)).collect();
        let quarter = 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2); // cos(pi / 4)
        let want = [1.0, 0.1 + 0.9 * quarter, 0.55, 0.1 + 0.9 * (1.0 - quarter), 0.1, 0.1];
        assert!(after.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{after:?}");
        let floored = Schedule { decay: LrSchedule::Linear, min_lr_ratio: 0.2, ..s };
        let after: Vec<f64> = (2..8).map(|k| floored.lr(k)).collect();
        let want = [1.0, 0.8, 0.6, 0.4, 0.2, 0.2];
        assert!(after.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{after:?}");
        assert_eq!(Schedule { decay: LrSchedule::Constant, min_lr_ratio: 0.5, ..s }.lr(5), 1.0);
        let err = OptimizerSettings { min_lr_ratio: 1.0, ..settings }.check().unwrap_err();
        assert_eq!(err.to_string(), "--min-lr-ratio 1: must be in [0, 1)");
        let err = OptimizerSettings { schedule: LrSchedule::Constant, min_lr_ratio: 0.1, ..settings }.check();
        assert!(err.unwrap_err().to_string().starts_with("--min-lr-ratio 0.1 sets where a decay ends"));
        // After 3 supervised warm-up steps the same schedule runs from global step 3.
        let later = Schedule { start: 3, ..s };
        for k in 0..8 {
            assert_eq!(later.lr(k + 3), s.lr(k), "update {k}");
        }
    }

    /// The settings a command line with `--lr-scheduler-type name --lr-scheduler-kwargs JSON` gives.
    fn settings_of(name: &str, kwargs: &serde_json::Value, lr: f64, warmup: u64) -> Result<OptimizerSettings> {
        let args = crate::cli::args::ScheduleArgs {
            lr_schedule: name.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            warmup_steps: warmup,
            warmup_ratio: None,
            min_lr_ratio: 0.0,
            lr_scheduler_kwargs: Some(kwargs.to_string()),
        };
        let settings = args.optimizer(lr, 0.0, 1.0)?;
        settings.check()?;
        Ok(settings)
    }

    /// Every schedule by transformers' name and keyword arguments against the rates transformers' own schedulers
    /// give (tests/oracles/lr_schedules.py), up to the warmup's one-step difference the oracle applies, and past
    /// the run's end.
    #[test]
    fn schedules_match_transformers() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/optimizer/lr_schedules.json");
        let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(cases.len(), 19);
        for case in &cases {
            let (name, lr) = (case["name"].as_str().unwrap(), case["lr"].as_f64().unwrap());
            let (warmup, total) = (case["warmup"].as_u64().unwrap(), case["total"].as_u64().unwrap());
            let schedule = settings_of(name, &case["kwargs"], lr, warmup).unwrap().schedule(total, 0).unwrap();
            let want: Vec<f64> = serde_json::from_value(case["expected"].clone()).unwrap();
            let got: Vec<f64> = (0..want.len() as u64).map(|k| schedule.lr(k)).collect();
            let close = got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-12 * lr);
            assert!(close, "{name} {}: {got:?}\n want {want:?}", case["kwargs"]);
        }
    }

    /// What `--lr-scheduler-kwargs` refuses, each in one line: keys the schedule does not take, two floors, a
    /// missing WSD decay length or one longer than the run, values out of range.
    #[test]
    fn schedule_kwargs_are_checked() {
        let err = |name: &str, kwargs: serde_json::Value| settings_of(name, &kwargs, 1e-4, 2).unwrap_err().to_string();
        let refused = [
            ("cosine", json!({"power": 2}), "--lr-scheduler-kwargs power: --lr-schedule cosine does not take it"),
            ("linear", json!({"num_cycles": 2}), "(it takes none)"),
            ("cosine", json!({"min_lr_rate": 0.1, "min_lr": 1e-6}), "min_lr_rate and min_lr both set"),
            ("polynomial", json!({"min_lr_rate": 0.1}), "polynomial ends at lr_end"),
            ("polynomial", json!({"lr_end": 1e-3}), "lr_end 0.001: must be below --lr 0.0001"),
            ("cosine", json!({"num_cycles": 0}), "num_cycles 0: must be a positive number"),
            ("warmup_stable_decay", json!({}), "needs the decay's length"),
            ("warmup_stable_decay", json!({"num_decay_steps": 3, "decay_type": "cubic"}), "cubic"),
            ("cosine", json!({"cycles": 2}), "unknown field `cycles`"),
            ("cosine", json!([1]), "must be a JSON object"),
        ];
        for (name, kwargs, want) in refused {
            let e = err(name, kwargs.clone());
            assert!(e.contains(want) && e.lines().count() == 1, "{name} {kwargs}: {e}");
        }
        let wsd = settings_of("warmup_stable_decay", &json!({"num_decay_steps": 9}), 1e-4, 2).unwrap();
        let e = wsd.schedule(10, 0).unwrap_err().to_string();
        assert!(e.contains("leaves 8 for the decay"), "{e}");
        // The floor by any of its names is --min-lr-ratio's; min_lr is a rate.
        let floor = |kwargs| settings_of("cosine", &kwargs, 1e-4, 0).unwrap().min_lr_ratio;
        assert_eq!(floor(json!({"min_lr_ratio": 0.25})), 0.25);
        assert!((floor(json!({"min_lr": 2e-5})) - 0.2).abs() < 1e-12);
    }

    /// Two AdamW steps on a fixed gradient, against values computed by hand from PyTorch's update rule.
    #[test]
    #[allow(clippy::needless_range_loop)] // the index mirrors the per-element formula
    fn adamw_matches_pytorch_rule() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], cfg);
        let mut expected = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for step in 1..=2 {
            opt.zero_grad();
            let loss = (&p * Tensor::from_slice(&[3.0f32, 0.5])).sum(Kind::Float);
            loss.backward();
            opt.step(cfg.lr).unwrap();
            let g = [3.0, 0.5];
            for i in 0..2 {
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(step));
                let vh = v[i] / (1.0 - 0.999f64.powi(step));
                expected[i] *= 1.0 - 0.1 * 0.01;
                expected[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - expected[i]).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn clipping_reports_the_norm_before_clipping() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let cfg = AdamWConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], cfg);
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - 5.0).abs() < 1e-5);
        let g = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-4 && (g[1] - 0.8).abs() < 1e-4, "{g:?}");
    }

    use crate::train::precision::LossScaler;
    use tch::Device;

    const CFG: AdamWConfig = AdamWConfig { lr: 5e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };

    fn floats(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.detach().to_kind(Kind::Float)).unwrap()
    }

    /// One optimizer step on the gradient of `(p * g).sum()`, in the call order the training loop follows.
    fn step_on(opt: &mut AdamW, p: &Tensor, g: &Tensor, lr: f64) -> f64 {
        opt.zero_grad();
        (p * g).sum(Kind::Float).backward();
        opt.accumulate_grads(1.0);
        let norm = opt.clip_grad_norm(0.0);
        opt.step(lr).unwrap();
        norm
    }

    /// The fused update takes every parameter in one call: each must still get its own gradient and moments. Two
    /// parameters (an f32 one and a bf16 one with a master) stepped together equal each stepped alone.
    #[test]
    fn one_fused_call_keeps_each_parameter_with_its_own_state() {
        let make = || {
            let a = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).set_requires_grad(true);
            let b = Tensor::from_slice(&[0.02f32, -0.03]).to_kind(Kind::BFloat16).set_requires_grad(true);
            (a, b)
        };
        let (ga, gb) = (Tensor::from_slice(&[1.0f32, -2.0, 0.5]), Tensor::from_slice(&[0.3f32, 4.0]));
        let (a, b) = make();
        let mut both = AdamW::new(vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())], CFG);
        let (a1, b1) = make();
        let mut alone_a = AdamW::new(vec![("a".into(), a1.shallow_clone())], CFG);
        let mut alone_b = AdamW::new(vec![("b".into(), b1.shallow_clone())], CFG);
        for step in 1..=3 {
            let lr = 1e-3 * step as f64;
            both.zero_grad();
            ((&a * &ga).sum(Kind::Float) + (&b * &gb).sum(Kind::Float)).backward();
            both.accumulate_grads(1.0);
            both.step(lr).unwrap();
            step_on(&mut alone_a, &a1, &ga, lr);
            step_on(&mut alone_b, &b1, &gb, lr);
        }
        assert_eq!(floats(&a), floats(&a1));
        assert_eq!(floats(&b), floats(&b1));
        let (masters, alone) = (both.master_weights(), alone_b.master_weights());
        assert_eq!(floats(&masters["b"]), floats(&alone["b"]));
        assert_ne!(floats(&masters["b"]), floats(&make().1), "the master moved");
    }

    /// The defect of issue 12: at lr 5e-6 an AdamW update (about lr per element) is far below half the bf16 spacing
    /// of weights ~N(0, 0.02) (6e-5 at |w| = 0.02), so added straight into bf16 weights it rounds away for all but
    /// the few weights near zero. With f32 master weights the update is the f32 one.
    #[test]
    fn small_updates_survive_with_master_weights() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(12);
        let n = 4096;
        let opts = (Kind::Float, Device::Cpu);
        // All three start from the same bf16-representable weights and see the same bf16-representable gradient,
        // so any difference comes from where the update is added.
        let w0 = (Tensor::randn([n], opts) * 0.02).to_kind(Kind::BFloat16).to_kind(Kind::Float);
        let g = Tensor::randn([n], opts).to_kind(Kind::BFloat16).to_kind(Kind::Float);

        let pa = w0.copy().set_requires_grad(true);
        let mut a = AdamW::new(vec![("w".into(), pa.shallow_clone())], CFG);
        assert!(!a.has_master_weights(), "f32 parameters need no master copy");
        let pb = w0.to_kind(Kind::BFloat16).set_requires_grad(true);
        let mut b = AdamW::new(vec![("w".into(), pb.shallow_clone())], CFG);
        assert!(b.has_master_weights());
        let pc = w0.to_kind(Kind::BFloat16).set_requires_grad(true);
        let mut c = AdamW::without_master_weights(vec![("w".into(), pc.shallow_clone())], CFG);
        assert!(!c.has_master_weights());

        let norm_a = step_on(&mut a, &pa, &g, CFG.lr);
        let norm_b = step_on(&mut b, &pb, &g, CFG.lr);
        step_on(&mut c, &pc, &g, CFG.lr);
        assert!((norm_a - norm_b).abs() <= 1e-6 * norm_a, "{norm_a} vs {norm_b}");

        let delta_a = pa.detach() - &w0;
        let delta_b = &b.master_weights()["w"] - &w0;
        let rel = (&delta_b - &delta_a).norm().double_value(&[]) / delta_a.norm().double_value(&[]);
        let mean_update = delta_a.abs().mean(Kind::Float).double_value(&[]);
        let changed = |p: &Tensor| p.to_kind(Kind::Float).ne_tensor(&w0).sum(Kind::Int64).int64_value(&[]);
        let frac_c = changed(&pc) as f64 / n as f64;
        eprintln!("mean |update| {mean_update:.3e}; master vs f32 relative difference {rel:.3e}; pure bf16 changed {frac_c:.3}");
        assert!((mean_update - CFG.lr).abs() < 0.05 * CFG.lr, "an Adam first step is about lr: {mean_update}");
        assert!(rel < 1e-3, "master-weight update differs from the f32 one by {rel}");
        assert!(frac_c < 0.15, "pure bf16 changed {frac_c} of the weights");
        // The working copy is the master rounded to bf16.
        assert!(pb.detach().equal(&b.master_weights()["w"].to_kind(Kind::BFloat16)));

        // Over more steps the masters carry the updates into the bf16 working copy; pure bf16 stays stuck.
        for _ in 0..40 {
            step_on(&mut b, &pb, &g, CFG.lr);
            step_on(&mut c, &pc, &g, CFG.lr);
        }
        let (frac_b, frac_c) = (changed(&pb) as f64 / n as f64, changed(&pc) as f64 / n as f64);
        eprintln!("after 41 steps: bf16 working copy changed {frac_b:.3}, pure bf16 changed {frac_c:.3}");
        assert!(frac_b > 0.5 && frac_c < 0.15, "{frac_b} {frac_c}");
    }

    /// Micro-batch gradients are summed in f32, and the scale is applied once for f32 parameters.
    #[test]
    fn accumulation_is_in_f32() {
        let g1 = Tensor::from_slice(&[1.0f32]);
        let g2 = Tensor::from_slice(&[2f32.powi(-10)]); // 1 + 2^-10 rounds to 1 in bf16
        for (masters, expected) in [(true, 1.0 + 2f64.powi(-10)), (false, 1.0)] {
            let p = Tensor::from_slice(&[0.5f32]).to_kind(Kind::BFloat16).set_requires_grad(true);
            let params = vec![("p".into(), p.shallow_clone())];
            let mut opt = if masters { AdamW::new(params, CFG) } else { AdamW::without_master_weights(params, CFG) };
            opt.zero_grad();
            for g in [&g1, &g2] {
                (&p * g).sum(Kind::Float).backward();
                opt.accumulate_grads(1.0);
            }
            assert_eq!(opt.clip_grad_norm(0.0), expected, "master weights: {masters}");
        }

        // f32 parameters: two micro-batches at scale 0.5 give 0.5 * (g + g), not the scale applied twice.
        let p = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], CFG);
        opt.zero_grad();
        for _ in 0..2 {
            (&p * &g1).sum(Kind::Float).backward();
            opt.accumulate_grads(0.5);
        }
        assert_eq!(opt.clip_grad_norm(0.0), 1.0);

        // A loop that never calls accumulate_grads gets the same update as one that does, in either precision.
        for kind in [Kind::Float, Kind::BFloat16] {
            let w = Tensor::from_slice(&[0.5f32, -0.25]).to_kind(kind);
            let g = Tensor::from_slice(&[3.0f32, -0.5]);
            let (p1, p2) = (w.copy().set_requires_grad(true), w.copy().set_requires_grad(true));
            let mut o1 = AdamW::new(vec![("p".into(), p1.shallow_clone())], CFG);
            let mut o2 = AdamW::new(vec![("p".into(), p2.shallow_clone())], CFG);
            step_on(&mut o1, &p1, &g, 1e-3);
            o2.zero_grad();
            (&p2 * &g).sum(Kind::Float).backward();
            o2.clip_grad_norm(0.0);
            o2.step(1e-3).unwrap();
            assert!(o1.master_weights()["p"].equal(&o2.master_weights()["p"]), "{kind:?}");
            assert!(p1.detach().equal(&p2.detach()));
        }
    }

    /// fp16 with dynamic loss scaling: an inf gradient skips the update (weights, masters and moments untouched)
    /// and halves the scale; `growth_interval` good updates double it.
    #[test]
    fn fp16_loss_scaling_skips_and_grows() {
        let w0 = [0.5f32, -0.25, 0.125, 1.0]; // exact in f16
        let p = Tensor::from_slice(&w0).to_kind(Kind::Half).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], CFG);
        let mut scaler =
            LossScaler::with_config(LossScaler::INIT_SCALE, LossScaler::GROWTH_FACTOR, LossScaler::BACKOFF_FACTOR, 2);
        // 1.5 * 65536 overflows f16 (max 65504); 1.5 * 32768 does not.
        let good = Tensor::from_slice(&[1.5f32, -0.5, 0.25, 1.0]);
        let injected = Tensor::from_slice(&[f32::INFINITY, -0.5, 0.25, 1.0]);
        let lr = 1e-3;
        let window = |opt: &mut AdamW, scaler: &mut LossScaler, g: &Tensor| -> (bool, f64) {
            opt.zero_grad();
            scaler.scale_loss(&(&p * g).sum(Kind::Float)).backward();
            opt.accumulate_grads(scaler.unscale_factor());
            let norm = opt.clip_grad_norm(1e9);
            let stepped = scaler.update(!norm.is_finite());
            if stepped {
                opt.step(lr).unwrap();
            } else {
                opt.zero_grad();
            }
            (stepped, norm)
        };
        let snapshot = |opt: &AdamW| {
            let (steps, moments) = opt.state();
            let mut all: Vec<Tensor> = moments.values().map(Tensor::copy).collect();
            all.push(opt.master_weights()["w"].copy());
            all.push(p.detach().copy());
            (steps, all)
        };
        let unchanged = |a: &(i64, Vec<Tensor>), b: &(i64, Vec<Tensor>)| {
            a.0 == b.0 && a.1.iter().zip(&b.1).all(|(x, y)| x.equal(y))
        };

        let before = snapshot(&opt);
        assert!(!window(&mut opt, &mut scaler, &injected).0);
        assert!(unchanged(&before, &snapshot(&opt)), "a skipped update changed the weights or moments");
        assert_eq!((scaler.scale(), scaler.skipped_steps(), opt.steps()), (32768.0, 1, 0));
        assert_eq!(floats(&before.1[0]), [0.0; 4], "moments stay at zero");

        let (stepped, norm) = window(&mut opt, &mut scaler, &good);
        assert!(stepped);
        assert!((norm - 3.5625f64.sqrt()).abs() < 1e-6, "the norm is of the unscaled gradient: {norm}");
        assert_eq!(scaler.scale(), 32768.0);
        // The update is the f32 one on the unscaled gradient.
        let reference = Tensor::from_slice(&w0).set_requires_grad(true);
        let mut f32_opt = AdamW::new(vec![("w".into(), reference.shallow_clone())], CFG);
        step_on(&mut f32_opt, &reference, &good, lr);
        assert!(opt.master_weights()["w"].equal(&reference.detach()));

        assert!(window(&mut opt, &mut scaler, &good).0);
        assert_eq!(scaler.scale(), 65536.0, "doubled after growth_interval good updates");

        // Back at 65536 the same gradient overflows f16 by itself.
        let before = snapshot(&opt);
        assert!(!window(&mut opt, &mut scaler, &good).0);
        assert!(unchanged(&before, &snapshot(&opt)));
        assert_eq!((scaler.scale(), scaler.skipped_steps(), opt.steps()), (32768.0, 2, 2));
    }

    /// Masters, moments and the loss scaler restored from a checkpoint continue the run exactly.
    #[test]
    fn master_weights_round_trip() {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(7);
        let opts = (Kind::Float, Device::Cpu);
        let g = Tensor::randn([64], opts);
        let gb = Tensor::randn([3], opts);
        let make = |w: &Tensor, b: &Tensor| {
            let w = w.to_kind(Kind::BFloat16).set_requires_grad(true);
            let b = b.copy().set_requires_grad(true); // an f32 parameter alongside
            let opt = AdamW::new(vec![("w".into(), w.shallow_clone()), ("b".into(), b.shallow_clone())], CFG);
            (w, b, opt)
        };
        let run = |opt: &mut AdamW, w: &Tensor, b: &Tensor| {
            opt.zero_grad();
            ((w * &g).sum(Kind::Float) + (b * &gb).sum(Kind::Float)).backward();
            opt.accumulate_grads(1.0);
            opt.clip_grad_norm(1.0);
            opt.step(1e-4).unwrap();
        };
        let (w, b, mut opt) = make(&(Tensor::randn([64], opts) * 0.02), &Tensor::randn([3], opts));
        for _ in 0..3 {
            run(&mut opt, &w, &b);
        }
        let masters: BTreeMap<String, Tensor> = opt.master_weights().into_iter().map(|(k, v)| (k, v.copy())).collect();
        assert!(masters.values().all(|t| t.kind() == Kind::Float));
        let (steps, moments) = opt.state();
        let moments: BTreeMap<String, Tensor> = moments.into_iter().map(|(k, v)| (k, v.copy())).collect();
        let mut scaler = LossScaler::with_config(1024.0, 2.0, 0.5, 2);
        scaler.update(true);
        scaler.update(false);
        let scaler_json = serde_json::to_string(&scaler.state()).unwrap();

        let (w2, b2, mut opt2) = make(&Tensor::zeros([64], opts), &Tensor::zeros([3], opts));
        let missing: BTreeMap<String, Tensor> =
            masters.iter().filter(|(k, _)| *k != "b").map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        assert!(opt2.load_master_weights(&missing).is_err());
        assert!(w2.detach().equal(&Tensor::zeros([64], (Kind::BFloat16, Device::Cpu))), "untouched on error");
        opt2.load_master_weights(&masters).unwrap();
        opt2.load_state(steps, &moments).unwrap();
        let mut scaler2 = LossScaler::with_config(65536.0, 2.0, 0.5, 2);
        scaler2.load_state(serde_json::from_str(&scaler_json).unwrap());
        assert_eq!(scaler2, scaler);
        for (name, t) in opt2.master_weights() {
            assert!(t.equal(&masters[&name]), "{name}");
        }
        assert!(w2.detach().equal(&w.detach()) && b2.detach().equal(&b.detach()));

        run(&mut opt, &w, &b);
        run(&mut opt2, &w2, &b2);
        assert!(opt.master_weights()["w"].equal(&opt2.master_weights()["w"]));
        assert!(w2.detach().equal(&w.detach()) && b2.detach().equal(&b.detach()));
    }
}
