//! The local sinks end to end: TensorBoard event files read back by TensorBoard's own EventAccumulator (from the
//! grpo-rs venv), and the JSONL files of the run directory.

mod logging_common;

use std::path::PathBuf;

use grpo_host::logging::{json, CompletionRow, Env, Loggers, LoggingConfig, MetricValue, Metrics};
use logging_common::*;

fn tb_config(run_dir: PathBuf, log_dir: PathBuf) -> LoggingConfig {
    let mut cfg = LoggingConfig::new(run_dir, "tb-run", "grpo", "math");
    cfg.console = false;
    cfg.wandb.disabled = true;
    cfg.log_dir = Some(log_dir);
    cfg
}

fn row(step: u64) -> CompletionRow {
    CompletionRow {
        step,
        prompt: "2+2?".into(),
        completion: "4 | four".into(),
        rewards: [("total".to_string(), 1.0)].into_iter().collect(),
        advantage: -0.5,
    }
}

#[test]
fn tensorboard_reads_back_our_scalars_and_text() {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("tb");
    let mut loggers = Loggers::with_env(&tb_config(tmp.path().join("run"), log_dir.clone()), &Env::new()).unwrap();
    for step in 0..6 {
        loggers.log(step, seed_row(step));
        if step == 2 {
            loggers.log_completions(step, &[row(step)]);
        }
        loggers.commit();
    }
    loggers.finish(0);
    let run_dir = log_dir.join("tb-run");
    let files: Vec<_> = std::fs::read_dir(&run_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().starts_with("events.out.tfevents."));

    let Some(python) = venv_python() else { return };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/oracles/tensorboard_read.py");
    let out = std::process::Command::new(python).arg(script).arg(&run_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = seed_keys();
    let scalars = v["scalars"].as_object().unwrap();
    assert_eq!(scalars.len(), keys.iter().filter(|(_, text)| !text).count() + 1, "{:?}", scalars.keys());
    for (i, (k, text)) in keys.iter().enumerate().filter(|(_, (_, text))| !text) {
        let points = scalars[k].as_array().unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(points.len(), 6, "{k}");
        for p in points {
            let step = p[0].as_u64().unwrap();
            let MetricValue::Number(want) = seed_value(i, *text, step) else { unreachable!() };
            assert_eq!(p[1].as_f64().unwrap(), want as f32 as f64, "{k} at {step}");
        }
    }
    let nonfinite: Vec<String> =
        scalars["test/nonfinite"].as_array().unwrap().iter().map(|p| p[1].to_string()).collect();
    assert_eq!(nonfinite, ["1.5", "\"NaN\"", "\"Infinity\"", "\"-Infinity\"", "1.5", "\"NaN\""]);
    let text = v["text"].as_object().unwrap();
    assert_eq!(text["accelerate/device"][3][1], "text 36 at step 3: \"quoted\" NaN\nline 2");
    let table = text["completions"][0][1].as_str().unwrap();
    assert!(table.contains("| 2 | 2+2? | 4 \\| four | 1.0000 | -0.5000 |"), "{table}");
}

/// `--report-to wandb,tensorboard`: TensorBoard writes beside an offline W&B run instead of only in its place.
#[test]
fn tensorboard_writes_beside_wandb_when_asked_to() {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("tb");
    let mut cfg = tb_config(tmp.path().join("run"), log_dir.clone());
    cfg.wandb.disabled = false;
    let env = Env::from([("WANDB_MODE".to_string(), "offline".to_string())]);
    let events = |dir: &std::path::Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    // The fallback alone: W&B on, so no TensorBoard files.
    let loggers = Loggers::with_env(&cfg, &env).unwrap();
    assert!(loggers.wandb_run_dir().is_some());
    drop(loggers);
    assert_eq!(events(&log_dir.join("tb-run")), 0);
    cfg.tensorboard_with_wandb = true;
    let mut loggers = Loggers::with_env(&cfg, &env).unwrap();
    loggers.log(0, seed_row(0));
    loggers.commit();
    let wandb = loggers.wandb_run_dir().unwrap().to_path_buf();
    loggers.finish(0);
    assert!(std::fs::read_dir(&wandb).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".wandb")));
    assert_eq!(events(&log_dir.join("tb-run")), 1);
}

fn venv_python() -> Option<PathBuf> {
    let p = grpo_host::paths::cache_dir().join("venv/bin/python");
    let ok = p.exists()
        && std::process::Command::new(&p).args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "\n!!!!! SKIPPED: no tensorboard in {}; install it with `pip install tensorboard==2.21.0` there (cargo \
             xtask setup does) !!!!!\n",
            p.display()
        );
        return None;
    }
    Some(p)
}

#[test]
fn jsonl_files_hold_steps_completions_and_summary_and_append_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = LoggingConfig::new(tmp.path(), "r", "grpo", "math");
    cfg.console = false;
    cfg.wandb.disabled = true;
    let mut loggers = Loggers::with_env(&cfg, &Env::new()).unwrap();
    for step in 0..3 {
        loggers.log(step, seed_row(step));
        loggers.log_completions(step, &[row(step)]);
        loggers.commit();
    }
    loggers.log(1, seed_row(1)); // backwards: dropped with a warning
    let mut s = Metrics::new();
    s.insert("final/total_steps".into(), MetricValue::Number(3.0));
    loggers.set_summary(s);
    loggers.finish(0);
    let summary = json::parse_line(&std::fs::read_to_string(tmp.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["final/total_steps"], MetricValue::Number(3.0), "explicit summary values win");
    assert!(same(&summary["training_step/loss"], &seed_row(2)["training_step/loss"]), "else the last value");
    // A resumed run appends.
    let mut loggers = Loggers::with_env(&cfg, &Env::new()).unwrap();
    loggers.log(3, seed_row(3));
    loggers.finish(0);

    let text = std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap();
    let rows: Vec<Metrics> = text.lines().map(|l| json::parse_line(l).unwrap()).collect();
    assert_eq!(rows.len(), 4);
    for (step, r) in rows.iter().enumerate() {
        assert_eq!(r["step"], MetricValue::Number(step as f64));
        for (k, v) in seed_row(step as u64) {
            assert!(same(&r[&k], &v), "{k}");
        }
    }
    let completions = std::fs::read_to_string(tmp.path().join("completions.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(completions.lines().next().unwrap()).unwrap();
    assert_eq!(first["completion"], "4 | four");
    assert_eq!(first["rewards"]["total"], 1);
    assert_eq!(first["advantage"], -0.5);
    // The resumed run continues the summary; its new rows update it.
    let summary = json::parse_line(&std::fs::read_to_string(tmp.path().join("summary.json")).unwrap()).unwrap();
    assert!(same(&summary["final/total_steps"], &seed_row(3)["final/total_steps"]));
    assert_eq!(summary["_step"], MetricValue::Number(3.0));
}

/// A run directory's `metrics.jsonl` rows (without clock values) and `completions.jsonl` lines.
fn jsonl_rows(dir: &std::path::Path) -> (Vec<Metrics>, Vec<String>) {
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let rows = metrics.lines().map(|l| without_clock(&json::parse_line(l).expect("a complete JSON line"))).collect();
    let completions = std::fs::read_to_string(dir.join("completions.jsonl")).unwrap();
    (rows, completions.lines().map(str::to_string).collect())
}

/// Log steps `from..to`, each with its completions, as the trainer does.
fn log_steps(loggers: &mut Loggers, from: u64, to: u64) {
    for step in from..to {
        loggers.log_completions(step, &[row(step)]);
        loggers.log(step, seed_row(step));
        loggers.commit();
    }
}

#[test]
fn a_killed_run_resumed_at_its_checkpoint_has_every_jsonl_row_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = |dir: PathBuf| {
        let mut cfg = LoggingConfig::new(dir, "r", "grpo", "math");
        cfg.console = false;
        cfg.wandb.disabled = true;
        cfg
    };
    // The reference: six steps without a stop.
    let reference = tmp.path().join("reference");
    let mut loggers = Loggers::with_env(&config(reference.clone()), &Env::new()).unwrap();
    log_steps(&mut loggers, 0, 6);
    loggers.finish(0);

    // The same run killed after step 5 (its checkpoint is at step 3): no finish, no destructor, and a torn line.
    let killed = tmp.path().join("killed");
    let mut loggers = Loggers::with_env(&config(killed.clone()), &Env::new()).unwrap();
    log_steps(&mut loggers, 0, 6);
    loggers.log(6, seed_row(6));
    loggers.flush_durable();
    std::mem::forget(loggers);
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(killed.join("metrics.jsonl")).unwrap();
    f.write_all(b"{\"step\":7,\"_timestamp\":1.5,\"training_step/lo").unwrap();
    drop(f);

    // Resumed from the checkpoint at global step 3: steps 3.. run again.
    let mut cfg = config(killed.clone());
    cfg.resume = true;
    cfg.resume_from_step = Some(3);
    let mut loggers = Loggers::with_env(&cfg, &Env::new()).unwrap();
    let (rows, _) = jsonl_rows(&killed);
    assert_eq!(rows.len(), 3, "cut back to steps 0..3 at open");
    loggers.log(2, seed_row(2)); // before the resume step: already logged, dropped
    log_steps(&mut loggers, 3, 6);
    loggers.finish(0);

    let (want, want_completions) = jsonl_rows(&reference);
    let (got, got_completions) = jsonl_rows(&killed);
    let steps: Vec<f64> = got.iter().map(|r| r["step"].as_f64().unwrap()).collect();
    assert_eq!(steps, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "each step once, in order");
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(same_rows(g, w), "{g:?} != {w:?}");
    }
    assert_eq!(got_completions, want_completions, "completions.jsonl equals the uninterrupted run's");
    let summary = json::parse_line(&std::fs::read_to_string(killed.join("summary.json")).unwrap()).unwrap();
    let want_summary = json::parse_line(&std::fs::read_to_string(reference.join("summary.json")).unwrap()).unwrap();
    assert!(same_rows(&without_clock(&summary), &without_clock(&want_summary)), "{summary:?}");
    assert!(!std::fs::read_dir(&killed).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
}

#[test]
fn resuming_at_step_zero_empties_the_jsonl_files_and_plain_resume_only_drops_a_torn_line() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = LoggingConfig::new(tmp.path(), "r", "grpo", "math");
    cfg.console = false;
    cfg.wandb.disabled = true;
    let mut loggers = Loggers::with_env(&cfg, &Env::new()).unwrap();
    log_steps(&mut loggers, 0, 2);
    std::mem::forget(loggers);
    std::fs::write(
        tmp.path().join("metrics.jsonl"),
        std::fs::read_to_string(tmp.path().join("metrics.jsonl")).unwrap() + "{\"step\":2,",
    )
    .unwrap();
    cfg.resume = true;
    let loggers = Loggers::with_env(&cfg, &Env::new()).unwrap();
    assert_eq!(jsonl_rows(tmp.path()).0.len(), 2, "the torn line is gone, the complete ones stay");
    std::mem::forget(loggers);
    cfg.resume_from_step = Some(0);
    let mut loggers = Loggers::with_env(&cfg, &Env::new()).unwrap();
    loggers.finish(0);
    let (rows, completions) = jsonl_rows(tmp.path());
    assert!(rows.is_empty() && completions.is_empty());
}

#[test]
fn tensorboard_forgets_the_steps_a_resumed_run_logs_again() {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("tb");
    let cfg = tb_config(tmp.path().join("run"), log_dir.clone());
    let mut loggers = Loggers::with_env(&cfg, &Env::new()).unwrap();
    for step in 0..6 {
        loggers.log(step, seed_row(step));
        loggers.commit();
    }
    std::mem::forget(loggers);
    let mut cfg = cfg;
    cfg.resume_from_step = Some(3);
    let mut loggers = Loggers::with_env(&cfg, &Env::new()).unwrap();
    for step in 3..6 {
        loggers.log(step, seed_row(step));
        loggers.commit();
    }
    loggers.finish(0);
    let run_dir = log_dir.join("tb-run");
    assert_eq!(std::fs::read_dir(&run_dir).unwrap().count(), 2, "event files are never rewritten");

    let Some(python) = venv_python() else { return };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/oracles/tensorboard_read.py");
    let out = std::process::Command::new(python).arg(script).arg(&run_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = v["scalars"]["training_step/loss"].as_array().unwrap();
    let steps: Vec<u64> = points.iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2, 3, 4, 5], "TensorBoard shows each step once");
}

/// `_runtime` is the run's own time: a resumed run goes on from what its kept rows had reached, not from the
/// wall clock, so the days a preempted job waited are not counted (W&B's `_runtime` does the same); rows written
/// before `_runtime` existed give the span of their time stamps instead.
#[test]
fn jsonl_runtime_goes_on_from_the_kept_rows_across_a_resume() {
    use grpo_host::logging::jsonl::JsonlSink;
    use grpo_host::logging::Sink;
    let tmp = tempfile::tempdir().unwrap();
    let last_runtime = |dir: &std::path::Path| {
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let row = json::parse_line(text.lines().last().unwrap()).unwrap();
        (row["step"].as_f64().unwrap(), row["_runtime"].as_f64().unwrap())
    };
    // Time stamps from long ago: the wall clock has moved on by decades since.
    let with_runtime =
        "{\"step\":0,\"_timestamp\":100,\"_runtime\":40}\n{\"step\":1,\"_timestamp\":130,\"_runtime\":70}\n\
                        {\"step\":2,\"_timestamp\":160,\"_runtime\":100}\n";
    let without = "{\"step\":0,\"_timestamp\":100}\n{\"step\":1,\"_timestamp\":130}\n{\"step\":2,\"_timestamp\":160}\n";
    for (name, text, reached) in [("with", with_runtime, 70.0), ("without", without, 30.0)] {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
        let mut sink = JsonlSink::create_resumed(&dir, Some(2)).unwrap();
        sink.log(2, &Metrics::new());
        drop(sink);
        let (step, runtime) = last_runtime(&dir);
        assert_eq!(step, 2.0);
        assert!(
            (reached..reached + 30.0).contains(&runtime),
            "{name}: _runtime {runtime}, kept rows reached {reached}"
        );
    }
    // A new run starts at zero.
    let dir = tmp.path().join("new");
    let mut sink = JsonlSink::create(&dir).unwrap();
    sink.log(0, &Metrics::new());
    drop(sink);
    assert!(last_runtime(&dir).1 < 30.0);
}
