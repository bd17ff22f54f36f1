//! The memory of the trainer's log-prob stage alone: forward and backward of token log-probs over a vocabulary
//! projection, as the recomputing autograd node (`node`, what the trainer runs) or as the plain autograd expression
//! that keeps every chunk's f32 logits for backward (`plain`). Prints the process's peak RSS growth over the stage,
//! so run each mode in its own process. For docs/benchmarks.md, "Log-probs without stored logits".
//!
//! `cargo run --release -p grpo-host --example bench_log_probs_memory -- node|plain [ROWS] [POSITIONS] [THREADS]
//! [HIDDEN] [VOCABULARY]` (defaults 8, 1024, 2, and the default model's 576 and 49,152), with the trainer's chunking.

use std::time::Instant;

use grpo_host::logging::system::peak_rss_bytes;
use grpo_host::model::token_log_probs_of;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("node");
    let number = |i: usize, default: i64| args.get(i).map_or(Ok(default), |s| s.parse::<i64>());
    let (rows, positions, threads) = (number(1, 8)?, number(2, 1024)?, number(3, 2)?);
    tch::set_num_threads(threads as i32);
    let (hidden_size, vocab) = (number(4, 576)?, number(5, 49_152)?);
    // The trainer's chunk: about 2^26 logits per projection (Model::token_log_probs).
    let chunk = (grpo_host::model::LOGITS_PER_CHUNK / (rows * vocab)).max(1);
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let hidden = (Tensor::randn([rows, positions, hidden_size], opts) * 0.5).set_requires_grad(true);
    let weight = (Tensor::randn([vocab, hidden_size], opts) * 0.02).set_requires_grad(true);
    let targets = Tensor::randint(vocab, [rows, positions], (Kind::Int64, Device::Cpu));
    let peak_rss = || peak_rss_bytes().ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"));
    let before = peak_rss()?;
    let t = Instant::now();
    let log_probs = match mode {
        "node" => token_log_probs_of(&hidden, &weight, &targets, chunk),
        "plain" => {
            let mut parts = Vec::new();
            for s in (0..positions).step_by(chunk as usize) {
                let c = chunk.min(positions - s);
                let logits = hidden.narrow(1, s, c).linear::<Tensor>(&weight, None).to_kind(Kind::Float);
                let picked = logits.gather(-1, &targets.narrow(1, s, c).unsqueeze(-1), false).squeeze_dim(-1);
                parts.push(picked - logits.logsumexp([-1], false));
            }
            Tensor::cat(&parts, 1)
        }
        other => anyhow::bail!("mode {other:?}: use node or plain"),
    };
    log_probs.sum(Kind::Float).backward();
    let secs = t.elapsed().as_secs_f64();
    let grown = peak_rss()?.saturating_sub(before) as f64 / 1e9;
    let logits_gb = (rows * positions * vocab * 4) as f64 / 1e9;
    println!(
        "{mode}: {rows} x {positions} positions, vocabulary {vocab}, chunk {chunk} positions, {threads} thread(s): \
         peak RSS grew {grown:.2} GB over forward + backward ({logits_gb:.2} GB of f32 logits in all), {secs:.2} s"
    );
    Ok(())
}
