//! W&B logging end to end: the offline run file, the online uploader against a mock W&B server on 127.0.0.1 (normal,
//! failing, hanging and absent servers), `--no-wandb`, and W&B's own `wandb sync` (wandb==0.31.0 from the venv in the
//! grpo-rs cache) uploading our offline file to the mock.

mod logging_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use grpo_host::logging::wandb::proto::RecordType;
use grpo_host::logging::{CompletionRow, Env, Loggers, LoggingConfig, MetricValue, Metrics, Table, UploadTuning};
use logging_common::*;

const API_KEY: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn config(run_dir: &Path) -> LoggingConfig {
    let mut cfg = LoggingConfig::new(run_dir, "test-run", "drgrpo", "math");
    cfg.console = false;
    cfg.config = serde_json::json!({"lr": 5e-6, "group_size": 4, "algo": "drgrpo"});
    cfg.upload = UploadTuning {
        transmit_interval: Duration::from_millis(20),
        heartbeat_interval: Duration::from_secs(30),
        request_timeout: Duration::from_millis(1500),
        retry_max_elapsed: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(80),
        finish_timeout: Duration::from_secs(10),
        queue_capacity: 1024,
    };
    cfg
}

fn env(mode: &str, base_url: &str) -> Env {
    let mut e = Env::new();
    e.insert("WANDB_MODE".into(), mode.into());
    e.insert("WANDB_BASE_URL".into(), base_url.into());
    e.insert("WANDB_API_KEY".into(), API_KEY.into());
    e.insert("HOME".into(), "/nonexistent-home".into());
    e
}

/// Log `steps` rows of every seed key (two calls per step, merged), a completions table, a summary, and finish.
fn seed_run(loggers: &mut Loggers, steps: u64) {
    for step in 0..steps {
        let row = seed_row(step);
        let (a, b): (Metrics, Metrics) = row.into_iter().partition(|(k, _)| k.starts_with("rollouts/"));
        loggers.log(step, a);
        loggers.log(step, b);
        if step == 1 {
            loggers.log_completions(step, &[completion(step)]);
        }
        loggers.commit();
    }
    let mut summary = Metrics::new();
    summary.insert("final/total_steps".into(), MetricValue::Number(steps as f64));
    loggers.set_summary(summary);
}

fn completion(step: u64) -> CompletionRow {
    CompletionRow {
        step,
        prompt: "What is 2+2?".into(),
        completion: "<think>2+2</think><answer>4</answer>".into(),
        rewards: [("total".to_string(), 1.0), ("format".to_string(), 0.5)].into_iter().collect(),
        advantage: 0.75,
    }
}

/// Offline loggers for `run_dir` (no server is reached), and their W&B run directory.
fn offline_loggers(run_dir: &Path) -> (Loggers, PathBuf) {
    let loggers = Loggers::with_env(&config(run_dir), &env("offline", "http://127.0.0.1:9")).unwrap();
    let wandb_dir = loggers.wandb_run_dir().unwrap().to_path_buf();
    (loggers, wandb_dir)
}

#[test]
fn offline_run_file_has_run_first_every_step_and_exit_last() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("runs/test-run");
    let (mut loggers, wandb_dir) = offline_loggers(&run_dir);
    let name = wandb_dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("offline-run-") && name.ends_with(loggers.wandb_run_id().unwrap()), "{name}");
    assert!(wandb_dir.starts_with(run_dir.join("wandb")));
    assert!(wandb_dir.join("files").is_dir());
    seed_run(&mut loggers, 3);
    loggers.finish(0);

    let recs = records(&wandb_dir);
    let RecordType::Run(run) = &recs[0] else { panic!("first record is {:?}", recs[0]) };
    assert_eq!(run.project, "drgrpo_experiment");
    assert_eq!(run.display_name, "test-run");
    let config: Vec<_> =
        run.config.as_ref().unwrap().update.iter().map(|i| (i.key.as_str(), i.value_json.as_str())).collect();
    // serde_json keeps insertion order in this crate (preserve_order), so the run's config reads as it was written.
    assert_eq!(config, vec![("lr", "5e-6"), ("group_size", "4"), ("algo", "\"drgrpo\"")]);
    let RecordType::Exit(exit) = recs.last().unwrap() else { panic!("last record is not exit") };
    assert_eq!(exit.exit_code, 0);
    let histories: Vec<_> =
        recs.iter().filter_map(|r| if let RecordType::History(h) = r { Some(h) } else { None }).collect();
    assert_eq!(histories.len(), 3, "one history row per step, the two log calls merged");
    for (step, h) in histories.iter().enumerate() {
        assert_eq!(h.step.as_ref().unwrap().num, step as i64);
        let get = |k: &str| h.item.iter().find(|i| i.key == k).map(|i| i.value_json.clone());
        assert_eq!(get("_step").unwrap(), step.to_string());
        assert_eq!(get("test/nonfinite").unwrap(), ["1.5", "NaN", "Infinity"][step]);
        assert_eq!(get("training_step/loss").unwrap(), format!("{}", step as f64 * 1000.0 + 13.25));
        assert_eq!(get("completions").is_some(), step == 1, "the table joins the row of its step");
    }
    let table = recs.iter().find_map(|r| if let RecordType::Files(f) = r { Some(f) } else { None }).unwrap();
    let table_path = wandb_dir.join("files").join(&table.files[0].path);
    let table_json: serde_json::Value = serde_json::from_slice(&std::fs::read(table_path).unwrap()).unwrap();
    assert_eq!(table_json["columns"][3], "reward/format");
    assert_eq!(table_json["data"][0][2], "<think>2+2</think><answer>4</answer>");
    // The run id is remembered for a resumed training run.
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("wandb-run.json")).unwrap()).unwrap();
    assert_eq!(stored["run_id"], loggers.wandb_run_id().unwrap());
    // The JSONL sink wrote the same rows.
    let lines = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
    assert!(lines.lines().nth(1).unwrap().contains("\"test/nonfinite\":NaN"));
}

/// The evaluation's table (`eval/completions`) is a run file beside the completions table, referenced from the row of
/// its step, with its own columns; the JSONL files leave it out.
#[test]
fn an_eval_table_joins_the_row_of_its_step() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("runs/eval-table");
    let (mut loggers, wandb_dir) = offline_loggers(&run_dir);
    let table = Table {
        key: "eval/completions".into(),
        columns: vec!["step".into(), "question".into(), "return".into(), "solved".into()],
        rows: vec![
            vec![2.into(), "2+2?".into(), 1.0.into(), true.into()],
            vec![2.into(), "3+3?".into(), 0.into(), false.into()],
        ],
    };
    for step in 0..3 {
        loggers.log(step, seed_row(step));
        if step == 2 {
            loggers.log_table(step, &table);
        }
        loggers.commit();
    }
    loggers.finish(0);
    let recs = records(&wandb_dir);
    let histories: Vec<_> =
        recs.iter().filter_map(|r| if let RecordType::History(h) = r { Some(h) } else { None }).collect();
    for (step, h) in histories.iter().enumerate() {
        let value = h.item.iter().find(|i| i.key == "eval/completions").map(|i| i.value_json.clone());
        assert_eq!(value.is_some(), step == 2, "the table joins the row of its step");
    }
    let files = recs.iter().find_map(|r| if let RecordType::Files(f) = r { Some(f) } else { None }).unwrap();
    assert!(files.files[0].path.starts_with("media/table/eval/completions_2_"), "{}", files.files[0].path);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(wandb_dir.join("files").join(&files.files[0].path)).unwrap()).unwrap();
    assert_eq!(written["columns"], serde_json::json!(["step", "question", "return", "solved"]));
    assert_eq!(written["data"][1], serde_json::json!([2, "3+3?", 0, false]));
    assert!(!run_dir.join("completions.jsonl").exists(), "the eval table went to completions.jsonl");
}

#[test]
fn a_crash_leaves_a_failed_but_readable_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir;
    {
        let mut loggers = Loggers::with_env(&config(tmp.path()), &env("offline", "http://127.0.0.1:9")).unwrap();
        dir = loggers.wandb_run_dir().unwrap().to_path_buf();
        seed_run(&mut loggers, 2);
        // Dropped without finish, as when the trainer's error unwinds.
    }
    let recs = records(&dir);
    assert!(matches!(recs.last(), Some(RecordType::Exit(e)) if e.exit_code == 1));
}

#[test]
fn online_upload_delivers_config_history_and_summary() {
    let mock = MockWandb::start(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let mut loggers = Loggers::with_env(&config(tmp.path()), &env("online", &mock.url)).unwrap();
    let run_id = loggers.wandb_run_id().unwrap().to_string();
    let dir = loggers.wandb_run_dir().unwrap().to_path_buf();
    assert!(dir.file_name().unwrap().to_string_lossy().starts_with("run-"));
    seed_run(&mut loggers, 4);
    loggers.finish(0);

    let upserts = mock.upserts();
    assert_eq!(upserts[0]["name"], run_id.as_str());
    assert_eq!(upserts[0]["project"], "drgrpo_experiment");
    assert_eq!(upserts[0]["displayName"], "test-run");
    let config: serde_json::Value = serde_json::from_str(upserts[0]["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["lr"]["value"], 5e-6);
    assert_eq!(config["group_size"]["value"], 4);
    let stream = mock.requests().into_iter().find(|r| r.url.ends_with("/file_stream")).unwrap();
    assert_eq!(stream.url, format!("/files/mockentity/drgrpo_experiment/{run_id}/file_stream"));

    assert_history_has_seed_rows(&mock.history(), 4);
    let summary = mock.summary().unwrap();
    assert_eq!(summary["final/total_steps"], MetricValue::Number(4.0));
    assert!(same(&summary["training_step/loss"], &seed_row(3)["training_step/loss"]));
    assert!(same(&summary["test/nonfinite"], &MetricValue::Number(f64::NEG_INFINITY)));
    assert_eq!(mock.exitcode(), Some(0));
    // The completions table went up as a run file.
    let upload = mock.requests().into_iter().find(|r| r.method == "PUT").expect("table upload");
    assert!(upload.url.starts_with("/upload/media/table/completions_1_"), "{}", upload.url);
    // Online runs keep the full run file too.
    assert!(matches!(records(&dir).last(), Some(RecordType::Exit(e)) if e.exit_code == 0));
}

#[test]
fn server_errors_for_a_while_lose_nothing() {
    let mock =
        MockWandb::start(Faults { fail_with: vec![500, 429, 503, 500, 429, 500, 502, 429], ..Default::default() });
    let tmp = tempfile::tempdir().unwrap();
    let mut loggers = Loggers::with_env(&config(tmp.path()), &env("online", &mock.url)).unwrap();
    seed_run(&mut loggers, 5);
    loggers.finish(0);
    assert_eq!(mock.failures_served(), 8);
    assert_history_has_seed_rows(&mock.history(), 5);
    assert_eq!(mock.exitcode(), Some(0));
}

/// Time `n` steps of logging; returns the slowest log+commit.
fn time_steps(loggers: &mut Loggers, n: u64) -> Duration {
    time_steps_from(loggers, 0, n)
}

fn assert_unreachable_server_costs_nothing(base_url: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.upload.finish_timeout = Duration::from_secs(2);
    let mut loggers = Loggers::with_env(&cfg, &env("online", base_url)).unwrap();
    let dir = loggers.wandb_run_dir().unwrap().to_path_buf();
    let started = Instant::now();
    let worst = time_steps(&mut loggers, 200);
    let logging = started.elapsed();
    let t = Instant::now();
    loggers.finish(0);
    let finishing = t.elapsed();
    // A blocked log() would take the request timeout (1.5 s) at least once.
    assert!(worst < Duration::from_millis(100), "slowest log(): {worst:?}");
    assert!(logging < Duration::from_secs(2), "200 steps took {logging:?}");
    assert!(finishing < Duration::from_millis(2500), "finish took {finishing:?}");
    let recs = records(&dir);
    assert_eq!(recs.iter().filter(|r| matches!(r, RecordType::History(_))).count(), 200);
    assert!(matches!(recs.last(), Some(RecordType::Exit(e)) if e.exit_code == 0));
}

#[test]
fn a_hanging_server_does_not_slow_logging_or_fail_the_run() {
    let mock = MockWandb::start(Faults { hang: true, ..Default::default() });
    assert_unreachable_server_costs_nothing(&mock.url);
    assert!(!mock.requests().is_empty(), "the uploader did try");
}

#[test]
fn a_closed_port_does_not_slow_logging_or_fail_the_run() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert_unreachable_server_costs_nothing(&format!("http://127.0.0.1:{port}"));
}

#[test]
fn no_wandb_means_no_files_and_no_connections() {
    let mock = MockWandb::start(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.wandb.disabled = true;
    let mut loggers = Loggers::with_env(&cfg, &env("online", &mock.url)).unwrap();
    assert!(loggers.wandb_run_dir().is_none());
    seed_run(&mut loggers, 2);
    loggers.finish(0);
    assert!(!tmp.path().join("wandb").exists());
    assert!(!tmp.path().join("wandb-run.json").exists());
    assert!(tmp.path().join("metrics.jsonl").exists());
    // WANDB_MODE=disabled does the same.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut loggers = Loggers::with_env(&config(tmp2.path()), &env("disabled", &mock.url)).unwrap();
    seed_run(&mut loggers, 1);
    loggers.finish(0);
    assert!(!tmp2.path().join("wandb").exists());
    std::thread::sleep(Duration::from_millis(50));
    assert!(mock.requests().is_empty());
}

/// The venv with wandb==0.31.0 and tensorboard==2.21.0, where setup installs it.
fn venv_bin(name: &str) -> Option<PathBuf> {
    let p = grpo_host::paths::cache_dir().join("venv/bin").join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "\n!!!!! SKIPPED: {} is missing; install it with `{}/venv/bin/pip install wandb==0.31.0 \
             tensorboard==2.21.0` (cargo xtask setup does) !!!!!\n",
            p.display(),
            grpo_host::paths::cache_dir().display()
        );
        None
    }
}

#[test]
fn wandb_sync_uploads_our_offline_run() {
    let Some(wandb) = venv_bin("wandb") else {
        return;
    };
    let mock = MockWandb::start(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let mut loggers = Loggers::with_env(&config(&tmp.path().join("run")), &env("offline", &mock.url)).unwrap();
    let dir = loggers.wandb_run_dir().unwrap().to_path_buf();
    let run_id = loggers.wandb_run_id().unwrap().to_string();
    seed_run(&mut loggers, 3);
    loggers.finish(0);
    assert!(mock.requests().is_empty(), "offline mode talks to nobody");

    let (ok, log) = wandb_sync(&wandb, &mock.url, tmp.path(), &[], &dir);
    assert!(ok, "wandb sync failed:\n{log}");
    assert!(dir.join(format!("run-{run_id}.wandb.synced")).exists(), "no .synced marker:\n{log}");

    let upserts = mock.upserts();
    assert_eq!(upserts[0]["name"], run_id.as_str(), "{log}");
    assert_eq!(upserts[0]["project"], "drgrpo_experiment");
    let config: serde_json::Value = serde_json::from_str(upserts[0]["config"].as_str().unwrap()).unwrap();
    assert_eq!(config["group_size"]["value"], 4);
    assert_history_has_seed_rows(&mock.history(), 3);
    let summary = mock.summary().expect("a summary");
    assert_eq!(summary["final/total_steps"], MetricValue::Number(3.0));
    assert!(same(&summary["test/nonfinite"], &MetricValue::Number(f64::INFINITY)));
    assert_eq!(mock.exitcode(), Some(0), "{log}");
    // The completions table is a run file W&B uploads, referenced from the history row of its step.
    let puts: Vec<String> = mock.requests().into_iter().filter(|r| r.method == "PUT").map(|r| r.url).collect();
    assert!(puts.iter().any(|u| u.starts_with("/upload/media/table/completions_1_")), "{puts:?}");
    let line = &mock.raw_history()[&1];
    let start = line.find("\"completions\":{").expect("a completions value in the row of step 1");
    let value: serde_json::Value =
        serde_json::Deserializer::from_str(&line[start + 14..]).into_iter().next().unwrap().unwrap();
    assert_eq!(value["_type"], "table-file");
    assert_eq!(
        format!("/upload/{}", value["path"].as_str().unwrap()),
        *puts.iter().find(|u| u.contains("table")).unwrap()
    );
}

#[test]
fn killing_the_server_mid_run_leaves_a_run_that_wandb_sync_finishes() {
    let mock = MockWandb::start(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&tmp.path().join("run"));
    cfg.upload.retry_max_elapsed = Duration::from_millis(300);
    cfg.upload.request_timeout = Duration::from_millis(300);
    let mut loggers = Loggers::with_env(&cfg, &env("online", &mock.url)).unwrap();
    let dir = loggers.wandb_run_dir().unwrap().to_path_buf();
    let run_id = loggers.wandb_run_id().unwrap().to_string();
    for step in 0..3 {
        loggers.log(step, seed_row(step));
        loggers.commit();
    }
    // Let the first rows reach the server, then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.history().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(mock.history().len(), 3);
    let url = mock.url.clone();
    drop(mock);
    let worst = time_steps_from(&mut loggers, 3, 6);
    assert!(worst < Duration::from_millis(100), "slowest log(): {worst:?}");
    loggers.finish(0);
    let recs = records(&dir);
    assert_eq!(recs.iter().filter(|r| matches!(r, RecordType::History(_))).count(), 6);

    // The printed command finishes the upload.
    let Some(wandb) = venv_bin("wandb") else {
        return;
    };
    let mock = MockWandb::start(Faults::default());
    let out = wandb_sync(&wandb, &mock.url, tmp.path(), &["--include-online"], &dir);
    assert!(out.0, "wandb sync failed:\n{}", out.1);
    assert_history_has_seed_rows(&mock.history(), 6);
    assert_eq!(mock.exitcode(), Some(0));
    assert_ne!(url, mock.url);
    assert!(dir.join(format!("run-{run_id}.wandb.synced")).exists());
}

/// Time steps `from..to` of logging; returns the slowest log+commit.
fn time_steps_from(loggers: &mut Loggers, from: u64, to: u64) -> Duration {
    let mut worst = Duration::ZERO;
    for step in from..to {
        let row = seed_row(step);
        let t = Instant::now();
        loggers.log(step, row);
        loggers.commit();
        worst = worst.max(t.elapsed());
    }
    worst
}

/// Run `wandb sync --yes [extra] DIR` against a server, in a scratch HOME and cwd; (success, output).
fn wandb_sync(wandb: &Path, base_url: &str, scratch: &Path, extra: &[&str], dir: &Path) -> (bool, String) {
    let home = scratch.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = std::process::Command::new(wandb)
        .args(["sync", "--yes"])
        .args(extra)
        .arg(dir)
        .current_dir(scratch)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("WANDB_BASE_URL", base_url)
        .env("WANDB_API_KEY", API_KEY)
        .env("WANDB_ERROR_REPORTING", "false")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), log)
}

#[test]
fn a_resumed_offline_run_syncs_after_the_history_it_continues() {
    let Some(wandb) = venv_bin("wandb") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&tmp.path().join("run"));
    let mut loggers = Loggers::with_env(&cfg, &env("offline", "http://127.0.0.1:9")).unwrap();
    let first_id = loggers.wandb_run_id().unwrap().to_string();
    for step in 0..3 {
        loggers.log(step, seed_row(step));
        loggers.commit();
    }
    loggers.finish(0);
    // The resumed training run continues the same W&B run in a new offline directory (W&B names them by second).
    std::thread::sleep(Duration::from_millis(1100));
    cfg.resume = true;
    let mut loggers = Loggers::with_env(&cfg, &env("offline", "http://127.0.0.1:9")).unwrap();
    assert_eq!(loggers.wandb_run_id(), Some(first_id.as_str()));
    let second = loggers.wandb_run_dir().unwrap().to_path_buf();
    for step in 3..5 {
        loggers.log(step, seed_row(step));
        loggers.commit();
    }
    loggers.finish(0);
    // The server already holds the first three lines.
    let mock = MockWandb::start(Faults { existing_history: Some(3), ..Default::default() });
    let (ok, log) = wandb_sync(&wandb, &mock.url, tmp.path(), &[], &second);
    assert!(ok, "{log}");
    let history = mock.history();
    assert_eq!(history.keys().copied().collect::<Vec<_>>(), vec![3, 4], "{log}");
    assert_eq!(history[&3]["_step"], MetricValue::Number(3.0));
    assert!(mock.requests()[0].body.contains("RunResumeStatus"));
}

#[test]
fn online_resume_appends_after_the_servers_history() {
    let mock = MockWandb::start(Faults { existing_history: Some(7), ..Default::default() });
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.wandb.resume = Some("allow".into());
    cfg.wandb.run_id = Some("resume42".into());
    let mut loggers = Loggers::with_env(&cfg, &env("online", &mock.url)).unwrap();
    for step in 10..12 {
        loggers.log(step, seed_row(step));
        loggers.commit();
    }
    loggers.finish(0);
    let history = mock.history();
    assert_eq!(history.keys().copied().collect::<Vec<_>>(), vec![7, 8]);
    assert_eq!(history[&7]["_step"], MetricValue::Number(10.0));
    assert_eq!(mock.upserts()[0]["name"], "resume42");

    // `must` for a run the server does not have: the upload stops, the run itself is fine.
    let mock = MockWandb::start(Faults::default());
    cfg.wandb.resume = Some("must".into());
    let mut loggers = Loggers::with_env(&cfg, &env("online", &mock.url)).unwrap();
    let dir = loggers.wandb_run_dir().unwrap().to_path_buf();
    loggers.log(0, seed_row(0));
    loggers.finish(0);
    assert!(mock.upserts().is_empty());
    assert!(matches!(records(&dir).last(), Some(RecordType::Exit(e)) if e.exit_code == 0));
}

#[test]
fn a_rejected_key_stops_the_upload_at_once_and_nothing_else() {
    let mock = MockWandb::start(Faults { fail_with: vec![401], ..Default::default() });
    let tmp = tempfile::tempdir().unwrap();
    let mut loggers = Loggers::with_env(&config(tmp.path()), &env("online", &mock.url)).unwrap();
    let dir = loggers.wandb_run_dir().unwrap().to_path_buf();
    let t = Instant::now();
    seed_run(&mut loggers, 3);
    loggers.finish(0);
    assert!(t.elapsed() < Duration::from_secs(2), "no retries on 401: {:?}", t.elapsed());
    assert_eq!(mock.requests().len(), 1, "one rejected upsert, then silence");
    assert_eq!(records(&dir).iter().filter(|r| matches!(r, RecordType::History(_))).count(), 3);
}

/// Steps `from..to` as the trainer logs them: a completions table at even steps, then the row.
fn trainer_steps(loggers: &mut Loggers, from: u64, to: u64) {
    for step in from..to {
        if step % 2 == 0 {
            loggers.log_completions(step, &[completion(step)]);
        }
        loggers.log(step, seed_row(step));
        loggers.commit();
    }
}

/// Same rows: steps in order and values (tables compared by presence, their file names carry a hash of the rows).
fn assert_same_history(got: &[(i64, Metrics)], want: &[(i64, Metrics)]) {
    let steps = |h: &[(i64, Metrics)]| h.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    assert_eq!(steps(got), steps(want), "history steps");
    for ((step, g), (_, w)) in got.iter().zip(want) {
        assert!(same_rows(g, w), "step {step}: {g:?} != {w:?}");
    }
}

#[test]
fn a_killed_offline_run_resumed_at_its_checkpoint_has_every_history_step_once() {
    let tmp = tempfile::tempdir().unwrap();
    let e = env("offline", "http://127.0.0.1:9");
    let reference_dir = {
        let mut loggers = Loggers::with_env(&config(&tmp.path().join("reference")), &e).unwrap();
        trainer_steps(&mut loggers, 0, 6);
        loggers.finish(0);
        loggers.wandb_run_dir().unwrap().to_path_buf()
    };

    let run = tmp.path().join("run");
    let mut loggers = Loggers::with_env(&config(&run), &e).unwrap();
    let (dir, run_id) = (loggers.wandb_run_dir().unwrap().to_path_buf(), loggers.wandb_run_id().unwrap().to_string());
    trainer_steps(&mut loggers, 0, 6);
    loggers.log_completions(6, &[completion(6)]);
    loggers.flush_durable();
    std::mem::forget(loggers); // kill -9: no exit record, nothing flushed beyond what was written

    let mut cfg = config(&run);
    cfg.resume = true;
    cfg.resume_from_step = Some(3);
    let mut loggers = Loggers::with_env(&cfg, &e).unwrap();
    assert_eq!(loggers.wandb_run_id(), Some(run_id.as_str()), "the same W&B run");
    assert_eq!(loggers.wandb_run_dir(), Some(dir.as_path()), "an offline file nobody uploaded is continued in place");
    trainer_steps(&mut loggers, 3, 6);
    loggers.finish(0);

    let recs = records(&dir);
    assert!(matches!(recs[0], RecordType::Run(_)));
    assert_eq!(recs.iter().filter(|r| matches!(r, RecordType::Run(_))).count(), 1);
    assert_eq!(recs.iter().filter(|r| matches!(r, RecordType::Exit(_))).count(), 1);
    assert!(matches!(recs.last(), Some(RecordType::Exit(e)) if e.exit_code == 0));
    assert_same_history(&history_rows(&recs), &history_rows(&records(&reference_dir)));
    let tables = recs.iter().filter(|r| matches!(r, RecordType::Files(_))).count();
    assert_eq!(tables, 3, "the tables of steps 0, 2 and 4, once each");
    assert_eq!(std::fs::read_dir(run.join("wandb")).unwrap().count(), 1, "one W&B run directory");

    // W&B's own reader uploads it as one run with each step once.
    let Some(wandb) = venv_bin("wandb") else {
        return;
    };
    let mock = MockWandb::start(Faults::default());
    let (ok, log) = wandb_sync(&wandb, &mock.url, tmp.path(), &[], &dir);
    assert!(ok, "{log}");
    let history = mock.history();
    assert_eq!(history.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5], "{log}");
    for (line, row) in &history {
        assert_eq!(row["_step"], MetricValue::Number(*line as f64));
        assert!(same_rows(&without_clock(row), &history_rows(&recs)[*line as usize].1), "line {line}");
    }
    assert_eq!(mock.exitcode(), Some(0));
}

#[test]
fn a_resume_after_the_file_was_synced_continues_in_a_new_file_after_the_steps_w_and_b_has() {
    let tmp = tempfile::tempdir().unwrap();
    let e = env("offline", "http://127.0.0.1:9");
    let run = tmp.path().join("run");
    let mut loggers = Loggers::with_env(&config(&run), &e).unwrap();
    let first = loggers.wandb_run_dir().unwrap().to_path_buf();
    let run_id = loggers.wandb_run_id().unwrap().to_string();
    trainer_steps(&mut loggers, 0, 6);
    std::mem::forget(loggers);
    std::fs::write(first.join(format!("run-{run_id}.wandb.synced")), "").unwrap(); // as `wandb sync` leaves it

    std::thread::sleep(Duration::from_millis(1100)); // W&B names run directories by the second
    let mut cfg = config(&run);
    cfg.resume_from_step = Some(3);
    let mut loggers = Loggers::with_env(&cfg, &e).unwrap();
    let second = loggers.wandb_run_dir().unwrap().to_path_buf();
    assert_ne!(second, first);
    trainer_steps(&mut loggers, 3, 8);
    loggers.finish(0);
    let recs = records(&second);
    let RecordType::Run(r) = &recs[0] else { panic!("run record first") };
    assert!(r.resumed && r.resume, "the new file resumes the run");
    assert_eq!(r.starting_step, 6);
    let steps: Vec<i64> = history_rows(&recs).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [6, 7], "steps W&B already has from the synced file are not written again");

    // A further resume chains: the new file starts after what both files hold.
    std::fs::write(second.join(format!("run-{run_id}.wandb.synced")), "").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    cfg.resume_from_step = Some(5);
    let mut loggers = Loggers::with_env(&cfg, &e).unwrap();
    let third = loggers.wandb_run_dir().unwrap().to_path_buf();
    trainer_steps(&mut loggers, 5, 10);
    loggers.finish(0);
    let steps: Vec<i64> = history_rows(&records(&third)).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [8, 9]);
}

#[test]
fn online_resume_skips_the_steps_the_server_already_has() {
    let mock =
        MockWandb::start(Faults { existing_history: Some(6), existing_last_step: Some(5), ..Default::default() });
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.wandb.run_id = Some("resume77".into());
    cfg.resume_from_step = Some(3);
    let mut loggers = Loggers::with_env(&cfg, &env("online", &mock.url)).unwrap();
    trainer_steps(&mut loggers, 3, 8);
    loggers.finish(0);
    let history = mock.history();
    assert_eq!(history.keys().copied().collect::<Vec<_>>(), vec![6, 7], "appended after the server's six lines");
    assert_eq!(history[&6]["_step"], MetricValue::Number(6.0), "steps 3..=5 are not sent again");
    assert_eq!(history[&7]["_step"], MetricValue::Number(7.0));
    assert_eq!(mock.exitcode(), Some(0));
}
