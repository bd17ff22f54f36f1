//! The few `wandb_internal` protobuf messages a run file needs, written by hand with prost's derive (field numbers
//! from wandb 0.31.0's descriptors; see docs/internals/wandb-format.md §3.1). Unknown fields are ignored by W&B's
//! reader, so only what we write is declared.

/// One logical record of the run file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// Sequence number (optional in files).
    #[prost(int64, tag = "1")]
    pub num: i64,
    /// What the record is.
    #[prost(oneof = "RecordType", tags = "2, 3, 5, 6, 17, 18")]
    pub record_type: Option<RecordType>,
}

/// The record kinds we write.
// Records live only while being encoded, so the size of the run variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RecordType {
    /// A history row.
    #[prost(message, tag = "2")]
    History(HistoryRecord),
    /// Summary updates.
    #[prost(message, tag = "3")]
    Summary(SummaryRecord),
    /// Config updates.
    #[prost(message, tag = "5")]
    Config(ConfigRecord),
    /// Files to upload from the run's `files/` directory.
    #[prost(message, tag = "6")]
    Files(FilesRecord),
    /// The run itself; must be the first record.
    #[prost(message, tag = "17")]
    Run(RunRecord),
    /// The end of the run.
    #[prost(message, tag = "18")]
    Exit(RunExitRecord),
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The run's identity and metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunRecord {
    /// The run id.
    #[prost(string, tag = "1")]
    pub run_id: String,
    /// The entity (empty: the server's default).
    #[prost(string, tag = "2")]
    pub entity: String,
    /// The project.
    #[prost(string, tag = "3")]
    pub project: String,
    /// The config.
    #[prost(message, optional, tag = "4")]
    pub config: Option<ConfigRecord>,
    /// The group.
    #[prost(string, tag = "6")]
    pub run_group: String,
    /// The job type.
    #[prost(string, tag = "7")]
    pub job_type: String,
    /// The display name.
    #[prost(string, tag = "8")]
    pub display_name: String,
    /// Notes.
    #[prost(string, tag = "9")]
    pub notes: String,
    /// Tags.
    #[prost(string, repeated, tag = "10")]
    pub tags: Vec<String>,
    /// The host name.
    #[prost(string, tag = "13")]
    pub host: String,
    /// The first step of this (resumed) segment.
    #[prost(int64, tag = "14")]
    pub starting_step: i64,
    /// When the run started.
    #[prost(message, optional, tag = "17")]
    pub start_time: Option<Timestamp>,
    /// Whether this continues an earlier run.
    #[prost(bool, tag = "18")]
    pub resumed: bool,
    /// Ask `wandb sync` to continue an existing run (wandb 0.31).
    #[prost(bool, tag = "24")]
    pub resume: bool,
}

/// A config key and its JSON value (same fields as a history value).
pub type ConfigItem = HistoryItem;

/// Config changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigRecord {
    /// Keys set.
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ConfigItem>,
    /// Keys removed.
    #[prost(message, repeated, tag = "2")]
    pub remove: Vec<ConfigItem>,
}

/// A history value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryItem {
    /// The metric name (flat: `training_step/loss` stays one key).
    #[prost(string, tag = "1")]
    pub key: String,
    /// A path of keys, instead of `key`.
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    /// The value as W&B JSON (`NaN`, `Infinity` allowed).
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// The step of a history row.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryStep {
    /// The step.
    #[prost(int64, tag = "1")]
    pub num: i64,
}

/// One history row.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryRecord {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub item: Vec<HistoryItem>,
    /// The step.
    #[prost(message, optional, tag = "2")]
    pub step: Option<HistoryStep>,
}

/// A summary value (same shape as a history value).
pub type SummaryItem = HistoryItem;

/// Summary changes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryRecord {
    /// Keys set.
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<SummaryItem>,
    /// Keys removed.
    #[prost(message, repeated, tag = "2")]
    pub remove: Vec<SummaryItem>,
}

/// One file for the uploader.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FilesItem {
    /// Path relative to the run's `files/` directory.
    #[prost(string, tag = "1")]
    pub path: String,
    /// When to upload: 0 = now, 1 = at the end, 2 = live.
    #[prost(int32, tag = "2")]
    pub policy: i32,
    /// 0 = other, 1 = wandb, 2 = media, 3 = artifact.
    #[prost(int32, tag = "3")]
    pub r#type: i32,
}

/// Files to upload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FilesRecord {
    /// The files.
    #[prost(message, repeated, tag = "1")]
    pub files: Vec<FilesItem>,
}

/// The end of the run.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunExitRecord {
    /// 0 = finished, anything else = failed.
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    /// Seconds the run took.
    #[prost(int32, tag = "2")]
    pub runtime: i32,
}
