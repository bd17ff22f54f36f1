//! What the benchmark tasks share: their options, the inputs they need from setup (or a prebuilt bundle), and running
//! a side as a child process whose output ends in JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::paths::Cache;

/// The value after `--name` in `args`, if given.
pub fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// The options every benchmark takes: the two sides (`Sides::of`, `inputs`), the thread count and the output file.
pub const COMMON_OPTIONS: [&str; 6] = ["--host", "--python", "--model", "--device", "--threads", "--out"];

/// Check a benchmark's `args` before anything runs. `--help` (or `-h`) prints `usage` and returns true: the
/// caller stops there. An option not in `values` (each followed by its value) or `switches`, or a value option at
/// the end, is an error naming it: hand-parsed flags would otherwise ignore a typo, or `--help`, and run a
/// benchmark of several minutes with the defaults, rewriting its page.
pub fn check_options(args: &[String], usage: &str, values: &[&str], switches: &[&str]) -> Result<bool> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        return Ok(true);
    }
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if switches.contains(&a) {
            i += 1;
        } else if values.contains(&a) || COMMON_OPTIONS.contains(&a) {
            if i + 1 == args.len() {
                bail!("{a} needs a value; {usage}");
            }
            i += 2;
        } else {
            bail!("unknown option `{a}`; {usage}");
        }
    }
    Ok(false)
}

/// `--name N` parsed, or `default`.
pub fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match flag(args, name) {
        Some(v) => v.parse().map_err(|_| anyhow::anyhow!("{name} {v}: expected a number")),
        None => Ok(default),
    }
}

/// `--threads N`, by default every core: both sides of a benchmark always get the same count.
pub fn threads(args: &[String]) -> Result<usize> {
    number(args, "--threads", std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The model (`--model DIR`, else the default model) and the Python (`--python FILE`, taken as given, else the
/// venv's), the defaults from setup.
pub fn inputs(args: &[String]) -> Result<(PathBuf, PathBuf)> {
    let cache = Cache::new();
    let model = flag(args, "--model").map(PathBuf::from).unwrap_or_else(|| cache.default_model());
    let python = flag(args, "--python").map(PathBuf::from);
    let venv_missing = python.is_none() && !cache.python().exists();
    if !model.join("config.json").exists() || venv_missing {
        bail!("the model {} or the Python venv is missing; run `cargo xtask setup`", model.display());
    }
    Ok((model, python.unwrap_or_else(|| cache.python())))
}

/// Where a benchmark runs both sides: `--device cpu|cuda`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Device {
    /// The CPU, at `--threads` threads.
    Cpu,
    /// CUDA device 0.
    Cuda,
}

impl Device {
    /// `--device` of `args` (default: the CPU).
    pub fn of(args: &[String]) -> Result<Device> {
        match flag(args, "--device").as_deref() {
            None | Some("cpu") => Ok(Device::Cpu),
            Some("cuda") => Ok(Device::Cuda),
            Some(other) => bail!("--device {other}: expected cpu or cuda"),
        }
    }

    /// The value both sides' `--device` take.
    pub fn flag(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }

    /// The hardware for a table's caption: the CPU's name, or the GPU's as the Python side's JSON reports it.
    pub fn describe(self, reference: &Value) -> String {
        match self {
            Device::Cpu => format!("CPU ({})", cpu_name()),
            Device::Cuda => format!("GPU ({}, CUDA)", reference["gpu"].as_str().unwrap_or("unknown")),
        }
    }
}

/// What a benchmark runs: grpo-host (with the shipped plugins beside it), the Python of the reference side, the
/// model, and the device.
pub struct Sides {
    /// The grpo-host executable.
    pub host: PathBuf,
    /// The Python that runs the reference scripts (torch and transformers).
    pub python: PathBuf,
    /// The model directory both sides load.
    pub model: PathBuf,
    /// Where both sides run.
    pub device: Device,
}

impl Sides {
    /// From `args`: with `--host FILE` a prebuilt grpo-host and `--python FILE` (default: setup's venv) are used as
    /// they are, with no setup and no build, for a machine without cargo such as the GPU bundle's
    /// (xtask/gpu-check.sh); otherwise setup runs and the release build is brought up to date. `--model DIR`
    /// defaults to the default model.
    pub fn of(root: &Path, args: &[String]) -> Result<Sides> {
        let device = Device::of(args)?;
        let host = match flag(args, "--host") {
            Some(host) => PathBuf::from(host),
            None => {
                crate::setup::setup(false)?;
                crate::process::cargo(&["build", "--release"], "building grpo-host and the shipped plugins (release)")?;
                root.join("target").join("release").join("grpo-host")
            }
        };
        if !host.exists() {
            bail!("{} does not exist (--host)", host.display());
        }
        let (model, python) = inputs(args)?;
        Ok(Sides { host, python, model, device })
    }

    /// The model's name for captions: its directory's name.
    pub fn model_name(&self) -> String {
        self.model.file_name().map_or_else(|| self.model.display().to_string(), |n| n.to_string_lossy().to_string())
    }
}

/// Where a benchmark writes its table: `--out FILE`, else `docs/<default_name>`.
pub fn output(root: &Path, args: &[String], default_name: &str) -> PathBuf {
    flag(args, "--out").map(PathBuf::from).unwrap_or_else(|| root.join("docs").join(default_name))
}

/// Run `cmd` to completion and parse the JSON that its standard output ends with (from its first `{`).
pub fn run_json(cmd: &mut Command) -> Result<Value> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').context("no JSON in the output")?;
    Ok(serde_json::from_str(&text[start..])?)
}

/// The CPU's model name, for the tables.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    use super::check_options;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_are_checked_before_a_benchmark_runs() {
        let (values, switches) = (["--steps"], ["--compile"]);
        let check = |list: &[&str]| check_options(&args(list), "usage: x", &values, &switches);
        assert!(!check(&["--steps", "3", "--compile", "--threads", "2", "--out", "f.md"]).unwrap());
        assert!(check(&["--steps", "3", "--help"]).unwrap());
        assert!(check(&["-h"]).unwrap());
        let err = check(&["--step", "3"]).unwrap_err().to_string();
        assert!(err.starts_with("unknown option `--step`") && err.ends_with("usage: x"), "{err}");
        assert!(check(&["--compile", "--steps"]).unwrap_err().to_string().starts_with("--steps needs a value"));
        assert!(check(&["3"]).is_err(), "a stray value is refused");
    }
}
