//! Where grpo-rs keeps things outside the repository. `xtask/src/paths.rs` computes the same cache location: the
//! two must agree, and xtask cannot depend on this crate (it runs before libtorch exists).

use std::path::PathBuf;

/// The per-user cache: `$GRPO_RS_CACHE`, else `$XDG_CACHE_HOME/grpo-rs`, else `~/.cache/grpo-rs`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRPO_RS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".cache"));
    base.join("grpo-rs")
}

/// The default model that `cargo xtask setup` converts: SmolLM2-135M-Instruct in Hugging Face layout.
pub fn default_model_dir() -> PathBuf {
    cache_dir().join("models").join("SmolLM2-135M-Instruct")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"))
}
