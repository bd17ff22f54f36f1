//! `cargo xtask bench-step --nproc-per-node N`: data-parallel training against one process on the same global
//! batch. `N` ranks of one thread each under `torchrun --standalone` (Gloo over loopback), each with `--prompts`
//! prompts and micro-batches of `--train-batch`, against one process with `N` threads and `N` times the prompts and
//! the micro-batch, in one run, one after the other. Reports rollouts per second, the step time by phase (a data-
//! parallel phase takes as long as its slowest rank) and the all-reduce's share. Writes docs/benchmarks-ddp.md.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bench::{cpu_name, Sides};
use crate::bench_step::{host_command, read_batches, Workload};

/// Run it for `n` ranks over the workload `w` (its `threads` is ignored: 1 per rank, `n` for the single process).
pub fn run(root: &Path, args: &[String], w: &Workload, n: usize) -> Result<()> {
    if n < 2 {
        bail!("--nproc-per-node {n}: compare at least 2 ranks with one process");
    }
    let Sides { host, python, model, device } = Sides::of(root, args)?;
    let torchrun = python.with_file_name("torchrun");
    let mixed = crate::bench::flag(args, "--precision").map_or("no", |p| if p == "bf16" { "bf16" } else { "no" });

    let single = Workload { threads: n, ..*w };
    eprintln!("1 process x {n} threads ({} warm-up + {} steps)...", w.warmup, w.steps);
    let dir = tempfile::tempdir().context("creating a scratch runs directory")?;
    let one = measure(host_command(Command::new(&host), &model, &single, (mixed, device), dir.path(), n), dir.path())?;

    let ranks = Workload { threads: 1, ..*w };
    eprintln!("{n} ranks x 1 thread under torchrun ({} warm-up + {} steps)...", w.warmup, w.steps);
    let mut launcher = Command::new(&torchrun);
    launcher.args(["--standalone", "--nproc-per-node", &n.to_string(), "--no-python"]).arg(&host);
    let dir = tempfile::tempdir().context("creating a scratch runs directory")?;
    let dp = measure(host_command(launcher, &model, &ranks, (mixed, device), dir.path(), 1), dir.path())?;

    let global = w.prompts * n * w.group;
    let row = |name: &str, b: &[[f64; 4]]| {
        let mean = |i: usize| b.iter().skip(w.warmup).map(|x| x[i]).sum::<f64>() / w.steps as f64;
        let total = mean(0) + mean(1) + mean(2);
        format!(
            "| {name} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}% |\n",
            global as f64 / total,
            total,
            mean(0),
            mean(1),
            mean(2),
            mean(3),
            100.0 * mean(3) / total
        )
    };
    let mut md = String::from("## Data-parallel training (`cargo xtask bench-step --nproc-per-node`)\n\n");
    md.push_str(&format!(
        "Default model (SmolLM2-135M-Instruct), CPU ({cpu}), {precision}. The same global batch both ways: {global} \
         rollouts ({prompts} single-digit additions per rank x {n} x {group} rollouts x {max_new} new tokens, \
         end-of-sequence ignored), micro-batches of {tb} per rank, full fine-tuning with a frozen reference, KL \
         weight 0.01, one epoch, AdamW. Mean of {steps} steps after {warmup} warm-up step(s), in seconds, from \
         `timing/*` of each run's metrics.jsonl (under data parallelism the slowest rank's rollout and log-prob \
         times, and rank 0's update time, which includes waiting for the others at the all-reduce).\n\n\
         | layout | rollouts/s | step | rollout | log-probs | update | all-reduce | all-reduce share |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        cpu = cpu_name(),
        precision = if mixed == "bf16" { "bf16 mixed precision" } else { "f32" },
        prompts = w.prompts,
        group = w.group,
        max_new = w.max_new,
        tb = w.train_batch,
        steps = w.steps,
        warmup = w.warmup,
    ));
    md.push_str(&row(&format!("1 process x {n} threads"), &one));
    md.push_str(&row(&format!("{n} ranks x 1 thread (torchrun, Gloo)"), &dp));
    md.push_str(&format!(
        "\nReproduce: `cargo xtask bench-step --nproc-per-node {n} --steps {} --warmup {} --prompts {} --group {} \
         --max-new {} --train-batch {}{}`\n",
        w.steps,
        w.warmup,
        w.prompts,
        w.group,
        w.max_new,
        w.train_batch,
        if mixed == "bf16" { " --precision bf16" } else { "" }
    ));
    print!("{md}");
    let path = root.join("docs").join("benchmarks-ddp.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Run one layout, its runs directory `runs`, and read its batches.
fn measure(mut cmd: Command, runs: &Path) -> Result<Vec<[f64; 4]>> {
    let status = cmd.status().context("running grpo-host train")?;
    if !status.success() {
        bail!("grpo-host train failed (exit {status})");
    }
    Ok(read_batches(&runs.join("bench-step"))?.into_iter().map(|b| b.secs).collect())
}
