//! Stopped runs resume exactly: a harness on the tiny model. An uninterrupted reference run of a few batches with a
//! checkpoint after every batch; then the same run stopped at points drawn from seeded generators and resumed with
//! `--resume auto` until it finishes:
//!
//! - killed with SIGKILL (during rollouts, updates, checkpoint writes or right after one);
//! - stopped with SIGTERM (exit 143 with a checkpoint at a boundary: after finishing the batch in flight once its
//!   updates have begun, or at the boundary it started from when its rollouts are dropped; once with a second
//!   SIGTERM, which exits at once); once during the rollouts of a long batch, and once during an evaluation, both of
//!   which the stop abandons;
//! - failing in a plugin in mid-batch (the test-only `faulty` algorithm, tests/fault_plugin: an error in `loss`
//!   after the batch's first updates, a panic in `advantages`): a non-zero exit with one error line and no
//!   checkpoint from the half-updated state.
//!
//! Each time the final weights must be bit-equal to the reference's, and the history must hold exactly the
//! reference's rows, none missing, none twice: `metrics.jsonl`, and the W&B offline run read back as W&B's server
//! shows it (every run file of the run id, a row kept only when its step is above the run's current one).

mod common;
mod logging_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use grpo_host::logging::Metrics;
use grpo_sdk::rng::SplitMix64;

const BATCHES: u64 = 8;
/// Optimizer steps per batch: 2 prompts x 3 rollouts, in micro-batches of 2.
const STEPS_PER_BATCH: u64 = 3;
const FINAL_STEP: u64 = BATCHES * STEPS_PER_BATCH;

/// Variables of a W&B user's shell that would change where or how the run is logged.
const WANDB_VARS: [&str; 12] = [
    "WANDB_MODE",
    "WANDB_DIR",
    "WANDB_RUN_ID",
    "WANDB_RESUME",
    "WANDB_API_KEY",
    "WANDB_BASE_URL",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_NAME",
    "WANDB_TAGS",
    "WANDB_RUN_GROUP",
    "WANDB_NOTES",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Algo {
    /// The shipped `grpo` plugin.
    Grpo,
    /// tests/fault_plugin, armed by `GRPO_TEST_FAULT`.
    Faulty,
}

/// One attempt of run `name` under `runs`, resuming when the run has a checkpoint, its stderr in `<runs>/<log>`.
fn command(runs: &Path, name: &str, algo: Algo, log: &str) -> Command {
    let model = common::workspace_root().join("tests/fixtures/model/tiny/llama");
    let mut cmd = Command::new(common::host_exe());
    let algo_name = match algo {
        Algo::Grpo => "grpo",
        Algo::Faulty => "faulty",
    };
    cmd.args(["--algo", algo_name, "--env", "math", "--model", model.to_str().unwrap(), "--device", "cpu"])
        .args(["--rollouts-per-step", "2", "--group-size", "3", "--train-batch-size", "2", "--max-new-tokens", "6"])
        .args(["--max-length", "512", "--temperature", "1.0", "--lr", "1e-3", "--seed", "7", "--threads", "1"])
        .args(["--max-steps", &BATCHES.to_string(), "--checkpoint-interval", "1", "--checkpoint-every-minutes", "0"])
        .args(["--wandb-mode", "offline", "--runs-dir", runs.to_str().unwrap(), "--run-name", name]);
    if algo == Algo::Faulty {
        cmd.arg("--plugin-dir").arg(common::fault_plugin_dir());
    }
    if has_checkpoint(&runs.join(name)) {
        cmd.args(["--resume", "auto"]);
    }
    cmd.env_remove("GRPO_PLUGIN_PATH").env_remove("GRPO_TEST_FAULT");
    for var in WANDB_VARS {
        cmd.env_remove(var);
    }
    let stderr = std::fs::File::create(runs.join(log)).unwrap();
    cmd.env("XDG_DATA_HOME", runs.join("xdg")).stdout(Stdio::null()).stderr(stderr);
    cmd
}

fn has_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with("step_")))
        .unwrap_or(false)
}

/// The `step_N` checkpoints of a run as (N, the batch counter saved in it), oldest first.
fn checkpoints(run: &Path) -> Vec<(u64, u64)> {
    let mut found: Vec<(u64, u64)> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.filter_map(Result::ok).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let step: u64 = e.file_name().to_str()?.strip_prefix("step_")?.parse().ok()?;
            let state: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path().join("trainer_state.json")).ok()?).ok()?;
            assert_eq!(state["global_step"].as_u64(), Some(step), "{}", e.path().display());
            Some((step, state["batch"].as_u64().unwrap()))
        })
        .collect();
    found.sort();
    found
}

/// Every checkpoint of `run` is at a batch boundary (its step is the one that starts its batch counter's batch) and
/// has a manifest, that is, it was written whole.
fn assert_at_boundaries(run: &Path) {
    for (step, batch) in checkpoints(run) {
        assert_eq!(
            step,
            batch * STEPS_PER_BATCH,
            "checkpoint step_{step} of {} is not at a batch boundary",
            run.display()
        );
        let manifest = run.join(format!("checkpoints/step_{step}/manifest.json"));
        assert!(manifest.exists(), "{} is missing", manifest.display());
    }
}

fn newest(run: &Path) -> Option<u64> {
    checkpoints(run).last().map(|(step, _)| *step)
}

fn weights(run: &Path, step: u64) -> Vec<u8> {
    std::fs::read(run.join(format!("checkpoints/step_{step}/model.safetensors"))).unwrap()
}

fn training_started(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.lines().any(|l| l.starts_with("step ")))
}

/// Keys that legitimately differ between two runs of one computation: wall clock, memory, W&B's own `_` keys.
fn comparable(key: &str) -> bool {
    !(key.starts_with("timing/") || key.starts_with('_') || key.ends_with("rss_gb"))
}

/// A run's history: `metrics.jsonl` and the W&B run as its server shows it.
struct History {
    jsonl: Vec<BTreeMap<String, serde_json::Value>>,
    wandb: Vec<(i64, Metrics)>,
}

impl History {
    fn read(run: &Path) -> History {
        let jsonl = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let row: BTreeMap<String, serde_json::Value> = serde_json::from_str(l).unwrap();
                row.into_iter().filter(|(k, _)| comparable(k)).collect()
            })
            .collect();
        let w = logging_common::wandb_run(run);
        assert!(
            w.ignored.is_empty(),
            "{}: W&B run files hold these (file, step) again: {:?}",
            run.display(),
            w.ignored
        );
        assert_eq!(w.exit_code, Some(0), "{}: the newest W&B run file ends with the run's exit", run.display());
        let wandb = w
            .history
            .into_iter()
            .map(|(step, row)| (step, row.into_iter().filter(|(k, _)| comparable(k)).collect()))
            .collect();
        History { jsonl, wandb }
    }
}

/// `run` ended as `reference` did: the same final weights, and the same history in metrics.jsonl and in W&B, row for
/// row (a stop adds nothing to the rows; its summary records it).
fn assert_same_result(run: &Path, reference: &Path, what: &str) {
    assert_eq!(weights(run, FINAL_STEP), weights(reference, FINAL_STEP), "final weights differ after {what}");
    let (got, want) = (History::read(run), History::read(reference));
    assert_eq!(got.jsonl, want.jsonl, "metrics.jsonl differs after {what}");
    let steps = |h: &History| h.wandb.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    assert_eq!(steps(&got), steps(&want), "W&B history steps differ after {what}");
    assert_eq!(steps(&got), (0..FINAL_STEP as i64).collect::<Vec<_>>(), "W&B history: every step once");
    for ((step, g), (_, w)) in got.wandb.iter().zip(&want.wandb) {
        assert!(logging_common::same_rows(g, w), "W&B row {step} differs after {what}:\n{g:?}\n{w:?}");
    }
}

/// The uninterrupted run, and when in it the first training step and the first checkpoint appeared.
struct Reference {
    dir: PathBuf,
    total: Duration,
    first_step: Duration,
    first_checkpoint: Duration,
}

fn reference(runs: &Path, algo: Algo) -> Reference {
    let name = format!("reference-{algo:?}").to_lowercase();
    let log = runs.join(format!("{name}.stderr"));
    let dir = runs.join(&name);
    let t = Instant::now();
    let mut child = command(runs, &name, algo, &format!("{name}.stderr")).spawn().unwrap();
    let (mut first_step, mut first_checkpoint) = (None, None);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if first_step.is_none() && training_started(&log) {
            first_step = Some(t.elapsed());
        }
        if first_checkpoint.is_none() && has_checkpoint(&dir) {
            first_checkpoint = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "the reference failed: {}", std::fs::read_to_string(&log).unwrap());
    let total = t.elapsed();
    assert_eq!(newest(&dir), Some(FINAL_STEP));
    Reference {
        dir,
        total,
        first_step: first_step.expect("the reference logged steps"),
        first_checkpoint: first_checkpoint.expect("the reference wrote checkpoints"),
    }
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
    let t0 = Instant::now();
    let reference = reference(runs.path(), Algo::Grpo);
    // The window in which a first kill lands after a checkpoint exists and before the run ends.
    let window = reference.total - reference.first_checkpoint;

    let run = runs.path().join("killed");
    let mut rng = SplitMix64::new(2026);
    let mut kills = 0;
    let mut finished = false;
    for attempt in 0..16 {
        let resuming = has_checkpoint(&run);
        let child = command(runs.path(), "killed", Algo::Grpo, &format!("killed-{attempt}.stderr")).spawn().unwrap();
        // The first attempts are killed somewhere after a checkpoint exists (a resumed run has one from its start, so
        // its kill can land while it loads, rolls out, updates or writes a checkpoint); the last one is left to finish.
        let span = if resuming { reference.total } else { window };
        let delay = (attempt < 6).then(|| span.mul_f64(0.45 * rng.unit()));
        let t = Instant::now();
        let done = run_or_kill(child, &run, delay);
        eprintln!("kill -9 attempt {attempt}: {} after {:?}", if done { "finished" } else { "killed" }, t.elapsed());
        if done {
            finished = true;
            break;
        }
        kills += 1;
    }
    assert!(finished, "the killed run never finished");
    assert!(kills >= 1, "only {kills} runs were killed (the reference took {:?})", reference.total);
    assert_at_boundaries(&run);
    assert_same_result(&run, &reference.dir, &format!("{kills} kills"));
    eprintln!("kill -9 rounds: {:?}", t0.elapsed());
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on the pid of a child this test has not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0, "kill({}, {signal})", child.id());
}

/// Start `cmd` (a [`command`] writing its stderr to `log`), send it SIGTERM `delay` after `ready()` first holds (or
/// once it has exited), and return its exit status, how long it took to exit after the signal, and its stderr.
fn terminate_when(
    mut cmd: Command,
    log: &Path,
    ready: impl Fn() -> bool,
    delay: Duration,
) -> (ExitStatus, Duration, String) {
    let mut child = cmd.spawn().unwrap();
    while !ready() && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(delay);
    let t = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    (status, t.elapsed(), std::fs::read_to_string(log).unwrap_or_default())
}

/// Wait for `child` up to `delay` after `start`; its status if it ended first.
fn wait_until(child: &mut Child, start: Instant, delay: Duration) -> Option<ExitStatus> {
    while start.elapsed() < delay {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn runs_stopped_by_sigterm_resume_to_the_uninterrupted_result() {
    let runs = tempfile::tempdir().unwrap();
    common::host_exe(); // outside the timing
    let t0 = Instant::now();
    let reference = reference(runs.path(), Algo::Grpo);
    let training = reference.total - reference.first_step;

    let run = runs.path().join("terminated");
    let mut rng = SplitMix64::new(143);
    let (mut stops, mut terms, mut dropped) = (BTreeSet::new(), 0, 0);
    let mut finished = false;
    for attempt in 0..12 {
        let name = format!("terminated-{attempt}.stderr");
        let log = runs.path().join(&name);
        let mut child = command(runs.path(), "terminated", Algo::Grpo, &name).spawn().unwrap();
        let stderr = |log: &Path| std::fs::read_to_string(log).unwrap();
        // The first attempts get SIGTERM at a seeded point of their training (rollouts, updates, a checkpoint
        // write); attempt 1 gets a second SIGTERM right after the first. The last one is left to finish.
        let early = if attempt < 4 {
            let start = Instant::now();
            while !training_started(&log) && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            wait_until(&mut child, start, start.elapsed() + training.mul_f64(0.35 * rng.unit()))
        } else {
            Some(child.wait().unwrap())
        };
        if let Some(status) = early {
            assert!(status.success(), "attempt {attempt} failed: {status}\n{}", stderr(&log));
            finished = true;
            break;
        }
        let before = newest(&run);
        signal(&child, libc::SIGTERM);
        let twice = attempt == 1;
        if twice {
            std::thread::sleep(Duration::from_millis(20));
            signal(&child, libc::SIGTERM);
        }
        let status = child.wait().unwrap();
        let text = stderr(&log);
        eprintln!("SIGTERM attempt {attempt}: {status}, checkpoints {before:?} -> {:?}", newest(&run));
        if status.success() {
            // The signal came during the last batch: it was finished, and with it the run.
            finished = true;
            break;
        }
        assert_eq!(status.code(), Some(143), "attempt {attempt}: SIGTERM exits 143\n{text}");
        assert_at_boundaries(&run);
        let after = newest(&run).expect("a stopped run leaves a checkpoint");
        if text.contains("stopped by SIGTERM after the batch") {
            // The batch in flight was finished and checkpointed at its boundary, with the reference's weights.
            assert!(before.is_none_or(|b| after > b), "attempt {attempt}: no new checkpoint after {before:?}\n{text}");
            assert_eq!(weights(&run, after), weights(&reference.dir, after), "the stop's checkpoint step_{after}");
            stops.insert(after - 1);
        } else if text.contains("whose rollouts were dropped") {
            // Before the batch's updates: its checkpoint is the boundary it started from.
            if after > 0 {
                assert_eq!(weights(&run, after), weights(&reference.dir, after), "the stop's checkpoint step_{after}");
            }
            dropped += 1;
        } else {
            assert!(twice, "attempt {attempt}: one SIGTERM must stop at a boundary\n{text}");
        }
        terms += 1;
    }
    assert!(finished, "the terminated run never finished");
    let stopped = stops.len() + dropped;
    assert!(stopped > 0, "no SIGTERM stopped the run (the reference took {:?})", reference.total);
    assert_same_result(&run, &reference.dir, &format!("{terms} SIGTERMs"));
    eprintln!("SIGTERM rounds: {:?} ({} after a batch, {dropped} dropping one)", t0.elapsed(), stops.len());
}

/// A run's metrics.jsonl rows, in order (none before the file exists).
fn metric_rows(run: &Path) -> Vec<Metrics> {
    let rows = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    rows.lines().map(|l| grpo_host::logging::json::parse_line(l).unwrap()).collect()
}

/// The `step` value of a row.
fn step_of(row: &Metrics) -> u64 {
    row["step"].as_f64().unwrap() as u64
}

/// The `step` values of a run's metrics.jsonl rows, in order.
fn logged_steps(run: &Path) -> Vec<u64> {
    metric_rows(run).iter().map(step_of).collect()
}

/// SIGTERM while a batch rolls out: the rollouts are dropped at once instead of finished (a preempted job has
/// seconds, a batch can take minutes), nothing of the batch is logged, the checkpoint of the boundary it started
/// from stays the newest and is not written again, and the resumed run plays the batch again and finishes with one
/// row per step.
#[test]
fn a_stop_during_rollouts_drops_the_batch_and_the_resume_plays_it_again() {
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("rolling");
    // One optimizer step per batch, whose rollouts take seconds (16 episodes of 300 tokens, one at a time) and whose
    // update well under one.
    let flags = [
        ["--max-steps", "3", "--rollouts-per-step", "4", "--group-size", "4", "--train-batch-size", "16"].as_slice(),
        &["--max-new-tokens", "300", "--ignore-eos", "--max-length", "600", "--max-batch-rows", "1"],
    ]
    .concat();
    let stderr = |name: &str| std::fs::read_to_string(runs.path().join(name)).unwrap();
    let mut cmd = command(runs.path(), "rolling", Algo::Grpo, "rolling-0.stderr");
    cmd.args(&flags);
    // The first batch's checkpoint is renamed into place just before the second batch's rollouts start.
    let manifest = run.join("checkpoints/step_1/manifest.json");
    let written = std::cell::Cell::new(None);
    let ready = || {
        written.set(std::fs::metadata(&manifest).and_then(|m| m.modified()).ok());
        written.get().is_some()
    };
    let (status, stopped, text) = terminate_when(cmd, &runs.path().join("rolling-0.stderr"), ready, Duration::ZERO);
    let written = written.get().expect("the first batch's checkpoint");
    // The first batch's rollouts, as logged: the stop must not have waited for the second's.
    let first = metric_rows(&run).remove(0);
    let rollout = Duration::from_secs_f64(first["timing/rollout_s"].as_f64().unwrap());
    eprintln!("stopped {stopped:?} after SIGTERM; a batch's rollouts take {rollout:?}");
    assert_eq!(status.code(), Some(143), "SIGTERM exits 143\n{text}");
    assert!(stopped < rollout / 2, "the stop took {stopped:?}, as long as the rollouts ({rollout:?})\n{text}");
    assert!(text.contains("stopped by SIGTERM during batch 2/3, whose rollouts were dropped"), "{text}");
    assert_eq!(checkpoints(&run), [(1, 1)], "the boundary's checkpoint stays the newest\n{text}");
    let rewritten = std::fs::metadata(&manifest).and_then(|m| m.modified()).unwrap();
    assert_eq!(rewritten, written, "the boundary's checkpoint was written again\n{text}");
    assert_eq!(logged_steps(&run), [0], "nothing of the dropped batch is logged\n{text}");

    let status = command(runs.path(), "rolling", Algo::Grpo, "rolling-1.stderr").args(&flags).status().unwrap();
    let text = stderr("rolling-1.stderr");
    assert!(status.success(), "the resumed run failed: {status}\n{text}");
    assert_eq!(logged_steps(&run), [0, 1, 2], "one row per step\n{text}");
    let wandb: Vec<i64> = History::read(&run).wandb.iter().map(|(s, _)| *s).collect();
    assert_eq!(wandb, [0, 1, 2], "W&B's history holds every step once");
    assert_eq!(checkpoints(&run).last(), Some(&(3, 3)), "{text}");
}

/// SIGTERM during a long evaluation before training: the evaluation is abandoned, not finished, and the run stops
/// before its first batch with a checkpoint at step 0 and no `eval/*` logged; resumed with the same flags, it
/// evaluates from the start, once, and trains on.
#[test]
fn a_stop_during_an_evaluation_abandons_it_and_the_resume_evaluates_again() {
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("evaluating");
    // Several seconds of evaluation (chunks of 2 tasks); the signal comes one second in.
    let flags = ["--max-steps", "1", "--eval-before-train", "--eval-tasks", "600", "--eval-samples", "4"];
    let eval_flags = [flags.as_slice(), &["--eval-batch-tasks", "2"]].concat();
    let stderr = |name: &str| std::fs::read_to_string(runs.path().join(name)).unwrap();
    let mut cmd = command(runs.path(), "evaluating", Algo::Grpo, "evaluating-0.stderr");
    cmd.args(&eval_flags);
    // config.json is written after the signal handlers are installed, just before the evaluation starts.
    let ready = || run.join("config.json").exists();
    let log = runs.path().join("evaluating-0.stderr");
    let (status, _, text) = terminate_when(cmd, &log, ready, Duration::from_secs(1));
    assert_eq!(status.code(), Some(143), "SIGTERM exits 143\n{text}");
    assert!(text.contains("eval at step 0 abandoned after"), "the evaluation was not abandoned\n{text}");
    assert!(text.contains("stopped by SIGTERM before the first batch"), "{text}");
    assert_eq!(checkpoints(&run), [(0, 0)], "{text}");
    // The steps metrics.jsonl logged an evaluation at.
    let logged_eval = || -> Vec<u64> {
        metric_rows(&run).iter().filter(|r| r.contains_key("eval/returns_mean")).map(step_of).collect()
    };
    assert_eq!(logged_eval(), Vec::<u64>::new(), "{text}");

    let status =
        command(runs.path(), "evaluating", Algo::Grpo, "evaluating-1.stderr").args(&eval_flags).status().unwrap();
    let text = stderr("evaluating-1.stderr");
    assert!(status.success(), "the resumed run failed: {status}\n{text}");
    assert!(text.contains("eval at step 0: 600 tasks"), "the resumed run did not evaluate first\n{text}");
    assert_eq!(logged_eval(), [0], "{text}");
    let wandb = History::read(&run).wandb;
    let wandb_eval: Vec<i64> =
        wandb.iter().filter(|(_, r)| r.contains_key("eval/returns_mean")).map(|(s, _)| *s).collect();
    assert_eq!(wandb_eval, [0], "W&B's history holds the evaluation once");
    let outcomes = std::fs::read_to_string(run.join("eval_completions.jsonl")).unwrap();
    assert_eq!(outcomes.lines().count(), 600, "one outcome per task, from the resumed evaluation only");
}

/// SIGTERM during a long supervised warm-up: it stops after the step in flight (exit 143) without a checkpoint, since
/// none exists before the warm-up ends, and the same command run again starts the run over, each step logged once.
#[test]
fn a_stop_during_the_warm_up_ends_it_and_the_run_starts_over() {
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("warming");
    let stderr = |name: &str| std::fs::read_to_string(runs.path().join(name)).unwrap_or_default();
    let long = ["--max-steps", "1", "--sft-warmup-steps", "300", "--sft-batch-size", "2"];
    let mut cmd = command(runs.path(), "warming", Algo::Grpo, "warming-0.stderr");
    cmd.args(long);
    let ready = || stderr("warming-0.stderr").contains("sft warm-up 2/");
    let (status, _, text) = terminate_when(cmd, &runs.path().join("warming-0.stderr"), ready, Duration::ZERO);
    assert_eq!(status.code(), Some(143), "SIGTERM exits 143\n{text}");
    assert!(text.contains("stopped by SIGTERM during the sft warm-up, after step"), "{text}");
    assert_eq!(checkpoints(&run), [], "{text}");
    let warmed = logged_steps(&run).len();
    assert!((2..100).contains(&warmed), "{warmed} warm-up rows\n{text}");

    let short = ["--max-steps", "1", "--sft-warmup-steps", "2", "--sft-batch-size", "2"];
    let status = command(runs.path(), "warming", Algo::Grpo, "warming-1.stderr").args(short).status().unwrap();
    let text = stderr("warming-1.stderr");
    assert!(status.success(), "{status}\n{text}");
    assert!(text.contains("no checkpoint to resume; starting the run over"), "{text}");
    let steps = 2 + STEPS_PER_BATCH;
    assert_eq!(logged_steps(&run), (0..steps).collect::<Vec<_>>(), "{text}");
    let wandb: Vec<i64> = History::read(&run).wandb.iter().map(|(s, _)| *s).collect();
    assert_eq!(wandb, (0..steps as i64).collect::<Vec<_>>(), "W&B's history holds each step once");
}

/// A NaN loss (a diverging step) skips that update but not its step: the run goes on to the same number of steps and
/// checkpoints, every step has its row once (the skipped one without a loss, with the invalid count), and nothing is
/// dropped from the history for going backwards.
#[test]
fn a_skipped_update_keeps_its_step() {
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("nan");
    // The fifth loss call is step 4 (one micro-batch per step): the second step of the second batch.
    let status = command(runs.path(), "nan", Algo::Faulty, "nan.stderr")
        .args(["--max-steps", "3"])
        .env("GRPO_TEST_FAULT", "loss:5:nan")
        .status()
        .unwrap();
    let text = std::fs::read_to_string(runs.path().join("nan.stderr")).unwrap();
    assert!(status.success(), "{status}\n{text}");
    assert!(!text.contains("warning"), "{text}");
    assert_eq!(logged_steps(&run), (0..3 * STEPS_PER_BATCH).collect::<Vec<_>>(), "{text}");
    assert_at_boundaries(&run);
    assert_eq!(newest(&run), Some(3 * STEPS_PER_BATCH), "{text}");
    let rows = metric_rows(&run);
    let invalid = |step: usize| rows[step]["training/invalid_loss_count"].as_f64().unwrap();
    assert_eq!((invalid(3), invalid(4), invalid(8)), (0.0, 1.0, 1.0));
    assert!(!rows[4].contains_key("training_step/loss"), "{:?}", rows[4]);
    for step in [3, 5] {
        assert!(rows[step]["training_step/loss"].as_f64().unwrap().is_finite(), "{:?}", rows[step]);
    }
}

#[test]
fn under_fp16_a_nan_loss_lowers_the_loss_scale() {
    let runs = tempfile::tempdir().unwrap();
    let run = runs.path().join("fp16");
    // The second loss call is step 1.
    let status = command(runs.path(), "fp16", Algo::Faulty, "fp16.stderr")
        .args(["--max-steps", "1", "--mixed-precision", "fp16"])
        .env("GRPO_TEST_FAULT", "loss:2:nan")
        .status()
        .unwrap();
    let text = std::fs::read_to_string(runs.path().join("fp16.stderr")).unwrap();
    assert!(status.success(), "{status}\n{text}");
    let rows = metric_rows(&run);
    let value = |step: usize, key: &str| rows[step][key].as_f64().unwrap();
    let scales: Vec<f64> = (0..3).map(|s| value(s, "training_step/loss_scale")).collect();
    assert_eq!(scales, [65536.0, 65536.0, 32768.0], "{:?}", rows[1]);
    assert_eq!(value(2, "training/invalid_loss_count"), 1.0);
    assert_eq!(value(2, "training/skipped_steps"), 1.0);
}

/// Run `run` once with `GRPO_TEST_FAULT=fault`: it must fail (not as a signal would) with one error line naming the
/// fault, and leave checkpoints only at batch boundaries, the newest at `newest_step` with the reference's weights.
fn run_failing(runs: &Path, reference: &Path, fault: &str, newest_step: u64) {
    let log = runs.join(format!("failing-{}.stderr", fault.replace(':', "-")));
    let mut cmd = command(runs, "failing", Algo::Faulty, log.file_name().unwrap().to_str().unwrap());
    let status = cmd.env("GRPO_TEST_FAULT", fault).status().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.code() == Some(1),
        "GRPO_TEST_FAULT={fault}: a run that fails once started exits 1, got {status}\n{text}"
    );
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line\n{text}");
    assert!(errors[0].contains("injected fault"), "the error names the fault: {}", errors[0]);
    assert!(!text.contains("RUST_BACKTRACE") && !text.contains("panicked at"), "no panic report\n{text}");
    assert!(text.contains("resume with: grpo-host --resume"), "the resume command is printed\n{text}");
    let run = runs.join("failing");
    assert_at_boundaries(&run);
    assert_eq!(newest(&run), Some(newest_step), "GRPO_TEST_FAULT={fault}: the newest checkpoint\n{text}");
    assert_eq!(weights(&run, newest_step), weights(reference, newest_step), "checkpoint step_{newest_step}");
    eprintln!("GRPO_TEST_FAULT={fault}: {status}, newest checkpoint step_{newest_step}");
}

#[test]
fn runs_failing_in_a_plugin_mid_batch_resume_to_the_uninterrupted_result() {
    let runs = tempfile::tempdir().unwrap();
    common::host_exe(); // outside the timing
    let t0 = Instant::now();
    let reference = reference(runs.path(), Algo::Faulty);
    let mut rng = SplitMix64::new(13);

    // An error in `loss` (one call per optimizer step) in batches 1 to 6, after none, one or two of the batch's
    // updates: the weights are between two boundaries, so the newest checkpoint stays the batch's start.
    let loss_call = STEPS_PER_BATCH + 1 + rng.below(6 * STEPS_PER_BATCH);
    let failed = (loss_call - 1) / STEPS_PER_BATCH;
    run_failing(runs.path(), &reference.dir, &format!("loss:{loss_call}"), failed * STEPS_PER_BATCH);

    // The resumed process panics in `advantages` (one call per batch) of this or a later batch, after its rollouts
    // and before its updates; the state there is the boundary's, and that is what its checkpoint holds.
    let advantages_call = 1 + rng.below(BATCHES - failed);
    let failed = failed + advantages_call - 1;
    run_failing(runs.path(), &reference.dir, &format!("advantages:{advantages_call}:panic"), failed * STEPS_PER_BATCH);

    let log = runs.path().join("failing-resumed.stderr");
    let status = command(runs.path(), "failing", Algo::Faulty, "failing-resumed.stderr").status().unwrap();
    assert!(status.success(), "the resumed run failed: {status}\n{}", std::fs::read_to_string(&log).unwrap());
    let run = runs.path().join("failing");
    assert_at_boundaries(&run);
    assert_same_result(&run, &reference.dir, "a loss error and an advantages panic");
    eprintln!("injected error rounds: {:?}", t0.elapsed());
}
