//! `cargo xtask bench-generate`: generation throughput of `grpo-host generate` against transformers `generate`
//! (tests/oracles/bench_generate.py) on one model, same prompt, sampling settings, dtype, device and thread count,
//! in one run, plus the machine's roofline and what libtorch's matmuls alone allow; writes the table to
//! docs/benchmarks-generate.md (f32 on the CPU), docs/benchmarks-generate-bf16.md (bf16 on the CPU) or
//! docs/benchmarks-generate-cuda.md, or to `--out FILE`.
//!
//! Options: `--threads N` (default: all cores), `--samples 1,8,64`, `--new-tokens 64` (a list: `64,512`),
//! `--model DIR`, `--dtype f32|bf16`, `--device cpu|cuda`, `--compile` (transformers also with its static cache
//! compiled by `torch.compile`), `--multi-step K` (grpo-host also with `--multi-step K`, in a column of its own),
//! and `--host FILE --python FILE` to run prebuilt sides with no setup or build.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use crate::bench::{flag, number, output, run_json, threads, Device, Sides};

const PROMPT: &str = "What is 17 + 25?";

/// The transformers modes timed, by the `cache` key of the reference's rows, with their column titles.
const MODES: [(&str, &str); 3] = [
    ("dynamic", "transformers tok/s (dynamic cache)"),
    ("static", "transformers tok/s (static cache)"),
    ("static+compile", "transformers tok/s (static cache, torch.compile)"),
];

/// A comma-separated list of numbers.
fn list(args: &[String], name: &str, default: &str) -> anyhow::Result<Vec<usize>> {
    let text = flag(args, name).unwrap_or_else(|| default.into());
    text.split(',').map(|s| s.trim().parse().with_context(|| format!("{name} {text}: expected numbers"))).collect()
}

/// `cargo xtask bench-generate --help`.
pub const USAGE: &str = concat!(
    "usage: cargo xtask bench-generate [--samples 1,8,64] [--new-tokens 64] [--dtype f32|bf16] [--multi-step K] ",
    "[--compile] [--out FILE] [--threads N] [--device cpu|cuda] [--model DIR] [--host GRPO-HOST --python PYTHON]"
);
/// The options `run` reads that take a value, besides [`crate::bench::COMMON_OPTIONS`].
pub const OPTIONS: &[&str] = &["--samples", "--new-tokens", "--dtype", "--multi-step"];
/// The options `run` reads that take none.
pub const SWITCHES: &[&str] = &["--compile"];

/// Run the benchmark from the workspace root `root` with command-line `args`.
pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let threads = threads(args)?;
    let samples = list(args, "--samples", "1,8,64")?;
    let new_tokens = list(args, "--new-tokens", "64")?;
    let dtype = flag(args, "--dtype").unwrap_or_else(|| "f32".into());
    if dtype != "f32" && dtype != "bf16" {
        anyhow::bail!("--dtype {dtype}: expected f32 or bf16");
    }
    let compile = args.iter().any(|a| a == "--compile");
    let multi_step: usize = number(args, "--multi-step", 1)?;
    if multi_step == 0 {
        anyhow::bail!("--multi-step 0: expected K >= 1");
    }
    // grpo-host's variants: one host read per decode step, and blocks of K steps per read.
    let steps: Vec<usize> = if multi_step > 1 { vec![1, multi_step] } else { vec![1] };
    let sides = Sides::of(root, args)?;
    let (model, device) = (sides.model.display().to_string(), sides.device.flag());
    let samples_str: Vec<String> = samples.iter().map(|s| s.to_string()).collect();

    // One reference run and one of ours per sample count and variant, for each length.
    let mut runs: Vec<(usize, Value, Vec<Vec<f64>>)> = Vec::new();
    for &new in &new_tokens {
        eprintln!("running transformers reference ({new} new tokens)...");
        let mut cmd = Command::new(&sides.python);
        cmd.current_dir(root)
            .arg("tests/oracles/bench_generate.py")
            .args(["--model", &model, "--threads", &threads.to_string(), "--device", device])
            .args(["--new-tokens", &new.to_string(), "--prompt", PROMPT, "--dtype", &dtype, "--samples"])
            .args(&samples_str);
        if compile {
            cmd.arg("--compile");
        }
        let reference = run_json(&mut cmd)?;
        eprintln!("reference: {reference}");
        let mut ours = Vec::new();
        for &n in &samples {
            let mut variants = Vec::new();
            for &k in &steps {
                eprintln!("running grpo-host generate -n {n} --max-new-tokens {new} --multi-step {k}...");
                let v = run_json(
                    Command::new(&sides.host)
                        .args(["generate", "--model", &model, "--prompt", PROMPT])
                        .args(["-n", &n.to_string(), "--max-new-tokens", &new.to_string()])
                        .args(["--temperature", "0.7", "--ignore-eos", "--json", "--device", device, "--dtype", &dtype])
                        .args(["--seed", "0", "--threads", &threads.to_string(), "--multi-step", &k.to_string()]),
                )?;
                let tps = v["stats"]["tokens_per_second"].as_f64().unwrap_or(0.0);
                eprintln!("  {tps:.1} tokens/s ({} tokens)", v["stats"]["generated_tokens"]);
                variants.push(tps);
            }
            ours.push(variants);
        }
        runs.push((new, reference, ours));
    }
    let modes: Vec<(&str, &str)> = MODES.iter().copied().filter(|(m, _)| compile || *m != "static+compile").collect();
    let md = table(&sides, &dtype, threads, &samples, &steps, &modes, &runs);
    print!("{md}");
    let lengths: Vec<String> = new_tokens.iter().map(|n| n.to_string()).collect();
    // A model other than the default is named by its folder: where it lives differs between machines.
    let (model_arg, model_note) = match flag(args, "--model") {
        Some(_) => (
            " --model M".to_string(),
            format!(", M holding {} (tests/oracles/random_model.py makes the random-weight ones)", sides.model_name()),
        ),
        None => (String::new(), String::new()),
    };
    let reproduce = format!(
        "\nReproduce: `cargo xtask bench-generate --device {device} --threads {threads} --dtype {dtype} --samples {} \
         --new-tokens {}{}{}{model_arg}`{model_note}\n",
        samples_str.join(","),
        lengths.join(","),
        if compile { " --compile" } else { "" },
        if multi_step > 1 { format!(" --multi-step {multi_step}") } else { String::new() },
    );
    let name = match (sides.device, dtype.as_str()) {
        (Device::Cpu, "f32") => "benchmarks-generate.md".to_string(),
        (Device::Cpu, _) => format!("benchmarks-generate-{dtype}.md"),
        (Device::Cuda, _) => "benchmarks-generate-cuda.md".to_string(),
    };
    let out = output(root, args, &name);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, md + &reproduce)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The page: a caption with the roofline's inputs, then one row per length and sample count.
fn table(
    sides: &Sides,
    dtype: &str,
    threads: usize,
    samples: &[usize],
    steps: &[usize],
    modes: &[(&str, &str)],
    runs: &[(usize, Value, Vec<Vec<f64>>)],
) -> String {
    let Some((_, first, _)) = runs.first() else { return String::new() };
    let hardware = sides.device.describe(first);
    let threads_note = match sides.device {
        Device::Cpu => format!(", {threads} thread(s)"),
        Device::Cuda => String::new(),
    };
    let gb = |x: &Value| x.as_f64().unwrap_or(0.0) / 1e9;
    let mut md = String::new();
    md.push_str("## Generation throughput (`cargo xtask bench-generate`)\n\n");
    md.push_str(&format!(
        "{model}, {dtype}, {hardware}{threads_note}. One chat prompt batched N times, the new tokens per sample in \
         the table's first column (eos ignored), sampling at temperature 0.7. grpo-host: `grpo-host generate --prompt \
         '{PROMPT}' -n N --max-new-tokens T --temperature 0.7 --ignore-eos --json --device {device} --dtype {dtype}` \
         (release build; generation time incl. prefill, excl. model load). Reference: \
         `tests/oracles/bench_generate.py --device {device} --dtype {dtype}` (transformers {} on torch {}, warm-up \
         calls untimed).\n\n",
        first["transformers"].as_str().unwrap_or("?"),
        first["torch"].as_str().unwrap_or("?"),
        model = sides.model_name(),
        device = sides.device.flag(),
    ));
    md.push_str(&format!(
        "Roofline inputs measured by the script: memory bandwidth {:.1} GB/s (copy), decode-shaped {dtype} matmul \
         {:.1} GFLOP/s; per decode step {:.2} GB of weights and, per sample, {:.1} KB of cached keys and values per \
         position (the mean position over a run's steps sets the cache read), and {:.2} GFLOP per token. \"Matmuls \
         alone\": the tokens/s that one decode step's projections would allow with nothing else in the step (every \
         linear layer and the output head, torch's `linear` on the model's weights at N rows), the ceiling for any \
         engine built on libtorch's kernels. The ratio is against the fastest transformers mode.\n\n",
        gb(&first["bandwidth_bytes_per_s"]),
        gb(&first["matmul_flops_per_s"]),
        gb(&first["weight_bytes"]),
        first["kv_bytes_per_position"].as_f64().unwrap_or(0.0) / 1e3,
        gb(&first["flops_per_token"]),
    ));
    if steps.len() > 1 {
        md.push_str(
            "grpo-host runs once reading the sampled ids after every decode step and once per block of \
             `--multi-step` steps; the ratio and the percentages take the faster of the two.\n\n",
        );
    }
    let ours_titles: Vec<String> = steps
        .iter()
        .map(|&k| if k == 1 { "grpo-host tok/s".to_string() } else { format!("grpo-host tok/s (multi-step {k})") })
        .collect();
    let titles: Vec<&str> = modes.iter().map(|(_, title)| *title).collect();
    md.push_str(&format!(
        "| new tokens | samples | {} | {} | ratio | roofline tok/s | % of roofline | matmuls alone tok/s \
         | % of matmuls alone |\n",
        ours_titles.join(" | "),
        titles.join(" | ")
    ));
    md.push_str(&format!("|---:|---:|{}---:|---:|---:|---:|---:|\n", "---:|".repeat(steps.len() + modes.len())));
    for (new, reference, ours) in runs {
        let reference_tps = |n: usize, cache: &str| {
            let rows = reference["reference"].as_array().into_iter().flatten();
            let mut of_n = rows.filter(|r| r["samples"].as_u64() == Some(n as u64));
            let row = of_n.find(|r| r["cache"].as_str().unwrap_or("dynamic") == cache);
            row.and_then(|r| r["tokens_per_second"].as_f64()).unwrap_or(0.0)
        };
        for (i, &n) in samples.iter().enumerate() {
            let theirs: Vec<f64> = modes.iter().map(|(mode, _)| reference_tps(n, mode)).collect();
            let best = theirs.iter().copied().fold(0.0, f64::max);
            let roof = reference["roofline"][i]["tokens_per_second"].as_f64().unwrap_or(0.0);
            let matmuls = reference["roofline"][i]["matmuls_only_tokens_per_second"].as_f64().unwrap_or(0.0);
            let cells: Vec<String> = ours[i].iter().chain(&theirs).map(|t| format!("{t:.1}")).collect();
            let fastest = ours[i].iter().copied().fold(0.0, f64::max);
            md.push_str(&format!(
                "| {new} | {n} | {} | {:.2}x | {:.0} | {:.0}% | {:.0} | {:.0}% |\n",
                cells.join(" | "),
                fastest / best.max(1e-9),
                roof,
                100.0 * fastest / roof.max(1e-9),
                matmuls,
                100.0 * fastest / matmuls.max(1e-9)
            ));
        }
    }
    md
}
