//! One AdamW update over every parameter of the default model, timed: f32 weights, and bf16 working weights with f32
//! masters (`--mixed-precision bf16`). For docs/benchmarks.md, "AdamW update", beside
//! tests/oracles/bench_adamw.py (torch.optim.AdamW on the same shapes).
//!
//! `cargo run --release -p grpo-host --example bench_adamw -- [STEPS] [THREADS]` (default 5 and 2).

use std::time::Instant;

use grpo_host::model::Model;
use grpo_host::train::optimizer::{AdamW, AdamWConfig};
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: usize = args.first().map_or(Ok(5), |s| s.parse())?;
    let threads: i32 = args.get(1).map_or(Ok(2), |s| s.parse())?;
    tch::set_num_threads(threads);
    let dir = grpo_host::paths::default_model_dir();
    let config = AdamWConfig { lr: 1e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    for (label, kind) in [("f32", Kind::Float), ("bf16 + f32 masters", Kind::BFloat16)] {
        let model = Model::load(&dir, Device::Cpu, kind)?;
        let mut params: Vec<(String, Tensor)> = model.var_store().variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let count: i64 = params.iter().map(|(_, p)| p.numel() as i64).sum();
        let mut opt = AdamW::new(params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect(), config);
        // A fixed random gradient on every parameter, set once: each step reads it as backward would leave it.
        tch::manual_seed(0);
        for (_, p) in &params {
            let mut g = p.grad();
            if !g.defined() {
                (p * 0.0).sum(Kind::Float).backward();
                g = p.grad();
            }
            tch::no_grad(|| g.copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 1e-3)));
        }
        let mut times = Vec::new();
        for step in 0..=steps {
            let t = Instant::now();
            opt.clip_grad_norm(0.0);
            let norm_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            opt.step(config.lr)?;
            if step > 0 {
                // Step 0 is the warm-up: first-touch page faults of the moments.
                times.push((norm_s, t.elapsed().as_secs_f64()));
            }
        }
        let mean = |f: fn(&(f64, f64)) -> f64| times.iter().map(f).sum::<f64>() / times.len() as f64;
        println!(
            "{label}: {count} parameters in {} tensors, {threads} thread(s): update {:.3} s, gradient norm {:.3} s \
             (mean of {steps})",
            params.len(),
            mean(|t| t.1),
            mean(|t| t.0),
        );
    }
    Ok(())
}
