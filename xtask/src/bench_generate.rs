//! `cargo xtask bench-generate`: generation throughput of `grpo-host generate` against transformers `generate`
//! (tests/oracles/bench_generate.py) on the default model, same prompt, sampling settings, dtype and thread count,
//! in one run, plus the machine's roofline and what libtorch's matmuls alone allow; writes the table to
//! docs/benchmarks-generate.md (f32) or docs/benchmarks-generate-bf16.md.
//!
//! Options: `--threads N` (default: all cores), `--samples 1,8,64`, `--new-tokens 64`, `--model DIR`,
//! `--dtype f32|bf16`.

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use crate::bench::{cpu_name, flag, inputs, number, run_json, threads};
use crate::process::cargo;

const PROMPT: &str = "What is 17 + 25?";

/// Run the benchmark from the workspace root `root` with command-line `args`.
pub fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let threads = threads(args)?;
    let samples: Vec<usize> = flag(args, "--samples")
        .unwrap_or_else(|| "1,8,64".into())
        .split(',')
        .map(|s| s.trim().parse().context("--samples"))
        .collect::<anyhow::Result<_>>()?;
    let new_tokens: usize = number(args, "--new-tokens", 64)?;
    let (model, python) = inputs(args)?;
    let dtype = flag(args, "--dtype").unwrap_or_else(|| "f32".into());
    if dtype != "f32" && dtype != "bf16" {
        anyhow::bail!("--dtype {dtype}: expected f32 or bf16");
    }

    cargo(&["build", "--release"], "building grpo-host and the shipped plugins (release)")?;
    let host = root.join("target").join("release").join("grpo-host");

    let samples_str: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
    eprintln!("running transformers reference...");
    let reference = run_json(
        Command::new(&python)
            .current_dir(root)
            .arg("tests/oracles/bench_generate.py")
            .args(["--model", &model.display().to_string(), "--threads", &threads.to_string()])
            .args(["--new-tokens", &new_tokens.to_string(), "--prompt", PROMPT, "--dtype", &dtype, "--samples"])
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
                .args(["--temperature", "0.7", "--ignore-eos", "--json", "--device", "cpu", "--dtype", &dtype])
                .args(["--seed", "0", "--threads", &threads.to_string()]),
        )?;
        let tps = v["stats"]["tokens_per_second"].as_f64().unwrap_or(0.0);
        eprintln!("  {tps:.1} tokens/s ({} tokens)", v["stats"]["generated_tokens"]);
        ours.push(tps);
    }

    let cpu = cpu_name();
    let gb = |x: &Value| x.as_f64().unwrap_or(0.0) / 1e9;
    let mut md = String::new();
    md.push_str("## Generation throughput (`cargo xtask bench-generate`)\n\n");
    md.push_str(&format!(
        "Default model (SmolLM2-135M-Instruct, {dtype}, CPU), {threads} thread(s), {cpu}. One chat prompt batched N \
         times, {new_tokens} new tokens per sample (eos ignored), sampling at temperature 0.7. grpo-host: \
         `grpo-host generate --prompt '{PROMPT}' -n N --max-new-tokens {new_tokens} --temperature 0.7 --ignore-eos --json \
         --dtype {dtype} --threads {threads}` (release build; generation time incl. prefill, excl. model load). \
         Reference: `tests/oracles/bench_generate.py --threads {threads} --dtype {dtype}` (transformers {} on torch {}, \
         one warm-up call).\n\n",
        reference["transformers"].as_str().unwrap_or("?"),
        reference["torch"].as_str().unwrap_or("?")
    ));
    md.push_str(&format!(
        "Roofline inputs measured by the script: memory bandwidth {:.1} GB/s (copy), decode-shaped {dtype} matmul \
         {:.1} GFLOP/s; per decode step {:.2} GB of weights and, per sample, {:.1} MB of cached keys and values (the \
         mean of {:.1} positions over the steps, {:.1} KB each) read, and {:.2} GFLOP per token. \"Matmuls alone\": \
         the tokens/s that one decode step's projections would allow with nothing else in the step (every linear \
         layer and the output head, torch's `linear` on the model's weights at N rows), the ceiling for any engine \
         built on libtorch's kernels. transformers is timed with its default dynamic cache and with its static cache \
         (`cache_implementation=\"static\"`); the ratio is against the faster of the two.\n\n",
        gb(&reference["bandwidth_bytes_per_s"]),
        gb(&reference["matmul_flops_per_s"]),
        gb(&reference["weight_bytes"]),
        reference["kv_bytes_per_position"].as_f64().unwrap_or(0.0)
            * reference["mean_positions"].as_f64().unwrap_or(0.0)
            / 1e6,
        reference["mean_positions"].as_f64().unwrap_or(0.0),
        reference["kv_bytes_per_position"].as_f64().unwrap_or(0.0) / 1e3,
        gb(&reference["flops_per_token"]),
    ));
    md.push_str(
        "| samples | grpo-host tok/s | transformers tok/s (dynamic cache) | transformers tok/s (static cache) | ratio \
         | roofline tok/s | % of roofline | matmuls alone tok/s | % of matmuls alone |\n",
    );
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let reference_tps = |n: usize, cache: &str| {
        let runs = reference["reference"].as_array().into_iter().flatten();
        let mut of_n = runs.filter(|r| r["samples"].as_u64() == Some(n as u64));
        let run = of_n.find(|r| r["cache"].as_str().unwrap_or("dynamic") == cache);
        run.and_then(|r| r["tokens_per_second"].as_f64()).unwrap_or(0.0)
    };
    for (i, &n) in samples.iter().enumerate() {
        let (dynamic, fixed) = (reference_tps(n, "dynamic"), reference_tps(n, "static"));
        let r = dynamic.max(fixed);
        let roof = reference["roofline"][i]["tokens_per_second"].as_f64().unwrap_or(0.0);
        let matmuls = reference["roofline"][i]["matmuls_only_tokens_per_second"].as_f64().unwrap_or(0.0);
        md.push_str(&format!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.0} | {:.0}% | {:.0} | {:.0}% |\n",
            ours[i],
            dynamic,
            fixed,
            ours[i] / r.max(1e-9),
            roof,
            100.0 * ours[i] / roof.max(1e-9),
            matmuls,
            100.0 * ours[i] / matmuls.max(1e-9)
        ));
    }
    md.push_str(&format!(
        "\nReproduce: `cargo xtask bench-generate --threads {threads} --dtype {dtype} --new-tokens {new_tokens}`\n"
    ));
    print!("{md}");
    let name =
        if dtype == "f32" { "benchmarks-generate.md".to_string() } else { format!("benchmarks-generate-{dtype}.md") };
    let out = root.join("docs").join(name);
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(&out, &md)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
