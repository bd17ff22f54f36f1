//! Where supervised conversations come from: datasets in TRL's conversational formats (any file, folder, glob or hub
//! dataset `crate::data` reads), and an environment's own demonstrations played through it (so tool results and
//! later user turns are the environment's real replies).

use anyhow::{Context, Result};
use grpo_sdk::{Message, Split, Task};
use serde::Deserialize;
use serde_json::Value;

use crate::data::Dataset;
use crate::plugins::EnvironmentPlugin;
use crate::user_error;

/// One training conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    /// Where it came from, for messages (`file.jsonl:3`, `calc_tools task train-7`).
    pub origin: String,
    /// The messages, in order.
    pub messages: Vec<Message>,
}

/// The conversations of a dataset's rows in TRL's conversational formats: `{"messages": [...]}`, or
/// prompt-completion `{"prompt": [...], "completion": [...]}` (the prompt's messages, then the completion's). A
/// message is `{"role": "system" | "user" | "assistant" | "tool", "content": "...", "name": ...}`; other keys of a
/// row or a message are ignored. A row of neither shape is an error naming its file and row, with `flag`.
pub fn conversations(dataset: &Dataset, flag: &str) -> Result<Vec<Conversation>> {
    (0..dataset.len())
        .map(|i| {
            let origin = dataset.origin(i);
            let messages = row_messages(dataset.row(i))
                .map_err(|e| user_error!("{flag} {origin}: {e}; TRL's conversational format is expected"))?;
            Ok(Conversation { origin, messages })
        })
        .collect()
}

fn row_messages(row: &Value) -> std::result::Result<Vec<Message>, String> {
    let list = |key: &str| -> std::result::Result<Vec<Message>, String> {
        let value = &row[key];
        let Some(items) = value.as_array() else {
            return Err(format!("`{key}` is {}, not a list of messages", crate::data::files::kind(value)));
        };
        // Tool calls as structured fields have no text of their own here: a turn is trained on the text the model
        // writes, which the host never produces from `tool_calls`.
        if let Some(i) = items.iter().position(|m| m.get("tool_calls").is_some_and(|c| !c.is_null())) {
            return Err(format!(
                "`{key}` message {i} has `tool_calls`, which supervised fine-tuning does not turn into text; write \
                 the call into the assistant's `content` in the format the model should produce"
            ));
        }
        // Straight from the row (no copy of it): the dataset keeps its rows.
        Vec::<Message>::deserialize(value).map_err(|e| format!("`{key}`: {e}"))
    };
    if row.get("messages").is_some() {
        return list("messages");
    }
    if row.get("prompt").is_some() && row.get("completion").is_some() {
        let mut messages = list("prompt")?;
        messages.extend(list("completion")?);
        return Ok(messages);
    }
    let keys: Vec<&str> = row.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    Err(format!("no `messages` (or `prompt` and `completion`) column; the row has [{}]", keys.join(", ")))
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
    let origin = format!("{} task {}", env.name(), task.id);
    Ok(Some((Conversation { origin, messages }, total)))
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
