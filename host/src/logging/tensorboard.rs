//! TensorBoard event files, re-grpo's fallback when W&B is off: TFRecord framing (`len | masked crc32c(len) | data |
//! masked crc32c(data)`) around `Event` protos; scalars as `simple_value`, text (completion tables) through the text
//! plugin's string tensors. Hand-written prost structs, so neither protoc nor TensorFlow is needed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::{jsonl::unix_now, CompletionRow, MetricValue, Metrics, Sink, Table};

/// `tensorboard.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event carries.
    #[prost(oneof = "EventWhat", tags = "3, 5, 7")]
    pub what: Option<EventWhat>,
}

/// The event kinds we write.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventWhat {
    /// `brain.Event:2`, the first event of a file.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Values.
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// A session event; `START` at a step makes TensorBoard discard older events at that step and later.
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorboard.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// 1 = START (a restart: TensorBoard's readers purge events at or after this event's step).
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// Free text.
    #[prost(string, tag = "3")]
    pub msg: String,
}

/// `SessionLog.START`.
pub const SESSION_START: i32 = 1;

/// `tensorboard.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorboard.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The tag (metric name).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The value.
    #[prost(oneof = "ValueKind", tags = "2, 8")]
    pub value: Option<ValueKind>,
    /// Which plugin reads it.
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// The value kinds we write.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    /// A scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// A tensor (text).
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorboard.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorboard.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// The plugin's name (`text`).
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// Plugin-specific content.
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorboard.TensorProto`, only what a string scalar needs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// 7 = DT_STRING.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Empty shape: a scalar.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    /// The strings.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorboard.TensorShapeProto` (no dimensions: a scalar).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShape {}

/// CRC-32C, masked as TFRecord does (so a CRC of data containing CRCs stays well distributed).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord frame.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// Writes `events.out.tfevents.<secs>.<host>.<pid>.0` in a directory.
pub struct TensorBoardSink {
    file: Option<File>,
    path: PathBuf,
}

impl TensorBoardSink {
    /// Create the directory and the event file (with its `brain.Event:2` header event).
    pub fn create(dir: &Path) -> std::io::Result<TensorBoardSink> {
        Self::create_resumed(dir, None)
    }

    /// [`TensorBoardSink::create`] for a run that continues at `resume_from_step`: the new file starts with a
    /// `SessionLog START` at that step, TensorBoard's restart marker, so its readers drop what the stopped run's files
    /// hold from that step on (event files are never rewritten).
    pub fn create_resumed(dir: &Path, resume_from_step: Option<u64>) -> std::io::Result<TensorBoardSink> {
        std::fs::create_dir_all(dir)?;
        let now = unix_now();
        // The trailing counter keeps a second file of the same second and process (a resume in-process) from
        // replacing the first; TensorBoard reads them in name order.
        let mut counter = 0;
        let (file, path) = loop {
            let name = format!(
                "events.out.tfevents.{}.{}.{}.{counter}",
                now as u64,
                super::wandb::run_file::hostname(),
                std::process::id()
            );
            let path = dir.join(name);
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && counter < 1000 => counter += 1,
                Err(e) => return Err(e),
            }
        };
        let mut sink = TensorBoardSink { file: Some(file), path };
        sink.write(Event { wall_time: now, step: 0, what: Some(EventWhat::FileVersion("brain.Event:2".into())) });
        if let Some(step) = resume_from_step {
            let log = SessionLog { status: SESSION_START, msg: format!("resumed at step {step}") };
            sink.write(Event { wall_time: now, step: step as i64, what: Some(EventWhat::SessionLog(log)) });
        }
        Ok(sink)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: Event) {
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(&frame(&event.encode_to_vec())) {
                eprintln!("warning: TensorBoard file {} stopped: {e}", self.path.display());
                self.file = None;
            }
        }
    }

    fn text(&mut self, step: u64, tag: &str, text: &str) {
        let value = SummaryValue {
            tag: tag.to_string(),
            value: Some(ValueKind::Tensor(TensorProto {
                dtype: 7,
                tensor_shape: Some(TensorShape {}),
                string_val: vec![text.as_bytes().to_vec()],
            })),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData { plugin_name: "text".into(), content: vec![] }),
            }),
        };
        self.write(Event {
            wall_time: unix_now(),
            step: step as i64,
            what: Some(EventWhat::Summary(Summary { value: vec![value] })),
        });
    }
}

/// A table cell's text for markdown: pipes escaped, line breaks as `<br>`.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

/// A [`Table`] as markdown, for TensorBoard's text plugin (strings as they are, other cells as JSON).
pub fn table_markdown(table: &Table) -> String {
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line(table.columns.iter().map(|c| cell(c)).collect());
    out.push_str(&format!("|{}\n", "---|".repeat(table.columns.len())));
    for row in &table.rows {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => cell(s),
            serde_json::Value::Null => String::new(),
            other => cell(&other.to_string()),
        };
        out.push_str(&line(row.iter().map(text).collect()));
    }
    out
}

/// A completions table as markdown, for TensorBoard's text plugin.
pub fn completions_markdown(rows: &[CompletionRow]) -> String {
    let keys: std::collections::BTreeSet<&String> = rows.iter().flat_map(|r| r.rewards.keys()).collect();
    let mut out = String::from("| step | prompt | completion |");
    for k in &keys {
        out.push_str(&format!(" {} |", cell(k)));
    }
    out.push_str(" advantage |\n|");
    out.push_str(&"---|".repeat(keys.len() + 4));
    out.push('\n');
    for r in rows {
        out.push_str(&format!("| {} | {} | {} |", r.step, cell(&r.prompt), cell(&r.completion)));
        for k in &keys {
            out.push_str(&format!(" {} |", r.rewards.get(*k).map(|x| format!("{x:.4}")).unwrap_or_default()));
        }
        out.push_str(&format!(" {:.4} |\n", r.advantage));
    }
    out
}

impl Sink for TensorBoardSink {
    fn name(&self) -> &'static str {
        "tensorboard"
    }

    fn log(&mut self, step: u64, row: &Metrics) {
        let mut values = Vec::new();
        let mut texts = Vec::new();
        for (k, v) in row {
            match v {
                MetricValue::Number(x) => values.push(SummaryValue {
                    tag: k.clone(),
                    value: Some(ValueKind::SimpleValue(*x as f32)),
                    metadata: None,
                }),
                MetricValue::Text(t) => texts.push((k, t)),
            }
        }
        if !values.is_empty() {
            self.write(Event {
                wall_time: unix_now(),
                step: step as i64,
                what: Some(EventWhat::Summary(Summary { value: values })),
            });
        }
        for (k, t) in texts {
            self.text(step, k, t);
        }
    }

    fn log_completions(&mut self, step: u64, rows: &[CompletionRow]) {
        if !rows.is_empty() {
            self.text(step, "completions", &completions_markdown(rows));
        }
    }

    fn log_table(&mut self, step: u64, table: &Table) {
        if !table.rows.is_empty() {
            self.text(step, &table.key, &table_markdown(table));
        }
    }

    fn flush_durable(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }

    fn finish(&mut self, _exit_code: i32) {
        if let Some(f) = &mut self.file {
            let _ = f.sync_all();
        }
        self.file = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_markdown() {
        let table = Table {
            key: "eval/completions".into(),
            columns: vec!["question".into(), "return".into(), "solved".into()],
            rows: vec![vec!["a|b\nc".into(), 1.5.into(), serde_json::Value::Null]],
        };
        assert_eq!(table_markdown(&table), "| question | return | solved |\n|---|---|---|\n| a\\|b<br>c | 1.5 |  |\n");
    }

    #[test]
    fn crc32c_vectors() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn event_bytes_match_the_reference_example() {
        let e = Event {
            wall_time: 1.5,
            step: 3,
            what: Some(EventWhat::Summary(Summary {
                value: vec![SummaryValue { tag: "a".into(), value: Some(ValueKind::SimpleValue(0.5)), metadata: None }],
            })),
        };
        let expected = [
            0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, 0x10, 0x03, 0x2a, 0x0a, 0x0a, 0x08, 0x0a, 0x01, 0x61, 0x15, 0, 0, 0,
            0x3f,
        ];
        assert_eq!(e.encode_to_vec(), expected);
        let framed = frame(&expected);
        assert_eq!(&framed[..8], &(expected.len() as u64).to_le_bytes());
        assert_eq!(&framed[8..12], &masked_crc32c(&framed[..8]).to_le_bytes());
        assert_eq!(&framed[framed.len() - 4..], &masked_crc32c(&expected).to_le_bytes());
    }
}
