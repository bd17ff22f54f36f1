//! Where supervised conversations come from: JSONL files in TRL's conversational format, and an environment's own
//! demonstrations played through it (so tool results and later user turns are the environment's real replies).

use std::path::Path;

use anyhow::{Context, Result};
use grpo_sdk::{Message, Split, Task};
use serde::Deserialize;

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

/// A line of TRL's conversational format; other keys (`tools`, `id`, ...) are ignored.
#[derive(Deserialize)]
struct Row {
    messages: Vec<Message>,
}

/// Read a JSONL file of `{"messages": [{"role": ..., "content": ...}, ...]}` lines (roles `system`, `user`,
/// `assistant`, `tool`; a tool message may carry `name`). Blank lines are skipped; any other bad line is an error
/// naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        user_error!("--data {}: cannot read it ({e}); give a JSONL file of {{\"messages\": [...]}}", path.display())
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        let row: Row = serde_json::from_str(line).map_err(|e| {
            user_error!(
                "--data {origin}: not a conversation ({e}); each line must be {{\"messages\": [{{\"role\": \
                 \"user\", \"content\": \"...\"}}, ...]}} with roles system, user, assistant, tool"
            )
        })?;
        out.push(Conversation { origin, messages: row.messages });
    }
    if out.is_empty() {
        return Err(user_error!("--data {}: the file holds no conversations", path.display()));
    }
    Ok(out)
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
