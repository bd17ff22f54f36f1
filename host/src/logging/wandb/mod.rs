//! Weights & Biases without W&B's SDK: the run file is written natively (always, in online mode too, as W&B's own
//! client does), and online mode uploads from a background thread. See docs/internals/wandb-format.md.

pub mod proto;
pub mod run_file;
pub mod store;
pub mod upload;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use sha2::Digest;

use super::config::{read_stored_run, stored_run_file, LoggingConfig, WandbMode, WandbSettings};
use super::{json, jsonl::unix_now, CompletionRow, Metrics, Sink, Table};
use proto::{Record, RecordType};
use run_file::{RunFile, RunInfo};
use upload::{Event, Outcome, Target, Uploader};

/// The W&B sink: run file plus (online) uploader.
pub struct WandbSink {
    file: Option<RunFile<File>>,
    dir: PathBuf,
    mode: WandbMode,
    uploader: Option<Uploader>,
    finish_timeout: std::time::Duration,
    started: Instant,
    start_unix: f64,
    /// `_runtime` at `started`: nonzero when continuing an earlier run file, so runtime goes on from its start.
    runtime_offset: f64,
    pending_media: Vec<(String, String)>,
    last_step: Option<u64>,
    /// Resuming in a new run file: W&B's history already has every step up to this one (the earlier files hold
    /// them), so they are not written to this file again.
    history_through: Option<u64>,
    dropped_steps: u64,
    warned: bool,
    sync_hint: String,
}

impl WandbSink {
    /// Create the run directory and file, record the run id in the training run directory (for resume), and in
    /// online mode start the uploader thread.
    pub fn start(settings: &WandbSettings, config: &serde_json::Value, cfg: &LoggingConfig) -> anyhow::Result<Self> {
        let start_unix = unix_now();
        let offline = settings.mode == WandbMode::Offline;
        let resuming = cfg.resume || cfg.resume_from_step.is_some() || settings.resume.is_some();
        let previous = if resuming { Previous::read(&cfg.run_dir, &settings.run_id) } else { None };
        let config_items: Vec<(String, String)> = match config {
            serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            serde_json::Value::Null => vec![],
            other => vec![("config".to_string(), other.to_string())],
        };
        let host = run_file::hostname();

        // An offline run file nobody has uploaded yet is ours to rewrite: cut it back to the checkpoint and go on
        // in it, so the run reads as if it had never stopped. Anything else continues in a new, resumed file.
        let in_place = match (&previous, cfg.resume_from_step) {
            (Some(p), Some(from)) if offline => p.cut_back(from),
            _ => None,
        };
        let (dir, file, runtime_offset, last_step, history_through) = match in_place {
            Some((dir, file, run_start, last_step)) => {
                let through = previous.as_ref().and_then(|p| p.history_through);
                (dir, file, (start_unix - run_start).max(0.0), last_step, through)
            }
            None => {
                let dir = run_file::run_dir_path(&settings.root_dir, offline, start_unix as i64, &settings.run_id);
                let (out, _path) = run_file::create_run_dir(&dir, &settings.run_id).map_err(|e| {
                    crate::user_error!(
                        "cannot create the W&B run directory {}: {e}; set WANDB_DIR to a writable directory or pass \
                         --no-wandb",
                        dir.display()
                    )
                })?;
                let history_through = previous.as_ref().and_then(|p| p.history_through());
                let info = RunInfo {
                    run_id: settings.run_id.clone(),
                    entity: settings.entity.clone().unwrap_or_default(),
                    project: settings.project.clone(),
                    display_name: settings.display_name.clone(),
                    group: settings.group.clone().unwrap_or_default(),
                    job_type: settings.job_type.clone().unwrap_or_default(),
                    notes: settings.notes.clone().unwrap_or_default(),
                    tags: settings.tags.clone(),
                    host: host.clone(),
                    start_time: start_unix,
                    // Makes `wandb sync` ask the server where the run's history ends and append there.
                    resumed: settings.resume.is_some(),
                    // The first step this file can hold (informative: `wandb sync` takes the step from the server).
                    starting_step: cfg.resume_from_step.max(history_through.map(|s| s + 1)).unwrap_or(0) as i64,
                    config: config_items.clone(),
                };
                let file = RunFile::start(out, &info)
                    .map_err(|e| crate::user_error!("cannot write the W&B run file in {}: {e}", dir.display()))?;
                (dir, file, 0.0, None, history_through)
            }
        };
        remember_run(&cfg.run_dir, settings, &dir, history_through);

        let sync_hint = if offline {
            format!("wandb sync {}", dir.display())
        } else {
            format!("wandb sync --include-online {}", dir.display())
        };
        let uploader = if settings.mode == WandbMode::Online {
            let config_json =
                json::object(config_items.iter().map(|(k, v)| (k.as_str(), format!("{{\"value\":{v}}}"))));
            let target = Target {
                base_url: settings.base_url.clone(),
                api_key: settings.api_key.clone().unwrap_or_default(),
                entity: settings.entity.clone(),
                project: settings.project.clone(),
                run_id: settings.run_id.clone(),
                display_name: settings.display_name.clone(),
                group: settings.group.clone(),
                job_type: settings.job_type.clone(),
                notes: settings.notes.clone(),
                tags: settings.tags.clone(),
                host,
                config_json,
                resume: settings.resume,
            };
            match Uploader::start(target, settings.upload.clone(), sync_hint.clone()) {
                Ok(u) => Some(u),
                Err(e) => {
                    eprintln!("warning: cannot start the W&B uploader thread ({e}); the run is written offline");
                    None
                }
            }
        } else {
            None
        };
        Ok(WandbSink {
            file: Some(file),
            dir,
            mode: settings.mode,
            uploader,
            finish_timeout: settings.upload.finish_timeout,
            started: Instant::now(),
            start_unix: start_unix - runtime_offset,
            runtime_offset,
            pending_media: Vec::new(),
            last_step,
            history_through,
            dropped_steps: 0,
            warned: false,
            sync_hint,
        })
    }

    /// The W&B run directory (what `wandb sync` takes).
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    fn write(&mut self, f: impl FnOnce(&mut RunFile<File>) -> std::io::Result<()>) {
        if let Some(file) = &mut self.file {
            if let Err(e) = f(file) {
                eprintln!("warning: W&B run file in {} stopped: {e}", self.dir.display());
                self.file = None;
            }
        }
    }

    /// Write a table's `.table.json` as a run file and reference it from the history row of `step` under `key`
    /// (`shape`: columns and rows), as W&B's `wandb.Table` does.
    fn add_table(&mut self, step: u64, key: &str, text: &str, shape: (usize, usize)) {
        if self.file.is_none() {
            return;
        }
        let digest = sha2::Sha256::digest(text.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("media/table/{key}_{step}_{}.table.json", &hex[..20]);
        let path = self.dir.join("files").join(&name);
        let written =
            path.parent().map(std::fs::create_dir_all).unwrap_or(Ok(())).and_then(|_| std::fs::write(&path, text));
        if let Err(e) = written {
            if !self.warned {
                self.warned = true;
                eprintln!("warning: cannot write the W&B table {}: {e}", path.display());
            }
            return;
        }
        let value = json::object([
            ("_type", json::string("table-file")),
            ("sha256", json::string(&hex)),
            ("size", text.len().to_string()),
            ("path", json::string(&name)),
            ("ncols", shape.0.to_string()),
            ("nrows", shape.1.to_string()),
        ]);
        if !self.known(step) {
            self.write(|f| f.files(std::slice::from_ref(&name)));
        }
        if let Some(u) = &self.uploader {
            u.send(Event::File { name, path });
        }
        // The table joins the next history row, so it sits at its step (log tables before commit()).
        self.pending_media.push((key.to_string(), value));
    }

    /// Whether W&B's history already holds `step` from an earlier run file.
    fn known(&self, step: u64) -> bool {
        self.history_through.is_some_and(|through| step <= through)
    }

    fn history_row(&mut self, step: u64, row: &Metrics) {
        let runtime = self.runtime_offset + self.started.elapsed().as_secs_f64();
        let timestamp = self.start_unix + runtime;
        let mut items: Vec<(String, String)> =
            vec![("_runtime".into(), json::number(runtime)), ("_timestamp".into(), json::number(timestamp))];
        items.extend(row.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), json::value(v))));
        items.append(&mut self.pending_media);
        let mut summary = items.clone();
        summary.push(("_step".into(), step.to_string()));
        if !self.known(step) {
            self.write(|f| {
                f.history(step as i64, &items)?;
                f.summary(&summary)
            });
        }
        // The uploader decides from the server's own record of the run what it still lacks.
        if let Some(u) = &self.uploader {
            let mut line_items = vec![("_step".to_string(), step.to_string())];
            line_items.extend(items);
            let line = json::object(line_items.iter().map(|(k, v)| (k.as_str(), v.clone())));
            u.send(Event::History { step, line, summary });
        }
        self.last_step = Some(step);
    }
}

/// `<run_dir>/wandb-run.json`: the run id a resumed training run continues, the W&B run directory of the current
/// run file, and (for a resumed file) the step through which earlier files hold the history.
fn remember_run(run_dir: &Path, settings: &WandbSettings, wandb_dir: &Path, history_through: Option<u64>) {
    let v = serde_json::json!({
        "run_id": settings.run_id,
        "project": settings.project,
        "entity": settings.entity,
        "mode": settings.mode.as_str(),
        "dir": wandb_dir,
        "history_through": history_through,
    });
    let _ = std::fs::create_dir_all(run_dir);
    if let Err(e) = super::jsonl::replace_file(&stored_run_file(run_dir), (v.to_string() + "\n").as_bytes()) {
        eprintln!(
            "warning: cannot record the W&B run id in {}: {e}; a resumed run will start a new W&B run",
            run_dir.display()
        );
    }
}

/// The run file a training run directory's `wandb-run.json` points at: the one a resumed run continues.
struct Previous {
    dir: PathBuf,
    path: PathBuf,
    offline: bool,
    /// `wandb sync` has uploaded it (its `.synced` marker exists), so the server holds what it holds.
    synced: bool,
    /// Its complete records, or `None` when it cannot be read.
    records: Option<Vec<Vec<u8>>>,
    /// What wandb-run.json says earlier files held.
    history_through: Option<u64>,
}

impl Previous {
    fn read(run_dir: &Path, run_id: &str) -> Option<Previous> {
        let stored = read_stored_run(run_dir)?;
        if stored.get("run_id")?.as_str()? != run_id {
            return None;
        }
        let dir = PathBuf::from(stored.get("dir")?.as_str()?);
        let path = dir.join(format!("run-{run_id}.wandb"));
        let records = std::fs::read(&path)
            .ok()
            .and_then(|bytes| store::read_records(&bytes).ok())
            .map(|(records, _torn)| records);
        Some(Previous {
            synced: dir.join(format!("run-{run_id}.wandb.synced")).exists(),
            offline: stored.get("mode").and_then(|m| m.as_str()) == Some("offline"),
            history_through: stored.get("history_through").and_then(|s| s.as_u64()),
            records,
            path,
            dir,
        })
    }

    /// The last step W&B's history holds once this file is uploaded: its own last history row, or what earlier
    /// files held.
    fn history_through(&self) -> Option<u64> {
        let own = self.records.iter().flatten().filter_map(|r| history_step(r)).max();
        own.max(self.history_through)
    }

    /// Rewrite an offline, never uploaded file with only the records before step `from` (the run record, and per
    /// step its table files, history row and summary; nothing after the last such step, so no exit record), then
    /// hand it back open for appending: (dir, file, the run's start time, the last step kept).
    fn cut_back(&self, from: u64) -> Option<(PathBuf, RunFile<File>, f64, Option<u64>)> {
        // Rows that earlier (uploaded or resumed-from) files hold at `from` or later cannot be taken back here.
        if !self.offline || self.synced || self.history_through.is_some_and(|through| through >= from) {
            return None;
        }
        let records = self.records.as_ref()?;
        let first = Record::decode(records.first()?.as_slice()).ok()?;
        let Some(RecordType::Run(run)) = first.record_type else {
            return None;
        };
        let run_start = run.start_time.map(|t| t.seconds as f64 + t.nanos as f64 * 1e-9).unwrap_or_else(unix_now);
        let (mut cut, mut last, mut after_row) = (1, None, false);
        for (i, r) in records.iter().enumerate().skip(1) {
            let kind = Record::decode(r.as_slice()).ok().and_then(|r| r.record_type);
            match kind {
                Some(RecordType::History(h)) => {
                    let step = h.step.map(|s| s.num).unwrap_or(-1);
                    if step < 0 || step as u64 >= from {
                        break;
                    }
                    (cut, last, after_row) = (i + 1, Some(step as u64), true);
                }
                // The summary written with the row belongs to it.
                Some(RecordType::Summary(_)) if after_row => (cut, after_row) = (i + 1, false),
                _ => after_row = false,
            }
        }
        let name = self.path.file_name()?.to_string_lossy().into_owned();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = (|| -> std::io::Result<RunFile<File>> {
            let mut file = RunFile::continue_with(File::create(&tmp)?, &records[..cut])?;
            file.get_mut().sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(file)
        })();
        match written {
            Ok(file) => Some((self.dir.clone(), file, run_start, last)),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                eprintln!(
                    "warning: cannot rewrite the W&B run file {} for the resume ({e}); continuing in a new run file",
                    self.path.display()
                );
                None
            }
        }
    }
}

/// The step of a serialized history record, `None` for any other record.
fn history_step(record: &[u8]) -> Option<u64> {
    match Record::decode(record).ok()?.record_type? {
        RecordType::History(h) => h.step.map(|s| s.num).filter(|n| *n >= 0).map(|n| n as u64),
        _ => None,
    }
}

/// A W&B table as its `.table.json` text: `{"columns": [...], "data": [[...], ...]}`.
pub fn table_json(rows: &[CompletionRow]) -> (String, usize) {
    let reward_keys: std::collections::BTreeSet<&String> = rows.iter().flat_map(|r| r.rewards.keys()).collect();
    let mut columns = vec!["step".to_string(), "prompt".into(), "completion".into()];
    columns.extend(reward_keys.iter().map(|k| format!("reward/{k}")));
    columns.push("advantage".into());
    let data: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![r.step.to_string(), json::string(&r.prompt), json::string(&r.completion)];
            cells.extend(
                reward_keys.iter().map(|k| r.rewards.get(*k).map(|x| json::number(*x)).unwrap_or("null".into())),
            );
            cells.push(json::number(r.advantage));
            format!("[{}]", cells.join(","))
        })
        .collect();
    let cols: Vec<String> = columns.iter().map(|c| json::string(c)).collect();
    (format!("{{\"columns\":[{}],\"data\":[{}]}}", cols.join(","), data.join(",")), columns.len())
}

impl Sink for WandbSink {
    fn name(&self) -> &'static str {
        "wandb"
    }

    fn log(&mut self, step: u64, row: &Metrics) {
        if self.last_step.is_some_and(|s| step <= s) {
            self.dropped_steps += 1;
            return;
        }
        self.history_row(step, row);
    }

    fn log_completions(&mut self, step: u64, rows: &[CompletionRow]) {
        if !rows.is_empty() {
            let (text, ncols) = table_json(rows);
            self.add_table(step, "completions", &text, (ncols, rows.len()));
        }
    }

    fn log_table(&mut self, step: u64, table: &Table) {
        if !table.rows.is_empty() {
            let text = serde_json::json!({"columns": table.columns, "data": table.rows}).to_string();
            self.add_table(step, &table.key, &text, (table.columns.len(), table.rows.len()));
        }
    }

    fn flush_durable(&mut self) {
        self.write(|f| f.get_mut().sync_data());
    }

    fn set_summary(&mut self, summary: &Metrics) {
        let items: Vec<(String, String)> = summary.iter().map(|(k, v)| (k.clone(), json::value(v))).collect();
        self.write(|f| f.summary(&items));
        if let Some(u) = &self.uploader {
            u.send(Event::Summary(items));
        }
    }

    fn finish(&mut self, exit_code: i32) {
        if !self.pending_media.is_empty() {
            let step = self.last_step.map(|s| s + 1).unwrap_or(0);
            self.history_row(step, &Metrics::new());
        }
        let runtime = self.started.elapsed().as_secs() as i32;
        self.write(|f| {
            f.exit(exit_code, runtime)?;
            f.get_mut().sync_all()
        });
        self.file = None;
        if self.dropped_steps > 0 {
            eprintln!(
                "warning: {} W&B history rows were dropped because their step went backwards",
                self.dropped_steps
            );
        }
        match self.uploader.take() {
            None if self.mode == WandbMode::Offline => {
                eprintln!("W&B run saved offline in {}; upload it with: {}", self.dir.display(), self.sync_hint)
            }
            None => eprintln!("W&B run saved in {}; upload it with: {}", self.dir.display(), self.sync_hint),
            Some(u) => {
                let dropped = u.dropped();
                match u.finish(exit_code, self.finish_timeout) {
                    Some(Outcome::Complete) if dropped == 0 => {}
                    Some(Outcome::Complete) => eprintln!(
                        "warning: {dropped} W&B updates did not fit the upload queue; the run file is complete: {}",
                        self.sync_hint
                    ),
                    // The thread already said why and how to sync.
                    Some(Outcome::Stopped(_)) => {}
                    None => eprintln!(
                        "warning: the W&B upload did not finish within {:.0?}; the run file is complete, finish the \
                         upload with: {}",
                        self.finish_timeout, self.sync_hint
                    ),
                }
            }
        }
    }
}
