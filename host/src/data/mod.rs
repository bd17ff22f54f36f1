//! Users' datasets: JSON Lines, JSON arrays and Parquet files, directories and globs of shards, and Hugging Face
//! hub dataset ids resolved from the local hub cache ([`source`]). Rows reach the environment as JSON objects
//! through the SDK's `Environment::task_from_row`, so every environment, a third party's too, reads every format
//! without file code of its own. The host converts all rows when the run starts: a bad file, a shard that does not
//! parse or a row the environment cannot use stops it at once with one line naming the file and row.

pub mod files;
pub mod source;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use grpo_sdk::{Split, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plugins::EnvironmentPlugin;
use crate::user_error;

/// A dataset as the user named it (`--dataset`, `--eval-data`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// A file, a directory, a glob, or a hub dataset id (`openai/gsm8k`).
    pub source: String,
    /// The hub config (`main` for GSM8K): the top-level folder of a hub layout.
    #[serde(default)]
    pub config: Option<String>,
    /// The split (`train`, `test`): which files of a hub layout to read. `None`: `train` for `--dataset` and
    /// `test` for `--eval-data` in a hub layout, every file of a folder without split names.
    #[serde(default)]
    pub split: Option<String>,
}

/// Where a run's tasks come from besides the environment's own (`--dataset`, `--eval-data`, `--eval-holdout`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSettings {
    /// Training rows; `None`: the environment's own train split.
    #[serde(default)]
    pub dataset: Option<DatasetSpec>,
    /// Evaluation rows; `None`: the held-out rows of `dataset`, else the environment's eval split.
    #[serde(default)]
    pub eval_data: Option<DatasetSpec>,
    /// The last this many rows of `dataset` are held out for evaluation instead of training.
    #[serde(default)]
    pub eval_holdout: usize,
    /// Leave the training tasks whose opening prompt is longer than `--max-prompt-length` out of the run
    /// (`--filter-overlong-prompts`, verl's `filter_overlong_prompts`).
    #[serde(default)]
    pub filter_overlong_prompts: bool,
    /// Walk a finite task list in its own order every epoch instead of a fresh seeded permutation
    /// (`--shuffle-dataset false`: TRL's `shuffle_dataset`, verl's `data.shuffle`), as a curriculum wants.
    #[serde(default)]
    pub keep_order: bool,
}

/// The rows of a dataset, in file order, and where each came from.
pub struct Dataset {
    rows: Vec<Value>,
    /// Per row: its file (index into `files`) and its position in that file.
    origins: Vec<(usize, usize)>,
    files: Vec<PathBuf>,
}

impl Dataset {
    /// Read every file `spec` names; `flag` names the option in messages, `default_split` is the hub split read
    /// when `spec` names none.
    pub fn load(spec: &DatasetSpec, flag: &str, default_split: &str, allow_download: bool) -> Result<Dataset> {
        let files = source::resolve_files(spec, flag, default_split, allow_download)?;
        let mut rows = Vec::new();
        let mut origins = Vec::new();
        for (f, path) in files.iter().enumerate() {
            let file_rows =
                files::read_rows(path).map_err(|e| user_error!("{flag}: {}", crate::error::one_line(&e)))?;
            origins.extend((0..file_rows.len()).map(|i| (f, i)));
            rows.extend(file_rows);
        }
        if rows.is_empty() {
            return Err(user_error!("{flag} {}: no rows in {} file(s)", spec.source, files.len()));
        }
        Ok(Dataset { rows, origins, files })
    }

    /// A dataset of rows already in memory (tests, other front ends), all from `origin`.
    pub fn from_rows(rows: Vec<Value>, origin: PathBuf) -> Dataset {
        let origins = (0..rows.len()).map(|i| (0, i)).collect();
        Dataset { rows, origins, files: vec![origin] }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i`, a JSON object.
    pub fn row(&self, i: usize) -> &Value {
        &self.rows[i]
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Where row `i` came from, for messages: `FILE row N` (rows counted from 0 within the file).
    pub fn origin(&self, i: usize) -> String {
        let (f, row) = self.origins[i];
        format!("{} row {row}", self.files[f].display())
    }

    /// Rows `range` turned into tasks of `split` by `env`, with the number of rows it skipped. Task `i` of the
    /// result keeps the environment's id; the row's position is the index passed to it.
    pub fn tasks(&self, env: &EnvironmentPlugin, split: Split, range: Range<usize>, flag: &str) -> Result<TaskList> {
        let mut tasks = Vec::with_capacity(range.len());
        let mut skipped = 0;
        for i in range {
            match env.task_from_row(split, i as u64, &self.rows[i]) {
                Ok(Some(task)) => tasks.push(task),
                Ok(None) => skipped += 1,
                Err(e) => return Err(user_error!("{flag} {}: {}", self.origin(i), crate::error::one_line(&e))),
            }
        }
        Ok(TaskList { tasks, skipped })
    }
}

/// Tasks made from rows, and how many rows the environment skipped.
pub struct TaskList {
    /// The tasks, in row order.
    pub tasks: Vec<Task>,
    /// Rows for which the environment returned no task.
    pub skipped: usize,
}

/// One split's tasks: the environment's own, or a fixed list made from rows.
#[derive(Clone)]
pub enum TaskSet {
    /// `env.task(split, seed, index)`, as many as `env.task_count(split)` says.
    Env {
        /// The environment.
        env: EnvironmentPlugin,
        /// Which of its splits.
        split: Split,
    },
    /// Tasks made from a dataset's rows.
    Fixed(Arc<Vec<Task>>),
}

impl TaskSet {
    /// How many tasks; `None` for an unbounded generator.
    pub fn count(&self) -> Result<Option<u64>> {
        match self {
            TaskSet::Env { env, split } => env.task_count(*split),
            TaskSet::Fixed(tasks) => Ok(Some(tasks.len() as u64)),
        }
    }

    /// Task `index` for `seed` (the seed only matters to an environment's generator).
    pub fn task(&self, seed: u64, index: u64) -> Result<Task> {
        match self {
            TaskSet::Env { env, split } => env.task(*split, seed, index),
            TaskSet::Fixed(tasks) => tasks
                .get(index as usize)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("task {index} is past the {} tasks of the dataset", tasks.len())),
        }
    }
}

/// A run's tasks: what it trains on, and the held-out list when the data flags give one (`None`: the
/// environment's eval split).
pub struct RunTasks {
    /// The training tasks.
    pub train: TaskSet,
    /// Evaluation tasks from `--eval-data` or `--eval-holdout`.
    pub eval: Option<Arc<Vec<Task>>>,
}

impl DataSettings {
    /// An evaluation beside `--dataset` must name its tasks: the environment's own eval split is not drawn from that
    /// dataset (for `math` it is generated arithmetic), so scoring a GSM8K run on it would mislead. Like TRL, which
    /// refuses an eval strategy without an eval dataset, this is one line saying what to pass.
    pub fn check_eval_source(&self) -> Result<()> {
        match &self.dataset {
            Some(spec) if self.eval_data.is_none() && self.eval_holdout == 0 => Err(user_error!(
                "--dataset {}: evaluation would score the environment's own eval split, which is not drawn from \
                 this dataset; pass --eval-data FILE|DIR|ORG/NAME (for a hub dataset, its test split) or \
                 --eval-holdout N",
                spec.source
            )),
            _ => Ok(()),
        }
    }

    /// Load the datasets these settings name and turn their rows into `env`'s tasks; progress goes to stderr.
    pub fn resolve(&self, env: &EnvironmentPlugin, allow_download: bool) -> Result<RunTasks> {
        if self.eval_holdout > 0 && self.dataset.is_none() {
            return Err(user_error!("--eval-holdout {} needs --dataset (rows to hold out)", self.eval_holdout));
        }
        if self.eval_holdout > 0 && self.eval_data.is_some() {
            return Err(user_error!("give --eval-data or --eval-holdout, not both"));
        }
        let mut train = TaskSet::Env { env: env.clone(), split: Split::Train };
        let mut eval = None;
        if let Some(spec) = &self.dataset {
            let data = Dataset::load(spec, "--dataset", "train", allow_download)?;
            let n = data.len();
            if self.eval_holdout >= n {
                return Err(user_error!(
                    "--eval-holdout {}: --dataset {} has only {n} rows; hold out fewer",
                    self.eval_holdout,
                    spec.source
                ));
            }
            let cut = n - self.eval_holdout;
            let list = data.tasks(env, Split::Train, 0..cut, "--dataset")?;
            report("--dataset", spec, &data, &list);
            if list.tasks.is_empty() {
                return Err(user_error!("--dataset {}: the environment skipped every row", spec.source));
            }
            train = TaskSet::Fixed(Arc::new(list.tasks));
            if self.eval_holdout > 0 {
                let held = data.tasks(env, Split::Eval, cut..n, "--dataset")?;
                eval = Some(Arc::new(held.tasks));
            }
        }
        if let Some(spec) = &self.eval_data {
            let data = Dataset::load(spec, "--eval-data", "test", allow_download)?;
            let list = data.tasks(env, Split::Eval, 0..data.len(), "--eval-data")?;
            report("--eval-data", spec, &data, &list);
            eval = Some(Arc::new(list.tasks));
        }
        Ok(RunTasks { train, eval })
    }
}

fn report(flag: &str, spec: &DatasetSpec, data: &Dataset, list: &TaskList) {
    let skipped =
        if list.skipped > 0 { format!(", {} rows skipped by the environment", list.skipped) } else { String::new() };
    eprintln!("{flag} {}: {} tasks from {} file(s){skipped}", spec.source, list.tasks.len(), data.files().len());
}
