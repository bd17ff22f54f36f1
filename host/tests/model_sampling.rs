//! Seeded sampling is reproducible. Kept in its own test binary: libtorch's generator is process-global, so a
//! test drawing random numbers in a parallel thread would interleave with these draws.

use std::path::Path;

use grpo_host::generate::{generate, GenerateRequest, SamplingParams};
use grpo_host::model::Model;
use tch::{Device, Kind};

#[test]
fn same_seed_same_samples_different_seed_different_samples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/model/tiny/llama");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let run = |seed: u64| {
        let mut req = GenerateRequest::new(vec![vec![5, 6, 7], vec![9]], 4, 16, vec![258]);
        req.sampling = SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.95, min_p: 0.05, repetition_penalty: 1.0 };
        req.seed = Some(seed);
        let out = generate(&model, None, &req, None).unwrap();
        out.completions.into_iter().map(|c| (c.tokens, c.logprobs)).collect::<Vec<_>>()
    };
    let a = run(1);
    assert_eq!(a, run(1));
    assert_ne!(a, run(2));
    // Samples within a group differ: the group shares the prompt's cache, not its random draws.
    assert_ne!(a[0].0, a[1].0);
}
