//! The run directory's own record: `metrics.jsonl` (one object per step: `"step"`, `"_timestamp"`, `"_runtime"` and
//! the metrics), `completions.jsonl` (one object per completion row) and `summary.json` (the summary so far). Lines
//! are appended and flushed one by one, so `grpo-host report` can read a run in progress. A resumed run first cuts
//! both files back to the rows before its checkpoint's step (an atomic rewrite), so every step appears once.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{json, CompletionRow, MetricValue, Metrics, Sink};

/// Writes the JSONL files of a run directory.
pub struct JsonlSink {
    dir: PathBuf,
    metrics: Option<File>,
    completions: Option<File>,
    summary: Metrics,
    warned: bool,
    /// When this process opened the files, and the run's `_runtime` then (what the kept rows had reached), so that
    /// `_runtime` counts the run's own time across stops and resumes, as W&B's does, and not the time between.
    started: std::time::Instant,
    runtime_offset: f64,
}

impl JsonlSink {
    /// Open (append) `metrics.jsonl` in `run_dir`, creating the directory.
    pub fn create(run_dir: &Path) -> anyhow::Result<JsonlSink> {
        Self::create_resumed(run_dir, None)
    }

    /// [`JsonlSink::create`] for a run that continues at `resume_from_step`: `metrics.jsonl` and
    /// `completions.jsonl` keep only their complete rows with a smaller step, and the summary is rebuilt from the
    /// kept rows. Without a resume step only a torn last line (a kill mid-write) is removed.
    pub fn create_resumed(run_dir: &Path, resume_from_step: Option<u64>) -> anyhow::Result<JsonlSink> {
        let mut kept_rows = Vec::new();
        let mut open = || -> std::io::Result<File> {
            std::fs::create_dir_all(run_dir)?;
            kept_rows = cut_back(&run_dir.join("metrics.jsonl"), resume_from_step)?;
            cut_back(&run_dir.join("completions.jsonl"), resume_from_step)?;
            OpenOptions::new().create(true).append(true).open(run_dir.join("metrics.jsonl"))
        };
        let metrics = open().map_err(|e| {
            crate::user_error!(
                "cannot write metrics to {}: {e}; choose a writable run directory",
                run_dir.join("metrics.jsonl").display()
            )
        })?;
        let mut sink = JsonlSink {
            dir: run_dir.to_path_buf(),
            metrics: Some(metrics),
            completions: None,
            summary: Metrics::new(),
            warned: false,
            started: std::time::Instant::now(),
            runtime_offset: runtime_reached(&kept_rows),
        };
        if resume_from_step.is_some() {
            // The old summary may hold values of the dropped rows; the kept rows say what it was at the checkpoint.
            for row in &kept_rows {
                sink.summarize(row);
            }
            sink.write_summary();
        } else {
            sink.summary = std::fs::read_to_string(run_dir.join("summary.json"))
                .ok()
                .and_then(|t| json::parse_line(t.trim()))
                .unwrap_or_default();
        }
        Ok(sink)
    }

    /// Fold one `metrics.jsonl` row (with `step`, without its time stamp) into the summary.
    fn summarize(&mut self, row: &Metrics) {
        for (k, v) in row {
            match k.as_str() {
                "_timestamp" | "_runtime" => {}
                "step" => {
                    self.summary.insert("_step".into(), v.clone());
                }
                _ => {
                    self.summary.insert(k.clone(), v.clone());
                }
            }
        }
    }

    /// fsync both files, so every row written so far survives a kill or a power loss.
    pub fn sync(&mut self) {
        let mut failed = None;
        for (what, f) in [("metrics.jsonl", &self.metrics), ("completions.jsonl", &self.completions)] {
            if let Some(Err(e)) = f.as_ref().map(File::sync_data) {
                failed.get_or_insert((what, e));
            }
        }
        if let Some((what, e)) = failed {
            self.warn(what, e);
        }
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
        if let Err(e) = replace_file(&self.dir.join("summary.json"), (text + "\n").as_bytes()) {
            self.warn("summary.json", e);
        }
    }
}

/// Write `path` atomically: a temporary file beside it, fsynced, renamed over it, and the directory fsynced, so a
/// kill or power loss leaves either the old or the new content.
pub fn replace_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; not every filesystem allows opening a directory, so failure is fine.
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Cut a JSONL file of step rows back to its complete lines with `step < resume_from_step` (all complete lines
/// without one), rewriting it atomically when anything goes. Returns the kept rows, parsed. A missing file is empty.
pub fn cut_back(path: &Path, resume_from_step: Option<u64>) -> io::Result<Vec<Metrics>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut kept = Vec::with_capacity(bytes.len());
    let mut rows = Vec::new();
    let mut rest = &bytes[..];
    // Only lines ending in a newline are complete: a kill can leave a prefix of the last one.
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let (line, after) = rest.split_at(end + 1);
        rest = after;
        let parsed = std::str::from_utf8(line).ok().and_then(|l| json::parse_line(l.trim_end()));
        let step = parsed.as_ref().and_then(|r| r.get("step")).and_then(MetricValue::as_f64);
        let keep = match (resume_from_step, step) {
            (Some(from), Some(s)) => s >= 0.0 && (s as u64) < from,
            (Some(_), None) => false,
            (None, _) => parsed.is_some(),
        };
        if keep {
            kept.extend_from_slice(line);
            rows.extend(parsed);
        }
    }
    if kept.len() != bytes.len() {
        replace_file(path, &kept)?;
    }
    Ok(rows)
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The `_runtime` a run's kept rows had reached: their last `_runtime`, or for rows written before it existed the
/// span of their time stamps.
fn runtime_reached(rows: &[Metrics]) -> f64 {
    let values = |key: &'static str| rows.iter().filter_map(move |r| r.get(key).and_then(MetricValue::as_f64));
    if let Some(runtime) = values("_runtime").reduce(f64::max) {
        return runtime;
    }
    let (first, last) = (values("_timestamp").reduce(f64::min), values("_timestamp").reduce(f64::max));
    first.zip(last).map_or(0.0, |(a, b)| b - a)
}

/// One `metrics.jsonl` line: `runtime` is the run's own seconds so far (W&B's `_runtime`).
pub fn metrics_line(step: u64, timestamp: f64, runtime: f64, row: &Metrics) -> String {
    let mut pairs: Vec<(&str, String)> =
        vec![("step", step.to_string()), ("_timestamp", json::number(timestamp)), ("_runtime", json::number(runtime))];
    let own = |k: &str| matches!(k, "step" | "_timestamp" | "_runtime");
    pairs.extend(row.iter().filter(|(k, _)| !own(k)).map(|(k, v)| (k.as_str(), json::value(v))));
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
        let runtime = self.runtime_offset + self.started.elapsed().as_secs_f64();
        let line = metrics_line(step, unix_now(), runtime, row) + "\n";
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

    fn flush_durable(&mut self) {
        self.sync();
        self.write_summary();
    }

    fn finish(&mut self, _exit_code: i32) {
        self.write_summary();
        for f in [&mut self.metrics, &mut self.completions].into_iter().flatten() {
            let _ = f.sync_all();
        }
    }
}
