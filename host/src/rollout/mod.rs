//! Episodes: the environment and the generation engine taking turns, recorded as the exact token stream the model
//! conditioned on.
//!
//! Every episode keeps one growing list of token ids. The first turn is the opening messages rendered through the
//! model's chat template; each assistant turn appends the sampled ids as they were sampled; each environment reply
//! appends the template's glue and the rendered message ids. Nothing is decoded and re-encoded, so training later
//! sees exactly what sampling saw. Only sampled ids are actions; template glue and environment text are not.
//!
//! All live episodes of a turn are generated in one batched call. On the first turn the `group_size` episodes of a
//! task share one prompt, so the engine prefills it once for the whole group.

mod glue;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use grpo_sdk::rng::mix;
use grpo_sdk::{Message, Task, ToolSpec};
use serde_json::Value as Json;

use crate::generate::{generate, FinishReason, GenerateRequest, SamplingParams};
use crate::model::Model;
use crate::plugins::{EnvironmentPlugin, Episode as EnvEpisode};
use crate::tokenizer::Tokenizer;

pub use glue::Glue;

/// How episodes are run (from the command line).
#[derive(Clone, Debug)]
pub struct RolloutConfig {
    /// Episodes per task (the GRPO group).
    pub group_size: usize,
    /// Most tokens the model may generate in one turn (`--max-new-tokens`).
    pub max_new_tokens: usize,
    /// Most assistant turns in one episode.
    pub max_turns: usize,
    /// Most tokens in one episode's whole stream (`--max-length`): the context limit.
    pub max_length: usize,
    /// Temperature and filters.
    pub sampling: SamplingParams,
    /// Generate every turn to `max_new_tokens`, past end-of-sequence (`--ignore-eos`).
    pub ignore_eos: bool,
}

/// How an episode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The environment said it was done.
    Done,
    /// It used its last allowed assistant turn.
    TurnLimit,
    /// The next turn would not fit in the context (`--max-length`): truncated.
    ContextLimit,
}

/// One finished episode.
pub struct Rollout {
    /// Which task of the batch it belongs to (its group).
    pub group: usize,
    /// The task.
    pub task: Task,
    /// The whole token stream: prompt, assistant turns, glue and environment replies.
    pub tokens: Vec<u32>,
    /// Length of the opening prompt.
    pub prompt_len: usize,
    /// Per token: sampled by the model (an action).
    pub action: Vec<bool>,
    /// Per token: its log-prob under the sampling policy at temperature 1 (0 where not an action).
    pub sample_logprobs: Vec<f32>,
    /// Reward components summed over the episode's steps, by name.
    pub rewards: BTreeMap<String, f64>,
    /// Their sum: the episode's return.
    pub total_reward: f64,
    /// Assistant turns taken.
    pub turns: usize,
    /// Assistant turns cut off at `max_new_tokens`.
    pub cut_turns: usize,
    /// Environment replies that were tool results.
    pub tool_messages: usize,
    /// How it ended.
    pub end: EndReason,
    /// Whether it solved its task, as the environment last judged it (`StepOutcome::solved`); `None`: never judged.
    pub solved: Option<bool>,
    /// The prompt as rendered text (for example tables).
    pub prompt_text: String,
    /// The rest of the stream, decoded with special tokens kept (assistant turns and environment replies).
    pub transcript: String,
}

struct Live {
    /// Which episode of its group.
    member: usize,
    env: EnvEpisode,
    messages: Vec<Json>,
    /// The text of the assistant turn just generated, for the environment's step.
    last_text: String,
    rollout: Rollout,
}

/// The sampling seed of each of `n` tasks at positions `first..first + n` of a batch sampled with `seed`: what a
/// task samples depends on its seed alone, not on the rows it shares a forward pass with, so a task's episodes are
/// the same whichever data-parallel rank runs it.
pub fn task_seeds(seed: u64, first: u64, n: usize) -> Vec<u64> {
    (first..first + n as u64).map(|i| mix(seed, i)).collect()
}

/// Run `group_size` episodes of every task in `tasks` to the end, task `i` sampling from `seeds[i]` (see
/// [`task_seeds`]): episode `j` of it, in turn `t`, draws from its own stream seeded by the task's seed, `j` and `t`.
pub fn run_episodes(
    model: &Model,
    tokenizer: &Tokenizer,
    env: &EnvironmentPlugin,
    tasks: &[Task],
    cfg: &RolloutConfig,
    seeds: &[u64],
) -> Result<Vec<Rollout>> {
    anyhow::ensure!(seeds.len() == tasks.len(), "{} sampling seeds for {} tasks", seeds.len(), tasks.len());
    let stream = |group: usize, member: usize, turn: usize| mix(mix(seeds[group], member as u64), turn as u64);
    let tools = tool_json(&env.tools()?);
    let glue = Glue::new(tokenizer, tools.as_deref())?;
    let mut live: Vec<Live> = Vec::new();
    let mut prompts: Vec<Vec<u32>> = Vec::new();
    for (group, task) in tasks.iter().enumerate() {
        let mut opening: Option<(Vec<Json>, Vec<u32>, String)> = None;
        for member in 0..cfg.group_size {
            let (episode, messages) = env.reset(task)?;
            let (messages, ids, text) = match &opening {
                Some(o) => o.clone(),
                None => {
                    let messages: Vec<Json> = messages.iter().map(message_json).collect();
                    let text = tokenizer
                        .render_chat(&messages, tools.as_deref(), true)
                        .with_context(|| format!("rendering the opening of task {}", task.id))?;
                    let ids = tokenizer.encode(&text, false)?;
                    opening = Some((messages.clone(), ids.clone(), text.clone()));
                    (messages, ids, text)
                }
            };
            let n = ids.len();
            live.push(Live {
                member,
                env: episode,
                messages,
                last_text: String::new(),
                rollout: Rollout {
                    group,
                    task: task.clone(),
                    tokens: ids,
                    prompt_len: n,
                    action: vec![false; n],
                    sample_logprobs: vec![0.0; n],
                    rewards: BTreeMap::new(),
                    total_reward: 0.0,
                    turns: 0,
                    cut_turns: 0,
                    tool_messages: 0,
                    end: EndReason::TurnLimit,
                    solved: None,
                    prompt_text: text,
                    transcript: String::new(),
                },
            });
        }
        prompts.push(live.last().expect("group_size >= 1").rollout.tokens.clone());
    }

    let mut finished: Vec<Live> = Vec::new();
    let mut turn = 0usize;
    while !live.is_empty() {
        // The first turn shares each task's prompt across its group; later turns continue each episode's own stream.
        let (request_prompts, group_size) = if turn == 0 {
            (std::mem::take(&mut prompts), cfg.group_size)
        } else {
            (live.iter().map(|l| l.rollout.tokens.clone()).collect(), 1)
        };
        let eos_ids = if cfg.ignore_eos { Vec::new() } else { tokenizer.eos_token_ids().to_vec() };
        let mut request = GenerateRequest::new(request_prompts, group_size, cfg.max_new_tokens, eos_ids);
        request.sampling = cfg.sampling;
        request.row_seeds = live.iter().map(|l| stream(l.rollout.group, l.member, turn)).collect();
        let output = generate(model, Some(tokenizer), &request, None)?;

        // Record the turn, then let the environments answer in parallel.
        for (l, c) in live.iter_mut().zip(output.completions) {
            let r = &mut l.rollout;
            r.turns += 1;
            if c.finish_reason == FinishReason::Length {
                r.cut_turns += 1;
            }
            r.action.extend(std::iter::repeat_n(true, c.tokens.len()));
            r.sample_logprobs.extend(&c.model_logprobs);
            r.tokens.extend(&c.tokens);
            l.messages.push(serde_json::json!({"role": "assistant", "content": c.text.clone()}));
            r.transcript.push_str(&tokenizer.decode(&c.tokens, false)?);
            l.last_text = c.text;
        }
        let outcomes = step_all(&mut live)?;

        let mut still: Vec<Live> = Vec::new();
        for (mut l, outcome) in live.into_iter().zip(outcomes) {
            for reward in &outcome.rewards {
                *l.rollout.rewards.entry(reward.name.clone()).or_insert(0.0) += reward.value;
                l.rollout.total_reward += reward.value;
            }
            if outcome.solved.is_some() {
                l.rollout.solved = outcome.solved;
            }
            if outcome.done {
                l.rollout.end = EndReason::Done;
                finished.push(l);
                continue;
            }
            if l.rollout.turns >= cfg.max_turns {
                l.rollout.end = EndReason::TurnLimit;
                finished.push(l);
                continue;
            }
            let ended_on_eos = l.rollout.tokens.last().is_some_and(|t| tokenizer.eos_token_ids().contains(t));
            let reply: Vec<Json> = outcome.messages.iter().map(message_json).collect();
            let glue_ids = glue.between_turns(&l.messages, &reply, ended_on_eos)?;
            if l.rollout.tokens.len() + glue_ids.len() + cfg.max_new_tokens.min(1) > cfg.max_length {
                l.rollout.end = EndReason::ContextLimit;
                finished.push(l);
                continue;
            }
            l.rollout.tool_messages += outcome.messages.iter().filter(|m| m.role == grpo_sdk::Role::Tool).count();
            l.rollout.transcript.push_str(&tokenizer.decode(&glue_ids, false)?);
            let n = glue_ids.len();
            l.rollout.tokens.extend(glue_ids);
            l.rollout.action.extend(std::iter::repeat_n(false, n));
            l.rollout.sample_logprobs.extend(std::iter::repeat_n(0.0, n));
            l.messages.extend(reply);
            still.push(l);
        }
        live = still;
        turn += 1;
    }

    // Restore batch order: groups in task order, episodes of a group in sampling order.
    let mut out: Vec<Rollout> = finished.into_iter().map(|l| l.rollout).collect();
    out.sort_by_key(|r| r.group);
    Ok(out)
}

/// Step every live episode with its last assistant text, on as many threads as there are cores.
fn step_all(live: &mut [Live]) -> Result<Vec<grpo_sdk::StepOutcome>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(live.len().max(1));
    let chunk = live.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<grpo_sdk::StepOutcome>>> = std::thread::scope(|s| {
        let handles: Vec<_> = live
            .chunks_mut(chunk)
            .map(|part| s.spawn(move || part.iter_mut().map(|l| l.env.step(&l.last_text)).collect::<Result<Vec<_>>>()))
            .collect();
        handles.into_iter().map(|h| h.join().expect("environment threads do not panic")).collect()
    });
    let mut out = Vec::with_capacity(live.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

fn message_json(m: &Message) -> Json {
    serde_json::to_value(m).expect("messages serialize")
}

/// Tools as chat templates expect them (the OpenAI function format), or `None` when there are none.
fn tool_json(tools: &[ToolSpec]) -> Option<Vec<Json>> {
    if tools.is_empty() {
        return None;
    }
    Some(
        tools
            .iter()
            .map(|t| {
                serde_json::json!({
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters}
                })
            })
            .collect(),
    )
}
