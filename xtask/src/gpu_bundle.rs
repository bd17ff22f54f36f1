//! `cargo xtask gpu-bundle`: everything xtask/gpu-check.sh needs on a lent GPU machine that has Python's torch but
//! no Rust toolchain, no network and no model weights, packed as `.gpu/bundle.tar.gz` (git-ignored), small enough
//! to travel with the working tree (the device tool takes 64 MiB in all). It holds:
//!
//! - `target/release/`: grpo-host and the shipped plugins (release, for the benchmarks);
//! - `target/debug/`: the same in the test profile, and `deps/` with the CUDA-gated test executables
//!   (model_parity, plugin_loader, train_e2e), listed in `tests.txt`; `checkout.txt` names the checkout they were
//!   built in, whose absolute paths they keep (fixtures, grpo-host);
//! - `xtask`: this program, which runs the benchmarks with `--host`/`--python` (no setup, no build);
//! - `tokenizer/`: the default model's tokenizer files; the weights stay here (random ones are made there).
//!
//! Executables are stripped of their line tables (binutils' `strip`), which makes them about a fifth the size, and
//! gzip halves that again.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::paths::{repo_root, Cache};
use crate::process::cargo;

/// The test executables whose tests run on CUDA when it is there (`common::devices`).
const TESTS: [&str; 3] = ["model_parity", "plugin_loader", "train_e2e"];

/// The device tool's limit on what travels, working tree included.
const LIMIT: u64 = 64 << 20;

/// Build and gather the bundle.
pub fn run() -> Result<()> {
    crate::setup::setup(false)?;
    let root = repo_root();
    cargo(&["build", "--release"], "building grpo-host and the shipped plugins (release)")?;
    cargo(&["build", "--workspace"], "building the host and plugins (test profile)")?;
    let tests = test_executables(&root)?;

    let folder = root.join(".gpu");
    if folder.exists() {
        std::fs::remove_dir_all(&folder).with_context(|| format!("removing the old {}", folder.display()))?;
    }
    let bundle = folder.join("unpacked");
    for profile in ["release", "debug"] {
        let (from, to) = (root.join("target").join(profile), bundle.join("target").join(profile));
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
            let plugin = name.starts_with("libgrpo_") && name.ends_with(".so") && !name.contains("test_");
            if name == "grpo-host" || plugin {
                stripped_copy(&path, &to.join(&name))?;
            }
        }
    }
    let deps = bundle.join("target/debug/deps");
    std::fs::create_dir_all(&deps)?;
    // Which file is which test: target/debug/deps holds every build's executables, the script wants these.
    let mut manifest = String::new();
    for (name, exe) in &tests {
        let file = exe.file_name().unwrap_or_default().to_string_lossy().to_string();
        stripped_copy(exe, &deps.join(&file))?;
        manifest.push_str(&format!("{name} target/debug/deps/{file}\n"));
    }
    std::fs::write(bundle.join("tests.txt"), manifest)?;
    // The tests find their fixtures and grpo-host under the checkout they were built in; the script puts it there.
    std::fs::write(bundle.join("checkout.txt"), format!("{}\n", root.display()))?;
    // The workspace build above has just rebuilt this program's own file: that is the one to take.
    stripped_copy(&root.join("target/debug/xtask"), &bundle.join("xtask"))?;
    let tokenizer = bundle.join("tokenizer");
    std::fs::create_dir_all(&tokenizer)?;
    let model = Cache::new().default_model();
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        if model.join(file).exists() {
            std::fs::copy(model.join(file), tokenizer.join(file)).with_context(|| format!("copying {file}"))?;
        }
    }

    let archive = folder.join("bundle.tar.gz");
    let packed = Command::new("tar").arg("-czf").arg(&archive).arg("-C").arg(&bundle).arg(".").status();
    if !packed.map(|s| s.success()).unwrap_or(false) {
        bail!("packing {} with tar failed", archive.display());
    }
    std::fs::remove_dir_all(&bundle)?;
    let size = std::fs::metadata(&archive)?.len() + tracked_size(&root)?;
    println!(
        "gpu-bundle: {} and the working tree come to {:.1} MiB",
        archive.display(),
        size as f64 / (1 << 20) as f64
    );
    if size > LIMIT * 15 / 16 {
        bail!("the bundle and the working tree exceed what the device tool carries (64 MiB); drop a test executable");
    }
    println!(
        "gpu-bundle: on the device tool, run `bash xtask/gpu-check.sh` with carry [\".gpu\"] (see the script's head)"
    );
    Ok(())
}

/// The test-profile executables of [`TESTS`] by name, as `cargo test --no-run` reports them. The whole workspace
/// is named, as the test command builds it, so cargo reuses those artifacts rather than resolving features anew.
fn test_executables(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    println!("==> listing the test executables [cargo test --workspace --no-run]");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["test", "--workspace", "--no-run", "--message-format=json"])
        .current_dir(root)
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let mut found = Vec::new();
    for message in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        let name = message["target"]["name"].as_str().unwrap_or("");
        let is_test = message["profile"]["test"].as_bool() == Some(true);
        if let (true, true, Some(exe)) = (TESTS.contains(&name), is_test, message["executable"].as_str()) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    if found.len() != TESTS.len() {
        bail!("expected the test executables {TESTS:?}, cargo reported {found:?}");
    }
    Ok(found)
}

/// Copy `from` to `to` without its symbols and line tables (a plain copy where `strip` is missing).
fn stripped_copy(from: &Path, to: &Path) -> Result<()> {
    let stripped = Command::new("strip").arg("-o").arg(to).arg(from).status().map(|s| s.success()).unwrap_or(false);
    if !stripped {
        std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// Bytes of the files git tracks or would add (what the device tool sends besides carried paths).
fn tracked_size(root: &Path) -> Result<u64> {
    let out = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard", "-z"])
        .current_dir(root)
        .output()
        .context("running git ls-files")?;
    let names = String::from_utf8_lossy(&out.stdout).to_string();
    Ok(names
        .split('\0')
        .filter(|n| !n.is_empty())
        .filter_map(|n| std::fs::metadata(root.join(n)).ok())
        .map(|m| m.len())
        .sum())
}
