//! Killed runs resume exactly: a kill -9 harness on the tiny model. An uninterrupted reference run of a few batches
//! with a checkpoint after every batch; then the same run killed with SIGKILL at points drawn from a seeded
//! generator (during rollouts, updates, checkpoint writes or right after one), resumed with `--resume auto` each
//! time until it finishes. The final weights must be bit-equal to the reference's and metrics.jsonl must hold
//! exactly the reference's rows: none missing, none twice.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use grpo_sdk::rng::SplitMix64;

const BATCHES: &str = "8";

fn command(runs: &Path, name: &str, extra: &[&str]) -> Command {
    let model = common::workspace_root().join("tests/fixtures/model/tiny/llama");
    let mut cmd = Command::new(common::host_exe());
    cmd.args(["--algo", "grpo", "--env", "math", "--model", model.to_str().unwrap()])
        .args(["--rollouts-per-step", "2", "--group-size", "3", "--train-batch-size", "2", "--max-new-tokens", "6"])
        .args(["--max-length", "512", "--temperature", "1.0", "--lr", "1e-3", "--seed", "7", "--threads", "1"])
        .args(["--max-steps", BATCHES, "--checkpoint-interval", "1", "--checkpoint-every-minutes", "0"])
        .args(["--no-wandb", "--runs-dir", runs.to_str().unwrap(), "--run-name", name])
        .args(extra)
        .env_remove("GRPO_PLUGIN_PATH")
        .env("XDG_DATA_HOME", runs.join("xdg"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

/// metrics.jsonl without what legitimately differs between runs (times, memory, the checkpoint marker rows' values).
fn history(run: &Path) -> Vec<BTreeMap<String, serde_json::Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let row: BTreeMap<String, serde_json::Value> = serde_json::from_str(l).unwrap();
            row.into_iter()
                .filter(|(k, _)| !(k.starts_with("timing/") || k.starts_with('_') || k == "system/process_rss_gb"))
                .collect()
        })
        .collect()
}

fn final_weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("checkpoints/step_24/model.safetensors")).unwrap()
}

fn has_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with("step_")))
        .unwrap_or(false)
}

/// Wait for `child`; once `run` has a checkpoint (so that there is something to resume), kill it with SIGKILL
/// `delay` later if it is still running. Returns whether it finished by itself.
fn run_or_kill(mut child: Child, run: &Path, delay: Option<Duration>) -> bool {
    let mut armed: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "a run failed: {status}");
            return true;
        }
        if let Some(delay) = delay {
            if armed.is_none() && has_checkpoint(run) {
                armed = Some(Instant::now());
            }
            if armed.is_some_and(|t| t.elapsed() >= delay) {
                child.kill().unwrap();
                child.wait().unwrap();
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn runs_killed_at_random_points_resume_to_the_uninterrupted_result() {
    let runs = tempfile::tempdir().unwrap();
    common::host_exe(); // builds and links the binary and plugins first, outside the timing
    let reference = runs.path().join("reference");
    let t = Instant::now();
    let mut child = command(runs.path(), "reference", &[]).spawn().unwrap();
    let mut first_checkpoint = None;
    while child.try_wait().unwrap().is_none() {
        if first_checkpoint.is_none() && has_checkpoint(&reference) {
            first_checkpoint = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.wait().unwrap().success());
    let total = t.elapsed();
    // The window in which a first kill lands after a checkpoint exists and before the run ends.
    let window = total - first_checkpoint.expect("the reference wrote checkpoints");

    let run = runs.path().join("killed");
    let mut rng = SplitMix64::new(2026);
    let mut kills = 0;
    let mut finished = false;
    for attempt in 0..16 {
        let resume: &[&str] = if has_checkpoint(&run) { &["--resume", "auto"] } else { &[] };
        let child = command(runs.path(), "killed", resume).spawn().unwrap();
        // The first attempts are killed somewhere after a checkpoint exists (a resumed run has one from its start, so
        // its kill can land while it loads, rolls out, updates or writes a checkpoint); the last one is left to finish.
        let span = if resume.is_empty() { window } else { total };
        let delay = (attempt < 6).then(|| span.mul_f64(0.45 * rng.unit()));
        let t = Instant::now();
        let done = run_or_kill(child, &run, delay);
        eprintln!("attempt {attempt}: {} after {:?}", if done { "finished" } else { "killed" }, t.elapsed());
        if done {
            finished = true;
            break;
        }
        kills += 1;
    }
    assert!(finished, "the killed run never finished");
    assert!(kills >= 1, "only {kills} runs were killed (the reference took {total:?})");
    assert_eq!(final_weights(&run), final_weights(&reference), "final weights differ after {kills} kills");
    assert_eq!(history(&run), history(&reference), "metrics.jsonl differs after {kills} kills");
}
