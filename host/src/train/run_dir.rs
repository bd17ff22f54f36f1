//! Where a run's files go (`--runs-dir`/`--run-name`, `--checkpoint-path`) and the checkpoint it resumes from
//! (`--resume`): decided once, the same way for `train` and `sft`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::config::{CheckpointSettings, LogSettings, ModelSettings};
use crate::checkpoint::{self, TrainerState};
use crate::logging::{Loggers, LoggingConfig};
use crate::user_error;

/// A run's folder, its checkpoints and the checkpoint it resumes from.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct RunPaths {
    /// `<runs-dir>/<run-name>`: config.json, metrics.jsonl, summary.json and the loggers' files.
    pub run_dir: PathBuf,
    /// The folder's name.
    pub run_name: String,
    /// Where checkpoints are written (`<run>/checkpoints` unless `--checkpoint-path`).
    pub checkpoints: PathBuf,
    /// The checkpoint to resume from.
    pub resume: Option<PathBuf>,
    /// Not resuming, yet an earlier attempt logged rows here (it failed before its first checkpoint): the run starts
    /// over, and its files are cut back to nothing as a resume cuts them back to its checkpoint.
    pub restart: bool,
    /// The folder was made just now, under the default name (see [`RunPaths::unused_folder`]).
    #[serde(default)]
    pub fresh: bool,
}

/// A folder the run made, removed again when this is dropped if it is still empty: a run that fails at its start (a
/// bad dataset, a model it cannot load) leaves nothing behind.
pub(crate) struct UnusedFolder(Option<PathBuf>);

impl Drop for UnusedFolder {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            // Only an empty folder can be removed, so a run that wrote anything keeps its folder.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl RunPaths {
    /// The step the run's files are cut back to before it logs (`state`'s), when they may hold rows already.
    pub fn cut_back_to(&self, state: &TrainerState) -> Option<u64> {
        (self.resume.is_some() || self.restart).then_some(state.global_step)
    }

    /// A named run (or `--checkpoint-path`) without a single checkpoint directory.
    fn nothing_to_resume(c: &CheckpointSettings) -> bool {
        let dir =
            c.checkpoint_path.clone().or_else(|| c.run_name.as_ref().map(|n| c.runs_dir.join(n).join("checkpoints")));
        dir.is_some_and(|d| !checkpoint::has_checkpoints(&d))
    }

    /// Decide the paths from the checkpoint settings; `default_name` names a new run when `--run-name` does not.
    pub fn resolve(c: &CheckpointSettings, default_name: impl FnOnce() -> String) -> Result<RunPaths> {
        let (paths, notes) = Self::locate(c, default_name)?;
        for line in notes {
            eprintln!("{line}");
        }
        Ok(paths)
    }

    /// [`RunPaths::resolve`]'s decision, with the lines it has for the user (checkpoints skipped as incomplete, a
    /// `--resume auto` with nothing to resume yet) instead of printing them.
    fn locate(c: &CheckpointSettings, default_name: impl FnOnce() -> String) -> Result<(RunPaths, Vec<String>)> {
        let mut notes = Vec::new();
        let resume = match &c.resume {
            Some(spec) if spec == "auto" && crate::distributed::Launch::elastic() && Self::nothing_to_resume(c) => {
                // torchrun --max-restarts reruns the same command: its first attempt (or one that failed before
                // the first checkpoint) has nothing to resume yet and starts the run.
                notes.push("--resume auto: the run has no checkpoint yet; starting it".to_string());
                None
            }
            Some(spec) => {
                let named = c.run_name.as_ref().map(|n| c.runs_dir.join(n));
                let found =
                    checkpoint::resolve_resume(spec, &c.runs_dir, named.as_deref(), c.checkpoint_path.as_deref())?;
                notes.extend(found.skipped);
                Some(found.checkpoint)
            }
            None => None,
        };
        // The run's folder: the one `--run-name` names; else, resuming, the run the checkpoint belongs to (its
        // `<run>/checkpoints/step_N` home, or the name its state records when `--checkpoint-path` moved it).
        let home = |ckpt: &Path| match ckpt.parent() {
            Some(parent) if c.checkpoint_path.is_none() && parent.file_name().is_some_and(|n| n == "checkpoints") => {
                parent.parent().map(Path::to_path_buf)
            }
            _ => checkpoint::saved_run_name(ckpt).map(|n| c.runs_dir.join(n)),
        };
        let fresh = c.run_name.is_none() && resume.is_none();
        let run_dir = match (&c.run_name, resume.as_deref().and_then(home)) {
            (Some(name), _) => c.runs_dir.join(name),
            (None, Some(dir)) => dir,
            (None, None) if fresh => fresh_run_dir(&c.runs_dir, &default_name())?,
            (None, None) => c.runs_dir.join(default_name()),
        };
        let run_name = run_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let checkpoints = c.checkpoint_path.clone().unwrap_or_else(|| run_dir.join("checkpoints"));
        if resume.is_none() && checkpoint::has_checkpoints(&checkpoints) {
            // A new run there would mix two histories, and a later `--resume auto` could pick the old run's newer
            // checkpoint.
            return Err(user_error!(
                "{} already holds checkpoints of run `{run_name}`; pass --resume auto to continue it, or another \
                 --run-name or --output (or --checkpoint-path, or delete them) to start a new run",
                checkpoints.display()
            ));
        }
        let restart = resume.is_none() && std::fs::metadata(run_dir.join("metrics.jsonl")).is_ok_and(|m| m.len() > 0);
        Ok((RunPaths { run_dir, run_name, checkpoints, resume, restart, fresh }, notes))
    }

    /// The guard that removes the folder this run made if the run (on rank 0, `main`) stops before writing into it.
    pub(crate) fn unused_folder(&self, main: bool) -> UnusedFolder {
        UnusedFolder((self.fresh && main).then(|| self.run_dir.clone()))
    }

    /// The model settings (`train`'s or `sft`'s) of the run that `c`'s `--resume` continues, as its `config.json`
    /// saved them; `None` when not resuming, or when there is no such run or file (the resume itself then says why).
    pub fn resumed_model_settings(c: &CheckpointSettings) -> Option<ModelSettings> {
        c.resume.as_ref()?;
        let (paths, _) = Self::locate(c, String::new).ok()?;
        paths.resume.as_ref()?;
        let (saved, _) = saved_config(&paths.run_dir)?;
        let model = if saved["run"].is_object() { &saved["run"]["model"] } else { &saved["sft"]["model"] };
        serde_json::from_value(model.clone()).ok()
    }
}

/// A new run's folder under its default name (to the second), or `NAME-2`, `NAME-3`, ... where runs started in the
/// same second took it: created here, atomically, so that runs a script starts together never share a folder.
fn fresh_run_dir(runs_dir: &Path, name: &str) -> Result<PathBuf> {
    let failed = |dir: &Path, e: std::io::Error| user_error!("cannot create the run folder {}: {e}", dir.display());
    std::fs::create_dir_all(runs_dir).map_err(|e| failed(runs_dir, e))?;
    let mut n = 1;
    loop {
        let dir = match n {
            1 => runs_dir.join(name),
            _ => runs_dir.join(format!("{name}-{n}")),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(failed(&dir, e)),
        }
    }
}

/// What a run's loggers are named after and start from.
pub(crate) struct LogStart<'a> {
    /// The run's resolved settings: written to `config.json` and uploaded as the W&B config.
    pub resolved: serde_json::Value,
    /// The algorithm and environment names (`sft` and the data's name for `grpo-host sft`), for the default W&B
    /// project.
    pub names: (&'a str, &'a str),
    /// The W&B and TensorBoard settings.
    pub logging: &'a LogSettings,
    /// `--run-name` as given, which names the W&B run too.
    pub run_name_flag: Option<&'a str>,
    /// The counters the run starts from.
    pub state: &'a TrainerState,
    /// The run's optimizer steps in all.
    pub total_steps: u64,
}

impl RunPaths {
    /// Write the run's `config.json` and open its loggers. Every sink cuts its history back to the checkpoint
    /// resumed from, so the steps after it are logged again exactly once; a run started over (an attempt that
    /// failed before its first checkpoint) replaces that attempt's rows the same way.
    pub fn open_loggers(&self, start: LogStart<'_>) -> Result<Loggers> {
        let dir = &self.run_dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating the run directory {}", dir.display()))?;
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&start.resolved)?)?;
        let mut log_cfg = LoggingConfig::new(dir, &self.run_name, start.names.0, start.names.1);
        log_cfg.config = start.resolved;
        log_cfg.wandb = start.logging.wandb.clone();
        // An explicit --run-name names the W&B run too, as re-grpo's `wandb.init(name=run_name)` did: a flag, so it
        // wins over WANDB_NAME (--wandb-name still wins over it).
        if log_cfg.wandb.name.is_none() {
            log_cfg.wandb.name = start.run_name_flag.map(String::from);
        }
        log_cfg.log_dir = start.logging.log_dir.clone();
        log_cfg.tensorboard_with_wandb = start.logging.tensorboard_with_wandb;
        log_cfg.total_steps = Some(start.total_steps);
        log_cfg.resume = self.resume.is_some();
        log_cfg.resume_from_step = self.cut_back_to(start.state);
        if self.restart {
            eprintln!("{}: no checkpoint to resume; starting the run over", self.run_dir.display());
        }
        if log_cfg.wandb.run_id.is_none() {
            log_cfg.wandb.run_id.clone_from(&start.state.wandb_run_id);
        }
        Loggers::new(&log_cfg)
    }
}

/// The resume guard's verdict on `differences` (result-changing settings, `FLAG: SAVED -> NOW`) between a resumed
/// run and the command continuing it: an error naming them, unless `--allow-config-change`, which records them in
/// the run's change `history` (returned, for its new `config.json`).
pub(crate) fn accept_changes(
    differences: Vec<String>,
    mut history: Vec<serde_json::Value>,
    allow: bool,
    run_dir: &Path,
) -> Result<Vec<serde_json::Value>> {
    if differences.is_empty() {
        return Ok(history);
    }
    if !allow {
        return Err(user_error!(
            "--resume: this command changes what the run {} computes ({}); pass the saved values, or add \
             --allow-config-change to continue with the new ones",
            run_dir.display(),
            differences.join("; ")
        ));
    }
    eprintln!("resuming with changed settings (--allow-config-change): {}", differences.join("; "));
    history.push(serde_json::json!({"at": crate::calendar::UtcDateTime::now().compact(), "changes": differences}));
    Ok(history)
}

/// A run folder's saved `config.json` and its change history, for the resume guard; `None` when there is none.
pub(crate) fn saved_config(run_dir: &Path) -> Option<(serde_json::Value, Vec<serde_json::Value>)> {
    let text = std::fs::read_to_string(run_dir.join("config.json")).ok()?;
    let saved: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let history = saved["config_changes"].as_array().cloned().unwrap_or_default();
    Some((saved, history))
}

/// A run's `config.json`: `head` (its settings and name), the model's resolved settings, then `tail`, as one
/// object in that order.
pub(crate) fn resolved_config(
    head: serde_json::Value,
    policy: &super::policy::Policy,
    tail: serde_json::Value,
) -> serde_json::Value {
    let object = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let mut all = object(head);
    all.extend(policy.resolved_settings());
    all.extend(object(tail));
    serde_json::Value::Object(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs started in the same second under the default name get folders of their own, the later ones numbered;
    /// a named run keeps its name.
    #[test]
    fn runs_started_together_get_folders_of_their_own() {
        let runs = tempfile::tempdir().unwrap();
        let settings = CheckpointSettings {
            run_name: None,
            runs_dir: runs.path().join("runs"),
            checkpoint_path: None,
            interval: 20,
            every_minutes: 0.0,
            save_total_limit: 0,
            allow_config_change: false,
            save_merged: false,
            save_only_model: false,
            best_model: None,
            resume: None,
        };
        let name = || "grpo-math-20261207-230424".to_string();
        let dirs: Vec<String> = (0..3).map(|_| RunPaths::locate(&settings, name).unwrap().0.run_name).collect();
        assert_eq!(dirs, ["grpo-math-20261207-230424", "grpo-math-20261207-230424-2", "grpo-math-20261207-230424-3"]);
        // A run that stops before writing into its folder leaves none; one that wrote keeps it.
        let (paths, _) = RunPaths::locate(&settings, name).unwrap();
        drop(paths.unused_folder(true));
        assert!(!paths.run_dir.exists());
        let (paths, _) = RunPaths::locate(&settings, name).unwrap();
        let guard = paths.unused_folder(true);
        std::fs::write(paths.run_dir.join("config.json"), "{}").unwrap();
        drop(guard);
        assert!(paths.run_dir.is_dir());
        let named = CheckpointSettings { run_name: Some(name()), ..settings };
        assert_eq!(RunPaths::locate(&named, name).unwrap().0.run_dir, runs.path().join("runs").join(name()));
    }
}
