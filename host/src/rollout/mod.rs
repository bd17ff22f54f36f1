//! Episodes: the environment and the generation engine taking turns, recorded as the exact token stream the model
//! conditioned on.
//!
//! Every episode keeps one growing list of token ids. The first turn is the opening messages rendered through the
//! model's chat template; each assistant turn appends the sampled ids as they were sampled; each environment reply
//! appends the template's glue and the rendered message ids. Nothing is decoded and re-encoded, so training later
//! sees exactly what sampling saw. Only sampled ids are actions; template glue and environment text are not.
//!
//! Episodes run on the continuous-batching engine ([`crate::generate::engine`]): each keeps its cache slot from
//! turn to turn, so a later turn runs only the tokens appended since the last (the turn's final sampled token, the
//! template's glue and the environment's reply). A turn that ends leaves the decode batch at once; its environment
//! step runs on a worker thread while the engine takes its next step, and the episode's next turn joins at the
//! boundary after that step (at once when the engine has nothing else to run). The boundary is fixed rather than
//! "whenever the reply is ready", so which rows share a forward pass, and with it every rounding, is the same from
//! run to run (resumed runs reproduce their rollouts); an environment slower than one engine step holds the engine
//! at that boundary until it answers.
//! The `group_size` episodes of a task share their prompt's prefill. A turn samples at most `max_new_tokens`, and no
//! further than `max_length` tokens into the episode's stream: the episode ends there, truncated.

mod glue;
mod reward_model;
mod rewards;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use grpo_sdk::rng::mix;
use grpo_sdk::{Message, Task, ToolSpec};
use serde_json::Value as Json;

use crate::generate::engine::{default_rows, Engine, EngineConfig, EngineStats, Turn};
use crate::generate::{FinishReason, SamplingParams};
use crate::model::Model;
use crate::plugins::{EnvironmentPlugin, Episode as EnvEpisode};
use crate::tokenizer::Tokenizer;

pub use glue::Glue;
pub use reward_model::{RewardModel, RewardModelSpec, REWARD_MODEL};
pub use rewards::{Aggregation, OverlongPenalty, RewardShaping, RewardWeights, OVERLONG_PENALTY};

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
    /// Episodes holding a cache slot at once (`--max-batch-rows`); `None`: every episode of the batch, as memory
    /// allows.
    pub max_batch_rows: Option<usize>,
    /// Decode steps per host read (`--multi-step`; see [`Engine::step`]).
    pub multi_step: usize,
    /// How the environment's rewards make an episode's return (`--reward-weights`, `--overlong-buffer`).
    pub rewards: RewardShaping,
    /// The longest opening prompt (`--max-prompt-length`); `None`: any that fits `max_length`.
    pub prompt_limit: Option<PromptLimit>,
}

crate::choice_enum! {
    /// How a prompt longer than `--max-prompt-length` is shortened (`--prompt-truncation`). There is no "right": it
    /// would cut the chat template's generation prompt, the one part every prompt needs.
    pub enum PromptTruncation {
        /// Keep its last tokens (TRL's `max_prompt_length`): the generation prompt and the latest messages stay,
        /// the system prompt goes first.
        Left = "left",
        /// Keep its first and last halves (verl's `truncation: middle`): the system prompt and the generation prompt
        /// both stay, the middle goes.
        Middle = "middle",
        /// Stop with one line naming the task (verl's default, `error`).
        Error = "error",
    }
}

/// The most tokens an episode's opening prompt may have, and what becomes of a longer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PromptLimit {
    /// `--max-prompt-length`.
    pub max_tokens: usize,
    /// `--prompt-truncation`.
    pub truncation: PromptTruncation,
}

impl PromptLimit {
    /// `ids` shortened to the limit, or `None` when they fit; an error naming `task` under
    /// [`PromptTruncation::Error`].
    pub fn apply(&self, ids: &[u32], task: &str) -> Result<Option<Vec<u32>>> {
        let (n, keep) = (ids.len(), self.max_tokens);
        if n <= keep {
            return Ok(None);
        }
        Ok(Some(match self.truncation {
            PromptTruncation::Left => ids[n - keep..].to_vec(),
            PromptTruncation::Middle => {
                let head = keep / 2;
                [&ids[..head], &ids[n - (keep - head)..]].concat()
            }
            PromptTruncation::Error => {
                return Err(crate::user_error!(
                    "task {task}'s prompt has {n} tokens, more than --max-prompt-length {keep}; raise it, or pass \
                     --prompt-truncation left (or middle) to cut such prompts"
                ))
            }
        }))
    }
}

/// Where a batch's rollout time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RolloutStats {
    /// The engine's counters: prefill and generated tokens, sampling steps, seconds.
    pub engine: EngineStats,
    /// Seconds spent in environment steps, summed over episodes (they overlap decoding).
    pub env_secs: f64,
}

/// A batch's finished episodes and its counters.
pub struct Episodes {
    /// Groups in task order, a group's episodes in member order.
    pub rollouts: Vec<Rollout>,
    /// Counters.
    pub stats: RolloutStats,
}

/// How an episode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EndReason {
    /// The environment said it was done.
    Done,
    /// It used its last allowed assistant turn.
    TurnLimit,
    /// The stream reached `--max-length`, in a turn cut there or before the next turn: truncated.
    ContextLimit,
}

/// One finished episode. Serializable: dynamic sampling sends episodes to the rank that trains on them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Rollout {
    /// Which task of the batch it belongs to (its group).
    pub group: usize,
    /// The task.
    pub task: Task,
    /// The whole token stream: prompt, assistant turns, glue and environment replies.
    pub tokens: Vec<u32>,
    /// Length of the opening prompt.
    pub prompt_len: usize,
    /// Whether the opening prompt was cut to `--max-prompt-length`.
    #[serde(default)]
    pub prompt_truncated: bool,
    /// Per token: sampled by the model (an action).
    pub action: Vec<bool>,
    /// Per token: its log-prob under the sampling policy at temperature 1 (0 where not an action).
    pub sample_logprobs: Vec<f32>,
    /// Reward components summed over the episode's steps, by name.
    pub rewards: BTreeMap<String, f64>,
    /// Their sum, weighted by `--reward-weights` when it is given: the episode's return.
    pub total_reward: f64,
    /// Assistant turns taken.
    pub turns: usize,
    /// Assistant turns cut off at `max_new_tokens`, or where the stream reached `max_length`.
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

#[cfg(test)]
impl Rollout {
    /// An episode of task "0" with no tokens and no reward, for tests to fill in.
    pub(crate) fn empty() -> Rollout {
        Rollout {
            group: 0,
            task: Task::new("0", "q", "a"),
            tokens: Vec::new(),
            prompt_len: 0,
            prompt_truncated: false,
            action: Vec::new(),
            sample_logprobs: Vec::new(),
            rewards: BTreeMap::new(),
            total_reward: 0.0,
            turns: 1,
            cut_turns: 0,
            tool_messages: 0,
            end: EndReason::Done,
            solved: None,
            prompt_text: String::new(),
            transcript: String::new(),
        }
    }
}

impl Rollout {
    /// Whether the episode was cut off rather than finished: a turn stopped at `max_new_tokens` or `max_length`, or
    /// the stream reached `max_length` before the environment was done.
    pub fn was_cut(&self) -> bool {
        self.cut_turns > 0 || self.end == EndReason::ContextLimit
    }
}

struct Live {
    /// Which episode of its group.
    member: usize,
    /// Seconds its environment's steps took.
    env_secs: f64,
    env: EnvEpisode,
    messages: Vec<Json>,
    /// The text of the assistant turn just generated, for the environment's step.
    last_text: String,
    rollout: Rollout,
}

/// An episode's opening: the environment's first messages, rendered through the chat template and tokenized, cut
/// to `--max-prompt-length`.
#[derive(Clone)]
struct Opening {
    messages: Vec<Json>,
    ids: Vec<u32>,
    /// The text of `ids` (special tokens kept, as the model sees them).
    text: String,
    /// Whether `--max-prompt-length` cut it.
    truncated: bool,
}

impl Opening {
    /// `task`'s opening `messages` through the chat template (with the generation prompt), cut to `limit`.
    fn render(
        tokenizer: &Tokenizer,
        messages: &[Message],
        tools: Option<&[Json]>,
        task: &Task,
        limit: Option<PromptLimit>,
    ) -> Result<Self> {
        let messages: Vec<Json> = messages.iter().map(message_json).collect();
        let text = tokenizer
            .render_chat(&messages, tools, true)
            .with_context(|| format!("rendering the opening of task {}", task.id))?;
        let ids = tokenizer.encode(&text, false)?;
        match limit.map(|limit| limit.apply(&ids, &task.id)).transpose()?.flatten() {
            Some(kept) => Ok(Opening { messages, text: tokenizer.decode(&kept, false)?, ids: kept, truncated: true }),
            None => Ok(Opening { messages, ids, text, truncated: false }),
        }
    }
}

/// The token count of each task's opening prompt, uncut, as [`run_episodes`] renders it: for leaving out the tasks
/// whose prompt is too long before a run starts.
pub fn prompt_lengths(tokenizer: &Tokenizer, env: &EnvironmentPlugin, tasks: &[Task]) -> Result<Vec<usize>> {
    let tools = tool_json(&env.tools()?);
    tasks
        .iter()
        .map(|task| {
            let (_episode, messages) = env.reset(task)?;
            Ok(Opening::render(tokenizer, &messages, tools.as_deref(), task, None)?.ids.len())
        })
        .collect()
}

/// A `cancelled` for [`run_episodes`] that never cancels.
pub fn never() -> bool {
    false
}

/// The sampling seed of each of `n` tasks at positions `first..first + n` of a batch sampled with `seed`: what a
/// task samples depends on its seed alone, not on the rows it shares a forward pass with, so a task's episodes are
/// the same whichever data-parallel rank runs it.
pub fn task_seeds(seed: u64, first: u64, n: usize) -> Vec<u64> {
    (first..first + n as u64).map(|i| mix(seed, i)).collect()
}

/// Run `group_size` episodes of every task in `tasks` to the end, task `i` sampling from `seeds[i]` (see
/// [`task_seeds`]): episode `j` of it, in turn `t`, draws from its own stream seeded by the task's seed, `j` and `t`.
///
/// `cancelled` is asked before every engine step; once it says yes the rollouts are abandoned and `None` returned
/// (the episodes under way are dropped; their environments' metrics keep whatever they counted), since a run told
/// to stop must not spend its grace period on rollouts it will not train on. Pass [`never()`] for rollouts that always
/// finish.
pub fn run_episodes(
    model: &Model,
    tokenizer: &Tokenizer,
    env: &EnvironmentPlugin,
    tasks: &[Task],
    cfg: &RolloutConfig,
    seeds: &[u64],
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Episodes>> {
    anyhow::ensure!(seeds.len() == tasks.len(), "{} sampling seeds for {} tasks", seeds.len(), tasks.len());
    let stream = |group: usize, member: usize, turn: usize| mix(mix(seeds[group], member as u64), turn as u64);
    let tools = tool_json(&env.tools()?);
    let glue = Glue::new(tokenizer, tools.as_deref())?;
    let mut live: Vec<Live> = Vec::new();
    for (group, task) in tasks.iter().enumerate() {
        let mut opening: Option<Opening> = None;
        for member in 0..cfg.group_size {
            let (episode, messages) = env.reset(task)?;
            // The group's episodes open alike: the first renders the prompt for all.
            let Opening { messages, ids, text, truncated } = match &opening {
                Some(o) => o.clone(),
                None => {
                    let rendered = Opening::render(tokenizer, &messages, tools.as_deref(), task, cfg.prompt_limit)?;
                    opening.insert(rendered).clone()
                }
            };
            let n = ids.len();
            live.push(Live {
                member,
                env_secs: 0.0,
                env: episode,
                messages,
                last_text: String::new(),
                rollout: Rollout {
                    group,
                    task: task.clone(),
                    tokens: ids,
                    prompt_len: n,
                    prompt_truncated: truncated,
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
    }

    let full: Vec<usize> = live.iter().map(|l| l.rollout.tokens.len()).filter(|&n| n >= cfg.max_length).collect();
    if let Some(longest) = full.iter().max() {
        // Not an error: one long task in a dataset should not end a run. But every turn of these gets one token.
        eprintln!(
            "warning: {} of {} episodes start with a prompt at or past --max-length {} (the longest has {longest} \
             tokens), so each of their turns samples one token; raise --max-length",
            full.len(),
            live.len(),
            cfg.max_length
        );
    }
    let rows =
        cfg.max_batch_rows.unwrap_or_else(|| default_rows(model, live.len(), cfg.max_length + cfg.max_new_tokens));
    let engine_cfg = EngineConfig {
        max_rows: rows,
        max_new_tokens: cfg.max_new_tokens,
        sampling: cfg.sampling,
        eos_ids: if cfg.ignore_eos { Vec::new() } else { tokenizer.eos_token_ids().to_vec() },
        stop_strings: Vec::new(),
        multi_step: cfg.multi_step,
    };
    let mut engine = Engine::new(model, Some(tokenizer), engine_cfg)?;
    // A turn samples no further than `--max-length`: the episode ends there, truncated.
    let limit = |engine: &mut Engine, id: usize, r: &Rollout| -> Result<()> {
        let room = cfg.max_length.saturating_sub(r.tokens.len());
        if room < cfg.max_new_tokens {
            engine.limit_turn(id, room)?;
        }
        Ok(())
    };
    for (id, l) in live.iter().enumerate() {
        let r = &l.rollout;
        engine.submit(id, r.tokens.clone(), Some(r.group), Some(stream(r.group, l.member, 0)))?;
        limit(&mut engine, id, r)?;
    }
    let n = live.len();
    // An episode is here between its turns, and on a worker thread (None here) while its environment steps.
    let mut episodes: Vec<Option<Live>> = live.into_iter().map(Some).collect();
    let mut finished: Vec<Live> = Vec::new();
    let mut abandoned = false;
    tch::no_grad(|| {
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, Live, Result<grpo_sdk::StepOutcome>)>();
            // Each engine step runs while the environments answer the turns that ended in the step before it;
            // their episodes then rejoin, at that fixed boundary, however soon the replies came.
            let mut stepping = 0usize;
            loop {
                if cancelled() {
                    // Environments still stepping finish on their threads (the scope waits for them); their
                    // replies go nowhere.
                    abandoned = true;
                    break;
                }
                let ended = if engine.runnable() {
                    engine.step(&mut |_, _| {})?
                } else if stepping > 0 {
                    Vec::new()
                } else {
                    break;
                };
                let mut replies = Vec::with_capacity(stepping);
                for _ in 0..stepping {
                    replies.push(rx.recv().context("an environment worker thread stopped without answering")?);
                }
                replies.sort_by_key(|r| r.0);
                for (id, l, outcome) in replies {
                    match next_turn(l, outcome?, &glue, tokenizer, cfg)? {
                        Next::Continue(l, glue_ids) => {
                            let seed = stream(l.rollout.group, l.member, l.rollout.turns);
                            engine.resume(id, &glue_ids, Some(seed))?;
                            limit(&mut engine, id, &l.rollout)?;
                            episodes[id] = Some(l);
                        }
                        Next::Finished(l) => {
                            engine.release(id);
                            finished.push(l);
                        }
                    }
                }
                stepping = ended.len();
                for (id, turn) in ended {
                    let mut l = episodes[id].take().expect("a turn ends for an episode between turns");
                    record_turn(&mut l, turn, tokenizer, cfg)?;
                    let tx = tx.clone();
                    scope.spawn(move || {
                        let t = std::time::Instant::now();
                        let outcome = l.env.step(&l.last_text);
                        l.env_secs += t.elapsed().as_secs_f64();
                        // The receiver only goes away when the batch has already failed.
                        let _ = tx.send((id, l, outcome));
                    });
                }
            }
            Ok(())
        })
    })?;
    if abandoned {
        return Ok(None);
    }
    anyhow::ensure!(finished.len() == n, "{} of {n} episodes finished", finished.len());

    for (name, scorer) in &cfg.rewards.scorers {
        let conversations: Vec<Vec<Json>> = finished.iter().map(|l| l.messages.clone()).collect();
        for (l, score) in finished.iter_mut().zip(scorer.score(&conversations)?) {
            let r = &mut l.rollout;
            cfg.rewards.add(&mut r.rewards, &mut r.total_reward, name, score);
        }
    }
    let stats = RolloutStats { engine: engine.stats, env_secs: finished.iter().map(|l| l.env_secs).sum() };
    // Batch order: groups in task order, episodes of a group in sampling order.
    finished.sort_by_key(|l| (l.rollout.group, l.member));
    Ok(Some(Episodes { rollouts: finished.into_iter().map(|l| l.rollout).collect(), stats }))
}

/// Append a generated turn to its episode, with its overlong penalty when the run shapes rewards so.
fn record_turn(l: &mut Live, turn: Turn, tokenizer: &Tokenizer, cfg: &RolloutConfig) -> Result<()> {
    let r = &mut l.rollout;
    r.turns += 1;
    if let Some(overlong) = cfg.rewards.overlong {
        let penalty = overlong.of(turn.tokens.len(), cfg.max_new_tokens);
        cfg.rewards.add(&mut r.rewards, &mut r.total_reward, OVERLONG_PENALTY, penalty);
    }
    if turn.finish == Some(FinishReason::Length) {
        r.cut_turns += 1;
    }
    r.action.extend(std::iter::repeat_n(true, turn.tokens.len()));
    r.sample_logprobs.extend(&turn.model_logprobs);
    r.tokens.extend(&turn.tokens);
    let text = tokenizer.decode(&turn.tokens, true)?;
    l.messages.push(serde_json::json!({"role": "assistant", "content": text.clone()}));
    r.transcript.push_str(&tokenizer.decode(&turn.tokens, false)?);
    l.last_text = text;
    Ok(())
}

/// What follows an environment step.
enum Next {
    /// Another turn, after these glue and reply tokens.
    Continue(Live, Vec<u32>),
    /// The episode is over.
    Finished(Live),
}

/// Apply the environment's answer to a turn: rewards, then the end of the episode or its next turn's tokens.
fn next_turn(
    mut l: Live,
    outcome: grpo_sdk::StepOutcome,
    glue: &Glue,
    tokenizer: &Tokenizer,
    cfg: &RolloutConfig,
) -> Result<Next> {
    for reward in &outcome.rewards {
        let r = &mut l.rollout;
        cfg.rewards.add(&mut r.rewards, &mut r.total_reward, &reward.name, reward.value);
    }
    if outcome.solved.is_some() {
        l.rollout.solved = outcome.solved;
    }
    if outcome.done {
        l.rollout.end = EndReason::Done;
        return Ok(Next::Finished(l));
    }
    if l.rollout.turns >= cfg.max_turns {
        l.rollout.end = EndReason::TurnLimit;
        return Ok(Next::Finished(l));
    }
    let ended_on_eos = l.rollout.tokens.last().is_some_and(|t| tokenizer.eos_token_ids().contains(t));
    let reply: Vec<Json> = outcome.messages.iter().map(message_json).collect();
    let glue_ids = glue.between_turns(&l.messages, &reply, ended_on_eos)?;
    if l.rollout.tokens.len() + glue_ids.len() + cfg.max_new_tokens.min(1) > cfg.max_length {
        l.rollout.end = EndReason::ContextLimit;
        return Ok(Next::Finished(l));
    }
    l.rollout.tool_messages += outcome.messages.iter().filter(|m| m.role == grpo_sdk::Role::Tool).count();
    l.rollout.transcript.push_str(&tokenizer.decode(&glue_ids, false)?);
    let n = glue_ids.len();
    l.rollout.tokens.extend(&glue_ids);
    l.rollout.action.extend(std::iter::repeat_n(false, n));
    l.rollout.sample_logprobs.extend(std::iter::repeat_n(0.0, n));
    l.messages.extend(reply);
    Ok(Next::Continue(l, glue_ids))
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
