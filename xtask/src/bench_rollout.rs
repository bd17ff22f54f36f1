//! `cargo xtask bench-rollout --baseline DIR`: this build's rollout engine against another build of grpo-host in
//! one run on this machine. DIR holds the other build's `grpo-host` and plugin libraries (for an engine change: the
//! release build of the commit before it). Measured, each side in turn on the default model:
//!
//! - multi-turn rollouts of `calc_tools` and `multiturn_qa`, `--batches` batches of `--tasks` x `--group` episodes
//!   (default 1 of 4 x 8) through `grpo-host train` (`timing/rollout_s` and the generated tokens of its
//!   metrics.jsonl; the same seed, so both sides roll out the same tasks);
//! - single-turn `grpo-host generate` at `--samples` (default 1, 8, 64) samples of `--new-tokens` tokens.
//!
//! Options: `--candidate DIR` (default: target/release, built first), `--threads N`, `--max-new N` (tokens per
//! turn, default 128), `--envs a,b`, `--samples` ('' for none), `--sft-warmup-steps N`, `--model DIR`. Prints the
//! table and writes it to target/bench-rollout.md; docs/benchmarks-rollout.md collects the runs it reports.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::bench::{cpu_name, flag, inputs, number, run_json, threads};
use crate::process::cargo;

const PROMPT: &str = "Write a short poem about the sea.";

/// The numeric options, parsed once.
struct Options {
    threads: usize,
    batches: usize,
    tasks: usize,
    group: usize,
    max_new: usize,
    new_tokens: usize,
    sft_warmup_steps: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        Ok(Options {
            threads: threads(args)?,
            batches: number(args, "--batches", 1)?,
            tasks: number(args, "--tasks", 4)?,
            group: number(args, "--group", 8)?,
            max_new: number(args, "--max-new", 128)?,
            new_tokens: number(args, "--new-tokens", 64)?,
            sft_warmup_steps: number(args, "--sft-warmup-steps", 0)?,
        })
    }
}

/// One side's numbers for one multi-turn environment: (seconds per batch, generated tokens per batch).
fn rollouts(host: &Path, model: &Path, env: &str, o: &Options, runs: &Path) -> Result<(f64, f64)> {
    let s = |n: usize| n.to_string();
    let batches = o.batches;
    let run_name = format!("bench-rollout-{env}");
    let _ = std::fs::remove_dir_all(runs.join(&run_name));
    let status = Command::new(host)
        .args(["train", "--algo", "grpo", "--env", env, "--device", "cpu", "--dtype", "f32", "--no-wandb"])
        .arg("--model")
        .arg(model)
        .arg("--plugin-dir")
        .arg(host.parent().context("the host binary's folder")?)
        .args(["--threads", &s(o.threads), "--seed", "1", "--kl-weight", "0", "--max-steps", &s(batches)])
        .args(["--rollouts-per-step", &s(o.tasks), "--group-size", &s(o.group)])
        .args(["--max-new-tokens", &s(o.max_new), "--train-batch-size", "8"])
        .args(["--checkpoint-interval", "1000000", "--checkpoint-every-minutes", "0"])
        .args(["--sft-warmup-steps", &s(o.sft_warmup_steps), "--sft-batch-size", "4"])
        .args(["--sft-lr", "3e-5"])
        .arg("--runs-dir")
        .arg(runs)
        .args(["--run-name", &run_name])
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", host.display()))?;
    anyhow::ensure!(status.success(), "{} train --env {env} failed", host.display());
    let metrics = std::fs::read_to_string(runs.join(&run_name).join("metrics.jsonl"))?;
    let (mut secs, mut tokens) = (0.0, 0.0);
    for row in metrics.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if let (Some(t), Some(tps)) = (row["timing/rollout_s"].as_f64(), row["timing/generated_tokens_per_s"].as_f64())
        {
            secs += t;
            tokens += tps * t;
        }
    }
    Ok((secs / batches as f64, tokens / batches as f64))
}

/// One side's single-turn throughput at `n` samples: (tokens per second, seconds).
fn single_turn(host: &Path, model: &Path, n: usize, o: &Options) -> Result<(f64, f64)> {
    let v = run_json(
        Command::new(host)
            .args(["generate", "--prompt", PROMPT, "--device", "cpu", "--dtype", "f32", "--json", "--seed", "0"])
            .arg("--model")
            .arg(model)
            .args(["-n", &n.to_string(), "--max-new-tokens", &o.new_tokens.to_string()])
            .args(["--temperature", "1.0", "--threads", &o.threads.to_string()]),
    )?;
    let stats = &v["stats"];
    let secs = stats["prefill_secs"].as_f64().unwrap_or(0.0) + stats["decode_secs"].as_f64().unwrap_or(0.0);
    Ok((stats["tokens_per_second"].as_f64().unwrap_or(0.0), secs))
}

/// `cargo xtask bench-rollout --help`.
pub const USAGE: &str = concat!(
    "usage: cargo xtask bench-rollout --baseline DIR [--candidate DIR] [--envs calc_tools,multiturn_qa] ",
    "[--batches 1] [--tasks 4] [--group 8] [--max-new 128] [--sft-warmup-steps 0] [--samples 1,8,64] ",
    "[--new-tokens 64] [--threads N] [--model DIR] [--python PYTHON]"
);
/// The options `run` and `Options::parse` read, each with a value, besides [`crate::bench::COMMON_OPTIONS`].
pub const OPTIONS: &[&str] = &[
    "--baseline",
    "--candidate",
    "--batches",
    "--tasks",
    "--group",
    "--max-new",
    "--new-tokens",
    "--sft-warmup-steps",
    "--envs",
    "--samples",
];

/// Run the benchmark from the workspace root `root` with command-line `args`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let baseline = PathBuf::from(flag(args, "--baseline").context("--baseline DIR (the other build) is required")?);
    let candidate = match flag(args, "--candidate") {
        Some(dir) => PathBuf::from(dir),
        None => {
            cargo(&["build", "--release"], "building grpo-host and the shipped plugins (release)")?;
            root.join("target").join("release")
        }
    };
    let (model, _) = inputs(args)?;
    let o = Options::parse(args)?;
    let runs = std::env::temp_dir().join("grpo-bench-rollout");
    let sides = [("before", baseline.join("grpo-host")), ("after", candidate.join("grpo-host"))];
    for (_, host) in &sides {
        anyhow::ensure!(host.exists(), "{} does not exist", host.display());
    }

    let mut md = String::new();
    md.push_str("## Rollout engine (`cargo xtask bench-rollout`)\n\n");
    md.push_str(&format!(
        "Default model, f32, CPU ({}), {} thread(s); `before` and `after` run one after the other in this run.\n\n",
        cpu_name(),
        o.threads
    ));
    md.push_str("| workload | before s/batch | after s/batch | before tok/s | after tok/s | speed-up |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|\n");
    let envs = flag(args, "--envs").unwrap_or_else(|| "calc_tools,multiturn_qa".into());
    for env in envs.split(',').filter(|e| !e.is_empty()) {
        let mut row = Vec::new();
        for (side, host) in &sides {
            eprintln!("{side}: {env} rollouts...");
            let (secs, tokens) = rollouts(host, &model, env, &o, &runs)?;
            eprintln!("  {secs:.1} s per batch, {tokens:.0} tokens");
            row.push((secs, tokens / secs.max(1e-9)));
        }
        md.push_str(&format!(
            "| {env} rollouts, {} x {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x |\n",
            o.tasks,
            o.group,
            row[0].0,
            row[1].0,
            row[0].1,
            row[1].1,
            row[1].1 / row[0].1.max(1e-9)
        ));
    }
    let samples: Vec<usize> = flag(args, "--samples")
        .unwrap_or_else(|| "1,8,64".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().context("--samples"))
        .collect::<Result<_>>()?;
    for n in samples {
        let mut row = Vec::new();
        for (side, host) in &sides {
            eprintln!("{side}: generate -n {n}...");
            row.push(single_turn(host, &model, n, &o)?);
        }
        md.push_str(&format!(
            "| generate, {n} sample(s) | {:.2} | {:.2} | {:.1} | {:.1} | {:.2}x |\n",
            row[0].1,
            row[1].1,
            row[0].0,
            row[1].0,
            row[1].0 / row[0].0.max(1e-9)
        ));
    }
    md.push_str(&format!(
        "\nRollouts: one `grpo-host train --algo grpo --env ENV --seed 1 --kl-weight 0 --rollouts-per-step {} \
         --group-size {} --max-new-tokens {}` batch per side; s/batch is `timing/rollout_s` (generation and environment \
         steps), tok/s the sampled tokens over it. generate: `grpo-host generate --prompt '{PROMPT}' -n N \
         --max-new-tokens {} --temperature 1.0 --seed 0 --json`, seconds from prefill to the last token.\n\n\
         Reproduce: `cargo xtask bench-rollout --baseline DIR` with DIR holding the other build's grpo-host and \
         plugins.\n",
        o.tasks, o.group, o.max_new, o.new_tokens,
    ));
    print!("{md}");
    let out = root.join("target").join("bench-rollout.md");
    std::fs::write(&out, &md)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
