//! A mock W&B server on 127.0.0.1 for the logging tests: it answers the GraphQL queries and file_stream posts that
//! our uploader and `wandb sync` make, records every request, and can fail or hang on demand. Also readers of the
//! offline `.wandb` run files, down to the history a W&B server shows for a run id written in several files.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use grpo_host::logging::wandb::proto::{Record, RecordType};
use grpo_host::logging::wandb::store::read_records;
use grpo_host::logging::{json, MetricValue, Metrics};
use prost::Message;
use serde_json::{json as j, Value};

/// One recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub url: String,
    pub body: String,
}

/// How the server misbehaves.
#[derive(Default)]
pub struct Faults {
    /// Answer the next requests with these statuses, one each, before behaving.
    pub fail_with: Vec<u16>,
    /// Never answer (requests are held until the server stops).
    pub hang: bool,
    /// Pretend the run exists with this many history lines (for resume).
    pub existing_history: Option<u64>,
    /// With `existing_history`: the `_step` of the last of those lines (its `historyTail`), else none is given.
    pub existing_last_step: Option<u64>,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    faults: Faults,
    failures_served: usize,
}

/// The server. Dropping it stops it.
pub struct MockWandb {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl MockWandb {
    pub fn start(faults: Faults) -> MockWandb {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        let url = format!("http://127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(State { faults, ..Default::default() }));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = http::serve(listener, stop.clone());
        let (st, sp, base) = (state.clone(), stop.clone(), url.clone());
        let handle = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !sp.load(Ordering::Relaxed) {
                let Ok(req) = requests.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let rec = Recorded { method: req.method.clone(), url: req.url.clone(), body: req.body.clone() };
                let mut s = st.lock().unwrap();
                s.requests.push(rec.clone());
                if s.faults.hang {
                    held.push(req);
                    continue;
                }
                if s.failures_served < s.faults.fail_with.len() {
                    let status = s.faults.fail_with[s.failures_served];
                    s.failures_served += 1;
                    drop(s);
                    req.respond(status, "text/plain", "try later");
                    continue;
                }
                let existing = s.faults.existing_history.map(|n| (n, s.faults.existing_last_step));
                drop(s);
                let answer = respond(&base, &rec, existing);
                req.respond(200, "application/json", &answer);
            }
        });
        MockWandb { url, state, stop, handle: Some(handle) }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn failures_served(&self) -> usize {
        self.state.lock().unwrap().failures_served
    }

    /// Bodies of successful file_stream posts (the failed ones were answered with an error, so the client resent).
    fn stream_bodies(&self) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        let served = s.failures_served;
        // Requests answered with failures are the first `served` requests.
        s.requests
            .iter()
            .enumerate()
            .filter(|(i, r)| *i >= served && r.url.ends_with("/file_stream"))
            .filter_map(|(_, r)| serde_json::from_str(&r.body).ok())
            .collect()
    }

    /// History lines by line number, parsed (later posts of the same line number win).
    pub fn history(&self) -> BTreeMap<u64, Metrics> {
        let parse = |line: String| json::parse_line(&line).expect("history line is a JSON object");
        self.raw_history().into_iter().map(|(n, line)| (n, parse(line))).collect()
    }

    /// History lines by line number, as sent.
    pub fn raw_history(&self) -> BTreeMap<u64, String> {
        let mut out = BTreeMap::new();
        for body in self.stream_bodies() {
            let Some(h) = body.pointer("/files/wandb-history.jsonl") else {
                continue;
            };
            let offset = h["offset"].as_u64().unwrap();
            for (i, line) in h["content"].as_array().unwrap().iter().enumerate() {
                out.insert(offset + i as u64, line.as_str().unwrap().to_string());
            }
        }
        out
    }

    /// The last summary posted.
    pub fn summary(&self) -> Option<Metrics> {
        self.stream_bodies().iter().rev().find_map(|b| {
            let line = b.pointer("/files/wandb-summary.json/content/0")?.as_str()?;
            json::parse_line(line)
        })
    }

    /// The exit code of the `complete` post, if one arrived.
    pub fn exitcode(&self) -> Option<i64> {
        self.stream_bodies()
            .iter()
            .find_map(|b| (b.get("complete") == Some(&Value::Bool(true))).then(|| b["exitcode"].as_i64().unwrap_or(-1)))
    }

    /// Variables of every UpsertBucket.
    pub fn upserts(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.url.starts_with("/graphql"))
            .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
            .filter(|b| b["query"].as_str().unwrap_or("").contains("upsertBucket"))
            .map(|b| b["variables"].clone())
            .collect()
    }
}

impl Drop for MockWandb {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn respond(base: &str, rec: &Recorded, existing: Option<(u64, Option<u64>)>) -> String {
    if rec.url.starts_with("/graphql") {
        let body: Value = serde_json::from_str(&rec.body).unwrap_or(Value::Null);
        let q = body["query"].as_str().unwrap_or("");
        let vars = &body["variables"];
        if q.contains("upsertBucket") {
            let project = vars["project"].as_str().unwrap_or("uncategorized");
            return j!({"data": {"upsertBucket": {"bucket": {
                "id": "b1", "name": vars["name"], "displayName": vars["displayName"], "description": null,
                "config": "{}", "sweepName": null,
                "project": {"id": "p1", "name": project, "entity": {"id": "e1", "name": "mockentity"}},
                "historyLineCount": 0}, "inserted": true}}})
            .to_string();
        }
        if q.contains("RunResumeStatus") {
            let bucket = existing.map(|(n, last)| {
                // As W&B sends it: a JSON string holding an array of JSON lines.
                let tail = match last {
                    Some(step) => j!([format!("{{\"_step\": {step}, \"_runtime\": 1.5, \"x\": NaN}}")]).to_string(),
                    None => "[]".to_string(),
                };
                j!({"id": "b1", "name": vars["name"], "historyLineCount": n, "eventsLineCount": 0, "logLineCount": 0,
                    "summaryMetrics": "{}", "config": "{}", "historyTail": tail, "eventsTail": "[]", "tags": [],
                    "displayName": "x", "notes": null, "wandbConfig": "{\"t\": 1}"})
            });
            return j!({"data": {"model": {"id": "p1", "name": vars["project"],
                "entity": {"id": "e1", "name": "mockentity"}, "bucket": bucket}}})
            .to_string();
        }
        if q.contains("viewer") {
            return j!({"data": {"viewer": {"id": "u1", "entity": "mockentity", "username": "u", "email": "e",
                "flags": "{}", "teams": {"edges": []}}}})
            .to_string();
        }
        if q.contains("serverInfo") {
            return j!({"data": {"serverInfo": {"features": []}}}).to_string();
        }
        if q.contains("createRunFiles") {
            let files: Vec<Value> = vars["files"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|f| j!({"name": f, "uploadUrl": format!("{base}/upload/{}", f.as_str().unwrap_or(""))}))
                .collect();
            return j!({"data": {"createRunFiles": {"runID": "r1", "uploadHeaders": [], "files": files}}}).to_string();
        }
        return j!({"data": {}}).to_string();
    }
    if rec.url.ends_with("/file_stream") {
        return j!({"exitcode": null, "limits": {}}).to_string();
    }
    "{}".to_string()
}

/// The metric names and kinds of re-grpo's W&B logging guide, from tests/fixtures/logging/seed_keys.txt.
pub fn seed_keys() -> Vec<(String, bool)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/logging/seed_keys.txt");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, kind) = l.split_once('\t').unwrap();
            (k.to_string(), kind == "text")
        })
        .collect()
}

/// The value test runs log for key number `i` at `step`: distinct, exactly representable, text for text keys.
pub fn seed_value(i: usize, is_text: bool, step: u64) -> MetricValue {
    if is_text {
        MetricValue::Text(format!("text {i} at step {step}: \"quoted\" NaN\nline 2"))
    } else {
        MetricValue::Number(step as f64 * 1000.0 + i as f64 + 0.25)
    }
}

/// A non-finite series logged under `test/nonfinite`.
pub fn nonfinite_value(step: u64) -> f64 {
    [1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY][step as usize % 4]
}

/// Every seed key plus `test/nonfinite` at `step`.
pub fn seed_row(step: u64) -> Metrics {
    let mut m = Metrics::new();
    for (i, (k, text)) in seed_keys().iter().enumerate() {
        m.insert(k.clone(), seed_value(i, *text, step));
    }
    m.insert("test/nonfinite".into(), MetricValue::Number(nonfinite_value(step)));
    m
}

/// Compare values, NaN equal to NaN.
pub fn same(a: &MetricValue, b: &MetricValue) -> bool {
    match (a, b) {
        (MetricValue::Number(x), MetricValue::Number(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

/// Assert that history holds `steps` rows, each with every seed key at its value and `_step`.
pub fn assert_history_has_seed_rows(history: &BTreeMap<u64, Metrics>, steps: u64) {
    assert_eq!(history.len() as u64, steps, "history lines: {:?}", history.keys().collect::<Vec<_>>());
    for (line, row) in history {
        let step = row["_step"].as_f64().unwrap() as u64;
        assert_eq!(step, *line, "line {line} carries _step {step}");
        assert!(row.contains_key("_runtime") && row.contains_key("_timestamp"));
        for (k, v) in seed_row(step) {
            let got = row.get(&k).unwrap_or_else(|| panic!("step {step}: key {k} missing"));
            assert!(same(got, &v), "step {step}: {k} = {got:?}, expected {v:?}");
        }
    }
}

/// A row without its wall-clock values (`_timestamp`, `_runtime`, `timing/*`), which differ between any two runs.
pub fn without_clock(row: &Metrics) -> Metrics {
    row.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_timestamp" | "_runtime") && !k.starts_with("timing/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Rows equal, NaN equal to NaN.
pub fn same_rows(a: &Metrics, b: &Metrics) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
}

/// The `.wandb` run file in a W&B run directory.
pub fn wandb_file(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wandb"))
        .expect("a .wandb file")
}

/// A run file's complete records, and whether a torn record follows them (what a killed writer leaves).
pub fn run_file_records(path: &Path) -> (Vec<RecordType>, bool) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (recs, torn) = read_records(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    let recs = recs.iter().map(|r| Record::decode(r.as_slice()).unwrap().record_type.expect("record type set"));
    (recs.collect(), torn)
}

/// The records of the run file in the W&B run directory `dir`, which must end cleanly.
pub fn records(dir: &Path) -> Vec<RecordType> {
    let (recs, torn) = run_file_records(&wandb_file(dir));
    assert!(!torn, "the run file ends cleanly");
    recs
}

/// History rows of a run file (or of several, in order) as (step, values without clock keys).
pub fn history_rows(recs: &[RecordType]) -> Vec<(i64, Metrics)> {
    recs.iter()
        .filter_map(|r| if let RecordType::History(h) = r { Some(h) } else { None })
        .map(|h| {
            let items: Vec<String> =
                h.item.iter().map(|i| format!("{}:{}", json::string(&i.key), i.value_json)).collect();
            let line = format!("{{{}}}", items.join(","));
            (h.step.as_ref().unwrap().num, without_clock(&json::parse_line(&line).unwrap()))
        })
        .collect()
}

/// A W&B run as its server shows it once every run file of its id is synced (docs/logging.md, "Resuming").
pub struct WandbRun {
    /// The run files of the id, oldest first (by the run record's start time).
    pub files: Vec<PathBuf>,
    /// The history: rows in file order, each row's step above every earlier one's.
    pub history: Vec<(i64, Metrics)>,
    /// Rows W&B ignores, as (file, step): a step not above the run's current step (steps must increase; a resumed
    /// run continues after the last step the run has).
    pub ignored: Vec<(PathBuf, i64)>,
    /// The exit code in the newest file's exit record, if it has one.
    pub exit_code: Option<i32>,
}

/// Read the W&B run of a training run directory: the id from `wandb-run.json`, every `run-<id>.wandb` under
/// `<run_dir>/wandb/`, the history W&B keeps from them.
pub fn wandb_run(run_dir: &Path) -> WandbRun {
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("wandb-run.json")).unwrap()).unwrap();
    let id = stored["run_id"].as_str().expect("wandb-run.json names the run id").to_string();
    let mut files: Vec<(f64, PathBuf, Vec<RecordType>)> = std::fs::read_dir(run_dir.join("wandb"))
        .unwrap()
        .map(|e| e.unwrap().path().join(format!("run-{id}.wandb")))
        .filter(|p| p.exists())
        .map(|path| {
            let (recs, _torn) = run_file_records(&path);
            let start = match recs.first() {
                Some(RecordType::Run(r)) => {
                    r.start_time.as_ref().map_or(0.0, |t| t.seconds as f64 + t.nanos as f64 * 1e-9)
                }
                _ => panic!("{}: the first record is not the run record", path.display()),
            };
            (start, path, recs)
        })
        .collect();
    assert!(!files.is_empty(), "no run-{id}.wandb under {}", run_dir.join("wandb").display());
    files.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut run = WandbRun { files: Vec::new(), history: Vec::new(), ignored: Vec::new(), exit_code: None };
    for (_, path, recs) in files {
        for (step, row) in history_rows(&recs) {
            if run.history.last().is_some_and(|(last, _)| step <= *last) {
                run.ignored.push((path.clone(), step));
            } else {
                run.history.push((step, row));
            }
        }
        run.exit_code =
            recs.iter().rev().find_map(|r| if let RecordType::Exit(e) = r { Some(e.exit_code) } else { None });
        run.files.push(path);
    }
    run
}

/// The smallest HTTP/1.1 server the mock needs: a thread per connection reads one request (Content-Length or
/// chunked body) and hands it over; the answer closes the connection. Hand-written because tiny_http 0.12's
/// connection pool can leave a new connection unserved while keep-alive connections hold its threads (seen as a
/// `wandb sync` that never finished), and closing every connection after one answer removes that whole class of
/// stall: each request gets its own fresh connection and thread.
mod http {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{channel, Receiver};
    use std::sync::Arc;
    use std::time::Duration;

    /// One request, with the connection to answer it on.
    pub struct Request {
        pub method: String,
        pub url: String,
        pub body: String,
        stream: TcpStream,
    }

    impl Request {
        /// Answer and close the connection.
        pub fn respond(mut self, status: u16, content_type: &str, body: &str) {
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                if status < 400 { "OK" } else { "Error" },
                body.len()
            );
            let _ = self.stream.write_all(head.as_bytes()).and_then(|_| self.stream.write_all(body.as_bytes()));
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accept connections until `stop`; every request read arrives on the returned channel.
    pub fn serve(listener: TcpListener, stop: Arc<AtomicBool>) -> Receiver<Request> {
        let (tx, rx) = channel();
        listener.set_nonblocking(true).expect("non-blocking listener");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let tx = tx.clone();
                        std::thread::spawn(move || {
                            if let Some(req) = read_request(stream) {
                                let _ = tx.send(req);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx
    }

    fn read_request(stream: TcpStream) -> Option<Request> {
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let mut reader = BufReader::new(stream.try_clone().ok()?);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let (method, url) = (parts.next()?.to_string(), parts.next()?.to_string());
        let (mut length, mut chunked, mut expect_continue) = (0usize, false, false);
        loop {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':')?;
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => length = value.parse().ok()?,
                "transfer-encoding" => chunked = value.contains("chunked"),
                "expect" => expect_continue = value == "100-continue",
                _ => {}
            }
        }
        if expect_continue {
            (&stream).write_all(b"HTTP/1.1 100 Continue\r\n\r\n").ok()?;
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                reader.read_line(&mut line).ok()?;
                let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
                let mut chunk = vec![0; size + 2]; // the chunk and its CRLF
                reader.read_exact(&mut chunk).ok()?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body).ok()?;
        }
        Some(Request { method, url, body: String::from_utf8_lossy(&body).into_owned(), stream })
    }
}
