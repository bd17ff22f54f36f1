//! Developer tasks for grpo-rs. `cargo xtask <task>`:
//!
//! - `setup`: libtorch (from the PyPI torch wheel), the default model and the dense retrieval model into the
//!   per-user cache; idempotent.
//! - `run [ARGS...]`: setup, build the release host and plugins, then run `grpo-host ARGS...`
//!   (`run --nproc-per-node N ARGS...`: N data-parallel ranks under setup's `torchrun --standalone`).
//! - `test`: setup (and cargo-generate), then rustfmt check, clippy with `-D warnings`, build, the SDK docs with
//!   warnings as errors, and the whole test suite.
//! - `bench-generate`, `bench-step`: benchmarks against the Python reference, written to docs/benchmarks-*.md;
//!   `bench-step --nproc-per-node N`: data-parallel ranks against one process on the same global batch.
//! - `bench-rollout --baseline DIR`: this build's rollout engine against another build's, written to
//!   docs/benchmarks-rollout.md.
//! - `gpu-bundle`: the built binaries, test executables and tokenizer that xtask/gpu-check.sh needs on a lent GPU
//!   machine without cargo, in `.gpu/`.
//!
//! xtask itself never links libtorch, so it runs before libtorch exists and can repair a damaged cache.

mod bench;
mod bench_ddp;
mod bench_generate;
mod bench_rollout;
mod bench_step;
mod gpu_bundle;
mod paths;
mod process;
mod setup;
mod tools;

use anyhow::{bail, Result};
use process::cargo;

const USAGE: &str =
    "usage: cargo xtask <setup | run [GRPO-HOST ARGS...] | test | bench-generate [OPTIONS] | bench-step [OPTIONS] | \
     bench-rollout --baseline DIR [OPTIONS] | gpu-bundle>";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            let text = err.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            eprintln!("error: {}", text.replace('\n', " "));
            std::process::exit(2);
        }
    }
}

fn dispatch(args: &[String]) -> Result<i32> {
    let Some(task) = args.first() else { bail!("{USAGE}") };
    let rest = &args[1..];
    match task.as_str() {
        "setup" => {
            let installed = setup::setup(true)?;
            tools::ensure_cargo_generate(true)?;
            println!("setup: done. libtorch: {}", installed.torch_dir.display());
            println!("setup: default model: {}", installed.model_dir.display());
            println!("setup: dense retrieval model: {}", installed.dense_model_dir.display());
            Ok(0)
        }
        "run" => {
            setup::setup(false)?;
            cargo(&["build", "--release"], "building grpo-host and the shipped plugins (release)")?;
            let exe = paths::repo_root().join("target/release/grpo-host");
            // `run --nproc-per-node N ...`: N data-parallel ranks on this machine under setup's torchrun.
            let status = match rest {
                [flag, n, args @ ..] if flag == "--nproc-per-node" => {
                    let torchrun = paths::Cache::new().python().with_file_name("torchrun");
                    std::process::Command::new(torchrun)
                        .args(["--standalone", "--nproc-per-node", n, "--no-python"])
                        .arg(exe)
                        .args(args)
                        .status()?
                }
                _ => std::process::Command::new(exe).args(rest).status()?,
            };
            Ok(status.code().unwrap_or(1))
        }
        "test" => {
            // A fresh clone, as CI builds, gains nothing from incremental compilation's caches, which would take about
            // as much disk again as the debug artifacts themselves.
            if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
                std::env::set_var("CARGO_INCREMENTAL", "0");
            }
            warn_low_disk();
            setup::setup(false)?;
            tools::ensure_cargo_generate(false)?;
            cargo(&["fmt", "--all", "--", "--check"], "checking formatting")?;
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], "running clippy")?;
            // The end-to-end tests drive the built binary and load the plugin libraries, so build them first.
            cargo(&["build", "--workspace"], "building the host and plugins")?;
            tools::check_sdk_docs()?;
            cargo(&["test", "--workspace"], "running the test suite")?;
            Ok(0)
        }
        // Each sets up and builds unless told to run prebuilt sides (`--host`), once its options check out.
        "bench-generate" => {
            let (usage, values, switches) = (bench_generate::USAGE, bench_generate::OPTIONS, bench_generate::SWITCHES);
            if !bench::check_options(rest, usage, values, switches)? {
                bench_generate::run(&paths::repo_root(), rest)?;
            }
            Ok(0)
        }
        "bench-step" => {
            if !bench::check_options(rest, bench_step::USAGE, bench_step::OPTIONS, bench_step::SWITCHES)? {
                bench_step::run(&paths::repo_root(), rest)?;
            }
            Ok(0)
        }
        "bench-rollout" => {
            if !bench::check_options(rest, bench_rollout::USAGE, bench_rollout::OPTIONS, &[])? {
                setup::setup(false)?;
                bench_rollout::run(&paths::repo_root(), rest)?;
            }
            Ok(0)
        }
        "gpu-bundle" => {
            gpu_bundle::run()?;
            Ok(0)
        }
        other => bail!("unknown task `{other}`; {USAGE}"),
    }
}

/// Disk a cold `cargo xtask test` takes: 4.5 GB measured in a fresh clone with CI=true (debug artifacts without
/// incremental caches, and the runs the tests write to the temporary directory), plus some headroom.
const TEST_BUILD_GB: f64 = 6.0;

/// Say so before a long build when the disk may not hold it: short of space, the linker dies late and cryptically.
fn warn_low_disk() {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(paths::repo_root);
    let existing = target.ancestors().find(|p| p.exists()).unwrap_or(&target);
    if let Some(gb) = setup::free_gb(existing).filter(|&gb| gb < TEST_BUILD_GB) {
        eprintln!(
            "warning: {gb:.1} GB are free where the build goes ({}), and a first build of the tests takes about \
             {TEST_BUILD_GB:.0} GB; if it fails in the linker (bus error, no space left on device), free some space",
            target.display()
        );
    }
}
