//! Where supervised examples come from: datasets in TRL's formats (any file, folder, glob or hub
//! dataset `crate::data` reads), and an environment's own demonstrations played through it (so tool results and
//! later user turns are the environment's real replies).

use anyhow::{Context, Result};
use grpo_sdk::{Message, Role, Split, Task};
use serde::Deserialize;
use serde_json::Value;

use crate::data::files::kind;
use crate::data::{Dataset, DatasetSpec};
use crate::plugins::EnvironmentPlugin;
use crate::user_error;

/// One training conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    /// Where it came from, for messages (`file.jsonl:3`, `calc_tools task train-7`).
    pub origin: String,
    /// The messages in order, as the chat template receives them: `role` and `content`, and whatever else a
    /// dataset row gives a message (`tool_calls`, `name`, `tool_call_id` ...), passed on as transformers would.
    pub messages: Vec<Value>,
    /// The tool schemas this conversation declares (a dataset row's `tools` column); `None`: the renderer's own.
    pub tools: Option<Vec<Value>>,
}

impl Conversation {
    /// A conversation of plain messages, with the renderer's tools.
    pub fn new(origin: impl Into<String>, messages: &[Message]) -> Self {
        let messages = messages.iter().map(|m| serde_json::to_value(m).expect("messages serialize")).collect();
        Conversation { origin: origin.into(), messages, tools: None }
    }
}

/// One supervised example, as a dataset row gives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    /// Messages, rendered through the model's chat template as a rollout would see them.
    Chat(Conversation),
    /// Plain text, tokenized as it is (no chat template).
    Text(PlainText),
}

impl Example {
    /// Where it came from (`file.jsonl:3`).
    pub fn origin(&self) -> &str {
        match self {
            Example::Chat(c) => &c.origin,
            Example::Text(t) => &t.origin,
        }
    }
}

/// A row in one of TRL's standard (not conversational) formats: language modeling (`{"text": ...}`, trained on
/// every token) or prompt-completion (`{"prompt": "...", "completion": "..."}`, trained on the completion).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainText {
    /// Where it came from.
    pub origin: String,
    /// The prompt, which the loss does not cover; `None` for language modeling.
    pub prompt: Option<String>,
    /// The text the loss covers: the whole row's, or the completion.
    pub completion: String,
}

/// The examples of a dataset's rows, in TRL's dataset formats, decided row by row:
/// - conversational: `{"messages": [...]}`, or prompt-completion `{"prompt": [...], "completion": [...]}` (the
///   prompt's messages, then the completion's), with an optional `tools` column (a list of JSON schemas, or a
///   string holding one). A message is `{"role": "system" | "user" | "assistant" | "tool", "content": "...", ...}`;
///   an assistant message may instead (or as well) carry structured `tool_calls`, which the renderer writes the
///   way the model's chat template does;
/// - standard: prompt-completion with string `prompt` and `completion`, or language modeling `{"text": "..."}` (the
///   column `text_field`, TRL's `dataset_text_field`).
///
/// The dataset is read as `crate::data` reads any (`default_split` for a hub layout; a hub id is downloaded when
/// missing if `allow_download`). Other keys of a row are ignored. A row of none of these shapes is an error naming
/// its file and row, with `flag`.
pub fn examples(
    spec: &DatasetSpec,
    flag: &str,
    default_split: &str,
    allow_download: bool,
    text_field: &str,
) -> Result<Vec<Example>> {
    let dataset = Dataset::load(spec, flag, default_split, allow_download)?;
    (0..dataset.len())
        .map(|i| {
            let origin = dataset.origin(i);
            example(dataset.row(i), origin.clone(), text_field).map_err(|e| user_error!("{flag} {origin}: {e}"))
        })
        .collect()
}

fn example(row: &Value, origin: String, text_field: &str) -> std::result::Result<Example, String> {
    let has = |key: &str| row.get(key).is_some();
    let chat = || -> std::result::Result<Example, String> {
        Ok(Example::Chat(Conversation { origin: origin.clone(), messages: row_messages(row)?, tools: row_tools(row)? }))
    };
    if has("messages") {
        return chat();
    }
    if has("prompt") && has("completion") {
        return match (&row["prompt"], &row["completion"]) {
            (Value::String(prompt), Value::String(completion)) => {
                Ok(Example::Text(PlainText { origin, prompt: Some(prompt.clone()), completion: completion.clone() }))
            }
            (Value::String(_), _) | (_, Value::String(_)) => Err(format!(
                "`prompt` is {} and `completion` {}: both must be strings (standard) or message lists \
                 (conversational)",
                kind(&row["prompt"]),
                kind(&row["completion"])
            )),
            _ => chat(),
        };
    }
    if let Some(value) = row.get(text_field) {
        let text = value.as_str().ok_or_else(|| format!("`{text_field}` is {}, not a string", kind(value)))?;
        return Ok(Example::Text(PlainText { origin, prompt: None, completion: text.to_string() }));
    }
    let keys: Vec<&str> = row.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    Err(format!(
        "no `messages`, `prompt` and `completion`, or `{text_field}` column (TRL's dataset formats; \
         --dataset-text-field names another text column); the row has [{}]",
        keys.join(", ")
    ))
}

/// What a message must hold; the rest of it is passed on untouched.
#[derive(Deserialize)]
struct Shape {
    role: Role,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
}

/// The messages of a conversational row: `messages`, or `prompt`'s then `completion`'s.
fn row_messages(row: &Value) -> std::result::Result<Vec<Value>, String> {
    let list = |key: &str| -> std::result::Result<Vec<Value>, String> {
        let value = &row[key];
        let Some(items) = value.as_array() else {
            return Err(format!("`{key}` is {}, not a list of messages", kind(value)));
        };
        items.iter().enumerate().map(|(i, m)| message(m).map_err(|e| format!("`{key}` message {i}: {e}"))).collect()
    };
    if row.get("messages").is_some() {
        return list("messages");
    }
    let mut messages = list("prompt")?;
    messages.extend(list("completion")?);
    Ok(messages)
}

/// One message, checked: a role, string content (which an assistant's tool calls may stand in for), and tool
/// calls that each name their function (OpenAI's `{"function": {"name", "arguments"}}` or the flat
/// `{"name", "arguments"}`).
fn message(m: &Value) -> std::result::Result<Value, String> {
    let shape = Shape::deserialize(m).map_err(|e| e.to_string())?;
    let calls = shape.tool_calls.unwrap_or_default();
    if !calls.is_empty() && shape.role != Role::Assistant {
        return Err("only an assistant message may have `tool_calls`".into());
    }
    if let Some(j) = calls.iter().position(|c| call_name(c).is_none()) {
        return Err(format!("tool call {j} names no function (`function.name` or `name`)"));
    }
    if shape.content.is_none() && calls.is_empty() {
        return Err("it has no `content`".into());
    }
    Ok(m.clone())
}

/// The function a structured tool call names.
pub fn call_name(call: &Value) -> Option<&str> {
    call.get("function").unwrap_or(call)["name"].as_str()
}

/// A row's `tools` column: absent or null for none, a list of schemas, or (as datasets often store it, a column of
/// varying schemas being awkward in Arrow) a string holding that list as JSON.
fn row_tools(row: &Value) -> std::result::Result<Option<Vec<Value>>, String> {
    let parsed;
    let tools = match &row["tools"] {
        Value::Null => return Ok(None),
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text).map_err(|e| format!("`tools` is not JSON: {e}"))?;
            &parsed
        }
        other => other,
    };
    match tools {
        Value::Array(list) => Ok(Some(list.clone())),
        other => Err(format!("`tools` is {}, not a list of tool schemas", kind(other))),
    }
}

/// Play the environment's demonstration for `task`: its opening messages, each demonstrated assistant turn and the
/// messages the environment answers with, up to the end of the episode. `None` when it has no demonstration for
/// the task. Also returns the episode's return, which a good demonstration maximizes.
pub fn play_demonstration(env: &EnvironmentPlugin, task: &Task) -> Result<Option<(Conversation, f64)>> {
    let Some(turns) = env.demonstration(task)? else {
        return Ok(None);
    };
    let (mut episode, mut messages) = env.reset(task)?;
    let mut total = 0.0;
    for turn in turns {
        let outcome = episode.step(&turn)?;
        messages.push(Message::assistant(turn));
        total += outcome.total_reward();
        if outcome.done {
            break;
        }
        messages.extend(outcome.messages);
    }
    Ok(Some((Conversation::new(format!("{} task {}", env.name(), task.id), &messages), total)))
}

/// Demonstrations for an environment's training tasks, in a seeded order that repeats forever: task `k` of the
/// stream is the environment's task `order[k % n]` (finite sources, shuffled as training shuffles them) or task `k`
/// (generators). Tasks without a demonstration are skipped.
pub struct Demonstrations {
    env: EnvironmentPlugin,
    seed: u64,
    order: Option<Vec<u64>>,
    next: u64,
}

impl Demonstrations {
    /// The stream of `env`'s demonstrations for `seed`; an error naming the environment when it has none at all.
    pub fn new(env: EnvironmentPlugin, seed: u64) -> Result<Self> {
        if !env.has_demonstrations() {
            return Err(user_error!(
                "environment `{}` ({}) was built before demonstrations existed; rebuild it against this grpo-sdk, or \
                 give --data FILE.jsonl",
                env.name(),
                env.info().file.display()
            ));
        }
        let order = env.task_count(Split::Train)?.map(|n| {
            let mut order: Vec<u64> = (0..n).collect();
            grpo_sdk::rng::SplitMix64::new(grpo_sdk::rng::mix(seed, 0x5f7)).shuffle(&mut order);
            order
        });
        Ok(Demonstrations { env, seed, order, next: 0 })
    }

    /// Where the stream is (demonstrated tasks drawn so far, skipped ones included), to resume it.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Continue from `position`.
    pub fn seek(&mut self, position: u64) {
        self.next = position;
    }

    /// The next `n` demonstrations; an error when a long run of tasks has none (the environment demonstrates
    /// nothing, or almost nothing).
    pub fn take(&mut self, n: usize) -> Result<Vec<Conversation>> {
        let mut out = Vec::with_capacity(n);
        let mut misses = 0u32;
        while out.len() < n {
            let index = match &self.order {
                Some(order) if order.is_empty() => {
                    return Err(user_error!("environment `{}` has no training tasks to demonstrate", self.env.name()))
                }
                Some(order) => order[(self.next % order.len() as u64) as usize],
                None => self.next,
            };
            self.next += 1;
            let task = self.env.task(Split::Train, self.seed, index)?;
            match play_demonstration(&self.env, &task).with_context(|| format!("demonstrating task {}", task.id))? {
                Some((conversation, _)) => {
                    out.push(conversation);
                    misses = 0;
                }
                None => {
                    misses += 1;
                    if misses >= 1000 {
                        return Err(user_error!(
                            "environment `{}` gave no demonstration for 1000 tasks in a row; it has none to train \
                             on (give --data FILE.jsonl instead)",
                            self.env.name()
                        ));
                    }
                }
            }
        }
        Ok(out)
    }
}
