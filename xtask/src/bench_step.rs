//! `cargo xtask bench-step`: the wall time of one GRPO step, by phase, for `grpo-host train` and for the re-grpo-style
//! Python loop (tests/oracles/bench_grpo_step.py) on one workload, in one run, one after the other (never at once:
//! they would share the cores). Writes the table to docs/benchmarks-step.md.
//!
//! The workload: the default model on the CPU, in each precision asked for (`--precision f32,bf16`: f32 throughout,
//! and bf16 mixed precision, which is `--mixed-precision bf16` on our side and `torch.autocast("cpu", bf16)` over
//! f32 weights on the Python side), full fine-tuning with a frozen reference (`--lora-rank 0`,
//! `--kl-weight 0.01`), `--prompts` single-digit additions x `--group` rollouts of exactly `--max-new` tokens
//! (end-of-sequence ignored on both sides, so both do the same work whatever they sample), micro-batches of
//! `--train-batch`, one epoch. Both sides use the same system prompt and the same thread count.
//!
//! Options: `--threads N` (default: all cores), `--steps 3`, `--warmup 1`, `--prompts 4`, `--group 4`,
//! `--max-new 64`, `--train-batch 4`, `--precision f32,bf16`, `--model DIR`, `--device cpu|cuda`, `--out FILE`,
//! `--gradient-checkpointing` (on both sides, as re-grpo's `load_model` turns it on), and `--host FILE --python FILE`
//! to run prebuilt sides with no setup or build (xtask/gpu-check.sh).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::{flag, number, output, threads, Device, Sides};

/// The system prompt both sides send, so prompts differ only in the question's wording.
const SYSTEM: &str = "Add the two numbers the user gives you. Think briefly inside <think> </think>, then write \
only the result inside <answer> </answer>.";

const PHASES: [&str; 4] = ["rollout_s", "logprob_s", "train_s", "total_s"];

/// Mean of each phase over the measured steps.
fn means(rows: &[Value]) -> Vec<f64> {
    PHASES.iter().map(|p| rows.iter().filter_map(|r| r[*p].as_f64()).sum::<f64>() / rows.len().max(1) as f64).collect()
}

/// The precisions the benchmark compares, each on both sides.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Precision {
    /// f32 weights and compute.
    F32,
    /// f32 master weights, bf16 compute.
    Bf16Mixed,
}

impl Precision {
    fn parse(list: &str) -> Result<Vec<Precision>> {
        list.split(',')
            .map(|p| match p.trim() {
                "f32" => Ok(Precision::F32),
                "bf16" => Ok(Precision::Bf16Mixed),
                other => bail!("--precision {other}: expected f32 or bf16 (a comma-separated list)"),
            })
            .collect()
    }

    /// The name in the table.
    fn label(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16Mixed => "bf16 mixed precision",
        }
    }

    /// grpo-host's `--mixed-precision`, and the Python reference's `--precision`.
    fn flags(self) -> (&'static str, &'static str) {
        match self {
            Precision::F32 => ("no", "f32"),
            Precision::Bf16Mixed => ("bf16", "bf16"),
        }
    }
}

/// The workload's sizes, the same on both sides.
#[derive(Clone, Copy)]
pub struct Workload {
    /// libtorch threads (per process).
    pub threads: usize,
    /// Measured steps.
    pub steps: usize,
    /// Steps run before measuring.
    pub warmup: usize,
    /// Prompts per step (per process).
    pub prompts: usize,
    /// Rollouts per prompt.
    pub group: usize,
    /// New tokens per rollout.
    pub max_new: usize,
    /// Sequences per micro-batch (per process).
    pub train_batch: usize,
    /// Gradient checkpointing in the training forwards.
    pub gradient_checkpointing: bool,
}

/// The workload options of `args`.
fn workload(args: &[String]) -> Result<Workload> {
    Ok(Workload {
        threads: threads(args)?,
        steps: number(args, "--steps", 3)?,
        warmup: number(args, "--warmup", 1)?,
        prompts: number(args, "--prompts", 4)?,
        group: number(args, "--group", 4)?,
        max_new: number(args, "--max-new", 64)?,
        train_batch: number(args, "--train-batch", 4)?,
        gradient_checkpointing: args.iter().any(|a| a == "--gradient-checkpointing"),
    })
}

/// `grpo-host train` over `w` (`scale` times the prompts and micro-batch, for one process doing the work of
/// `scale` ranks) with `--mixed-precision mixed` on `device`, its run `bench-step` under `runs`, appended to `cmd`
/// (the host itself, or a launcher in front of it).
pub fn host_command(
    mut cmd: Command,
    model: &Path,
    w: &Workload,
    (mixed, device): (&str, Device),
    runs: &Path,
    scale: usize,
) -> Command {
    let s = |n: usize| n.to_string();
    let env_config = serde_json::json!({
        "generator": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "ops": "+", "parentheses": 0.0},
        "system_prompt": SYSTEM,
    });
    cmd.args(["train", "--algo", "grpo", "--env", "math", "--device", device.flag(), "--dtype", "f32"])
        .args(["--mixed-precision", mixed, "--lora-rank", "0", "--kl-weight", "0.01", "--clip-eps", "0.2"])
        .args(["--max-norm", "1.0", "--lr", "5e-6", "--temperature", "0.7", "--top-k", "50", "--top-p", "1.0"])
        .args(["--ignore-eos", "--no-wandb", "--checkpoint-interval", "1000000", "--checkpoint-every-minutes", "0"])
        .arg("--model")
        .arg(model)
        .args(["--env-config", &env_config.to_string(), "--threads", &s(w.threads)])
        .args(["--rollouts-per-step", &s(w.prompts * scale), "--group-size", &s(w.group)])
        .args(["--max-new-tokens", &s(w.max_new), "--train-batch-size", &s(w.train_batch * scale)])
        .args(["--max-steps", &s(w.warmup + w.steps)])
        .arg("--runs-dir")
        .arg(runs)
        .args(["--run-name", "bench-step"]);
    if w.gradient_checkpointing {
        cmd.arg("--gradient-checkpointing");
    }
    cmd
}

/// One batch of a run, as its metrics.jsonl records it.
pub struct Batch {
    /// Rollout, log-prob, train and all-reduce seconds.
    pub secs: [f64; 4],
    /// The rollout, log-prob and training phases' peak resident set (GiB; 0 where not logged).
    pub rss: [f64; 3],
}

/// Each batch of a run from its metrics.jsonl. A batch's rollout and log-prob times and peaks are logged on its
/// first optimizer step's row, its training times on its updates' rows (summed; the peak is the largest).
pub fn read_batches(run: &Path) -> Result<Vec<Batch>> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).context("reading the run's metrics.jsonl")?;
    let mut batches: Vec<Batch> = Vec::new();
    for row in metrics.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        let get = |k: &str| row.get(k).and_then(Value::as_f64);
        if let Some(rollout) = get("timing/rollout_s") {
            batches.push(Batch {
                secs: [rollout, get("timing/logprob_s").unwrap_or(0.0), 0.0, 0.0],
                rss: [
                    get("system/rollout_peak_rss_gb").unwrap_or(0.0),
                    get("system/logprob_peak_rss_gb").unwrap_or(0.0),
                    0.0,
                ],
            });
        }
        if let (Some(train), Some(batch)) = (get("timing/train_s"), batches.last_mut()) {
            batch.secs[2] += train;
            batch.secs[3] += get("timing/allreduce_s").unwrap_or(0.0);
            batch.rss[2] = batch.rss[2].max(get("system/train_peak_rss_gb").unwrap_or(0.0));
        }
    }
    Ok(batches)
}

/// `cargo xtask bench-step --help`.
pub const USAGE: &str = concat!(
    "usage: cargo xtask bench-step [--steps 3] [--warmup 1] [--prompts 4] [--group 4] [--max-new 64] ",
    "[--train-batch 4] [--precision f32,bf16] [--gradient-checkpointing] [--nproc-per-node N] [--out FILE] ",
    "[--threads N] [--device cpu|cuda] [--model DIR] [--host GRPO-HOST --python PYTHON]"
);
/// The options `workload` and `run` (and the data-parallel variant) read that take a value, besides
/// [`crate::bench::COMMON_OPTIONS`].
pub const OPTIONS: &[&str] =
    &["--steps", "--warmup", "--prompts", "--group", "--max-new", "--train-batch", "--precision", "--nproc-per-node"];
/// The options they read that take none.
pub const SWITCHES: &[&str] = &["--gradient-checkpointing"];

/// Run the benchmark from the workspace root `root` with command-line `args`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let w = workload(args)?;
    if let Some(n) = flag(args, "--nproc-per-node") {
        return crate::bench_ddp::run(root, args, &w, n.parse().context("--nproc-per-node: expected a number")?);
    }
    let precision_list = flag(args, "--precision").unwrap_or_else(|| "f32,bf16".to_string());
    let precisions = Precision::parse(&precision_list)?;
    if w.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let sides = Sides::of(root, args)?;

    let mut md = String::new();
    md.push_str("## One GRPO step (`cargo xtask bench-step`)\n\n");
    let mut versions = Value::Null;
    let mut tables = String::new();
    for &precision in &precisions {
        let (ours, reference, v) = measure(root, &sides, &w, precision)?;
        versions = v;
        let (o, r) = (means(&ours), means(&reference));
        tables.push_str(&format!("### {}\n\n", precision.label()));
        tables.push_str("| phase | grpo-host (s) | Python reference (s) | speed-up |\n|---|---:|---:|---:|\n");
        for (i, phase) in PHASES.iter().enumerate() {
            tables.push_str(&format!(
                "| {} | {:.2} | {:.2} | {:.2}x |\n",
                phase.trim_end_matches("_s"),
                o[i],
                r[i],
                r[i] / o[i].max(1e-9)
            ));
        }
        for (phase, key) in RSS_PEAKS {
            let (o, r) = (mean(&ours, key), mean(&reference, key));
            if o > 0.0 && r > 0.0 {
                let ratio = if r >= o { format!("{:.2}x less", r / o) } else { format!("{:.2}x more", o / r) };
                tables.push_str(&format!("| peak RSS, {phase} (GiB) | {o:.2} | {r:.2} | {ratio} |\n"));
            }
        }
        if sides.device == Device::Cuda {
            let (o, r) = (peak(&ours, PEAK), peak(&reference, PEAK));
            tables.push_str(&format!(
                "| peak GPU memory reserved (GB) | {o:.2} | {r:.2} | {:.2}x less |\n",
                r / o.max(1e-9)
            ));
        }
        tables.push('\n');
    }
    let Workload { threads, steps, warmup, prompts, group, max_new, train_batch, gradient_checkpointing } = w;
    let (checkpointing, checkpointing_flag) = if gradient_checkpointing {
        (
            ", gradient checkpointing on both sides (transformers' non-reentrant form on the Python side)",
            " --gradient-checkpointing",
        )
    } else {
        ("", "")
    };
    let hardware = match sides.device {
        Device::Cpu => format!("{}, {threads} thread(s) on both sides", sides.device.describe(&versions)),
        Device::Cuda => sides.device.describe(&versions),
    };
    let rss = " Peak RSS is the process's peak resident set in each phase, the mean over the measured steps, read the \
               same way on both sides (Linux's VmHWM, reset at the phase's start through /proc/self/clear_refs); \
               it includes what was resident before the phase began (the models, the optimizer state).";
    let memory = match sides.device {
        Device::Cpu => "",
        Device::Cuda => {
            " Peak GPU memory is what libtorch's caching allocator reserved, the most over the run: on our side the \
             largest `system/gpu_memory_reserved_gb` of metrics.jsonl (sampled after each optimizer step; the \
             allocator keeps what it reserved, so it bounds the peak allocation from above), on the Python side \
             `torch.cuda.max_memory_reserved()` over each measured step."
        }
    };
    md.push_str(&format!(
        "{model}, {hardware}. Workload: {prompts} single-digit additions x {group} rollouts x {max_new} new tokens \
         (end-of-sequence ignored on both sides), full fine-tuning with a frozen reference, KL weight 0.01, \
         micro-batches of {train_batch}, one epoch, AdamW{checkpointing}. Mean of {steps} steps after {warmup} warm-up step(s), in \
         seconds, each precision measured on both sides one after the other. grpo-host: release build, `grpo-host \
         train --ignore-eos ...` (`timing/*` of metrics.jsonl); bf16 mixed precision is `--mixed-precision bf16` \
         (bf16 working copies of the weights, f32 masters, gradients and AdamW state). Reference: \
         `tests/oracles/bench_grpo_step.py`, re-grpo's loop (one `generate` call per prompt, separate old and \
         reference forwards) on transformers {} / torch {}; its bf16 mixed precision is `torch.autocast` with \
         bfloat16 around every forward over f32 weights, as accelerate's `--mixed_precision bf16` does. Rewards \
         differ (the math environment's on our side, random on the Python side), which changes no work: both run \
         every forward, backward and AdamW step.{rss}{memory}\n\n",
        versions["transformers"].as_str().unwrap_or("?"),
        versions["torch"].as_str().unwrap_or("?"),
        model = sides.model_name(),
    ));
    md.push_str(&tables);
    md.push_str(&format!(
        "Reproduce: `cargo xtask bench-step --device {} --threads {threads} --steps {steps} --warmup {warmup} \
         --prompts {prompts} --group {group} --max-new {max_new} --train-batch {train_batch} --precision \
         {precision_list}{checkpointing_flag}`\n",
        sides.device.flag()
    ));
    print!("{md}");
    let name = match sides.device {
        Device::Cpu => "benchmarks-step.md",
        Device::Cuda => "benchmarks-step-cuda.md",
    };
    let path = output(root, args, name);
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The key of a step's peak GPU memory (GB), on both sides.
const PEAK: &str = "peak_gpu_reserved_gb";

/// Each phase's peak resident set of the process (GiB, Linux's VmHWM reset at the phase's start): the keys of the
/// Python side's rows, which ours are given too.
const RSS_PEAKS: [(&str, &str); 3] =
    [("rollout", "rollout_peak_rss_gib"), ("logprob", "logprob_peak_rss_gib"), ("train", "train_peak_rss_gib")];

/// The mean of `key` over `rows` (0 when none has it).
fn mean(rows: &[Value], key: &str) -> f64 {
    let values: Vec<f64> = rows.iter().filter_map(|r| r[key].as_f64()).collect();
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The largest `key` over `rows` (0 when none has it).
fn peak(rows: &[Value], key: &str) -> f64 {
    rows.iter().filter_map(|r| r[key].as_f64()).fold(0.0, f64::max)
}

/// The largest of `key` over a run's metrics.jsonl rows.
fn run_peak(run: &Path, key: &str) -> Result<f64> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).context("reading the run's metrics.jsonl")?;
    let rows: Vec<Value> = metrics.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ok(peak(&rows, key))
}

/// One precision on both sides: the measured steps of ours, of the reference, and the reference's versions.
fn measure(root: &Path, sides: &Sides, w: &Workload, precision: Precision) -> Result<(Vec<Value>, Vec<Value>, Value)> {
    let Workload { threads, steps, warmup, prompts, group, max_new, train_batch, gradient_checkpointing } = *w;
    let (mixed, python_precision) = precision.flags();
    let s = |n: usize| n.to_string();
    eprintln!("{}: running the Python reference ({warmup} warm-up + {steps} steps)...", precision.label());
    let mut python = Command::new(&sides.python);
    python
        .current_dir(root)
        .arg("tests/oracles/bench_grpo_step.py")
        .arg(&sides.model)
        .args(["--steps", &s(steps), "--warmup", &s(warmup), "--prompts", &s(prompts), "--group", &s(group)])
        .args(["--max-new", &s(max_new), "--train-batch", &s(train_batch), "--threads", &s(threads)])
        .args(["--precision", python_precision, "--system", SYSTEM, "--device", sides.device.flag()]);
    if gradient_checkpointing {
        python.arg("--gradient-checkpointing");
    }
    let out = python.output().context("running tests/oracles/bench_grpo_step.py")?;
    if !out.status.success() {
        bail!("the Python reference failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let reference: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let versions = reference.first().cloned().unwrap_or_default();

    eprintln!("{}: running grpo-host train ({warmup} warm-up + {steps} steps)...", precision.label());
    let runs = tempfile::tempdir().context("creating a scratch runs directory")?;
    let status = host_command(Command::new(&sides.host), &sides.model, w, (mixed, sides.device), runs.path(), 1)
        .status()
        .context("running grpo-host train")?;
    if !status.success() {
        bail!("grpo-host train failed (exit {status})");
    }
    let run = runs.path().join("bench-step");
    let reserved = run_peak(&run, "system/gpu_memory_reserved_gb")?;
    let ours: Vec<Value> = read_batches(&run)?
        .iter()
        .skip(warmup)
        .map(|Batch { secs: b, rss: m }| {
            serde_json::json!({
                "rollout_s": b[0], "logprob_s": b[1], "train_s": b[2], "total_s": b[0] + b[1] + b[2], PEAK: reserved,
                "rollout_peak_rss_gib": m[0], "logprob_peak_rss_gib": m[1], "train_peak_rss_gib": m[2],
            })
        })
        .collect();
    if ours.len() != steps || reference.len() != steps {
        bail!(
            "expected {steps} measured steps from each side, got {} (ours) and {} (Python)",
            ours.len(),
            reference.len()
        );
    }

    Ok((ours, reference, versions))
}
