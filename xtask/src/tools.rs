//! Tools the test suite needs besides cargo itself, and checks that are not tests.
//!
//! `cargo-generate` renders the plugin templates in `templates/`; the third-party test (tests/tests/templates.rs)
//! generates, builds and loads them with it, as a plugin author would. It is installed from crates.io once,
//! into cargo's usual place (`~/.cargo/bin`), so `cargo generate` then works for the user too.

use crate::process::{run_checked, Step};
use anyhow::{bail, Context, Result};
use std::process::Command;

/// The pinned release. 0.24.0 to 0.26.0 lock dependencies that need rustc 1.96 or newer, so `cargo install
/// --locked` of them fails with rustc 1.95; 0.23.7 builds with it.
const CARGO_GENERATE_VERSION: &str = "0.23.7";
/// The oldest release the templates work with (`cargo_generate_version` in their cargo-generate.toml).
const CARGO_GENERATE_MIN: (u64, u64) = (0, 23);

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// The installed cargo-generate's version, if `cargo generate --version` runs.
fn installed_cargo_generate() -> Option<String> {
    let out = Command::new(cargo()).args(["generate", "--version"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    // `cargo generate --version` prints "cargo generate-generate 0.23.7": the version is the last word.
    String::from_utf8_lossy(&out.stdout).split_whitespace().last().map(str::to_string)
}

/// `(major, minor)` of a version string such as `0.23.7`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Install cargo-generate unless a recent enough one is there. The first install compiles it from crates.io
/// (a few minutes on two cores); later calls only run `cargo generate --version`.
pub fn ensure_cargo_generate(verbose: bool) -> Result<()> {
    match installed_cargo_generate() {
        Some(v) if major_minor(&v).is_some_and(|mm| mm >= CARGO_GENERATE_MIN) => {
            if verbose {
                println!("setup: cargo-generate {v} is installed");
            }
            return Ok(());
        }
        Some(v) => {
            println!("setup: cargo-generate {v} is older than the templates need; installing {CARGO_GENERATE_VERSION}")
        }
        None => {}
    }
    let args = ["install", "cargo-generate", "--version", CARGO_GENERATE_VERSION, "--locked"];
    Step::new(
        "installing cargo-generate for the plugin templates (once; compiling takes a few minutes)",
        &format!("cargo {}", args.join(" ")),
    )
    .announce();
    run_checked(
        Command::new(cargo()).args(args),
        "installing cargo-generate failed; install it yourself with `cargo install cargo-generate --locked`",
    )?;
    match installed_cargo_generate() {
        Some(_) => Ok(()),
        None => bail!(
            "cargo-generate was installed but `cargo generate` does not run it; add cargo's bin directory \
             (~/.cargo/bin) to PATH"
        ),
    }
}

/// `cargo doc -p grpo-sdk --no-deps` with warnings as errors: the SDK's documentation is its reference for plugin
/// authors, so a broken intra-doc link or a missing doc fails the test task.
pub fn check_sdk_docs() -> Result<()> {
    let args = ["doc", "-p", "grpo-sdk", "--no-deps"];
    Step::new("building the SDK documentation (warnings are errors)", &format!("cargo {}", args.join(" "))).announce();
    let status = Command::new(cargo())
        .args(args)
        .env("RUSTDOCFLAGS", "-D warnings")
        .current_dir(crate::paths::repo_root())
        .status()
        .context("running cargo doc")?;
    if !status.success() {
        bail!("the SDK documentation has warnings (cargo {}; RUSTDOCFLAGS=-D warnings)", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("0.23.7"), Some((0, 23)));
        assert!(major_minor("0.26.0").unwrap() >= CARGO_GENERATE_MIN);
        assert!(major_minor("0.22.1").unwrap() < CARGO_GENERATE_MIN);
        assert_eq!(major_minor("unknown"), None);
        assert_eq!(major_minor(CARGO_GENERATE_VERSION).unwrap(), CARGO_GENERATE_MIN);
    }
}
