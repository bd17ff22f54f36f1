//! The online uploader: a background thread that speaks W&B's HTTP API (GraphQL `UpsertBucket`, then the run's
//! `file_stream` with history lines, the summary and finally `complete`/`exitcode`), fed through a bounded queue.
//! The trainer's side is a `try_send`: it never waits on the network. Network errors, 408, 429 and 5xx are retried
//! with exponential backoff and jitter for a bounded time; other failures, or running out of retries, stop the upload
//! with one warning. The `.wandb` file is written regardless, so `wandb sync` can always finish the job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::logging::config::{ResumeMode, UploadTuning};

/// What the trainer side hands the uploader.
#[derive(Debug)]
pub enum Event {
    /// One history line (a JSON object with `_step`) and the summary values it updates.
    History {
        /// Its step (the line's `_step`).
        step: u64,
        /// The line.
        line: String,
        /// `(key, value JSON)` summary updates.
        summary: Vec<(String, String)>,
    },
    /// Summary overrides.
    Summary(Vec<(String, String)>),
    /// A file under the run's `files/` directory to upload (a media table).
    File {
        /// The name relative to `files/`.
        name: String,
        /// Where it is on disk.
        path: PathBuf,
    },
    /// The run ended with this exit code.
    Finish(i32),
}

/// Where and as whom to upload.
#[derive(Clone, Debug)]
pub struct Target {
    /// Server URL without trailing slash.
    pub base_url: String,
    /// API key.
    pub api_key: String,
    /// Entity, `None` for the key's default.
    pub entity: Option<String>,
    /// Project.
    pub project: String,
    /// Run id.
    pub run_id: String,
    /// Display name.
    pub display_name: String,
    /// Group.
    pub group: Option<String>,
    /// Job type.
    pub job_type: Option<String>,
    /// Notes.
    pub notes: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Host name.
    pub host: String,
    /// The run config as `{"key": {"value": ...}}` JSON text.
    pub config_json: String,
    /// Resume behaviour.
    pub resume: Option<ResumeMode>,
}

/// How the upload ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Everything queued reached the server and the run is marked complete.
    Complete,
    /// The upload stopped early, for this reason.
    Stopped(String),
}

/// The trainer's handle on the uploader thread.
pub struct Uploader {
    tx: SyncSender<Event>,
    done: Receiver<Outcome>,
    handle: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl Uploader {
    /// Start the thread. Nothing touches the network on the caller's thread.
    pub fn start(target: Target, tuning: UploadTuning, sync_hint: String) -> std::io::Result<Uploader> {
        let (tx, rx) = mpsc::sync_channel(tuning.queue_capacity.max(1));
        let (done_tx, done) = mpsc::channel();
        let handle = std::thread::Builder::new().name("wandb-upload".into()).spawn(move || {
            let mut worker = Worker::new(target, tuning, rx);
            let outcome = match worker.run() {
                Ok(()) => Outcome::Complete,
                Err(reason) => {
                    eprintln!(
                        "warning: W&B upload stopped: {reason}. Training continues and the run is still written \
                         offline; upload it later with: {sync_hint}"
                    );
                    Outcome::Stopped(reason)
                }
            };
            let _ = done_tx.send(outcome);
        })?;
        Ok(Uploader { tx, done, handle: Some(handle), dropped: Arc::new(AtomicU64::new(0)) })
    }

    /// Queue an event without waiting. A full queue drops the event from the upload (the run file still has it).
    pub fn send(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events the queue had no room for.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Send the exit code and wait up to `timeout` for the upload to finish. `None` if it did not finish in time
    /// (the thread is left to die with the process).
    pub fn finish(mut self, exit_code: i32, timeout: Duration) -> Option<Outcome> {
        let deadline = Instant::now() + timeout;
        let mut event = Event::Finish(exit_code);
        loop {
            match self.tx.try_send(event) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => break,
                Err(TrySendError::Full(e)) => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    event = e;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = self.done.recv_timeout(left).ok()?;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        Some(outcome)
    }
}

/// Retry decisions.
enum Failure {
    /// Worth retrying (network error, 408, 429, 5xx).
    Transient(String),
    /// Not worth retrying (401, 403, 404, a GraphQL error ...).
    Permanent(String),
}

struct Worker {
    target: Target,
    tuning: UploadTuning,
    rx: Receiver<Event>,
    agent: ureq::Agent,
    auth: String,
    entity: String,
    project: String,
    history_offset: u64,
    /// History lines not yet accepted by the server, with their steps.
    unsent: Vec<(u64, String)>,
    /// On resume, the last step the server's history already has: lines up to it are not sent again (W&B's own
    /// resume semantics: a resumed run continues after the run's last step).
    server_through: Option<u64>,
    skipped_known: u64,
    summary: BTreeMap<String, String>,
    summary_dirty: bool,
    files: Vec<(String, PathBuf)>,
    exit: Option<i32>,
    last_request: Instant,
}

/// One file_stream request carries at most this much history (W&B's limit is about 10 MiB).
const MAX_BATCH_BYTES: usize = 4 << 20;

impl Worker {
    fn new(target: Target, tuning: UploadTuning, rx: Receiver<Event>) -> Worker {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(tuning.request_timeout))
            .http_status_as_error(false)
            .user_agent(concat!("grpo-rs/", env!("CARGO_PKG_VERSION")))
            .build();
        let auth =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("api:{}", target.api_key)));
        Worker {
            entity: target.entity.clone().unwrap_or_default(),
            project: target.project.clone(),
            target,
            tuning,
            rx,
            agent: config.into(),
            auth,
            history_offset: 0,
            unsent: Vec::new(),
            server_through: None,
            skipped_known: 0,
            summary: BTreeMap::new(),
            summary_dirty: false,
            files: Vec::new(),
            exit: None,
            last_request: Instant::now(),
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::History { step, line, summary } => {
                if self.server_through.is_some_and(|s| step <= s) {
                    self.note_known(1);
                } else {
                    self.unsent.push((step, line));
                }
                self.merge_summary(summary);
            }
            Event::Summary(items) => self.merge_summary(items),
            Event::File { name, path } => self.files.push((name, path)),
            Event::Finish(code) => self.exit = Some(code),
        }
    }

    fn note_known(&mut self, n: u64) {
        if self.skipped_known == 0 && n > 0 {
            eprintln!(
                "note: W&B run {} already has history through step {}; those steps are not uploaded again",
                self.target.run_id,
                self.server_through.unwrap_or(0)
            );
        }
        self.skipped_known += n;
    }

    fn merge_summary(&mut self, items: Vec<(String, String)>) {
        if !items.is_empty() {
            self.summary.extend(items);
            self.summary_dirty = true;
        }
    }

    /// Take whatever is queued, waiting at most `wait`; a vanished trainer counts as a failed run.
    fn drain(&mut self, wait: Duration) {
        match self.rx.recv_timeout(wait) {
            Ok(e) => self.apply(e),
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => {
                self.exit.get_or_insert(1);
                // Nothing more can arrive; still honour the wait so backoff loops do not spin.
                std::thread::sleep(wait);
                return;
            }
        }
        while let Ok(e) = self.rx.try_recv() {
            self.apply(e);
        }
    }

    fn run(&mut self) -> Result<(), String> {
        if self.target.resume.is_some() {
            self.resume_status()?;
        }
        self.upsert()?;
        let mut last_send = Instant::now();
        loop {
            if self.exit.is_none() {
                let next = last_send + self.tuning.transmit_interval;
                self.drain(next.saturating_duration_since(Instant::now()));
                if self.exit.is_none() && Instant::now() < next {
                    continue;
                }
            }
            last_send = Instant::now();
            if !self.files.is_empty() {
                self.upload_files()?;
            }
            let heartbeat_due = self.last_request.elapsed() >= self.tuning.heartbeat_interval;
            if !self.unsent.is_empty() || self.summary_dirty || heartbeat_due || self.exit.is_some() {
                self.send_stream()?;
            }
            if self.exit.is_some() && self.unsent.is_empty() && !self.summary_dirty && self.files.is_empty() {
                return Ok(());
            }
        }
    }

    /// POST with retries; the queue keeps draining while we wait out the backoff.
    fn post(&mut self, url: &str, body: &str) -> Result<Value, String> {
        let started = Instant::now();
        let mut delay = self.tuning.backoff_initial;
        loop {
            match self.try_post(url, body) {
                Ok(v) => {
                    self.last_request = Instant::now();
                    return Ok(v);
                }
                Err(Failure::Permanent(msg)) => return Err(msg),
                Err(Failure::Transient(msg)) => {
                    if started.elapsed() + delay > self.tuning.retry_max_elapsed {
                        return Err(format!("{msg} (gave up after retrying for {:.0?})", started.elapsed()));
                    }
                    let jitter = rand::random::<f64>() * 0.25 + 0.875;
                    let wait = delay.mul_f64(jitter);
                    let until = Instant::now() + wait;
                    while Instant::now() < until {
                        self.drain(until.saturating_duration_since(Instant::now()));
                    }
                    delay = (delay * 2).min(self.tuning.backoff_max);
                }
            }
        }
    }

    fn try_post(&self, url: &str, body: &str) -> Result<Value, Failure> {
        let result = self
            .agent
            .post(url)
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(body);
        let mut resp = result.map_err(|e| Failure::Transient(format!("cannot reach {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        match status {
            200..=299 => Ok(serde_json::from_str(&text).unwrap_or(Value::Null)),
            408 | 429 | 500..=599 => Err(Failure::Transient(format!("{url} answered HTTP {status}"))),
            401 | 403 => Err(Failure::Permanent(format!(
                "{url} answered HTTP {status}: the API key was rejected (check WANDB_API_KEY or `wandb login`)"
            ))),
            _ => Err(Failure::Permanent(format!("{url} answered HTTP {status}: {}", snippet(&text)))),
        }
    }

    fn graphql(&mut self, query: &str, variables: Value) -> Result<Value, String> {
        let body = json!({"query": query, "variables": variables}).to_string();
        let url = format!("{}/graphql", self.target.base_url);
        let v = self.post(&url, &body)?;
        if let Some(errors) = v.get("errors").filter(|e| !e.is_null()) {
            return Err(format!("W&B GraphQL error: {}", snippet(&errors.to_string())));
        }
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    }

    fn resume_status(&mut self) -> Result<(), String> {
        let entity = self.target.entity.clone();
        let data = self
            .graphql(RESUME_STATUS, json!({"project": self.project, "entity": entity, "name": self.target.run_id}))?;
        let bucket = data.pointer("/model/bucket").filter(|b| !b.is_null());
        match (self.target.resume, bucket) {
            (Some(ResumeMode::Must), None) => {
                Err(format!("WANDB_RESUME=must but run {} does not exist on the server", self.target.run_id))
            }
            (Some(ResumeMode::Never), Some(_)) => {
                Err(format!("WANDB_RESUME=never but run {} already exists on the server", self.target.run_id))
            }
            (_, Some(b)) => {
                // Continue the history where the server's copy ends, after the last step it has.
                self.history_offset = b.get("historyLineCount").and_then(Value::as_u64).unwrap_or(0);
                if self.history_offset > 0 {
                    self.server_through = last_server_step(b);
                }
                if let Some(through) = self.server_through {
                    let before = self.unsent.len();
                    self.unsent.retain(|(step, _)| *step > through);
                    self.note_known((before - self.unsent.len()) as u64);
                }
                Ok(())
            }
            (_, None) => Ok(()),
        }
    }

    fn upsert(&mut self) -> Result<(), String> {
        let t = &self.target;
        let vars = json!({
            "name": t.run_id,
            "project": t.project,
            "entity": t.entity,
            "displayName": t.display_name,
            "groupName": t.group,
            "jobType": t.job_type,
            "notes": t.notes,
            "tags": t.tags,
            "host": t.host,
            "config": t.config_json,
        });
        let data = self.graphql(UPSERT_BUCKET, vars)?;
        let project = data.pointer("/upsertBucket/bucket/project").ok_or_else(|| {
            format!("the W&B server did not create run {} (UpsertBucket returned no bucket)", self.target.run_id)
        })?;
        if let Some(p) = project.get("name").and_then(Value::as_str) {
            self.project = p.to_string();
        }
        if let Some(e) = project.pointer("/entity/name").and_then(Value::as_str) {
            self.entity = e.to_string();
        }
        Ok(())
    }

    fn upload_files(&mut self) -> Result<(), String> {
        let files = std::mem::take(&mut self.files);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let data = self.graphql(
            CREATE_RUN_FILES,
            json!({"entity": self.entity, "project": self.project, "run": self.target.run_id, "files": names}),
        )?;
        let headers: Vec<(String, String)> = data
            .pointer("/createRunFiles/uploadHeaders")
            .and_then(Value::as_array)
            .map(|hs| {
                hs.iter()
                    .filter_map(|h| h.as_str()?.split_once(':').map(|(k, v)| (k.trim().into(), v.trim().into())))
                    .collect()
            })
            .unwrap_or_default();
        let urls = data.pointer("/createRunFiles/files").and_then(Value::as_array).cloned().unwrap_or_default();
        for (name, path) in &files {
            let Some(url) = urls
                .iter()
                .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|f| f.get("uploadUrl")?.as_str())
            else {
                continue;
            };
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            // A failed media upload costs that table only, never the metrics.
            let mut req = self.agent.put(url);
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            if let Err(e) = req.send(&bytes[..]) {
                eprintln!("warning: W&B upload of {name} failed: {e}");
            }
        }
        Ok(())
    }

    fn send_stream(&mut self) -> Result<(), String> {
        let url = format!(
            "{}/files/{}/{}/{}/file_stream",
            self.target.base_url, self.entity, self.project, self.target.run_id
        );
        loop {
            let mut size = 0;
            let mut count = 0;
            for (_, line) in &self.unsent {
                if count > 0 && size + line.len() > MAX_BATCH_BYTES {
                    break;
                }
                size += line.len();
                count += 1;
            }
            let all_sent = count == self.unsent.len();
            let mut files = serde_json::Map::new();
            if count > 0 {
                files.insert(
                    "wandb-history.jsonl".into(),
                    json!({
                        "offset": self.history_offset,
                        "content": self.unsent[..count].iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>(),
                    }),
                );
            }
            let summary_sent = self.summary_dirty;
            if summary_sent {
                let obj = crate::logging::json::object(self.summary.iter().map(|(k, v)| (k.as_str(), v.clone())));
                files.insert("wandb-summary.json".into(), json!({"offset": 0, "content": [obj]}));
            }
            let mut body = json!({});
            if !files.is_empty() {
                body["files"] = Value::Object(files);
            }
            let last = all_sent && self.files.is_empty();
            if let (Some(code), true) = (self.exit, last) {
                body["complete"] = json!(true);
                body["exitcode"] = json!(code);
            }
            self.post(&url, &body.to_string())?;
            self.unsent.drain(..count);
            self.history_offset += count as u64;
            if summary_sent {
                self.summary_dirty = false;
            }
            if all_sent {
                return Ok(());
            }
        }
    }
}

/// The last `_step` a run on the server has, from `RunResumeStatus`'s `historyTail` (a JSON array of JSON lines)
/// or its summary, whichever is larger; wandb-core takes its resumed starting step from the same two fields.
fn last_server_step(bucket: &Value) -> Option<u64> {
    // W&B's lines may hold bare NaN/Infinity tokens, which serde_json refuses.
    let step_of = |text: &str| -> Option<u64> {
        let row = crate::logging::json::parse_line(text)?;
        row.get("_step")?.as_f64().filter(|s| *s >= 0.0).map(|s| s as u64)
    };
    let from_tail = bucket
        .get("historyTail")
        .and_then(Value::as_str)
        .and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .and_then(|lines| lines.last().and_then(|l| step_of(l)));
    let from_summary = bucket.get("summaryMetrics").and_then(Value::as_str).and_then(step_of);
    from_tail.max(from_summary)
}

fn snippet(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        one_line.chars().take(200).collect::<String>() + "…"
    } else {
        one_line
    }
}

const UPSERT_BUCKET: &str = "mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String, \
$groupName: String, $description: String, $displayName: String, $notes: String, $commit: String, $config: JSONString, \
$host: String, $debug: Boolean, $program: String, $repo: String, $jobType: String, $state: String, $sweep: String, \
$tags: [String!], $summaryMetrics: JSONString) { upsertBucket(input: {id: $id, name: $name, groupName: $groupName, \
modelName: $project, entityName: $entity, description: $description, displayName: $displayName, notes: $notes, \
config: $config, commit: $commit, host: $host, debug: $debug, jobProgram: $program, jobRepo: $repo, jobType: $jobType, \
state: $state, sweep: $sweep, tags: $tags, summaryMetrics: $summaryMetrics}) { bucket { id name displayName \
description config sweepName project { id name entity { id name } } historyLineCount } inserted } }";

const RESUME_STATUS: &str = "query RunResumeStatus($project: String, $entity: String, $name: String!) { \
model(name: $project, entityName: $entity) { id name entity { id name } bucket(name: $name, missingOk: true) { id \
name summaryMetrics displayName logLineCount historyLineCount eventsLineCount historyTail eventsTail config tags \
notes wandbConfig(keys: [\"t\"]) } } }";

const CREATE_RUN_FILES: &str = "mutation CreateRunFiles($entity: String!, $project: String!, $run: String!, \
$files: [String!]!) { createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, files: \
$files}) { runID uploadHeaders files { name uploadUrl } } }";
