//! A tensor crossing the plugin boundary both ways keeps its gradient and is freed exactly once. Alone in its test
//! binary because it counts the process's large allocations, which other tests running in parallel would disturb.

mod common;

use common::*;
use grpo_host::plugins::{DiscoveryOptions, Registry};
use grpo_sdk::tch::{Device, Kind, Tensor};
use grpo_sdk::{LossSettings, PolicyBatch};

/// glibc's allocation statistics (`man mallinfo2`).
#[repr(C)]
struct Mallinfo2 {
    arena: usize,
    ordblks: usize,
    smblks: usize,
    hblks: usize,
    hblkhd: usize,
    usmblks: usize,
    fsmblks: usize,
    uordblks: usize,
    fordblks: usize,
    keepcost: usize,
}

extern "C" {
    fn mallinfo2() -> Mallinfo2;
}

/// Bytes the allocator holds in mmapped blocks. Blocks above 32 MiB are always mmapped and returned to the system
/// when freed, so a tensor of that size shows up here exactly while some reference to its storage is alive.
fn mmapped() -> usize {
    // SAFETY: a plain query of allocator statistics.
    unsafe { mallinfo2().hblkhd }
}

const MIB: usize = 1 << 20;

#[test]
fn tensors_cross_both_ways_keep_their_gradient_and_are_freed_once() {
    let registry = Registry::discover(&DiscoveryOptions::only(vec![shipped_dir().to_path_buf()])).unwrap();
    let algo = registry.algorithm("grpo", &serde_json::Value::Null).unwrap();
    let (b, t) = (1024i64, 16384i64); // 64 MiB of float32
    let opts = (Kind::Float, Device::Cpu);
    let before = mmapped();
    for round in 0..3 {
        {
            // Borrowed in, owned out: the plugin clones its own handle to log_probs and returns the loss.
            let log_probs = Tensor::full([b, t], -1.0, opts).set_requires_grad(true);
            assert!(mmapped() >= before + 64 * MIB, "the probe does not see the tensor");
            let batch = PolicyBatch {
                log_probs: log_probs.shallow_clone(),
                old_log_probs: log_probs.detach(),
                ref_log_probs: None,
                advantages: Tensor::ones([b], opts),
                action_mask: Tensor::ones([b, t], (Kind::Bool, Device::Cpu)),
                settings: LossSettings { kl_weight: 0.0, ..LossSettings::default() },
                is_weights: None,
                step_token_divisor: None,
            };
            let out = algo.loss(&batch).unwrap();
            drop(batch);
            // ratio = 1 everywhere, so loss = -mean(A) = -1 and d loss / d log_probs = -1 / (B * T).
            assert_eq!(out.loss.double_value(&[]), -1.0);
            out.loss.backward();
            drop(out);
            let grad = log_probs.grad();
            let want = -1.0 / (b * t) as f64;
            assert!((grad.double_value(&[0, 0]) - want).abs() < 1e-15);
            assert!((grad.double_value(&[b - 1, t - 1]) - want).abs() < 1e-15);

            // Borrowed in, owned out again, for a tensor the plugin allocates.
            let rewards = Tensor::rand([b * t], opts);
            let adv = algo.advantages(&rewards, &[(b * t) as usize]).unwrap();
            assert_eq!(adv.size(), vec![b * t]);
            assert!(adv.mean(None).double_value(&[]).abs() < 1e-3);
        }
        // Everything above is dropped: if either side kept (leaked) a handle, its storage would still be mapped;
        // had both sides freed one, the allocator would have aborted the process.
        let leaked = mmapped().saturating_sub(before);
        assert!(leaked < MIB, "round {round}: {} MiB still allocated after all handles were dropped", leaked / MIB);
    }
}
