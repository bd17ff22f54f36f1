//! The `multiturn_qa` environment: re-grpo's multi-turn QA with a search tool.
//!
//! Turn one: the model searches the corpus with `<tool:search>QUERY</tool>` (or a Hermes `<tool_call>`); the
//! environment answers with the top-k chunks by BM25 or, with `"retriever": "dense"`, by the cosine similarity of
//! all-MiniLM-L6-v2 sentence embeddings ([`search`], [`dense`]). Turn two: the model answers inside
//! `<answer>...</answer>`. Rewards follow re-grpo's table and gating ([`grpo_toolcall::protocol`]).
//!
//! Out of the box it searches a built-in corpus of made-up research stations ([`builtin`]); `--env-config` points it
//! at a directory of markdown or text files and a questions file in re-grpo's schema ([`QaConfig`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use grpo_sdk::{Environment, Error, Message, Metric, MetricSource, Result, Split, StepOutcome, Task, ToolSpec};
use grpo_toolcall::env::{self, json_text, Wording};
use grpo_toolcall::protocol::{self, Episode, RewardTable, ToolCall, ToolFormat};
use grpo_toolcall::{calc, stats::FlagCounters};
use serde::{Deserialize, Serialize};

pub mod answer;
pub mod bert;
pub mod builtin;
pub mod corpus;
pub mod dense;
pub mod search;

use answer::AnswerMatch;
use search::RetrieverKind;

/// The `--env-config` of `multiturn_qa`. Every field is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QaConfig {
    /// A directory of `.md`, `.markdown` or `.txt` files to search (recursively). Without it, the built-in corpus.
    pub corpus_dir: Option<PathBuf>,
    /// A JSON array of `{chunk_id, question, answer, difficulty, context}` (re-grpo's schema; `question` and
    /// `answer` are required). Required with `corpus_dir`.
    pub questions_path: Option<PathBuf>,
    /// Every `eval_every`-th question (index 9, 19, ... for 10) is held out for evaluation; 0 keeps all for training.
    pub eval_every: u64,
    /// Chunk size in characters.
    pub chunk_size: usize,
    /// Chunks returned per search.
    pub top_k: usize,
    /// `bm25` (default) or `dense`.
    pub retriever: RetrieverKind,
    /// The sentence-transformers BERT model of the dense retriever; by default where `cargo xtask setup` puts
    /// all-MiniLM-L6-v2 ([`dense::default_model_dir`]). Filled in when the dense retriever is chosen, so the run's
    /// saved config names the model it used.
    pub dense_model_dir: Option<PathBuf>,
    /// Questions this long (in characters) or longer are skipped, as re-grpo does.
    pub max_question_len: usize,
    /// Most questions kept (re-grpo's `--max-prompts`).
    pub max_prompts: usize,
    /// `normalized` (default), `contains` or `exact`.
    pub answer_match: AnswerMatch,
    /// `native` (`<tool:search>...</tool>`, re-grpo) or `hermes`.
    pub tool_format: ToolFormat,
    /// Assistant turns per episode (at least 2); with more, the model may search again before answering.
    pub max_turns: u32,
    /// Also offer the calculator as `calc`, as re-grpo's QA experiment did.
    pub calc_tool: bool,
    /// Reward values (re-grpo's by default).
    pub rewards: RewardTable,
    /// Replaces the built-in system prompt.
    pub system_prompt: Option<String>,
}

impl Default for QaConfig {
    fn default() -> Self {
        QaConfig {
            corpus_dir: None,
            questions_path: None,
            eval_every: 10,
            chunk_size: 1000,
            top_k: 3,
            retriever: RetrieverKind::Bm25,
            dense_model_dir: None,
            max_question_len: 128,
            max_prompts: 1024,
            answer_match: AnswerMatch::Normalized,
            tool_format: ToolFormat::Native,
            max_turns: 2,
            calc_tool: false,
            rewards: RewardTable::default(),
            system_prompt: None,
        }
    }
}

/// The search tool's name.
pub const SEARCH_TOOL: &str = "search";

const NATIVE_SYSTEM: &str = "You answer questions about a collection of documents, in two turns.\n\
First turn: think about what to look for, then search the documents once by writing <tool:search>QUERY</tool>, \
where QUERY is a few keywords.\n\
Second turn: you will see the best matching passages. Reply with the answer only, as <answer>ANSWER</answer>, \
using as few words as possible.";

const HERMES_SYSTEM: &str = "You answer questions about a collection of documents, in two turns.\n\
First turn: think about what to look for, then call the search tool once with a few keywords.\n\
Second turn: you will see the best matching passages. Reply with the answer only, as <answer>ANSWER</answer>, \
using as few words as possible.";

const WORDING: Wording = Wording {
    native_system: NATIVE_SYSTEM,
    hermes_system: HERMES_SYSTEM,
    result_labels: &[(SEARCH_TOOL, "Search results")],
    separator: ":\n",
    answer_now: "Now reply with the answer only, as <answer>...</answer>.",
    call_or_answer: "Search again if you need to, or reply with the answer only, as <answer>...</answer>.",
};

/// The environment: the chunks, their index and the questions.
pub struct MultiturnQa {
    config: QaConfig,
    chunks: Vec<corpus::Chunk>,
    index: search::Retriever,
    train: Vec<Task>,
    eval: Vec<Task>,
    counters: FlagCounters,
    extra: ExtraCounters,
}

/// Metrics beyond the shared flags: how often the search found the question's source chunk, and answer F1.
#[derive(Default)]
struct ExtraCounters {
    searches_with_source: AtomicU64,
    source_hits: AtomicU64,
    answers: AtomicU64,
    f1_micros: AtomicU64,
}

/// One episode.
pub struct QaState {
    episode: Episode,
    answer: String,
    source_chunk: Option<usize>,
}

fn row_error(path: &std::path::Path, i: usize, what: &str) -> Error {
    Error::msg(format!("{} entry {i}: {what}", path.display()))
}

/// The chunk that holds a question's context: the one containing the context's first 80 characters (whitespace
/// collapsed), or whose own opening is inside the context. Chunkers differ, so `chunk_id` from another tool is not
/// trusted.
fn locate_context(chunks: &[corpus::Chunk], context: &str) -> Option<usize> {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let ctx = squash(context);
    if ctx.chars().count() < 20 {
        return None;
    }
    let head: String = ctx.chars().take(80).collect();
    chunks
        .iter()
        .find(|c| squash(&c.text).contains(&head))
        .or_else(|| {
            chunks.iter().find(|c| {
                let own: String = squash(&c.text).chars().take(80).collect();
                own.chars().count() >= 20 && ctx.contains(&own)
            })
        })
        .map(|c| c.id)
}

fn load_questions(path: &std::path::Path, config: &QaConfig, chunks: &[corpus::Chunk]) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::msg(format!("cannot read questions file {}: {e}", path.display())))?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
        Error::msg(format!("{} is not a JSON array of {{\"question\", \"answer\", ...}} objects: {e}", path.display()))
    })?;
    let mut tasks = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if tasks.len() >= config.max_prompts {
            break;
        }
        let question = row
            .get("question")
            .and_then(|v| v.as_str())
            .ok_or_else(|| row_error(path, i, "missing the \"question\" string"))?;
        let answer = json_text(row.get("answer")).ok_or_else(|| row_error(path, i, "missing the \"answer\" string"))?;
        if question.chars().count() >= config.max_question_len {
            continue;
        }
        let context = row.get("context").and_then(|v| v.as_str()).unwrap_or("");
        let mut task = Task::new(format!("q{i}"), question, answer);
        task.meta = serde_json::json!({
            "chunk_id": row.get("chunk_id").cloned().unwrap_or(serde_json::Value::Null),
            "difficulty": row.get("difficulty").and_then(|v| v.as_str()).unwrap_or("medium"),
            "source_chunk": locate_context(chunks, context),
        });
        tasks.push(task);
    }
    if tasks.is_empty() {
        return Err(Error::msg(format!(
            "no usable questions in {} (each needs \"question\" shorter than {} characters and \"answer\")",
            path.display(),
            config.max_question_len
        )));
    }
    Ok(tasks)
}

impl MultiturnQa {
    /// The chunks being searched.
    pub fn chunks(&self) -> &[corpus::Chunk] {
        &self.chunks
    }

    /// Search the corpus as the tool does.
    pub fn search(&self, query: &str) -> std::result::Result<Vec<search::Hit>, search::QueryError> {
        self.index.search(query, self.config.top_k)
    }

    fn format_hits(&self, hits: &[search::Hit]) -> String {
        if hits.is_empty() {
            return "No passage matches the query.".into();
        }
        let mut out = String::new();
        for (i, h) in hits.iter().enumerate() {
            let c = &self.chunks[h.chunk];
            out.push_str(&format!(
                "[{}] {} (similarity {:.3}, higher is better)\n{}\n------\n",
                i + 1,
                c.source,
                h.score,
                c.text
            ));
        }
        out
    }

    fn run_tool(&self, call: &ToolCall, source: Option<usize>) -> std::result::Result<String, String> {
        match call.name.as_str() {
            SEARCH_TOOL => {
                let hits = self.search(&call.input).map_err(|e| e.to_string())?;
                if let Some(src) = source {
                    self.extra.searches_with_source.fetch_add(1, Ordering::Relaxed);
                    if hits.iter().any(|h| h.chunk == src) {
                        self.extra.source_hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(self.format_hits(&hits))
            }
            calc::TOOL_NAME if self.config.calc_tool => calc::run_tool(&call.input),
            other => Err(format!("unknown tool '{other}'; available: {}", self.tool_names().join(", "))),
        }
    }

    fn tool_names(&self) -> Vec<&'static str> {
        let mut names = vec![SEARCH_TOOL];
        if self.config.calc_tool {
            names.push(calc::TOOL_NAME);
        }
        names
    }
}

impl MetricSource for MultiturnQa {
    /// `group_rates/{tool_called,tool_exec_ok,answer_format_ok,answer_correct}`,
    /// `multiturn_qa/{tool_calls_per_episode,tool_failures_per_episode,episodes}`, and
    /// `multiturn_qa/search_hit_rate` (searches that returned the question's source chunk, among searches for
    /// questions whose source is known) and `multiturn_qa/answer_f1` (mean token F1 of well-formed answers).
    fn metrics(&self) -> Vec<Metric> {
        let mut out = self.counters.take_sdk_metrics("multiturn_qa");
        let searches = self.extra.searches_with_source.swap(0, Ordering::Relaxed);
        let hits = self.extra.source_hits.swap(0, Ordering::Relaxed);
        if searches > 0 {
            out.push(Metric::number("multiturn_qa/search_hit_rate", hits as f64 / searches as f64));
        }
        let answers = self.extra.answers.swap(0, Ordering::Relaxed);
        let f1 = self.extra.f1_micros.swap(0, Ordering::Relaxed);
        if answers > 0 {
            out.push(Metric::number("multiturn_qa/answer_f1", f1 as f64 / 1e6 / answers as f64));
        }
        out
    }
}

impl grpo_sdk::Plugin for MultiturnQa {
    const NAME: &'static str = "multiturn_qa";
    const DESCRIPTION: &'static str = "Search a corpus with <tool:search>, then <answer> (re-grpo multi-turn QA)";

    fn new(config: serde_json::Value) -> Result<Self> {
        let mut config: QaConfig = grpo_sdk::parse_config(config)?;
        if config.chunk_size < 50 || config.top_k == 0 {
            return Err(Error::msg("invalid multiturn_qa config: need chunk_size >= 50 and top_k >= 1"));
        }
        let (chunks, tasks) = match (&config.corpus_dir, &config.questions_path) {
            (None, None) => {
                let b = builtin::build(config.chunk_size);
                let tasks = b
                    .questions
                    .iter()
                    .take(config.max_prompts)
                    .enumerate()
                    .map(|(i, q)| {
                        let mut t = Task::new(format!("builtin-{i}"), &q.question, &q.answer);
                        t.meta = serde_json::json!({
                            "chunk_id": q.chunk_id,
                            "difficulty": q.difficulty,
                            "source_chunk": q.chunk_id,
                        });
                        t
                    })
                    .collect();
                (b.chunks, tasks)
            }
            (Some(dir), Some(questions)) => {
                let chunks = corpus::load_dir(dir, config.chunk_size)?;
                let tasks = load_questions(questions, &config, &chunks)?;
                (chunks, tasks)
            }
            (Some(_), None) => {
                return Err(Error::msg(
                    "multiturn_qa: corpus_dir is set but questions_path is not; give a JSON array of \
                     {\"question\", \"answer\", \"context\"} for the corpus",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::msg(
                    "multiturn_qa: questions_path is set but corpus_dir is not; give the directory of documents \
                     the questions are about",
                ))
            }
        };
        if chunks.is_empty() {
            return Err(Error::msg("multiturn_qa: the corpus has no text"));
        }
        let index = match config.retriever {
            RetrieverKind::Bm25 => search::Retriever::Bm25(search::Bm25::build(&chunks)?),
            RetrieverKind::Dense => {
                let dir = config.dense_model_dir.get_or_insert_with(dense::default_model_dir);
                let cache = dense::default_embedding_cache();
                search::Retriever::Dense(Box::new(dense::Dense::build(&chunks, dir, Some(&cache))?))
            }
        };
        let (mut train, mut eval) = (Vec::new(), Vec::new());
        for (i, t) in tasks.into_iter().enumerate() {
            if config.eval_every > 0 && (i as u64) % config.eval_every == config.eval_every - 1 {
                eval.push(t);
            } else {
                train.push(t);
            }
        }
        Ok(MultiturnQa {
            config,
            chunks,
            index,
            train,
            eval,
            counters: FlagCounters::default(),
            extra: ExtraCounters::default(),
        })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null)
    }
}

impl Environment for MultiturnQa {
    type State = QaState;

    fn tools(&self) -> Vec<ToolSpec> {
        if self.config.tool_format == ToolFormat::Native {
            return Vec::new();
        }
        let mut tools = vec![ToolSpec {
            name: SEARCH_TOOL.into(),
            description: "Search the documents and return the best matching passages.".into(),
            parameters: serde_json::json!({
                "type": "object",
                "properties": { "query": { "type": "string", "description": "A few keywords to search for" } },
                "required": ["query"]
            }),
        }];
        if self.config.calc_tool {
            tools.push(ToolSpec {
                name: calc::TOOL_NAME.into(),
                description: "Evaluate an arithmetic expression (+ - * / // % ** and parentheses).".into(),
                parameters: serde_json::json!({
                    "type": "object",
                    "properties": { "expression": { "type": "string" } },
                    "required": ["expression"]
                }),
            });
        }
        tools
    }

    fn task_count(&self, split: Split) -> Option<u64> {
        Some(match split {
            Split::Train => self.train.len(),
            Split::Eval => self.eval.len(),
        } as u64)
    }

    fn task(&self, split: Split, _seed: u64, index: u64) -> Result<Task> {
        let rows = match split {
            Split::Train => &self.train,
            Split::Eval => &self.eval,
        };
        rows.get(index as usize)
            .cloned()
            .ok_or_else(|| Error::msg(format!("task index {index} out of range (0..{})", rows.len())))
    }

    fn reset(&self, task: &Task) -> Result<(QaState, Vec<Message>)> {
        self.counters.episode_started();
        let system = WORDING.system_prompt(self.config.system_prompt.as_deref(), self.config.tool_format);
        let source_chunk = task
            .meta
            .get("source_chunk")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .filter(|c| *c < self.chunks.len());
        Ok((
            QaState { episode: Episode::new(self.config.max_turns), answer: task.answer.clone(), source_chunk },
            vec![
                Message::system(system),
                Message::user(format!("Search the documents to answer this question: {}", task.question)),
            ],
        ))
    }

    fn step(&self, state: &mut QaState, assistant_text: &str) -> Result<StepOutcome> {
        let format = self.config.tool_format;
        let (reference, source) = (&state.answer, state.source_chunk);
        let arg_key = |t: &str| {
            // In Hermes format the argument name depends on the tool: try `query`, then `expression`.
            match protocol::find_call(t, format, "query") {
                protocol::CallParse::Call(c) if c.name == calc::TOOL_NAME => {
                    protocol::find_call(t, format, "expression")
                }
                other => other,
            }
        };
        Ok(env::step(&mut state.episode, &self.counters, format, &WORDING, |episode| {
            episode.step(
                assistant_text,
                &self.config.rewards,
                arg_key,
                |c| self.run_tool(c, source),
                |a| {
                    self.extra.answers.fetch_add(1, Ordering::Relaxed);
                    let f1 = answer::token_f1(a, reference);
                    self.extra.f1_micros.fetch_add((f1 * 1e6).round() as u64, Ordering::Relaxed);
                    answer::matches(self.config.answer_match, a, reference)
                },
            )
        }))
    }

    /// Search with the question, then answer with the reference, which the gold chunk holds: the best return of the
    /// reward table. `None` when the task names its gold chunk and the search does not bring it back (a
    /// demonstration must not teach answering from passages the model was not shown), or when the search fails.
    fn demonstration(&self, task: &Task) -> Result<Option<Vec<String>>> {
        if task.answer.trim().is_empty() {
            return Ok(None);
        }
        let query = task.question.trim();
        let Ok(hits) = self.search(query) else {
            return Ok(None);
        };
        let gold = task.meta.get("source_chunk").and_then(|v| v.as_u64()).map(|v| v as usize);
        if gold.is_some_and(|g| !hits.iter().any(|h| h.chunk == g)) {
            return Ok(None);
        }
        let call = protocol::write_call(self.config.tool_format, SEARCH_TOOL, "query", query);
        Ok(Some(vec![call, protocol::write_answer(&task.answer)]))
    }
}

grpo_sdk::export_plugins!(environment MultiturnQa);
