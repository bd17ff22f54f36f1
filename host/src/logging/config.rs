//! What the trainer tells the loggers, and how the W&B settings are resolved from flags, the `WANDB_*` environment a
//! W&B user already has, and `~/.netrc` (flags win over the environment, as `wandb.init` arguments do).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything [`super::Loggers::new`] needs.
#[derive(Clone, Debug)]
pub struct LoggingConfig {
    /// The run directory, `runs/<run-name>/`: metrics.jsonl, summary.json, completions.jsonl and (by default) the
    /// W&B run live here.
    pub run_dir: PathBuf,
    /// The run name; also the default W&B display name and the TensorBoard subdirectory.
    pub run_name: String,
    /// The algorithm plugin's name (`grpo`, `drgrpo`, ...), for the default W&B project.
    pub algorithm: String,
    /// The environment plugin's name (`math`, `calc_tools`, ...), for the default W&B project.
    pub environment: String,
    /// The resolved training configuration, uploaded as the W&B run config (a JSON object).
    pub config: serde_json::Value,
    /// The W&B flags from the command line.
    pub wandb: WandbFlags,
    /// `--log-dir`: TensorBoard events go to `<log_dir>/<run_name>/` when W&B is disabled.
    pub log_dir: Option<PathBuf>,
    /// TensorBoard writes beside W&B too, not only in its place (`--report-to` naming both).
    pub tensorboard_with_wandb: bool,
    /// Total steps, when known at start (else call `Loggers::set_total_steps`).
    pub total_steps: Option<u64>,
    /// Show the console progress bar (tests turn it off).
    pub console: bool,
    /// The training run resumes from a checkpoint in `run_dir`: continue the W&B run recorded there.
    pub resume: bool,
    /// The checkpoint's `global_step` when resuming: the first step the resumed run logs. Rows at this step and
    /// later were written by the stopped run after its checkpoint; every sink drops them and continues from here, so
    /// each step is logged once (see docs/logging.md, "Resuming"). Implies `resume`.
    pub resume_from_step: Option<u64>,
    /// Timing of the online uploader.
    pub upload: UploadTuning,
}

impl LoggingConfig {
    /// A configuration with W&B settings from the environment only, no TensorBoard, console on.
    pub fn new(run_dir: impl Into<PathBuf>, run_name: &str, algorithm: &str, environment: &str) -> Self {
        LoggingConfig {
            run_dir: run_dir.into(),
            run_name: run_name.to_string(),
            algorithm: algorithm.to_string(),
            environment: environment.to_string(),
            config: serde_json::Value::Object(Default::default()),
            wandb: WandbFlags::default(),
            log_dir: None,
            tensorboard_with_wandb: false,
            total_steps: None,
            console: true,
            resume: false,
            resume_from_step: None,
            upload: UploadTuning::default(),
        }
    }
}

/// The W&B command-line flags; `None` means "not given", so the environment decides.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct WandbFlags {
    /// `--no-wandb`: no W&B files, threads or connections.
    pub disabled: bool,
    /// `--wandb-mode online|offline|disabled`.
    pub mode: Option<String>,
    /// `--wandb-project`.
    pub project: Option<String>,
    /// `--wandb-entity`.
    pub entity: Option<String>,
    /// `--wandb-run-id`.
    pub run_id: Option<String>,
    /// `--wandb-resume allow|must|never|auto`.
    pub resume: Option<String>,
    /// `--wandb-name` (display name; defaults to the run name).
    pub name: Option<String>,
    /// `--wandb-tags a,b`.
    pub tags: Option<Vec<String>>,
    /// `--wandb-group`.
    pub group: Option<String>,
    /// `--wandb-dir` (the root under which `wandb/` is created; defaults to the run directory).
    pub dir: Option<PathBuf>,
}

/// `--wandb-mode`, checked as the command line is read (the settings keep W&B's spelling of it).
fn wandb_mode_flag(s: &str) -> Result<String, String> {
    WandbMode::parse(s).map(|m| m.as_str().to_string()).ok_or_else(|| "use online, offline or disabled".to_string())
}

/// `--wandb-resume`, checked as the command line is read.
fn wandb_resume_flag(s: &str) -> Result<String, String> {
    ResumeMode::parse(s).map(|_| s.trim().to_string()).ok_or_else(|| "use allow, must, never or auto".to_string())
}

/// A place transformers' `report_to` names, for `--report-to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum ReportTo {
    /// W&B and TensorBoard.
    All,
    /// Neither: metrics.jsonl and the console only.
    None,
    /// Weights & Biases.
    Wandb,
    /// TensorBoard event files.
    Tensorboard,
}

/// The logging flags of the training command; flatten into its clap struct with `#[command(flatten)]`.
#[derive(Clone, Debug, Default, clap::Args, serde::Serialize)]
pub struct LoggingArgs {
    /// Disable Weights & Biases: no W&B files, threads or connections (same as WANDB_MODE=disabled).
    #[arg(long)]
    pub no_wandb: bool,
    /// W&B mode: online, offline or disabled [env: WANDB_MODE; default: online, offline without an API key].
    #[arg(long, value_name = "MODE", value_parser = wandb_mode_flag)]
    pub wandb_mode: Option<String>,
    /// W&B project [env: WANDB_PROJECT; default: re-grpo's project for the algorithm and environment].
    #[arg(long, value_name = "NAME")]
    pub wandb_project: Option<String>,
    /// W&B entity (user or team) [env: WANDB_ENTITY].
    #[arg(long, value_name = "NAME")]
    pub wandb_entity: Option<String>,
    /// W&B run id [env: WANDB_RUN_ID; default: random, or the run directory's on --resume].
    #[arg(long, value_name = "ID")]
    pub wandb_run_id: Option<String>,
    /// W&B resume mode: allow, must, never or auto [env: WANDB_RESUME].
    #[arg(long, value_name = "MODE", value_parser = wandb_resume_flag)]
    pub wandb_resume: Option<String>,
    /// W&B display name [env: WANDB_NAME; default: the run name].
    #[arg(long, value_name = "NAME")]
    pub wandb_name: Option<String>,
    /// W&B tags, comma-separated [env: WANDB_TAGS].
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    pub wandb_tags: Option<Vec<String>>,
    /// W&B run group [env: WANDB_RUN_GROUP].
    #[arg(long, value_name = "GROUP")]
    pub wandb_group: Option<String>,
    /// Root directory for W&B files (`<dir>/wandb/`) [env: WANDB_DIR; default: the run directory].
    #[arg(long, value_name = "DIR")]
    pub wandb_dir: Option<PathBuf>,
    /// TensorBoard event files go to DIR/NAME/ (NAME: the run name) when W&B is disabled (re-grpo's fallback).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Where metrics go besides metrics.jsonl and the console (transformers' report_to): wandb, tensorboard, both
    /// (space- or comma-separated, or all) or none. TensorBoard then writes beside W&B, under --log-dir (default:
    /// the runs folder, so into the run's own).
    #[arg(long, value_name = "TARGETS", value_enum, value_delimiter = ',', num_args = 1.., conflicts_with = "no_wandb")]
    pub report_to: Option<Vec<ReportTo>>,
}

impl LoggingArgs {
    /// Whether `--report-to` names `target` (or `all`).
    fn reports(&self, target: ReportTo) -> bool {
        self.report_to.as_ref().is_some_and(|r| r.contains(&target) || r.contains(&ReportTo::All))
    }

    /// `--report-to none` beside another target is a contradiction.
    pub fn check(&self) -> anyhow::Result<()> {
        match &self.report_to {
            Some(r) if r.len() > 1 && r.contains(&ReportTo::None) => Err(crate::user_error!(
                "--report-to none means no W&B and no TensorBoard; leave out the other targets or none"
            )),
            _ => Ok(()),
        }
    }

    /// TensorBoard's directory (its events go to `<dir>/<run name>/`) and whether it writes beside W&B: under
    /// `--report-to` naming it, `--log-dir` or else `runs_dir`, so the events land in the run's own folder.
    pub fn tensorboard(&self, runs_dir: &Path) -> (Option<PathBuf>, bool) {
        match self.reports(ReportTo::Tensorboard) {
            true => (Some(self.log_dir.clone().unwrap_or_else(|| runs_dir.to_path_buf())), true),
            false => (self.log_dir.clone(), false),
        }
    }

    /// The W&B part, for [`LoggingConfig::wandb`]; `--report-to` without `wandb` disables it.
    pub fn wandb_flags(&self) -> WandbFlags {
        WandbFlags {
            disabled: self.no_wandb || (self.report_to.is_some() && !self.reports(ReportTo::Wandb)),
            mode: self.wandb_mode.clone(),
            project: self.wandb_project.clone(),
            entity: self.wandb_entity.clone(),
            run_id: self.wandb_run_id.clone(),
            resume: self.wandb_resume.clone(),
            name: self.wandb_name.clone(),
            tags: self.wandb_tags.clone(),
            group: self.wandb_group.clone(),
            dir: self.wandb_dir.clone(),
        }
    }
}

/// How the online uploader paces itself. The defaults follow wandb-core (15 s batches, 30 s heartbeats).
#[derive(Clone, Debug)]
pub struct UploadTuning {
    /// Send queued history at most this often.
    pub transmit_interval: Duration,
    /// Send an empty heartbeat after this long without traffic, so the run shows as running.
    pub heartbeat_interval: Duration,
    /// One HTTP request may take this long.
    pub request_timeout: Duration,
    /// Give up a request (and the upload) after retrying for this long.
    pub retry_max_elapsed: Duration,
    /// First retry delay; doubles up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// `finish` waits at most this long for the upload to complete.
    pub finish_timeout: Duration,
    /// Events buffered between the trainer and the uploader thread; beyond it events are dropped from the upload
    /// (never from the offline file) and the run prints the `wandb sync` command.
    pub queue_capacity: usize,
}

impl Default for UploadTuning {
    fn default() -> Self {
        UploadTuning {
            transmit_interval: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            retry_max_elapsed: Duration::from_secs(300),
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            finish_timeout: Duration::from_secs(30),
            queue_capacity: 8192,
        }
    }
}

/// W&B's modes (`WANDB_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WandbMode {
    /// Write the run file and upload it as it grows.
    Online,
    /// Write the run file only; `wandb sync` uploads it later.
    Offline,
    /// Nothing at all.
    Disabled,
}

impl WandbMode {
    /// Parse a `WANDB_MODE` value, accepting W&B's legacy names (`run`, `dryrun`).
    pub fn parse(s: &str) -> Option<WandbMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "online" | "run" => Some(WandbMode::Online),
            "offline" | "dryrun" => Some(WandbMode::Offline),
            "disabled" => Some(WandbMode::Disabled),
            _ => None,
        }
    }

    /// The name W&B uses.
    pub fn as_str(self) -> &'static str {
        match self {
            WandbMode::Online => "online",
            WandbMode::Offline => "offline",
            WandbMode::Disabled => "disabled",
        }
    }
}

/// `WANDB_RESUME`: what to do when the run id may already exist on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeMode {
    /// Continue the run if it exists, else create it.
    Allow,
    /// The run must exist.
    Must,
    /// The run must not exist.
    Never,
    /// Continue the run recorded in the run directory, if any.
    Auto,
}

impl ResumeMode {
    /// Parse a `WANDB_RESUME` value (`true` is W&B's old spelling of `auto`).
    pub fn parse(s: &str) -> Option<ResumeMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Some(ResumeMode::Allow),
            "must" => Some(ResumeMode::Must),
            "never" => Some(ResumeMode::Never),
            "auto" | "true" => Some(ResumeMode::Auto),
            _ => None,
        }
    }
}

/// The default W&B project, as re-grpo names its experiments: the multi-turn environments have their own projects,
/// then DR-GRPO, then everything else (base GRPO on math) goes to `tiny_grpo`.
pub fn default_project(algorithm: &str, environment: &str) -> &'static str {
    match (algorithm, environment) {
        (_, "calc_tools") => "tiny_grpo_multiturn_tool_calling",
        (_, "multiturn_qa") => "tiny_grpo_multiturn_qa",
        ("drgrpo", _) => "drgrpo_experiment",
        _ => "tiny_grpo",
    }
}

/// The fully resolved W&B settings of one run.
#[derive(Clone, Debug)]
pub struct WandbSettings {
    /// Online, offline or disabled (online without an API key falls back to offline with a warning).
    pub mode: WandbMode,
    /// The project name.
    pub project: String,
    /// The entity (user or team); `None` lets the server pick the key's default.
    pub entity: Option<String>,
    /// The API key, from `WANDB_API_KEY` or `~/.netrc`.
    pub api_key: Option<String>,
    /// The server, `WANDB_BASE_URL` (default `https://api.wandb.ai`), without a trailing slash.
    pub base_url: String,
    /// The root directory: the run file goes to `<root>/wandb/offline-run-<time>-<id>/`.
    pub root_dir: PathBuf,
    /// The run id (8 characters of `[a-z0-9]` unless given).
    pub run_id: String,
    /// Resume behaviour, if any.
    pub resume: Option<ResumeMode>,
    /// The display name.
    pub display_name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The run group.
    pub group: Option<String>,
    /// Notes (`WANDB_NOTES`).
    pub notes: Option<String>,
    /// Job type (`WANDB_JOB_TYPE`).
    pub job_type: Option<String>,
    /// Uploader timing.
    pub upload: UploadTuning,
}

/// The environment variables that matter here, plus `HOME`; a map so tests can pass their own.
pub type Env = BTreeMap<String, String>;

/// The `WANDB_*` variables and `HOME` of this process.
pub fn process_env() -> Env {
    std::env::vars().filter(|(k, _)| k.starts_with("WANDB_") || k == "HOME").collect()
}

/// Where the run id of a run directory's W&B run is remembered, so a resumed training run continues it.
pub fn stored_run_file(run_dir: &Path) -> PathBuf {
    run_dir.join("wandb-run.json")
}

impl WandbSettings {
    /// Resolve flags over environment over defaults. Invalid values the user gave are user errors.
    pub fn resolve(cfg: &LoggingConfig, env: &Env) -> anyhow::Result<WandbSettings> {
        let get = |k: &str| env.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let flags = &cfg.wandb;
        let mut mode = if flags.disabled {
            WandbMode::Disabled
        } else if let Some(m) = &flags.mode {
            WandbMode::parse(m)
                .ok_or_else(|| crate::user_error!("unknown W&B mode '{m}'; use online, offline or disabled"))?
        } else if let Some(m) = get("WANDB_MODE") {
            WandbMode::parse(&m).unwrap_or_else(|| {
                eprintln!("warning: WANDB_MODE='{m}' is not online, offline or disabled; using online");
                WandbMode::Online
            })
        } else {
            WandbMode::Online
        };

        let project = flags
            .project
            .clone()
            .or_else(|| get("WANDB_PROJECT"))
            .unwrap_or_else(|| default_project(&cfg.algorithm, &cfg.environment).to_string());
        // With W&B off, nothing uses its settings: a stray WANDB_* value in the shell must not stop the run.
        let checked = mode != WandbMode::Disabled;
        if checked {
            validate_project(&project)?;
        }
        let entity = flags.entity.clone().or_else(|| get("WANDB_ENTITY")).filter(|e| !e.is_empty());
        let base_url = get("WANDB_BASE_URL")
            .unwrap_or_else(|| "https://api.wandb.ai".to_string())
            .trim_end_matches('/')
            .to_string();
        let api_key = get("WANDB_API_KEY").or_else(|| {
            let home = get("HOME")?;
            netrc_password(&Path::new(&home).join(".netrc"), &url_host(&base_url))
        });
        if mode == WandbMode::Online && api_key.is_none() {
            eprintln!(
                "warning: no W&B API key (set WANDB_API_KEY or run `wandb login`); logging W&B offline, upload later \
                 with `wandb sync`"
            );
            mode = WandbMode::Offline;
        }

        let mut resume = match flags.resume.clone().or_else(|| get("WANDB_RESUME")) {
            None => None,
            Some(r) => match ResumeMode::parse(&r) {
                Some(mode) => Some(mode),
                None if !checked => None,
                None => {
                    return Err(crate::user_error!("unknown W&B resume mode '{r}'; use allow, must, never or auto"))
                }
            },
        };
        let explicit_id = flags.run_id.clone().or_else(|| get("WANDB_RUN_ID"));
        let resuming = cfg.resume || cfg.resume_from_step.is_some();
        let stored_id =
            if resuming || resume == Some(ResumeMode::Auto) { read_stored_run_id(&cfg.run_dir) } else { None };
        let continues = explicit_id.is_some() || stored_id.is_some();
        let run_id = explicit_id.or(stored_id).unwrap_or_else(random_run_id);
        // A resumed training run continues its W&B run: without a resume mode the upload would start the history
        // over at line 0.
        if continues && (resuming || resume == Some(ResumeMode::Auto)) {
            resume.get_or_insert(ResumeMode::Allow);
        }
        if checked {
            validate_run_id(&run_id)?;
        }

        let tags = match &flags.tags {
            Some(t) => t.clone(),
            None => get("WANDB_TAGS")
                .map(|t| t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        };
        Ok(WandbSettings {
            mode,
            project,
            entity,
            api_key,
            base_url,
            root_dir: flags
                .dir
                .clone()
                .or_else(|| get("WANDB_DIR").map(PathBuf::from))
                .unwrap_or_else(|| cfg.run_dir.clone()),
            run_id,
            resume,
            display_name: flags.name.clone().or_else(|| get("WANDB_NAME")).unwrap_or_else(|| cfg.run_name.clone()),
            tags,
            group: flags.group.clone().or_else(|| get("WANDB_RUN_GROUP")),
            notes: get("WANDB_NOTES"),
            job_type: get("WANDB_JOB_TYPE"),
            upload: cfg.upload.clone(),
        })
    }
}

/// W&B rejects ids that are empty, padded with whitespace, or contain `:;,#?/'`.
fn validate_run_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.trim() != id || id.chars().any(|c| ":;,#?/'".contains(c)) || id.len() > 128 {
        return Err(crate::user_error!(
            "invalid W&B run id '{id}': it must be non-empty, unpadded, at most 128 characters and free of :;,#?/' \
             (check --wandb-run-id or WANDB_RUN_ID)"
        ));
    }
    Ok(())
}

fn validate_project(p: &str) -> anyhow::Result<()> {
    if p.len() > 128 || p.chars().any(|c| "/\\#?%:".contains(c)) {
        return Err(crate::user_error!(
            "invalid W&B project '{p}': at most 128 characters, none of /\\#?%: (check --wandb-project or \
             WANDB_PROJECT)"
        ));
    }
    Ok(())
}

/// Eight characters of `[a-z0-9]`, as the Python SDK generates.
pub fn random_run_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

fn read_stored_run_id(run_dir: &Path) -> Option<String> {
    read_stored_run(run_dir)?.get("run_id")?.as_str().map(str::to_string)
}

/// `wandb-run.json` of a run directory, if it is readable.
pub fn read_stored_run(run_dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(stored_run_file(run_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The host part of a URL (`https://api.wandb.ai:443/x` -> `api.wandb.ai`).
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => authority.to_string(),
    }
}

/// The password `wandb login` stored for `host` in a netrc file (tokens `machine`, `login`, `password`, `default`).
pub fn netrc_password(path: &Path, host: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut current: Option<&str> = None;
    let mut fallback = None;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i] {
            "machine" if i + 1 < tokens.len() => {
                current = Some(tokens[i + 1]);
                i += 2;
            }
            "default" => {
                current = Some("");
                i += 1;
            }
            "password" if i + 1 < tokens.len() => {
                match current {
                    Some(m) if m == host => return Some(tokens[i + 1].to_string()),
                    Some("") => fallback = Some(tokens[i + 1].to_string()),
                    _ => {}
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(algo: &str, env: &str) -> LoggingConfig {
        LoggingConfig::new("/nonexistent/run", "run-a", algo, env)
    }

    #[test]
    fn default_projects_follow_re_grpo() {
        assert_eq!(default_project("grpo", "math"), "tiny_grpo");
        assert_eq!(default_project("drgrpo", "math"), "drgrpo_experiment");
        assert_eq!(default_project("grpo", "calc_tools"), "tiny_grpo_multiturn_tool_calling");
        assert_eq!(default_project("drgrpo", "multiturn_qa"), "tiny_grpo_multiturn_qa");
    }

    #[test]
    fn flags_override_environment() {
        let mut env = Env::new();
        env.insert("WANDB_MODE".into(), "offline".into());
        env.insert("WANDB_PROJECT".into(), "envproj".into());
        env.insert("WANDB_ENTITY".into(), "envent".into());
        env.insert("WANDB_RUN_ID".into(), "envid123".into());
        env.insert("WANDB_TAGS".into(), "a, b,,c".into());
        env.insert("WANDB_RUN_GROUP".into(), "g1".into());
        env.insert("WANDB_NAME".into(), "nice".into());
        env.insert("WANDB_DIR".into(), "/tmp/wdir".into());
        env.insert("WANDB_RESUME".into(), "must".into());
        let c = cfg("grpo", "math");
        let s = WandbSettings::resolve(&c, &env).unwrap();
        assert_eq!(s.mode, WandbMode::Offline);
        assert_eq!(s.project, "envproj");
        assert_eq!(s.entity.as_deref(), Some("envent"));
        assert_eq!(s.run_id, "envid123");
        assert_eq!(s.tags, vec!["a", "b", "c"]);
        assert_eq!(s.group.as_deref(), Some("g1"));
        assert_eq!(s.display_name, "nice");
        assert_eq!(s.root_dir, PathBuf::from("/tmp/wdir"));
        assert_eq!(s.resume, Some(ResumeMode::Must));

        let mut c = cfg("grpo", "math");
        c.wandb.project = Some("flagproj".into());
        c.wandb.run_id = Some("flagid".into());
        c.wandb.mode = Some("disabled".into());
        c.wandb.tags = Some(vec!["x".into()]);
        let s = WandbSettings::resolve(&c, &env).unwrap();
        assert_eq!((s.project.as_str(), s.run_id.as_str()), ("flagproj", "flagid"));
        assert_eq!(s.mode, WandbMode::Disabled);
        assert_eq!(s.tags, vec!["x"]);

        let mut c = cfg("grpo", "math");
        c.wandb.disabled = true;
        assert_eq!(WandbSettings::resolve(&c, &env).unwrap().mode, WandbMode::Disabled);
    }

    #[test]
    fn online_without_key_falls_back_to_offline_and_netrc_supplies_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Env::new();
        env.insert("HOME".into(), dir.path().display().to_string());
        let s = WandbSettings::resolve(&cfg("drgrpo", "math"), &env).unwrap();
        assert_eq!(s.mode, WandbMode::Offline);
        assert_eq!(s.project, "drgrpo_experiment");
        assert_eq!(s.run_id.len(), 8);
        assert_eq!(s.root_dir, PathBuf::from("/nonexistent/run"));

        std::fs::write(
            dir.path().join(".netrc"),
            "machine other.host login api password nope\nmachine 127.0.0.1\n  login user\n  password k3y\n",
        )
        .unwrap();
        env.insert("WANDB_BASE_URL".into(), "http://127.0.0.1:8080/".into());
        let s = WandbSettings::resolve(&cfg("grpo", "math"), &env).unwrap();
        assert_eq!(s.mode, WandbMode::Online);
        assert_eq!(s.api_key.as_deref(), Some("k3y"));
        assert_eq!(s.base_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn bad_values_are_user_errors() {
        let env = Env::new();
        for (field, value) in [("id", "a/b"), ("id", " x"), ("mode", "sometimes"), ("project", "a:b")] {
            let mut c = cfg("grpo", "math");
            match field {
                "id" => c.wandb.run_id = Some(value.into()),
                "mode" => c.wandb.mode = Some(value.into()),
                _ => c.wandb.project = Some(value.into()),
            }
            let err = WandbSettings::resolve(&c, &env).unwrap_err();
            assert_eq!(crate::error::exit_code(&err), 2, "{field}={value}: {err}");
        }
        // With W&B disabled its settings are not used, so a stray value in the shell does not stop the run.
        let mut env = Env::new();
        for (var, value) in [("WANDB_RUN_ID", "a/b"), ("WANDB_PROJECT", "a:b"), ("WANDB_RESUME", "sometimes")] {
            env.insert(var.into(), value.into());
        }
        let mut c = cfg("grpo", "math");
        c.wandb.disabled = true;
        assert_eq!(WandbSettings::resolve(&c, &env).unwrap().mode, WandbMode::Disabled);
    }

    #[test]
    fn resume_reuses_the_stored_run_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(stored_run_file(dir.path()), r#"{"run_id":"keep1234"}"#).unwrap();
        let mut c = cfg("grpo", "math");
        c.run_dir = dir.path().to_path_buf();
        let mut env = Env::new();
        env.insert("WANDB_MODE".into(), "offline".into());
        assert_ne!(WandbSettings::resolve(&c, &env).unwrap().run_id, "keep1234");
        c.resume = true;
        let s = WandbSettings::resolve(&c, &env).unwrap();
        assert_eq!(s.run_id, "keep1234");
        assert_eq!(s.resume, Some(ResumeMode::Allow));
    }

    #[test]
    fn flags_parse_into_the_config() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            logging: LoggingArgs,
        }
        let cli = Cli::parse_from(["x", "--no-wandb", "--wandb-tags", "a,b", "--log-dir", "runs/tb"]);
        let wandb = cli.logging.wandb_flags();
        assert!(wandb.disabled);
        assert_eq!(wandb.tags, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(cli.logging.log_dir, Some(PathBuf::from("runs/tb")));
    }

    /// `--report-to` (transformers' report_to) picks W&B, TensorBoard beside it or in its place, or neither.
    #[test]
    fn report_to_picks_the_sinks() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            logging: LoggingArgs,
        }
        let runs = Path::new("runs");
        let parsed = |args: &[&str]| Cli::parse_from([&["x"], args].concat()).logging;
        let sinks = |l: &LoggingArgs| (l.wandb_flags().disabled, l.tensorboard(runs));
        assert_eq!(sinks(&parsed(&[])), (false, (None, false)));
        assert_eq!(sinks(&parsed(&["--report-to", "wandb"])), (false, (None, false)));
        assert_eq!(sinks(&parsed(&["--report-to", "none"])), (true, (None, false)));
        assert_eq!(sinks(&parsed(&["--report-to", "tensorboard"])), (true, (Some(runs.to_path_buf()), true)));
        let both = (false, (Some(PathBuf::from("tb")), true));
        assert_eq!(sinks(&parsed(&["--report-to", "wandb,tensorboard", "--log-dir", "tb"])), both);
        assert_eq!(sinks(&parsed(&["--report-to", "all", "--log-dir", "tb"])), both);
        assert!(parsed(&["--report-to", "none,wandb"]).check().is_err());
        assert!(parsed(&["--report-to", "all"]).check().is_ok());
        assert!(Cli::try_parse_from(["x", "--report-to", "wandb", "--no-wandb"]).is_err());
        assert!(Cli::try_parse_from(["x", "--report-to", "mlflow"]).is_err());
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://api.wandb.ai"), "api.wandb.ai");
        assert_eq!(url_host("http://127.0.0.1:9999/x"), "127.0.0.1");
    }
}
