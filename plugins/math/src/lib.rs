//! The `math` environment plugin: re-grpo's base experiment. Arithmetic tasks come from a built-in seeded
//! generator, from a JSONL file in re-grpo's schema, or from any dataset the host reads (`--dataset`: GSM8K, MATH,
//! DeepMath, ... through a column mapping); the model answers inside `<answer></answer>` (or `\boxed{}` / `####`
//! when allowed) and is rewarded as re-grpo does (1.0 exact, 0.5 when the answer contains the oracle, 0.01 for
//! another found answer, 0 without one), comparing strings, numbers, or with the math equivalence of [`answer`].

pub mod answer;
mod expr;
mod rng;

use answer::{Compare, ReferenceFormat, ReplyFormat};
use grpo_sdk::{Environment, Error, Message, Metric, MetricSource, Result, Reward, Split, StepOutcome, Task};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Our own instruction (re-grpo's wording is not reused); the protocol tags are re-grpo's.
pub const DEFAULT_SYSTEM_PROMPT: &str = "Solve the arithmetic problem the user gives you. Think it through inside \
<think> </think>, then write only the final result inside <answer> </answer>, for example <answer>42</answer>.";

/// Options (`--env-config`, and the host's `--data-path` / `--max-prompts`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A JSONL file of tasks in re-grpo's schema (`question`, `answer`, `num_terms`, `num_digits`); without it,
    /// tasks come from the generator.
    pub data_path: Option<PathBuf>,
    /// Keep at most this many rows of the file that pass the filters (re-grpo's `--max-prompts`).
    pub max_prompts: usize,
    /// File filter: rows with more terms are skipped (re-grpo: 3).
    pub max_terms: u64,
    /// File filter: rows with more digits are skipped (re-grpo: 3).
    pub max_digits: u64,
    /// File filter: rows whose question has this many characters or more are skipped (re-grpo: 128).
    pub max_question_len: usize,
    /// How many of the file's kept rows (taken from the end) form the eval split; the rest is the train split.
    pub eval_rows: usize,
    /// The generator's settings.
    pub generator: GeneratorConfig,
    /// Compare the tagged answer with the oracle as numbers ("42.0", " 42 " count as exact) instead of as strings.
    pub numeric: bool,
    /// Replace the system prompt.
    pub system_prompt: Option<String>,
    /// When a reply has no tagged answer, score its last number instead: 1.0 when it equals the oracle as a number,
    /// else 0. Off by default (re-grpo's rule: no tag, no reward). A small model that never writes the tags, such
    /// as the default SmolLM2-135M, earns nothing under that rule and so never learns; this gives it a signal.
    pub last_number_fallback: bool,
    /// Dataset rows (`--dataset`, `--eval-data`): the column holding the question. A dotted path reaches into
    /// objects (`extra_info.question`); a list of chat messages (verl's `prompt`) gives its last user turn.
    pub question_key: String,
    /// Dataset rows: the column holding the reference answer (`reward_model.ground_truth` for verl files).
    pub answer_key: String,
    /// Dataset rows: where the reference sits in the answer column.
    pub answer_format: ReferenceFormat,
    /// How a reply states its answer, tried in order. Default: `<answer>` tags only (re-grpo's rule and our
    /// prompt); add `boxed` or `hashes` for models trained to write `\boxed{}` or `#### N`.
    pub reply_formats: Vec<ReplyFormat>,
    /// How the found answer is compared with the reference. Default: `math` for dataset rows, else `numeric` when
    /// `numeric` is set, else `string` (re-grpo).
    pub compare: Option<Compare>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_path: None,
            max_prompts: 1024,
            max_terms: 3,
            max_digits: 3,
            max_question_len: 128,
            eval_rows: 0,
            generator: GeneratorConfig::default(),
            numeric: false,
            system_prompt: None,
            last_number_fallback: false,
            question_key: "question".into(),
            answer_key: "answer".into(),
            answer_format: ReferenceFormat::Auto,
            reply_formats: vec![ReplyFormat::AnswerTag],
            compare: None,
        }
    }
}

/// The built-in task generator: `terms` numbers of up to `digits` digits joined by `ops`, with parentheses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Fewest terms per expression.
    pub min_terms: u32,
    /// Most terms per expression.
    pub max_terms: u32,
    /// Fewest digits per number.
    pub min_digits: u32,
    /// Most digits per number.
    pub max_digits: u32,
    /// The operators to draw from, any of `+`, `-`, `*`.
    pub ops: String,
    /// Probability that a multi-term sub-expression is put in parentheses.
    pub parentheses: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            min_terms: 2,
            max_terms: 3,
            min_digits: 1,
            max_digits: 3,
            ops: "+-*".into(),
            parentheses: 0.5,
        }
    }
}

/// One row of a re-grpo JSONL file.
#[derive(Deserialize)]
struct Row {
    question: String,
    answer: serde_json::Value,
    num_terms: u64,
    num_digits: u64,
}

/// The environment.
pub struct MathEnv {
    config: Config,
    /// Rows from `data_path`: (train, eval); `None` with the generator.
    data: Option<(Vec<Task>, Vec<Task>)>,
    skipped_rows: u64,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    episodes: AtomicU64,
    tagged: AtomicU64,
    partial: AtomicU64,
    exact: AtomicU64,
}

/// What the environment keeps per episode.
pub struct Episode {
    answer: String,
    compare: Compare,
}

/// The `meta` of tasks made from dataset rows, which are compared with the math equivalence by default.
const DATASET_META: &str = "dataset";

/// The reward re-grpo gives `completion` for the oracle answer `oracle` (`numeric`: compare as numbers).
pub fn reward(completion: &str, oracle: &str, numeric: bool) -> f64 {
    // re.search(r"<answer>(.*?)</answer>", completion, re.DOTALL): the first opening tag with a closing one after
    // it; the captured text is not stripped.
    let compare = if numeric { Compare::Numeric } else { Compare::String };
    reward_with(completion, oracle, compare, &[ReplyFormat::AnswerTag])
}

/// re-grpo's reward values for the answer found in `completion` by the first of `formats` that finds one: 1.0
/// when it equals `oracle` under `compare`, 0.5 when it contains it, 0.01 for another answer, 0 when none is found.
pub fn reward_with(completion: &str, oracle: &str, compare: Compare, formats: &[ReplyFormat]) -> f64 {
    let Some(answer) = answer::find_reply_answer(completion, formats) else {
        return 0.0;
    };
    if answer::same(answer, oracle, compare) {
        1.0
    } else if answer.contains(oracle) {
        0.5
    } else {
        0.01
    }
}

/// The last number in `text` (an optional minus sign, digits, an optional decimal part), if any.
pub fn last_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut end = bytes.len();
    while end > 0 && !bytes[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && (bytes[start - 1].is_ascii_digit() || bytes[start - 1] == b'.') {
        start -= 1;
    }
    // A '.' can only sit between digits: "8." at the end of a sentence is the number 8.
    while bytes[start] == b'.' {
        start += 1;
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    Some(&text[start..end])
}

/// [`reward`], or with `fallback` and no tagged answer, the last number's score (1.0 when it equals the oracle as
/// a number, else 0). Returns the reward and whether the reply had a tagged answer.
pub fn score(completion: &str, oracle: &str, numeric: bool, fallback: bool) -> (f64, bool) {
    let compare = if numeric { Compare::Numeric } else { Compare::String };
    score_with(completion, oracle, compare, &[ReplyFormat::AnswerTag], fallback)
}

/// [`reward_with`], or with `fallback` and no answer in any of `formats`, the last number's score (1.0 when it
/// equals the oracle as a number, else 0). Returns the reward and whether the reply stated an answer.
pub fn score_with(
    completion: &str,
    oracle: &str,
    compare: Compare,
    formats: &[ReplyFormat],
    fallback: bool,
) -> (f64, bool) {
    let tagged = answer::find_reply_answer(completion, formats).is_some();
    if tagged || !fallback {
        return (reward_with(completion, oracle, compare, formats), tagged);
    }
    if compare == Compare::Math {
        // Thousands separators would split the last number ("1,000" would read as 000).
        let chars: Vec<char> = completion.chars().collect();
        let joined: String = chars
            .iter()
            .enumerate()
            .filter(|&(i, &c)| {
                !(c == ','
                    && i > 0
                    && chars[i - 1].is_ascii_digit()
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            })
            .map(|(_, &c)| c)
            .collect();
        let same = last_number(&joined).is_some_and(|n| answer::equivalent(n, oracle));
        return (if same { 1.0 } else { 0.0 }, false);
    }
    let same = match (last_number(completion).map(str::parse::<f64>), oracle.trim().parse::<f64>()) {
        (Some(Ok(a)), Ok(b)) => a == b,
        _ => false,
    };
    (if same { 1.0 } else { 0.0 }, false)
}

impl MathEnv {
    fn load(config: &Config, path: &PathBuf) -> Result<(Vec<Task>, Vec<Task>, u64)> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::msg(format!("data_path {}: cannot read it: {e}", path.display())))?;
        let mut tasks = Vec::new();
        let mut skipped = 0u64;
        for (line_no, line) in text.lines().enumerate() {
            if tasks.len() >= config.max_prompts {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            // Malformed rows are skipped (and counted), as re-grpo's reader does.
            let Ok(row) = serde_json::from_str::<Row>(line) else {
                skipped += 1;
                continue;
            };
            let answer = match &row.answer {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => {
                    skipped += 1;
                    continue;
                }
            };
            if row.question.chars().count() < config.max_question_len
                && row.num_terms <= config.max_terms
                && row.num_digits <= config.max_digits
            {
                let mut task = Task::new(format!("line-{}", line_no + 1), row.question, answer);
                task.meta = serde_json::json!({"num_terms": row.num_terms, "num_digits": row.num_digits});
                tasks.push(task);
            }
        }
        if tasks.len() <= config.eval_rows {
            return Err(Error::msg(format!(
                "data_path {}: {} usable rows (of which eval_rows = {} are held out), {skipped} malformed; \
                 expected JSON lines with question, answer, num_terms, num_digits within the filters",
                path.display(),
                tasks.len(),
                config.eval_rows
            )));
        }
        let eval = tasks.split_off(tasks.len() - config.eval_rows);
        Ok((tasks, eval, skipped))
    }

    /// The question and reference of a dataset row through the column mapping.
    fn row_task(&self, index: u64, row: &serde_json::Value) -> Result<Option<Task>> {
        let c = &self.config;
        let question = match column(row, &c.question_key, "question_key")? {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(messages) => last_user_turn(messages).ok_or_else(|| {
                Error::msg(format!("column `{}` is a list without a user message with text content", c.question_key))
            })?,
            other => {
                return Err(Error::msg(format!(
                    "column `{}` holds {other}, not text; point question_key at the question",
                    c.question_key
                )))
            }
        };
        let answer_text = match column(row, &c.answer_key, "answer_key")? {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(Error::msg(format!(
                    "column `{}` holds {other}, not text or a number; point answer_key at the answer",
                    c.answer_key
                )))
            }
        };
        // A row whose solution lacks the marker asked for (no `####`, no `\boxed{}`) has no gradable answer.
        let Some(reference) = answer::reference(&answer_text, c.answer_format) else {
            return Ok(None);
        };
        let mut task = Task::new(format!("row-{index}"), question.trim(), reference);
        task.meta = serde_json::json!({"source": DATASET_META});
        Ok(Some(task))
    }

    fn compare_for(&self, task: &Task) -> Compare {
        let from_dataset = task.meta.get("source").and_then(|s| s.as_str()) == Some(DATASET_META);
        match self.config.compare {
            Some(c) => c,
            None if from_dataset => Compare::Math,
            None if self.config.numeric => Compare::Numeric,
            None => Compare::String,
        }
    }

    fn check_generator(g: &GeneratorConfig) -> Result<()> {
        let bad = |what: String| Err(Error::msg(format!("invalid config: generator.{what}")));
        if g.min_terms < 1 || g.min_terms > g.max_terms || g.max_terms > 12 {
            return bad(format!(
                "min_terms/max_terms must satisfy 1 <= min <= max <= 12, got {}..{}",
                g.min_terms, g.max_terms
            ));
        }
        if g.min_digits < 1 || g.min_digits > g.max_digits || g.max_digits > 9 {
            return bad(format!(
                "min_digits/max_digits must satisfy 1 <= min <= max <= 9, got {}..{}",
                g.min_digits, g.max_digits
            ));
        }
        if g.ops.is_empty() || g.ops.chars().any(|c| !"+-*".contains(c)) {
            return bad(format!("ops must be a non-empty mix of + - *, got {:?}", g.ops));
        }
        if !(0.0..=1.0).contains(&g.parentheses) {
            return bad(format!("parentheses must be a probability, got {}", g.parentheses));
        }
        Ok(())
    }
}

impl MetricSource for MathEnv {
    /// Shares of the episodes finished since the previous call: with an answer tag, containing the oracle (and
    /// exact), exact. Nothing when no episode finished.
    fn metrics(&self) -> Vec<Metric> {
        let c = &self.counts;
        let episodes = c.episodes.swap(0, Ordering::Relaxed);
        let tagged = c.tagged.swap(0, Ordering::Relaxed);
        let partial = c.partial.swap(0, Ordering::Relaxed);
        let exact = c.exact.swap(0, Ordering::Relaxed);
        if episodes == 0 {
            return Vec::new();
        }
        let n = episodes as f64;
        vec![
            Metric::number("math/answer_tag_rate", tagged as f64 / n),
            Metric::number("math/contains_oracle_rate", (partial + exact) as f64 / n),
            Metric::number("math/exact_rate", exact as f64 / n),
        ]
    }
}

impl grpo_sdk::Plugin for MathEnv {
    const NAME: &'static str = "math";
    const DESCRIPTION: &'static str =
        "Arithmetic in <answer></answer>: seeded generator or re-grpo JSONL; 1 / 0.5 / 0.01 / 0";

    fn new(config: serde_json::Value) -> Result<Self> {
        let config: Config = grpo_sdk::parse_config(config)?;
        Self::check_generator(&config.generator)?;
        let (data, skipped_rows) = match &config.data_path {
            Some(path) => {
                let (train, eval, skipped) = Self::load(&config, path)?;
                (Some((train, eval)), skipped)
            }
            None => (None, 0),
        };
        Ok(MathEnv { config, data, skipped_rows, counts: Counts::default() })
    }

    fn config(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.config).unwrap_or_default();
        if self.data.is_some() {
            value["skipped_rows"] = self.skipped_rows.into();
        }
        value
    }
}

impl Environment for MathEnv {
    type State = Episode;

    fn task_count(&self, split: Split) -> Option<u64> {
        let (train, eval) = self.data.as_ref()?;
        Some(match split {
            Split::Train => train.len(),
            Split::Eval => eval.len(),
        } as u64)
    }

    fn task(&self, split: Split, seed: u64, index: u64) -> Result<Task> {
        match &self.data {
            Some((train, eval)) => {
                let rows = if split == Split::Train { train } else { eval };
                rows.get(index as usize).cloned().ok_or_else(|| {
                    Error::msg(format!("task index {index} is past the {} tasks of the {split:?} split", rows.len()))
                })
            }
            None => {
                let g = &self.config.generator;
                let mut rng = rng::for_item(seed, split as u64, index);
                let (expression, terms, digits) = expr::generate(&mut rng, g);
                let value = expr::evaluate(&expression)
                    .ok_or_else(|| Error::msg(format!("generated expression {expression:?} overflowed")))?;
                const TEMPLATES: [&str; 5] =
                    ["{}", "{} =", "What is {}?", "Compute {}.", "Calculate {} and give the result."];
                let template = TEMPLATES[rng.below(TEMPLATES.len() as u64) as usize];
                let split_name = if split == Split::Train { "train" } else { "eval" };
                let mut task = Task::new(
                    format!("gen-{split_name}-{seed}-{index}"),
                    template.replace("{}", &expression),
                    value.to_string(),
                );
                task.meta = serde_json::json!({"num_terms": terms, "num_digits": digits});
                Ok(task)
            }
        }
    }

    fn reset(&self, task: &Task) -> Result<(Episode, Vec<Message>)> {
        let system = self.config.system_prompt.as_deref().unwrap_or(DEFAULT_SYSTEM_PROMPT);
        let episode = Episode { answer: task.answer.clone(), compare: self.compare_for(task) };
        Ok((episode, vec![Message::system(system), Message::user(&task.question)]))
    }

    fn step(&self, episode: &mut Episode, assistant_text: &str) -> Result<StepOutcome> {
        let c = &self.config;
        let (value, tagged) =
            score_with(assistant_text, &episode.answer, episode.compare, &c.reply_formats, c.last_number_fallback);
        let c = &self.counts;
        c.episodes.fetch_add(1, Ordering::Relaxed);
        if tagged {
            c.tagged.fetch_add(1, Ordering::Relaxed);
        }
        if value == 0.5 {
            c.partial.fetch_add(1, Ordering::Relaxed);
        }
        if value == 1.0 {
            c.exact.fetch_add(1, Ordering::Relaxed);
        }
        Ok(StepOutcome::finished(vec![Reward::new("answer", value)]).judged(value == 1.0))
    }

    /// A dataset row through `question_key` / `answer_key`; see [`Config`].
    fn task_from_row(&self, _split: Split, index: u64, row: &serde_json::Value) -> Result<Option<Task>> {
        self.row_task(index, row)
    }

    /// The reference answer alone in the tags, `<answer>ANSWER</answer>`: reward 1.0. No reasoning is written, so a
    /// small model warmed up on it learns the format without copying made-up steps.
    fn demonstration(&self, task: &Task) -> Result<Option<Vec<String>>> {
        if task.answer.is_empty() {
            return Ok(None);
        }
        Ok(Some(vec![format!("<answer>{}</answer>", task.answer)]))
    }
}

/// The value at a dotted `path` of a row; a missing column is an error naming it, the option, and the row's
/// columns.
fn column<'a>(row: &'a serde_json::Value, path: &str, option: &str) -> Result<&'a serde_json::Value> {
    let mut value = row;
    for part in path.split('.') {
        value = match value.get(part) {
            Some(v) if !v.is_null() => v,
            _ => {
                let columns: Vec<&str> =
                    row.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
                return Err(Error::msg(format!(
                    "no column `{path}` (the row has: {}); set {option} in --env-config",
                    columns.join(", ")
                )));
            }
        };
    }
    Ok(value)
}

/// The text of the last user message of a chat-format list (`[{"role": "user", "content": "..."}]`).
fn last_user_turn(messages: &[serde_json::Value]) -> Option<String> {
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(|r| r.as_str()) == Some("user"))
        .and_then(|m| m.get("content")?.as_str().map(str::to_string))
}

grpo_sdk::export_plugins!(environment MathEnv);
