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
