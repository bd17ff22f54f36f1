//! Gradient checkpointing (`--gradient-checkpointing`, transformers' `gradient_checkpointing_enable`): each decoder
//! layer's forward pass keeps only its input, and the backward pass runs the layer again to get what it needs. A
//! training step then holds one hidden state per layer instead of every layer's intermediates (attention scores,
//! the MLP's wide activations), for one more forward pass through the layers. The results are the same: the
//! recomputation repeats the forward's operations on the same values, with the same dropout draws.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU64, Ordering};

use tch::Tensor;
use torch_sys::C_tensor;

static RUNS: AtomicU64 = AtomicU64::new(0);

/// How many times gradient checkpointing has run a layer in this process, forward passes and their recomputations
/// together (two per checkpointed layer per forward and backward): what shows that a run checkpoints.
pub fn checkpointed_runs() -> u64 {
    RUNS.load(Ordering::Relaxed)
}

/// The recomputed function, boxed so that its address can travel through C.
type Function = Box<dyn Fn(&Tensor) -> Tensor>;

extern "C" {
    fn grpo_recompute_in_backward(
        x: *mut C_tensor,
        data: *mut c_void,
        call: extern "C" fn(*mut c_void, *mut C_tensor, *mut c_char, usize) -> *mut C_tensor,
        drop: extern "C" fn(*mut c_void),
        preserve_rng: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut C_tensor;
}

/// `f(x)`, with `f` run again in the backward pass instead of autograd keeping its intermediates (model/recompute.cpp).
/// With gradients off it is a plain call. `preserve_rng`: `f` draws random numbers (dropout), so the recomputation
/// must replay the forward's draws. Panics, as tch's own operations do, when libtorch fails.
pub(crate) fn recompute_in_backward(x: &Tensor, f: impl Fn(&Tensor) -> Tensor + 'static, preserve_rng: bool) -> Tensor {
    let data = Box::into_raw(Box::new(Box::new(f) as Function)) as *mut c_void;
    let mut err = crate::runtime::ErrBuf::new();
    // SAFETY: `x` is a live tensor for the call. The shim owns `data` from here on and frees it through `drop_function`
    // exactly once, when the autograd graph holding it goes (or at once with gradients off). libtorch runs `call`
    // and `drop_function` on the thread running the backward pass (on CUDA, its device thread while the caller waits in
    // `backward`), never two at a time. A non-null result is a new tensor whose ownership passes to the return value.
    let out = unsafe {
        grpo_recompute_in_backward(
            x.as_ptr() as *mut _,
            data,
            call_function,
            drop_function,
            preserve_rng as i32,
            err.ptr(),
            1024,
        )
    };
    if out.is_null() {
        panic!("{}", err.text());
    }
    unsafe { Tensor::from_ptr(out) }
}

/// Called by the shim: `f(x)` as a new tensor it owns, or null with the message in `err` (a panic must not unwind
/// into C++).
extern "C" fn call_function(data: *mut c_void, x: *mut C_tensor, err: *mut c_char, err_len: usize) -> *mut C_tensor {
    // SAFETY: `data` is the boxed function `recompute_in_backward` made, alive until `drop_function`; `x` is a live
    // tensor the shim lends for the call, which `clone_from_ptr` shares rather than takes.
    let (f, x) = unsafe { (&*(data as *const Function), Tensor::clone_from_ptr(x)) };
    RUNS.fetch_add(1, Ordering::Relaxed);
    match crate::error::catch_panics(|| Ok(f(&x))) {
        Ok(mut y) => {
            let out = y.as_mut_ptr();
            // The shim takes the tensor tch allocated; it must not be freed here too.
            std::mem::forget(y);
            out
        }
        Err(e) => {
            write_error(&e.to_string(), err, err_len);
            std::ptr::null_mut()
        }
    }
}

/// Called by the shim when the graph holding the function is freed.
extern "C" fn drop_function(data: *mut c_void) {
    // SAFETY: `data` came from `Box::into_raw` in `recompute_in_backward` and the shim frees it once.
    drop(unsafe { Box::from_raw(data as *mut Function) });
}

/// `text` into the shim's buffer of `len` bytes, cut to fit and NUL-terminated.
fn write_error(text: &str, err: *mut c_char, len: usize) {
    if err.is_null() || len == 0 {
        return;
    }
    let n = text.len().min(len - 1);
    // SAFETY: the shim's buffer holds `len` bytes and `n < len`.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr() as *const c_char, err, n);
        *err.add(n) = 0;
    }
}
