//! Facts about the libtorch runtime the host is linked against.

/// The libtorch version grpo-rs is built and tested against (tch 0.24).
pub const LIBTORCH_VERSION: &str = grpo_sdk::LIBTORCH_VERSION;

/// One line for `--version`: host version, libtorch version, CUDA availability and device count.
pub fn version_line() -> String {
    let cuda = if tch::Cuda::is_available() {
        format!("available, {} device(s)", tch::Cuda::device_count())
    } else {
        "not available".to_string()
    };
    format!("grpo-host {} (libtorch {}, CUDA {})", env!("CARGO_PKG_VERSION"), LIBTORCH_VERSION, cuda)
}

/// Set libtorch's intra-op thread count (`None` keeps libtorch's choice, one per core).
pub fn set_threads(threads: Option<i32>) {
    if let Some(t) = threads {
        tch::set_num_threads(t.max(1));
    }
}

/// An error buffer for the C++ shims (shim_error.h writes into it), read back as one line.
pub(crate) struct ErrBuf([std::ffi::c_char; 1024]);

impl ErrBuf {
    /// A zeroed buffer.
    pub(crate) fn new() -> Self {
        ErrBuf([0; 1024])
    }

    /// Where the shim writes; it takes this and 1024 as its length.
    pub(crate) fn ptr(&mut self) -> *mut std::ffi::c_char {
        self.0.as_mut_ptr()
    }

    /// The message, newlines folded so it stays one line.
    pub(crate) fn text(&self) -> String {
        // SAFETY: the shim always NUL-terminates within the buffer, and the buffer starts zeroed.
        unsafe { std::ffi::CStr::from_ptr(self.0.as_ptr()) }.to_string_lossy().replace('\n', " ")
    }
}

extern "C" {
    fn grpo_set_deterministic(on: i32) -> i32;
    fn grpo_init_logging();
}

/// Apply `TORCH_CPP_LOG_LEVEL` to libtorch's own log lines (`[W...]` warnings from c10d, say), as importing torch
/// does in Python: `ERROR` keeps only errors. Called once at start.
pub fn init_logging() {
    // SAFETY: no arguments; the shim catches every C++ exception.
    unsafe { grpo_init_logging() }
}

/// Switch libtorch's deterministic algorithms on or off (`torch.use_deterministic_algorithms`). On CUDA this also
/// needs `CUBLAS_WORKSPACE_CONFIG` set before cuBLAS starts, which this sets when it is unset. Returns an error when
/// libtorch refuses.
pub fn set_deterministic(on: bool) -> anyhow::Result<()> {
    if on && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        // SAFETY: called at start-up, before the training threads and before CUDA reads the variable.
        unsafe { std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8") };
    }
    // SAFETY: the shim takes an int and catches every C++ exception.
    match unsafe { grpo_set_deterministic(i32::from(on)) } {
        r if r == i32::from(on) => Ok(()),
        _ => anyhow::bail!("libtorch did not accept deterministic algorithms = {on}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_switch_round_trips() {
        super::set_deterministic(true).unwrap();
        super::set_deterministic(false).unwrap();
    }
}
