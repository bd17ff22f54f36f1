//! Where plugin libraries are looked for, in order: `--plugin-dir DIR` (repeatable), the directories in
//! `GRPO_PLUGIN_PATH`, the directory of the running executable (so `target/release` works right after
//! `cargo build --release`), then the per-user data directory.

use std::path::{Path, PathBuf};

/// The environment variable holding extra plugin directories (separated like `PATH`).
pub const PLUGIN_PATH_ENV: &str = "GRPO_PLUGIN_PATH";

/// Which places to search.
#[derive(Clone, Debug)]
pub struct DiscoveryOptions {
    /// `--plugin-dir` values, searched first; each must be a directory.
    pub plugin_dirs: Vec<PathBuf>,
    /// Search `GRPO_PLUGIN_PATH`.
    pub use_env_path: bool,
    /// Search the executable's directory.
    pub use_exe_dir: bool,
    /// Search [`user_plugin_dir`].
    pub use_user_dir: bool,
}

impl DiscoveryOptions {
    /// The normal search: `plugin_dirs`, then the environment, the executable's directory and the user directory.
    pub fn new(plugin_dirs: Vec<PathBuf>) -> Self {
        DiscoveryOptions { plugin_dirs, use_env_path: true, use_exe_dir: true, use_user_dir: true }
    }

    /// Only the given directories (for tests and tools that must not pick up installed plugins).
    pub fn only(plugin_dirs: Vec<PathBuf>) -> Self {
        DiscoveryOptions { plugin_dirs, use_env_path: false, use_exe_dir: false, use_user_dir: false }
    }

    /// The directories to search, in order, without duplicates. Directories the user named (flag or environment)
    /// must exist; the implicit ones are skipped when absent.
    pub fn search_dirs(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let push = |dir: PathBuf, dirs: &mut Vec<PathBuf>| {
            let key = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            if !dirs.iter().any(|d| d.canonicalize().unwrap_or_else(|_| d.clone()) == key) {
                dirs.push(dir);
            }
        };
        for dir in &self.plugin_dirs {
            if !dir.is_dir() {
                return Err(crate::user_error!(
                    "--plugin-dir {}: not a directory; pass a folder that holds plugin libraries (*{})",
                    dir.display(),
                    std::env::consts::DLL_SUFFIX
                ));
            }
            push(dir.clone(), &mut dirs);
        }
        if self.use_env_path {
            if let Some(value) = std::env::var_os(PLUGIN_PATH_ENV) {
                for dir in std::env::split_paths(&value).filter(|d| !d.as_os_str().is_empty()) {
                    if !dir.is_dir() {
                        return Err(crate::user_error!(
                            "{PLUGIN_PATH_ENV} names {}, which is not a directory; fix or unset {PLUGIN_PATH_ENV}",
                            dir.display()
                        ));
                    }
                    push(dir, &mut dirs);
                }
            }
        }
        if self.use_exe_dir {
            if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
                push(dir, &mut dirs);
            }
        }
        if self.use_user_dir {
            let dir = user_plugin_dir();
            if dir.is_dir() {
                push(dir, &mut dirs);
            }
        }
        Ok(dirs)
    }
}

/// The per-user plugin directory: `$XDG_DATA_HOME/grpo-rs/plugins`, else `~/.local/share/grpo-rs/plugins`.
pub fn user_plugin_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".local/share")
    });
    base.join("grpo-rs").join("plugins")
}

/// The shared libraries directly inside `dir` (by file suffix), sorted by name so that loading order is stable.
pub(crate) fn libraries_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| crate::user_error!("plugin directory {}: cannot list it: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX))
        })
        .collect();
    files.sort();
    Ok(files)
}
