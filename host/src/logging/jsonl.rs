//! The run directory's own record: `metrics.jsonl` (one object per step: `"step"`, `"_timestamp"` and the metrics),
//! `completions.jsonl` (one object per completion row) and `summary.json` (the summary so far). Lines are appended
//! and flushed one by one, so a resumed run continues the file and `grpo-host report` can read a run in progress.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{json, CompletionRow, MetricValue, Metrics, Sink};

/// Writes the JSONL files of a run directory.
pub struct JsonlSink {
    dir: PathBuf,
    metrics: Option<File>,
    completions: Option<File>,
    summary: Metrics,
    warned: bool,
}

impl JsonlSink {
    /// Open (append) `metrics.jsonl` in `run_dir`, creating the directory.
    pub fn create(run_dir: &Path) -> anyhow::Result<JsonlSink> {
        let open = || -> std::io::Result<File> {
            std::fs::create_dir_all(run_dir)?;
            OpenOptions::new().create(true).append(true).open(run_dir.join("metrics.jsonl"))
        };
        let metrics = open().map_err(|e| {
            crate::user_error!(
                "cannot write metrics to {}: {e}; choose a writable run directory",
                run_dir.join("metrics.jsonl").display()
            )
        })?;
        // A resumed run continues the summary it had.
        let summary = std::fs::read_to_string(run_dir.join("summary.json"))
            .ok()
            .and_then(|t| json::parse_line(t.trim()))
            .unwrap_or_default();
        Ok(JsonlSink { dir: run_dir.to_path_buf(), metrics: Some(metrics), completions: None, summary, warned: false })
    }

    fn warn(&mut self, what: &str, err: std::io::Error) {
        if !self.warned {
            self.warned = true;
            eprintln!(
                "warning: cannot write {what} in {}: {err}; JSONL logging continues where it can",
                self.dir.display()
            );
        }
    }

    fn write_summary(&mut self) {
        let text = json::object(self.summary.iter().map(|(k, v)| (k.as_str(), json::value(v))));
        let tmp = self.dir.join("summary.json.tmp");
        let result =
            std::fs::write(&tmp, text + "\n").and_then(|_| std::fs::rename(&tmp, self.dir.join("summary.json")));
        if let Err(e) = result {
            self.warn("summary.json", e);
        }
    }
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One `metrics.jsonl` line.
pub fn metrics_line(step: u64, timestamp: f64, row: &Metrics) -> String {
    let mut pairs: Vec<(&str, String)> = vec![("step", step.to_string()), ("_timestamp", json::number(timestamp))];
    pairs.extend(
        row.iter().filter(|(k, _)| *k != "step" && *k != "_timestamp").map(|(k, v)| (k.as_str(), json::value(v))),
    );
    json::object(pairs)
}

/// One `completions.jsonl` line.
pub fn completion_line(row: &CompletionRow) -> String {
    let rewards = json::object(row.rewards.iter().map(|(k, v)| (k.as_str(), json::number(*v))));
    json::object([
        ("step", row.step.to_string()),
        ("prompt", json::string(&row.prompt)),
        ("completion", json::string(&row.completion)),
        ("rewards", rewards),
        ("advantage", json::number(row.advantage)),
    ])
}

impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn log(&mut self, step: u64, row: &Metrics) {
        let line = metrics_line(step, unix_now(), row) + "\n";
        if let Some(f) = &mut self.metrics {
            if let Err(e) = f.write_all(line.as_bytes()) {
                self.warn("metrics.jsonl", e);
            }
        }
        for (k, v) in row {
            self.summary.insert(k.clone(), v.clone());
        }
        self.summary.insert("_step".into(), MetricValue::Number(step as f64));
    }

    fn log_completions(&mut self, _step: u64, rows: &[CompletionRow]) {
        if self.completions.is_none() {
            match OpenOptions::new().create(true).append(true).open(self.dir.join("completions.jsonl")) {
                Ok(f) => self.completions = Some(f),
                Err(e) => return self.warn("completions.jsonl", e),
            }
        }
        let text: String = rows.iter().map(|r| completion_line(r) + "\n").collect();
        if let Some(f) = &mut self.completions {
            if let Err(e) = f.write_all(text.as_bytes()) {
                self.warn("completions.jsonl", e);
            }
        }
    }

    fn set_summary(&mut self, summary: &Metrics) {
        for (k, v) in summary {
            self.summary.insert(k.clone(), v.clone());
        }
        self.write_summary();
    }

    fn finish(&mut self, _exit_code: i32) {
        self.write_summary();
        for f in [&mut self.metrics, &mut self.completions].into_iter().flatten() {
            let _ = f.sync_all();
        }
    }
}
