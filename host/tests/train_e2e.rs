//! Training end to end, as a user runs it: the installed `grpo-host` binary, the shipped plugins loaded from
//! their libraries, the tiny random Llama fixture, two batches of `math`. Checks every metric key the seed guide
//! names, the checkpoint, exact resumption and run-to-run determinism.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_model() -> PathBuf {
    common::workspace_root().join("tests/fixtures/model/tiny/llama")
}

/// Train with small settings into `runs/<name>`; extra flags are appended.
fn train(runs: &Path, name: &str, extra: &[&str]) -> Output {
    let model = tiny_model();
    let mut cmd = Command::new(common::host_exe());
    cmd.args(["--algo", "grpo", "--env", "math", "--model", model.to_str().unwrap()])
        .args(["--rollouts-per-step", "2", "--group-size", "3", "--train-batch-size", "2", "--max-new-tokens", "6"])
        .args(["--max-length", "512", "--temperature", "1.0", "--lr", "1e-3", "--seed", "7", "--no-wandb"])
        .args(["--runs-dir", runs.to_str().unwrap(), "--run-name", name, "--checkpoint-interval", "1"])
        .args(extra)
        .env_remove("GRPO_PLUGIN_PATH")
        .env("XDG_DATA_HOME", runs.join("xdg"));
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn rows(run: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().as_object().unwrap().clone())
        .collect()
}

/// The rows without what legitimately differs between two runs: wall-clock times and memory.
fn comparable(run: &Path) -> Vec<BTreeMap<String, serde_json::Value>> {
    rows(run)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .filter(|(k, _)| !(k.starts_with("timing/") || k.starts_with('_') || k == "system/process_rss_gb"))
                .collect()
        })
        .collect()
}

const SEED_KEYS: &[&str] = &[
    "rollouts/returns_sum",
    "rollouts/returns_mean",
    "rollouts/returns_std",
    "rollouts/returns_max",
    "rollouts/returns_min",
    "rollouts/returns_best_mean",
    "rollouts/kl_mean",
    "rollouts/kl_std",
    "rollouts/kl_max",
    "rollouts/advantages_mean",
    "rollouts/advantages_std",
    "rollouts/total_rollouts",
    "rollouts/batch_step",
    "training_step/loss",
    "training_step/kl",
    "training_step/grad_norm",
    "training_step/learning_rate",
    "training_epoch/loss_mean",
    "training_epoch/loss_std",
    "training_epoch/kl_mean",
    "training_epoch/kl_std",
    "training_epoch/grad_norm_mean",
    "training_epoch/grad_norm_max",
    "system/gpu_memory_allocated_gb",
    "system/gpu_memory_reserved_gb",
    "system/replay_buffer_size",
    "checkpoint/saved",
    "checkpoint/step",
    "final/total_steps",
    "final/total_batches",
    "final/total_rollouts",
    "final/best_mean_return",
    "timing/rollout_s",
    "timing/logprob_s",
    "timing/train_s",
    "completions/mean_length",
    "completions/clipped_ratio",
    "training/invalid_loss_count",
];

#[test]
fn two_batches_log_every_metric_save_a_checkpoint_and_resume_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), "full", &["--max-steps", "2"]);
    assert!(out.status.success(), "training failed: {}", text(&out.stderr));

    let run = runs.path().join("full");
    let all: Vec<_> = rows(&run);
    let keys: std::collections::BTreeSet<&str> = all.iter().flat_map(|r| r.keys().map(String::as_str)).collect();
    for key in SEED_KEYS {
        assert!(keys.contains(key), "metrics.jsonl lacks {key}; it has {keys:?}");
    }
    // 2 batches x 6 rollouts in micro-batches of 2: 3 optimizer steps per batch.
    let last = all.last().unwrap();
    assert_eq!(last["final/total_steps"], 6);
    assert_eq!(last["final/total_rollouts"], 12);
    assert!(run.join("config.json").exists());

    let ckpt = run.join("checkpoints/step_6");
    for f in ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json", "tokenizer.json"] {
        assert!(ckpt.join(f).exists(), "checkpoint lacks {f}");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["batch"], 2);
    assert_eq!(state["global_step"], 6);

    // The same seed gives the same metrics.
    let again = train(runs.path(), "again", &["--max-steps", "2"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(comparable(&run), comparable(&runs.path().join("again")), "two runs with one seed differ");

    // Stop after one batch, resume, and the second batch equals the uninterrupted run's.
    let first = train(runs.path(), "split", &["--max-steps", "1"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let resumed = train(runs.path(), "split", &["--max-steps", "2", "--resume", "auto"]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let split = comparable(&runs.path().join("split"));
    let full = comparable(&run);
    let later = |rows: &[BTreeMap<String, serde_json::Value>]| -> Vec<BTreeMap<String, serde_json::Value>> {
        rows.iter()
            .filter(|r| r["step"].as_u64().unwrap() >= 3)
            .map(|r| {
                r.iter()
                    .filter(|(k, _)| !k.starts_with("final/") && !k.starts_with("checkpoint/"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .collect()
    };
    assert_eq!(later(&split), later(&full), "the resumed run's second batch differs from the uninterrupted run");
}

#[test]
fn an_unknown_algorithm_lists_the_available_ones() {
    let runs = tempfile::tempdir().unwrap();
    let out = Command::new(common::host_exe())
        .args(["--algo", "ppo", "--env", "math", "--no-wandb", "--runs-dir", runs.path().to_str().unwrap()])
        .env_remove("GRPO_PLUGIN_PATH")
        .env("XDG_DATA_HOME", runs.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("drgrpo") && err.contains("grpo"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
