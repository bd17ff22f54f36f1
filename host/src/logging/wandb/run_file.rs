//! W&B's run directory and its `.wandb` file: `<root>/wandb/offline-run-<YYYYMMDD_HHMMSS>-<id>/run-<id>.wandb` (or
//! `run-…` for online runs), with `files/` beside it. Records: the run (with config) first, then per step a history
//! row and a summary update, and an exit record last; `wandb sync` uploads exactly this.

use std::fs::File;
use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::*;
use super::store::StoreWriter;

/// What goes into the run record.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// Entity, empty for the server's default.
    pub entity: String,
    /// Project.
    pub project: String,
    /// Display name.
    pub display_name: String,
    /// Group.
    pub group: String,
    /// Job type.
    pub job_type: String,
    /// Notes.
    pub notes: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Host name.
    pub host: String,
    /// Start, seconds since the Unix epoch.
    pub start_time: f64,
    /// Whether this continues an earlier run: sets `resumed` and wandb 0.31's `resume`, with which `wandb sync`
    /// queries the run's history length and appends after it instead of overwriting from line 0.
    pub resumed: bool,
    /// The first step this segment logs.
    pub starting_step: i64,
    /// Config as (key, JSON value).
    pub config: Vec<(String, String)>,
}

/// The record stream of one run file.
pub struct RunFile<W: std::io::Write> {
    store: StoreWriter<W>,
}

impl<W: std::io::Write> RunFile<W> {
    /// Start a run file: header and run record.
    pub fn start(out: W, info: &RunInfo) -> std::io::Result<Self> {
        let mut file = RunFile { store: StoreWriter::new(out)? };
        let secs = info.start_time.floor();
        let run = RunRecord {
            run_id: info.run_id.clone(),
            entity: info.entity.clone(),
            project: info.project.clone(),
            config: Some(ConfigRecord { update: items(&info.config), remove: vec![] }),
            run_group: info.group.clone(),
            job_type: info.job_type.clone(),
            display_name: info.display_name.clone(),
            notes: info.notes.clone(),
            tags: info.tags.clone(),
            host: info.host.clone(),
            starting_step: info.starting_step,
            start_time: Some(Timestamp { seconds: secs as i64, nanos: ((info.start_time - secs) * 1e9) as i32 }),
            resumed: info.resumed,
            resume: info.resumed,
        };
        file.write(RecordType::Run(run))?;
        Ok(file)
    }

    /// Continue a run file: the header and `records` (serialized `Record`s, typically what survived of an earlier
    /// file) are written to `out`, then appending goes on after them.
    pub fn continue_with(out: W, records: &[Vec<u8>]) -> std::io::Result<Self> {
        let mut store = StoreWriter::new(out)?;
        for r in records {
            store.append(r)?;
        }
        Ok(RunFile { store })
    }

    /// Append one record.
    pub fn write(&mut self, record: RecordType) -> std::io::Result<()> {
        let rec = Record { num: 0, record_type: Some(record) };
        self.store.append(&rec.encode_to_vec())
    }

    /// A history row: `items` are (key, value JSON); `_step` is added from `step`.
    pub fn history(&mut self, step: i64, items: &[(String, String)]) -> std::io::Result<()> {
        let mut all = vec![HistoryItem { key: "_step".into(), nested_key: vec![], value_json: step.to_string() }];
        all.extend(self::items(items).into_iter().filter(|i| i.key != "_step"));
        self.write(RecordType::History(HistoryRecord { item: all, step: Some(HistoryStep { num: step }) }))
    }

    /// Summary updates (key, value JSON).
    pub fn summary(&mut self, items: &[(String, String)]) -> std::io::Result<()> {
        self.write(RecordType::Summary(SummaryRecord { update: self::items(items), remove: vec![] }))
    }

    /// Files under `files/` for the uploader (media such as tables), uploaded now.
    pub fn files(&mut self, paths: &[String]) -> std::io::Result<()> {
        let files = paths.iter().map(|p| FilesItem { path: p.clone(), policy: 0, r#type: 2 }).collect();
        self.write(RecordType::Files(FilesRecord { files }))
    }

    /// The exit record (0 = success).
    pub fn exit(&mut self, exit_code: i32, runtime_secs: i32) -> std::io::Result<()> {
        self.write(RecordType::Exit(RunExitRecord { exit_code, runtime: runtime_secs }))
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        self.store.get_mut()
    }
}

fn items(pairs: &[(String, String)]) -> Vec<HistoryItem> {
    pairs.iter().map(|(k, v)| HistoryItem { key: k.clone(), nested_key: vec![], value_json: v.clone() }).collect()
}

/// The local time as `YYYYMMDD_HHMMSS`, as W&B names run directories.
pub fn timespec(unix_secs: i64) -> String {
    // SAFETY: localtime_r only writes the tm struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t = unix_secs as libc::time_t;
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return "19700101_000000".to_string();
    }
    format!(
        "{:04}{:02}{:02}_{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// The run directory for `run_id` under the root (`<root>/wandb`, or `<root>/.wandb` if that exists).
pub fn run_dir_path(root: &Path, offline: bool, start_secs: i64, run_id: &str) -> PathBuf {
    let wandb_dir = if root.join(".wandb").is_dir() { root.join(".wandb") } else { root.join("wandb") };
    let prefix = if offline { "offline-run" } else { "run" };
    wandb_dir.join(format!("{prefix}-{}-{run_id}", timespec(start_secs)))
}

/// Create the run directory (with `files/` and `logs/`) and open `run-<id>.wandb` in it.
pub fn create_run_dir(dir: &Path, run_id: &str) -> std::io::Result<(File, PathBuf)> {
    std::fs::create_dir_all(dir.join("files"))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let path = dir.join(format!("run-{run_id}.wandb"));
    let file = File::create(&path)?;
    Ok((file, path))
}

/// The host name, for the run record.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/internals/wandb-format.md §2.5, also produced independently by
    /// tests/oracles/wandb_golden.py with W&B's own protobuf classes into tests/fixtures/logging/golden_small.wandb.
    #[test]
    fn small_run_matches_the_golden_file() {
        let golden =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/logging/golden_small.wandb"))
                .expect("tests/fixtures/logging/golden_small.wandb (regenerate with tests/oracles/wandb_golden.py)");
        let info = RunInfo { run_id: "abc12345".into(), project: "p".into(), ..Default::default() };
        // The golden run has no config, start time or step; write its records directly.
        let mut store = StoreWriter::new(Vec::new()).unwrap();
        let run = RunRecord { run_id: info.run_id.clone(), project: info.project.clone(), ..Default::default() };
        for r in [
            RecordType::Run(run),
            RecordType::History(HistoryRecord {
                item: items(&[("_step".into(), "0".into()), ("loss".into(), "0.5".into())]),
                step: Some(HistoryStep { num: 0 }),
            }),
            RecordType::Summary(SummaryRecord { update: items(&[("loss".into(), "0.5".into())]), remove: vec![] }),
            RecordType::Exit(RunExitRecord { exit_code: 0, runtime: 0 }),
        ] {
            store.append(&Record { num: 0, record_type: Some(r) }.encode_to_vec()).unwrap();
        }
        let bytes = std::mem::take(store.get_mut());
        assert_eq!(bytes.len(), 101);
        assert_eq!(bytes, golden);

        // The same history through RunFile::history: `_step` comes first and is not duplicated.
        let mut f = RunFile { store: StoreWriter::new(Vec::new()).unwrap() };
        f.history(0, &[("_step".into(), "7".into()), ("loss".into(), "0.5".into())]).unwrap();
        let (records, _) = super::super::store::read_records(f.get_mut()).unwrap();
        let rec = Record::decode(records[0].as_slice()).unwrap();
        let Some(RecordType::History(h)) = rec.record_type else { panic!("not history") };
        let keys: Vec<_> = h.item.iter().map(|i| (i.key.as_str(), i.value_json.as_str())).collect();
        assert_eq!(keys, vec![("_step", "0"), ("loss", "0.5")]);
    }

    #[test]
    fn run_dirs_are_named_like_wandbs() {
        let name = run_dir_path(Path::new("/r"), true, 0, "abc").file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("offline-run-19") || name.starts_with("offline-run-20"), "{name}");
        assert!(name.ends_with("-abc") && name.len() == "offline-run-YYYYMMDD_HHMMSS-abc".len(), "{name}");
    }
}
