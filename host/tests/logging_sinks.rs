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
