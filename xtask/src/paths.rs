//! Locations in the per-user cache. `host/src/paths.rs` computes the same cache directory; keep the two in step
//! (xtask cannot depend on the host crate: it must run before libtorch exists).

use std::path::{Path, PathBuf};

/// `$GRPO_RS_CACHE`, else `$XDG_CACHE_HOME/grpo-rs`, else `~/.cache/grpo-rs`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRPO_RS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".cache")
    });
    base.join("grpo-rs")
}

/// The repository root (the parent of xtask/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

/// Everything setup creates, by name.
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    pub fn new() -> Self {
        Cache { root: cache_dir() }
    }
    pub fn wheels(&self) -> PathBuf {
        self.root.join("wheels")
    }
    pub fn venv(&self) -> PathBuf {
        self.root.join("venv")
    }
    pub fn python(&self) -> PathBuf {
        self.venv().join("bin").join("python")
    }
    pub fn models(&self) -> PathBuf {
        self.root.join("models")
    }
    pub fn default_model(&self) -> PathBuf {
        self.models().join("SmolLM2-135M-Instruct")
    }
    /// The sentence embedding model of `multiturn_qa`'s dense retriever; the plugin computes the same path.
    pub fn dense_model(&self) -> PathBuf {
        self.models().join("all-MiniLM-L6-v2")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("setup.lock")
    }
}
