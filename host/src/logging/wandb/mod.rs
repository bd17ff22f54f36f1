//! Weights & Biases without W&B's SDK: the run file is written natively (always, in online mode too, as W&B's own
//! client does), and online mode uploads from a background thread. See docs/internals/wandb-format.md.

pub mod proto;
pub mod run_file;
pub mod store;
pub mod upload;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::Digest;

use super::config::{stored_run_file, LoggingConfig, WandbMode, WandbSettings};
use super::{json, jsonl::unix_now, CompletionRow, Metrics, Sink};
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
    pending_media: Vec<(String, String)>,
    last_step: Option<u64>,
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
        let dir = run_file::run_dir_path(&settings.root_dir, offline, start_unix as i64, &settings.run_id);
        let (file, _path) = run_file::create_run_dir(&dir, &settings.run_id).map_err(|e| {
            crate::user_error!(
                "cannot create the W&B run directory {}: {e}; set WANDB_DIR to a writable directory or pass --no-wandb",
                dir.display()
            )
        })?;
        let config_items: Vec<(String, String)> = match config {
            serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            serde_json::Value::Null => vec![],
            other => vec![("config".to_string(), other.to_string())],
        };
        let info = RunInfo {
            run_id: settings.run_id.clone(),
            entity: settings.entity.clone().unwrap_or_default(),
            project: settings.project.clone(),
            display_name: settings.display_name.clone(),
            group: settings.group.clone().unwrap_or_default(),
            job_type: settings.job_type.clone().unwrap_or_default(),
            notes: settings.notes.clone().unwrap_or_default(),
            tags: settings.tags.clone(),
            host: run_file::hostname(),
            start_time: start_unix,
            // Makes `wandb sync` ask the server where the run's history ends and append there.
            resumed: settings.resume.is_some(),
            starting_step: 0,
            config: config_items.clone(),
        };
        let file = RunFile::start(file, &info)
            .map_err(|e| crate::user_error!("cannot write the W&B run file in {}: {e}", dir.display()))?;
        remember_run(&cfg.run_dir, settings, &dir);

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
                host: info.host.clone(),
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
            start_unix,
            pending_media: Vec::new(),
            last_step: None,
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

    fn history_row(&mut self, step: u64, row: &Metrics) {
        let runtime = self.started.elapsed().as_secs_f64();
        let timestamp = self.start_unix + runtime;
        let mut items: Vec<(String, String)> =
            vec![("_runtime".into(), json::number(runtime)), ("_timestamp".into(), json::number(timestamp))];
        items.extend(row.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), json::value(v))));
        items.append(&mut self.pending_media);
        let mut summary = items.clone();
        summary.push(("_step".into(), step.to_string()));
        self.write(|f| {
            f.history(step as i64, &items)?;
            f.summary(&summary)
        });
        if let Some(u) = &self.uploader {
            let mut line_items = vec![("_step".to_string(), step.to_string())];
            line_items.extend(items);
            let line = json::object(line_items.iter().map(|(k, v)| (k.as_str(), v.clone())));
            u.send(Event::History { line, summary });
        }
        self.last_step = Some(step);
    }
}

/// `<run_dir>/wandb-run.json`: the run id a resumed training run continues.
fn remember_run(run_dir: &Path, settings: &WandbSettings, wandb_dir: &Path) {
    let v = serde_json::json!({
        "run_id": settings.run_id,
        "project": settings.project,
        "entity": settings.entity,
        "mode": settings.mode.as_str(),
        "dir": wandb_dir,
    });
    let _ = std::fs::create_dir_all(run_dir);
    if let Err(e) = std::fs::write(stored_run_file(run_dir), v.to_string() + "\n") {
        eprintln!(
            "warning: cannot record the W&B run id in {}: {e}; a resumed run will start a new W&B run",
            run_dir.display()
        );
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
        if rows.is_empty() || self.file.is_none() {
            return;
        }
        let (text, ncols) = table_json(rows);
        let digest = sha2::Sha256::digest(text.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("media/table/completions_{step}_{}.table.json", &hex[..20]);
        let path = self.dir.join("files").join(&name);
        let written =
            path.parent().map(std::fs::create_dir_all).unwrap_or(Ok(())).and_then(|_| std::fs::write(&path, &text));
        if let Err(e) = written {
            if !self.warned {
                self.warned = true;
                eprintln!("warning: cannot write the W&B completions table {}: {e}", path.display());
            }
            return;
        }
        let value = json::object([
            ("_type", json::string("table-file")),
            ("sha256", json::string(&hex)),
            ("size", text.len().to_string()),
            ("path", json::string(&name)),
            ("ncols", ncols.to_string()),
            ("nrows", rows.len().to_string()),
        ]);
        self.write(|f| f.files(std::slice::from_ref(&name)));
        if let Some(u) = &self.uploader {
            u.send(Event::File { name, path });
        }
        // The table joins the next history row, so it sits at its step (log completions before commit()).
        self.pending_media.push(("completions".into(), value));
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
