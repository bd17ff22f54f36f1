//! `train --sft-warmup-steps` and `grpo-host sft` as a user runs them: the installed binary, the shipped
//! calc_tools plugin and the tiny Llama fixture.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_model() -> PathBuf {
    common::workspace_root().join("tests/fixtures/model/tiny/llama")
}

fn run(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(common::host_exe())
        .args(args)
        .env_remove("GRPO_PLUGIN_PATH")
        .env("XDG_DATA_HOME", home.path())
        .env("WANDB_MODE", "disabled")
        .output()
        .unwrap()
}

fn train(runs: &Path, extra: &[&str]) -> Output {
    let model = tiny_model();
    let mut args = vec![
        "--algo",
        "drgrpo",
        "--env",
        "calc_tools",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--rollouts-per-step",
        "2",
        "--group-size",
        "2",
        "--max-new-tokens",
        "8",
        "--max-steps",
        "1",
        "--sft-warmup-steps",
        "2",
        "--sft-batch-size",
        "2",
        "--sft-lr",
        "1e-3",
        "--no-wandb",
        "--run-name",
        "warm",
    ];
    args.extend(["--runs-dir", runs.to_str().unwrap()]);
    args.extend(extra);
    run(&args)
}

fn rows(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn step(row: &serde_json::Value) -> u64 {
    row["_step"].as_u64().or_else(|| row["step"].as_u64()).expect("a step in every row")
}

#[test]
fn warm_up_steps_come_first_are_logged_checkpointed_and_skipped_on_resume() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = runs.path().join("warm");
    let rows = rows(&run);
    let sft: Vec<u64> = rows.iter().filter(|r| r.get("sft/loss").is_some()).map(step).collect();
    assert_eq!(sft, vec![0, 1]);
    for r in rows.iter().filter(|r| r.get("sft/loss").is_some()) {
        assert!(r["sft/tokens"].as_f64().unwrap() > 0.0 && r["sft/accuracy"].as_f64().unwrap() >= 0.0, "{r}");
    }
    let first_rl = rows.iter().find(|r| r.get("rollouts/returns_mean").is_some()).map(step);
    assert_eq!(first_rl, Some(2));
    // The environment's counters cover the batch's 2 x 2 rollouts, not the 4 demonstrations played before them.
    let episodes = rows.iter().find_map(|r| r["calc_tools/episodes"].as_f64());
    assert_eq!(episodes, Some(4.0));
    assert!(run.join("checkpoints/step_2").is_dir());

    // Resumed from the warm-up's checkpoint, the run goes straight to reinforcement learning.
    std::fs::remove_dir_all(run.join("checkpoints/step_3")).ok();
    let out = train(runs.path(), &["--resume", run.join("checkpoints/step_2").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("sft warm-up 1/2"), "{stdout}");
}

/// The updates' learning-rate schedule starts when they do: after 2 warm-up steps, `--warmup-steps 2` still ramps
/// the first two updates (global steps 2 and 3). The console counts the warm-up's steps in the run's total and
/// shows their loss.
#[test]
fn the_learning_rate_schedule_starts_after_the_warm_up() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), &["--warmup-steps", "2", "--lr", "1e-3", "--train-batch-size", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lr: Vec<(u64, f64)> = rows(&runs.path().join("warm"))
        .iter()
        .filter_map(|r| r["training_step/learning_rate"].as_f64().map(|lr| (step(r), lr)))
        .collect();
    assert_eq!(lr, vec![(2, 0.5e-3), (3, 1e-3), (4, 1e-3), (5, 1e-3)]);
    assert!(stderr.contains("step 1/6 sft loss "), "{stderr}");
    assert!(stderr.contains("step 6/6 "), "{stderr}");
}

#[test]
fn sft_on_demonstrations_saves_a_model_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let output = dir.path().join("sft");
    let out = run(&[
        "sft",
        "--env",
        "calc_tools",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--output",
        output.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("sft step 2/2: sft/loss"), "{stdout}");
    let saved = output.join("step_2");
    let out = run(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        saved.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_conversation_without_an_assistant_turn_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n").unwrap();
    let model = tiny_model();
    let out = run(&[
        "sft",
        "--device",
        "cpu",
        "--data",
        bad.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.jsonl:1") && err.contains("no assistant message") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn the_kl_reference_is_the_warmed_up_model_and_a_resume_reads_it_back() {
    let runs = tempfile::tempdir().unwrap();
    // A large warm-up learning rate moves the tiny model far from where it started, so a reference left at the
    // loaded model would show a large KL in the first batch.
    let extra = ["--max-steps", "2", "--sft-lr", "3e-2", "--kl-weight", "0.1", "--checkpoint-interval", "1"];
    let out = train(runs.path(), &extra);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = runs.path().join("warm");
    assert!(run.join("checkpoints/sft_reference/model.safetensors").is_file());
    let rows = rows(&run);
    let kl_at = |rows: &[serde_json::Value], s: u64| -> f64 {
        let row = rows.iter().find(|r| step(r) == s && r.get("rollouts/kl_mean").is_some()).expect("a batch row");
        row["rollouts/kl_mean"].as_f64().unwrap()
    };
    // The first batch samples from the warmed-up model itself: its KL from the reference is rounding only.
    assert!(kl_at(&rows, 2).abs() < 1e-4, "first batch KL {}", kl_at(&rows, 2));
    let sft_loss: Vec<f64> = rows.iter().filter_map(|r| r["sft/loss"].as_f64()).collect();
    assert!(sft_loss[1] < sft_loss[0], "the warm-up moved the model: {sft_loss:?}");

    // Resumed after the first batch, the second batch's KL is the uninterrupted run's to the bit: the reference
    // came back from sft_reference, not from the model directory.
    let second = kl_at(&rows, 3);
    let resumed_runs = tempfile::tempdir().unwrap();
    let copy = resumed_runs.path().join("warm");
    copy_dir(&run, &copy);
    std::fs::remove_dir_all(copy.join("checkpoints/step_4")).unwrap();
    std::fs::write(copy.join("metrics.jsonl"), "").unwrap();
    let out = train(resumed_runs.path(), &[&extra[..], &["--resume", "auto"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kl_at(&self::rows(&copy), 3).to_bits(), second.to_bits());

    // Without it, the resume stops at once with one line saying what is missing and what to do.
    std::fs::remove_dir_all(copy.join("checkpoints/sft_reference")).unwrap();
    std::fs::remove_dir_all(copy.join("checkpoints/step_4")).unwrap();
    let out = train(resumed_runs.path(), &[&extra[..], &["--resume", "auto"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("sft_reference") && err.contains("--kl-weight 0") && err.trim().lines().count() == 1, "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
