//! What the benchmark tasks share: their options, the inputs they need from setup, and running a side as a child
//! process whose output ends in JSON.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::paths::Cache;

/// The value after `--name` in `args`, if given.
pub fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
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

/// The model (`--model DIR`, else the default model) and the venv's Python, both from setup.
pub fn inputs(args: &[String]) -> Result<(PathBuf, PathBuf)> {
    let cache = Cache::new();
    let model = flag(args, "--model").map(PathBuf::from).unwrap_or_else(|| cache.default_model());
    let python = cache.python();
    if !model.join("config.json").exists() || !python.exists() {
        bail!("the model {} or the Python venv is missing; run `cargo xtask setup`", model.display());
    }
    Ok((model, python))
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
