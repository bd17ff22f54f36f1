//! `cargo xtask bench-generate`: generation throughput of `grpo-host generate` against transformers `generate`
//! (tests/oracles/bench_generate.py) on the default model, same prompt, sampling settings and thread count, in
//! one run, plus the machine's roofline; writes the table to docs/benchmarks-generate.md.
//!
//! Options: `--threads N` (default: all cores), `--samples 1,8,64`, `--new-tokens 64`, `--model DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

const PROMPT: &str = "What is 17 + 25?";

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GRPO_RS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
    base.join("grpo-rs")
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn run_json(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').context("no JSON in the output")?;
    Ok(serde_json::from_str(&text[start..])?)
}

/// Run the benchmark from the workspace root `root` with command-line `args`.
pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let threads: usize = match flag(args, "--threads") {
        Some(t) => t.parse().context("--threads")?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let samples: Vec<usize> = flag(args, "--samples")
        .unwrap_or_else(|| "1,8,64".into())
        .split(',')
        .map(|s| s.trim().parse().context("--samples"))
        .collect::<anyhow::Result<_>>()?;
    let new_tokens: usize = flag(args, "--new-tokens").map_or(Ok(64), |s| s.parse()).context("--new-tokens")?;
    let model = flag(args, "--model")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models").join("SmolLM2-135M-Instruct"));
    let python = cache_dir().join("venv").join("bin").join("python");
    if !model.join("config.json").exists() || !python.exists() {
        bail!(
            "the default model or the Python venv is missing under {}; run `cargo xtask setup`",
            cache_dir().display()
        );
    }

    eprintln!("building grpo-host (release)...");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "-p", "grpo-host"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release -p grpo-host failed");
    }
    let host = root.join("target").join("release").join("grpo-host");

    let samples_str: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
    eprintln!("running transformers reference...");
    let reference = run_json(
        Command::new(&python)
            .current_dir(root)
            .arg("tests/oracles/bench_generate.py")
            .args(["--model", &model.display().to_string(), "--threads", &threads.to_string()])
            .args(["--new-tokens", &new_tokens.to_string(), "--prompt", PROMPT, "--samples"])
            .args(&samples_str),
    )?;
    eprintln!("reference: {reference}");

    let mut ours = Vec::new();
    for &n in &samples {
        eprintln!("running grpo-host generate -n {n}...");
        let v = run_json(
            Command::new(&host)
                .args(["generate", "--model", &model.display().to_string(), "--prompt", PROMPT])
                .args(["-n", &n.to_string(), "--max-new-tokens", &new_tokens.to_string()])
                .args(["--temperature", "0.7", "--ignore-eos", "--json", "--device", "cpu", "--dtype", "f32"])
                .args(["--seed", "0", "--threads", &threads.to_string()]),
        )?;
        let tps = v["stats"]["tokens_per_second"].as_f64().unwrap_or(0.0);
        eprintln!("  {tps:.1} tokens/s ({} tokens)", v["stats"]["generated_tokens"]);
        ours.push(tps);
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let gb = |x: &Value| x.as_f64().unwrap_or(0.0) / 1e9;
    let mut md = String::new();
    md.push_str("## Generation throughput (`cargo xtask bench-generate`)\n\n");
    md.push_str(&format!(
        "Default model (SmolLM2-135M-Instruct, f32, CPU), {threads} thread(s), {cpu}. One chat prompt batched N times, \
         {new_tokens} new tokens per sample (eos ignored), sampling at temperature 0.7. grpo-host: \
         `grpo-host generate --prompt '{PROMPT}' -n N --max-new-tokens {new_tokens} --temperature 0.7 --ignore-eos --json \
         --threads {threads}` (release build; generation time incl. prefill, excl. model load). Reference: \
         `tests/oracles/bench_generate.py --threads {threads}` (transformers {} on torch {}, one warm-up call).\n\n",
        reference["transformers"].as_str().unwrap_or("?"),
        reference["torch"].as_str().unwrap_or("?")
    ));
    md.push_str(&format!(
        "Roofline inputs measured by the script: memory bandwidth {:.1} GB/s, decode-shaped f32 matmul {:.1} GFLOP/s; \
         {:.2} GB of weights read and {:.2} GFLOP per token.\n\n",
        gb(&reference["bandwidth_bytes_per_s"]),
        gb(&reference["matmul_flops_per_s"]),
        gb(&reference["weight_bytes"]),
        gb(&reference["flops_per_token"]),
    ));
    md.push_str("| samples | grpo-host tok/s | transformers tok/s | ratio | roofline tok/s | % of roofline |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|\n");
    for (i, &n) in samples.iter().enumerate() {
        let r = reference["reference"][i]["tokens_per_second"].as_f64().unwrap_or(0.0);
        let roof = reference["roofline"][i]["tokens_per_second"].as_f64().unwrap_or(0.0);
        md.push_str(&format!(
            "| {n} | {:.1} | {:.1} | {:.2}x | {:.0} | {:.0}% |\n",
            ours[i],
            r,
            ours[i] / r.max(1e-9),
            roof,
            100.0 * ours[i] / roof.max(1e-9)
        ));
    }
    print!("{md}");
    let out = root.join("docs").join("benchmarks-generate.md");
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(&out, &md)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
