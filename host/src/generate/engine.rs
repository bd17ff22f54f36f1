//! The continuous-batching engine under [`super::generate`] and the rollouts.
//!
//! Sequences live in a fixed number of cache slots ([`crate::model::KvCache`]), each slot holding one sequence
//! from column 0 with its own length: no common left padding, and no row waits for a longer neighbour. Work happens
//! in steps; at each step boundary:
//!
//! 1. sequences waiting for a slot take the free ones, in submission order;
//! 2. every sequence with tokens to feed (a new prompt, or a later turn's glue and environment reply) is prefilled,
//!    in length-sorted batches that keep padding under a quarter of the tokens. Only tokens not yet in the slot are
//!    run: a later turn never re-encodes its history. Sequences whose streams are the same token for token (a
//!    group's prompt; siblings that sampled the same turn and got the same reply) run those tokens once, and the
//!    others copy the new cache columns. A group member that starts after its siblings (fewer slots than the group)
//!    copies the prompt from a sibling still holding it;
//! 3. one token is sampled for every sequence that is ready, from its own seeded stream when it has one (with
//!    `multi_step`, a block of tokens between two host reads: see [`Engine::step`]);
//! 4. sequences whose turn just ended leave the batch (they keep their slot and its cache, parked, until the caller
//!    resumes or releases them); the rest run one decode forward together.
//!
//! Decoding rows are kept in the cache's first slots (a parked or free slot there swaps with a decoding one
//! further on), so the decode forward reads the cache in place instead of gathering it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use grpo_sdk::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::sampling::{self, SamplingParams};
use super::{stop_hit, FinishReason};
use crate::model::{CacheRows, KvCache, Model, WeightsFixed};
use crate::tokenizer::Tokenizer;
use crate::user_error;

/// A caller's name for one sequence (an episode, or one completion).
pub type SeqId = usize;

/// Most tokens (rows x padded length) one prefill forward runs, which bounds its activations and attention scores.
const PREFILL_TOKENS: usize = 8192;
/// Cache columns are allocated in multiples of this.
const COLUMN_QUANTUM: i64 = 64;

/// How the engine generates.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Cache slots: the most sequences decoding or holding a cache at once (`--max-batch-rows`).
    pub max_rows: usize,
    /// Most tokens one turn generates.
    pub max_new_tokens: usize,
    /// Temperature and filters.
    pub sampling: SamplingParams,
    /// End-of-sequence ids; empty: never stop on a token.
    pub eos_ids: Vec<u32>,
    /// A turn ends when its text comes to contain one of these (needs a tokenizer).
    pub stop_strings: Vec<String>,
    /// Decode steps queued per host read of the sampled ids (`--multi-step`, at least 1). See [`Engine::step`].
    pub multi_step: usize,
}

/// `multi_step` 1, the default: the host reads the sampled ids after every step (and settings saved before
/// `multi_step` existed read back as this).
pub fn one_read_per_step() -> usize {
    1
}

/// One generated turn of a sequence.
#[derive(Debug, Clone, Default)]
pub struct Turn {
    /// The sampled ids, including the final eos id when it stopped on one.
    pub tokens: Vec<u32>,
    /// Log-prob of each under the distribution it was sampled from (0 for greedy decoding).
    pub logprobs: Vec<f32>,
    /// Log-prob of each under the plain model (temperature 1, no filters).
    pub model_logprobs: Vec<f32>,
    /// Why it ended.
    pub finish: Option<FinishReason>,
}

/// Where the engine's time and work went, summed over its steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Prefill tokens: each distinct prompt once (a group shares its prompt), then every later turn's glue and
    /// environment reply once per sequence.
    pub prefill_tokens: u64,
    /// Of `prefill_tokens`, those copied from a sibling whose stream was the same token for token instead of run
    /// (siblings that sampled the same turn and got the same reply).
    #[serde(default)]
    pub prefill_shared_tokens: u64,
    /// Tokens sampled.
    pub generated_tokens: u64,
    /// Sampling steps (each samples one token for every ready sequence).
    pub steps: u64,
    /// Reads of sampled ids by the host: one per step, or per block of `multi_step` steps.
    #[serde(default)]
    pub host_reads: u64,
    /// Seconds in prefill forwards.
    pub prefill_secs: f64,
    /// Seconds sampling and in decode forwards.
    pub decode_secs: f64,
}

impl EngineStats {
    /// Mean sequences per sampling step: how full the batch was.
    pub fn decode_rows_mean(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.generated_tokens as f64 / self.steps as f64
        }
    }

    /// Add another run's counts.
    pub fn add(&mut self, o: &EngineStats) {
        self.prefill_tokens += o.prefill_tokens;
        self.prefill_shared_tokens += o.prefill_shared_tokens;
        self.generated_tokens += o.generated_tokens;
        self.steps += o.steps;
        self.host_reads += o.host_reads;
        self.prefill_secs += o.prefill_secs;
        self.decode_secs += o.decode_secs;
    }
}

/// The default number of cache slots: every sequence of the batch (`sequences`) if their caches of
/// `tokens_per_row` tokens fit in a quarter of the free host memory (CPU) or half of the free device memory
/// (CUDA), else as many as fit (at least one).
pub fn default_rows(model: &Model, sequences: usize, tokens_per_row: usize) -> usize {
    let per_row = (model.cache_bytes_per_token().max(1) as u64).saturating_mul(tokens_per_row.max(1) as u64);
    let budget = match model.device() {
        Device::Cuda(i) => crate::model::cuda_free_bytes(i).map(|free| free / 2),
        _ => available_host_bytes().map(|free| free / 4),
    };
    let fit = budget.map_or(usize::MAX, |b| (b / per_row.max(1)).max(1) as usize);
    sequences.clamp(1, fit.max(1))
}

/// `MemAvailable` of /proc/meminfo, where there is one.
fn available_host_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Submitted, without a slot yet.
    Waiting,
    /// Has a slot and tokens to feed.
    Prefill,
    /// Has the logits of its next token.
    Ready,
    /// Its turn ended; it keeps its slot until resumed or released.
    Parked,
}

struct Seq {
    state: State,
    slot: Option<usize>,
    /// Columns of its slot that hold its tokens.
    cached: i64,
    /// Tokens to run before the next sample: a prompt, or a turn's last sampled token plus the next glue.
    pending: Vec<u32>,
    /// How many of `pending` were sampled (not prefill work).
    pending_sampled: usize,
    /// Every token of its stream so far: the prompt, sampled tokens and what later turns appended.
    history: Vec<u32>,
    /// Sequences with the same key start with the same prompt, of this length.
    share: Option<(usize, usize)>,
    rng: Option<SplitMix64>,
    logits: Option<Tensor>,
    turn: Turn,
    /// Most tokens its current turn may sample: `max_new_tokens`, or less ([`Engine::limit_turn`]).
    budget: usize,
}

/// The engine: slots, the sequences in them and those waiting. See the module docs for one step.
pub struct Engine<'a> {
    model: &'a Model,
    tokenizer: Option<&'a Tokenizer>,
    cfg: EngineConfig,
    cache: Option<KvCache>,
    slots: Vec<Option<SeqId>>,
    seqs: BTreeMap<SeqId, Seq>,
    waiting: VecDeque<SeqId>,
    stop_window: usize,
    /// What this engine has done so far.
    pub stats: EngineStats,
    /// Nothing trains while an engine samples, so what depends on the weights alone is computed once.
    _fixed: WeightsFixed<'a>,
}

impl<'a> Engine<'a> {
    /// An engine with `cfg.max_rows` slots on `model` (the cache is allocated at the first prefill, as long as
    /// the longest sequence needs, and grows when a later one needs more).
    pub fn new(model: &'a Model, tokenizer: Option<&'a Tokenizer>, cfg: EngineConfig) -> anyhow::Result<Self> {
        if cfg.max_rows == 0 {
            return Err(user_error!("--max-batch-rows must be at least 1"));
        }
        if cfg.multi_step == 0 {
            return Err(user_error!("--multi-step must be at least 1"));
        }
        if !cfg.stop_strings.is_empty() && tokenizer.is_none() {
            return Err(user_error!("stop strings need a tokenizer"));
        }
        cfg.sampling.validate()?;
        let stop_window = cfg.stop_strings.iter().map(String::len).max().unwrap_or(0) + 2;
        Ok(Engine {
            model,
            tokenizer,
            slots: vec![None; cfg.max_rows],
            cfg,
            cache: None,
            seqs: BTreeMap::new(),
            waiting: VecDeque::new(),
            stop_window,
            stats: EngineStats::default(),
            _fixed: model.hold_weights_fixed(),
        })
    }

    /// Start sequence `id` with `prompt`; its first turn samples from `seed`'s stream (None: libtorch's
    /// generator). Sequences starting in the same step with the same prompt prefill it once whatever their keys;
    /// `share` (a group's key) also lets one that starts later copy the prompt from a sibling still holding it.
    pub fn submit(
        &mut self,
        id: SeqId,
        prompt: Vec<u32>,
        share: Option<usize>,
        seed: Option<u64>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(!prompt.is_empty(), "sequence {id} has an empty prompt");
        anyhow::ensure!(!self.seqs.contains_key(&id), "sequence {id} was submitted twice");
        let share = share.map(|key| (key, prompt.len()));
        self.seqs.insert(
            id,
            Seq {
                state: State::Waiting,
                slot: None,
                cached: 0,
                history: prompt.clone(),
                pending: prompt,
                pending_sampled: 0,
                share,
                rng: seed.map(SplitMix64::new),
                logits: None,
                turn: Turn::default(),
                budget: self.cfg.max_new_tokens,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// Start the next turn of parked sequence `id`, after appending `tokens` (template glue and an environment
    /// reply) to its stream; the turn samples from `seed`'s stream.
    pub fn resume(&mut self, id: SeqId, tokens: &[u32], seed: Option<u64>) -> anyhow::Result<()> {
        let seq = self.seqs.get_mut(&id).ok_or_else(|| anyhow::anyhow!("sequence {id} is not in the engine"))?;
        anyhow::ensure!(seq.state == State::Parked, "sequence {id} is not between turns");
        seq.pending.extend_from_slice(tokens);
        seq.history.extend_from_slice(tokens);
        seq.rng = seed.map(SplitMix64::new);
        seq.budget = self.cfg.max_new_tokens;
        // Never empty: a turn's last sampled token is still to run.
        seq.state = State::Prefill;
        Ok(())
    }

    /// Let the turn that sequence `id` is about to start (after [`Engine::submit`] or [`Engine::resume`]) sample at
    /// most `max_tokens` tokens instead of `max_new_tokens`, though at least one: room left in a context limit. It
    /// ends with [`FinishReason::Length`] there.
    pub fn limit_turn(&mut self, id: SeqId, max_tokens: usize) -> anyhow::Result<()> {
        let seq = self.seqs.get_mut(&id).ok_or_else(|| anyhow::anyhow!("sequence {id} is not in the engine"))?;
        anyhow::ensure!(seq.turn.tokens.is_empty(), "sequence {id} has already sampled in this turn");
        seq.budget = max_tokens.clamp(1, self.cfg.max_new_tokens.max(1));
        Ok(())
    }

    /// Forget sequence `id` and free its slot.
    pub fn release(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.remove(&id) {
            if let Some(s) = seq.slot {
                self.slots[s] = None;
            }
            self.waiting.retain(|&w| w != id);
        }
    }

    /// Whether [`Engine::step`] can make progress now: a sequence is decoding or has tokens to feed, or one is
    /// waiting and a slot is free.
    pub fn runnable(&self) -> bool {
        let free = self.slots.iter().any(Option::is_none);
        self.seqs.values().any(|s| match s.state {
            State::Prefill | State::Ready => true,
            State::Waiting => free,
            State::Parked => false,
        })
    }

    /// One step (see the module docs). Returns the turns that ended in it, in sequence order. `on_token(id, t)`
    /// sees every sampled token once the host has it.
    ///
    /// With `multi_step` k > 1, one step samples up to k tokens per ready sequence (never past a turn's budget):
    /// its first k - 1 decode forwards are queued back to back, each fed the ids the one before sampled on the
    /// device, and the host reads all the ids once, as vLLM's multi-step scheduling does. A turn that ends inside
    /// the block keeps its tokens up to its end; what its row decoded after that is dropped, and its cache columns
    /// past its end are overwritten by its next prefill. Seeded rows draw the same uniforms in the same order
    /// either way, so a sequence samples what it would with k = 1 (up to the rounding of other batch shapes).
    pub fn step(&mut self, on_token: &mut dyn FnMut(SeqId, u32)) -> anyhow::Result<Vec<(SeqId, Turn)>> {
        let mut ended = Vec::new();
        self.admit();
        if self.cfg.max_new_tokens == 0 {
            // Nothing to sample: every turn ends at once, its tokens left for the next prefill.
            for (&id, seq) in self.seqs.iter_mut().filter(|(_, s)| s.state == State::Prefill) {
                seq.state = State::Parked;
                ended.push((id, Turn { finish: Some(FinishReason::Length), ..Turn::default() }));
            }
            return Ok(ended);
        }
        let start = Instant::now();
        if self.prefill()? {
            // Only for the timing split: sampling synchronises anyway.
            sync(self.model.device());
            self.stats.prefill_secs += start.elapsed().as_secs_f64();
        }
        let start = Instant::now();
        let continuing = self.sample(on_token, &mut ended)?;
        let continuing = self.reencode_crossing(continuing);
        self.decode(&continuing)?;
        sync(self.model.device());
        self.stats.decode_secs += start.elapsed().as_secs_f64();
        Ok(ended)
    }

    /// Give free slots to waiting sequences, first submitted first.
    fn admit(&mut self) {
        while let Some(&id) = self.waiting.front() {
            let Some(free) = self.slots.iter().position(Option::is_none) else { break };
            self.waiting.pop_front();
            self.slots[free] = Some(id);
            let seq = self.seqs.get_mut(&id).expect("waiting sequences exist");
            seq.slot = Some(free);
            seq.state = State::Prefill;
        }
    }

    /// Feed every sequence's pending tokens, sharing group prompts; each ends Ready with its next-token logits.
    /// Returns whether there was anything to feed.
    fn prefill(&mut self) -> anyhow::Result<bool> {
        let ids: Vec<SeqId> = self.seqs.iter().filter(|(_, s)| s.state == State::Prefill).map(|(&id, _)| id).collect();
        if ids.is_empty() {
            return Ok(false);
        }
        if let Some(context) = self.model.config().longrope_context() {
            // A later turn whose tokens carry the sequence past LongRoPE's context: all of it again, with the long
            // factors, as a new `generate` call over the whole conversation would.
            for id in &ids {
                let seq = self.seqs.get_mut(id).expect("exists");
                if seq.cached > 0 && seq.cached <= context && seq.cached + seq.pending.len() as i64 > context {
                    debug_assert_eq!(seq.history.len() as i64, seq.cached + seq.pending.len() as i64);
                    Self::reencode(seq);
                }
            }
        }
        // Sequences whose whole streams are the same (a group's prompt, or siblings that sampled the same turn and
        // got the same reply) run their new tokens once: one leads, the others copy its new columns and logits.
        let mut leaders: HashMap<(i64, Vec<u32>), SeqId> = HashMap::new();
        let mut followers: Vec<(SeqId, SeqId)> = Vec::new();
        let mut copies: Vec<(usize, usize, i64)> = Vec::new();
        let mut feed: Vec<SeqId> = Vec::new();
        for &id in &ids {
            let key = (self.seqs[&id].cached, self.seqs[&id].history.clone());
            if let Some(&leader) = leaders.get(&key) {
                followers.push((id, leader));
                continue;
            }
            leaders.insert(key, id);
            if let (Some((key, len)), 0) = (self.seqs[&id].share, self.seqs[&id].cached) {
                // A sibling from an earlier step still holds the prompt: copy all of it but the last token, which
                // is run again for its logits.
                let prompt = &self.seqs[&id].history[..len];
                let donor = self.seqs.iter().find(|(&other, s)| {
                    other != id
                        && s.share == Some((key, len))
                        && s.slot.is_some()
                        && s.cached >= len as i64 - 1
                        && s.history[..len] == *prompt
                });
                if let (Some((_, donor)), true) = (donor, len > 1) {
                    copies.push((donor.slot.expect("checked"), self.seqs[&id].slot.expect("admitted"), len as i64 - 1));
                    let seq = self.seqs.get_mut(&id).expect("exists");
                    seq.cached = len as i64 - 1;
                    seq.pending.drain(..len - 1);
                }
            }
            feed.push(id);
        }
        for (src, dst, cols) in copies {
            self.ensure_capacity(cols + self.cfg.max_new_tokens as i64 + 1);
            self.cache_mut().copy_slots(&[src as i64], &[dst as i64], 0, cols);
        }

        // Shortest first; a batch closes when padding would pass a quarter of its tokens.
        feed.sort_by_key(|id| (self.seqs[id].pending.len(), *id));
        let mut batch: Vec<SeqId> = Vec::new();
        let mut real = 0usize;
        for id in feed {
            let len = self.seqs[&id].pending.len();
            let rows = batch.len() + 1;
            if !batch.is_empty() && (rows * len * 4 > (real + len) * 5 || rows * len > PREFILL_TOKENS) {
                self.prefill_batch(&std::mem::take(&mut batch))?;
                real = 0;
            }
            batch.push(id);
            real += len;
        }
        if !batch.is_empty() {
            self.prefill_batch(&batch)?;
        }

        for (id, leader) in followers {
            let (src, cols, logits) = {
                let l = &self.seqs[&leader];
                (l.slot.expect("prefilled"), l.cached, l.logits.as_ref().map(Tensor::shallow_clone))
            };
            let (dst, from) = (self.seqs[&id].slot.expect("admitted"), self.seqs[&id].cached);
            self.cache_mut().copy_slots(&[src as i64], &[dst as i64], from, cols);
            let seq = self.seqs.get_mut(&id).expect("exists");
            if from > 0 {
                // A later turn's tokens count for every episode (a group's prompt counts once).
                let n = (seq.pending.len() - seq.pending_sampled) as u64;
                self.stats.prefill_tokens += n;
                self.stats.prefill_shared_tokens += n;
            }
            seq.cached = cols;
            seq.pending.clear();
            seq.pending_sampled = 0;
            seq.logits = logits;
            seq.state = State::Ready;
        }
        Ok(true)
    }

    fn prefill_batch(&mut self, ids: &[SeqId]) -> anyhow::Result<()> {
        let t = ids.iter().map(|id| self.seqs[id].pending.len()).max().unwrap_or(0);
        let b = ids.len();
        let mut starts = Vec::with_capacity(b);
        let mut slots = Vec::with_capacity(b);
        let mut last = Vec::with_capacity(b);
        let mut lengths = Vec::with_capacity(b);
        let mut need = 0i64;
        for id in ids {
            let s = &self.seqs[id];
            starts.push(s.cached);
            slots.push(s.slot.expect("admitted") as i64);
            last.push(s.pending.len() as i64 - 1);
            lengths.push(s.pending.len() as i64);
            need = need.max(s.cached + t as i64).max(s.cached + (s.pending.len() + self.cfg.max_new_tokens) as i64);
        }
        self.ensure_capacity(need);
        let device = self.model.device();
        let input = crate::model::right_padded(ids.iter().map(|id| &self.seqs[id].pending[..]), t, device);
        let model = self.model;
        let hidden = model.forward_slots(&input, &starts, &lengths, &CacheRows::Slots(slots), self.cache_mut())?;
        let h = hidden.size()[2];
        let idx = Tensor::from_slice(&last).to_device(device).view([b as i64, 1, 1]).expand([b as i64, 1, h], false);
        let logits = model.lm_head(&hidden.gather(1, &idx, false).squeeze_dim(1));
        for (r, id) in ids.iter().enumerate() {
            let seq = self.seqs.get_mut(id).expect("exists");
            let n = seq.pending.len();
            self.stats.prefill_tokens += (n - seq.pending_sampled) as u64;
            seq.cached += n as i64;
            seq.pending.clear();
            seq.pending_sampled = 0;
            seq.logits = Some(logits.get(r as i64));
            seq.state = State::Ready;
        }
        Ok(())
    }

    /// Sample one token for every ready sequence, or a block of `multi_step` (see [`Engine::step`]); returns the
    /// ones that go on, with their last token, which is not run yet.
    fn sample(
        &mut self,
        on_token: &mut dyn FnMut(SeqId, u32),
        ended: &mut Vec<(SeqId, Turn)>,
    ) -> anyhow::Result<Vec<(SeqId, u32)>> {
        let mut ids: Vec<SeqId> =
            self.seqs.iter().filter(|(_, s)| s.state == State::Ready).map(|(&id, _)| id).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let left = ids.iter().map(|id| self.seqs[id].budget.saturating_sub(self.seqs[id].turn.tokens.len()));
        let mut block = left.min().unwrap_or(1).min(self.cfg.multi_step).max(1);
        if let Some(context) = self.model.config().longrope_context() {
            // A row that would cross LongRoPE's context inside the block must stop there to be re-encoded.
            if ids.iter().any(|id| (self.seqs[id].cached..self.seqs[id].cached + block as i64).contains(&context)) {
                block = 1;
            }
        }
        if block > 1 {
            // The blind decodes read the cache in place: the rows go to the first slots, in slot order.
            self.gather_front(&ids);
            ids.sort_by_key(|id| self.seqs[id].slot);
            debug_assert!(ids.iter().enumerate().all(|(r, id)| self.seqs[id].slot == Some(r)));
        }
        let host = self.draw_block(&ids, block)?;
        self.take_block(&ids, block, &host, on_token, ended)
    }

    /// The device half of [`Engine::sample`]: `block` tokens for each of `ids` (in slot order when `block` > 1),
    /// with every decode forward between them, then one read of `[block, 3 (id, log-prob, model log-prob), n]`.
    fn draw_block(&mut self, ids: &[SeqId], block: usize) -> anyhow::Result<Vec<f64>> {
        let n = ids.len();
        let device = self.model.device();
        let seeded = ids.iter().filter(|id| self.seqs[*id].rng.is_some()).count();
        anyhow::ensure!(seeded == 0 || seeded == n, "some sequences have a sampling seed and some do not");
        // `[block, n]`: each row's next `block` draws of its own stream, sent in one copy.
        let uniforms = (seeded > 0).then(|| {
            let mut u = Vec::with_capacity(block * n);
            for _ in 0..block {
                u.extend(
                    ids.iter().map(|id| self.seqs.get_mut(id).and_then(|s| s.rng.as_mut()).expect("seeded").unit()),
                );
            }
            Tensor::from_slice(&u).view([block as i64, n as i64]).to_device(device)
        });
        let rows: Vec<Tensor> =
            ids.iter().map(|id| self.seqs[id].logits.as_ref().expect("ready").shallow_clone()).collect();
        let mut logits = Tensor::stack(&rows, 0);
        // The blind decodes' starts, sent once: step `j` adds `j` on the device.
        let front = (block > 1).then(|| {
            let starts: Vec<i64> = ids.iter().map(|id| self.seqs[id].cached).collect();
            (Tensor::from_slice(&starts).to_device(device), starts.iter().max().copied().unwrap_or(0))
        });
        // Under a repetition penalty, `[n, vocab]`: the tokens each row's sequence holds so far, on the device (with
        // the `true` and the row numbers that mark each drawn token in it).
        let seen = (self.cfg.sampling.repetition_penalty != 1.0).then(|| {
            let (mut rows, mut cols) = (Vec::new(), Vec::new());
            for (r, id) in ids.iter().enumerate() {
                for &t in &self.seqs[id].history {
                    rows.push(r as i64);
                    cols.push(i64::from(t));
                }
            }
            let seen = Tensor::zeros(logits.size(), (Kind::Bool, device));
            let (rows, cols) =
                (Tensor::from_slice(&rows).to_device(device), Tensor::from_slice(&cols).to_device(device));
            let truth = Tensor::from(true).to_device(device);
            let seen = seen.index_put(&[Some(rows), Some(cols)], &truth, false);
            (seen, truth, Tensor::arange(n as i64, (Kind::Int64, device)))
        });
        let temperature = self.model.logprob_temperature();
        let mut drawn = Vec::with_capacity(block);
        for j in 0..block {
            let u = uniforms.as_ref().map(|u| u.get(j as i64));
            let mask = seen.as_ref().map(|(seen, _, _)| seen);
            let (tok, lp, mlp) = sampling::sample(&logits, &self.cfg.sampling, u.as_ref(), temperature, mask);
            if let Some((seen, truth, rows)) = &seen {
                // The block's next draws see this one.
                let at = [Some(rows.shallow_clone()), Some(tok.shallow_clone())];
                let _ = seen.shallow_clone().index_put_(&at, truth, false);
            }
            if let (Some((starts, longest)), true) = (&front, j + 1 < block) {
                let model = self.model;
                let (input, at, rows) = (tok.view([n as i64, 1]), starts + j as i64, CacheRows::Prefix(n as i64));
                let hidden = model.forward_slots_from(&input, &at, longest + j as i64, &rows, self.cache_mut())?;
                logits = model.lm_head(&hidden.select(1, 0));
            }
            drawn.push(Tensor::stack(
                &[tok.to_kind(Kind::Double), lp.to_kind(Kind::Double), mlp.to_kind(Kind::Double)],
                0,
            ));
        }
        self.stats.steps += block as u64;
        self.stats.host_reads += 1;
        Ok(Vec::try_from(Tensor::stack(&drawn, 0).to_device(Device::Cpu).view([-1]))?)
    }

    /// The host half of [`Engine::sample`]: each row's tokens of the block `host` up to the end of its turn, if it
    /// ends. Returns the rows that go on, with their last token.
    fn take_block(
        &mut self,
        ids: &[SeqId],
        block: usize,
        host: &[f64],
        on_token: &mut dyn FnMut(SeqId, u32),
        ended: &mut Vec<(SeqId, Turn)>,
    ) -> anyhow::Result<Vec<(SeqId, u32)>> {
        let n = ids.len();
        let mut live = vec![true; n];
        let mut continuing = Vec::with_capacity(n);
        for j in 0..block {
            let at = |k: usize, r: usize| host[(j * 3 + k) * n + r];
            for (r, &id) in ids.iter().enumerate() {
                if !live[r] {
                    continue;
                }
                let seq = self.seqs.get_mut(&id).expect("exists");
                if at(2, r).is_nan() {
                    return Err(user_error!(
                        "the model's logits are not finite at new token {} of sequence {id}; its weights have \
                         diverged or the checkpoint is damaged (lower --lr, or resume from an earlier checkpoint)",
                        seq.turn.tokens.len() + 1
                    ));
                }
                let t = at(0, r) as u32;
                seq.history.push(t);
                seq.turn.tokens.push(t);
                seq.turn.logprobs.push(at(1, r) as f32);
                seq.turn.model_logprobs.push(at(2, r) as f32);
                self.stats.generated_tokens += 1;
                on_token(id, t);
                let finish = if self.cfg.eos_ids.contains(&t) {
                    Some(FinishReason::Eos)
                } else if let Some(stop) =
                    stop_hit(self.tokenizer, &seq.turn.tokens, &self.cfg.stop_strings, self.stop_window)?
                {
                    Some(FinishReason::Stop(stop))
                } else if seq.turn.tokens.len() >= seq.budget {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                // The block's decodes ran this turn's tokens before the `j`-th.
                match finish {
                    Some(f) => {
                        // The last token is not run yet: it leads the next turn's prefill.
                        live[r] = false;
                        seq.cached += j as i64;
                        seq.state = State::Parked;
                        seq.logits = None;
                        seq.pending = vec![t];
                        seq.pending_sampled = 1;
                        let mut turn = std::mem::take(&mut seq.turn);
                        turn.finish = Some(f);
                        ended.push((id, turn));
                    }
                    None if j + 1 == block => {
                        seq.cached += j as i64;
                        continuing.push((id, t));
                    }
                    None => {}
                }
            }
        }
        ended.sort_by_key(|&(id, _)| id);
        continuing.sort_by_key(|&(id, _)| id);
        Ok(continuing)
    }

    /// Take out of `continuing` the sequences whose next token crosses LongRoPE's pre-training context (Phi-3) and
    /// re-encode them from their first token at the next prefill, as transformers' Phi-3 `generate` does: their
    /// cached keys were turned with the short factors, and from now on the sequence takes the long ones.
    fn reencode_crossing(&mut self, continuing: Vec<(SeqId, u32)>) -> Vec<(SeqId, u32)> {
        let Some(context) = self.model.config().longrope_context() else { return continuing };
        continuing
            .into_iter()
            .filter(|&(id, _)| {
                let seq = self.seqs.get_mut(&id).expect("exists");
                if seq.cached != context {
                    return true;
                }
                // Its cache, and the sampled token not run yet.
                debug_assert_eq!(seq.history.len() as i64, seq.cached + 1);
                Self::reencode(seq);
                seq.pending_sampled = 1;
                false
            })
            .collect()
    }

    /// Make `seq` run its whole stream again from column 0 at the next prefill (not from a shared prompt, whose
    /// cached columns are what is being replaced).
    fn reencode(seq: &mut Seq) {
        seq.pending = seq.history.clone();
        seq.cached = 0;
        seq.share = None;
        seq.logits = None;
        seq.state = State::Prefill;
    }

    /// One decode forward for the sequences that go on, moved to the first slots so the cache is read in place.
    fn decode(&mut self, continuing: &[(SeqId, u32)]) -> anyhow::Result<()> {
        if continuing.is_empty() {
            return Ok(());
        }
        let ids: Vec<SeqId> = continuing.iter().map(|&(id, _)| id).collect();
        self.gather_front(&ids);
        let c = continuing.len();
        let mut tokens = vec![0i64; c];
        let mut starts = vec![0i64; c];
        for &(id, t) in continuing {
            let seq = &self.seqs[&id];
            let slot = seq.slot.expect("decoding sequences hold a slot");
            tokens[slot] = t as i64;
            starts[slot] = seq.cached;
        }
        let device = self.model.device();
        let input = Tensor::from_slice(&tokens).view([c as i64, 1]).to_device(device);
        let model = self.model;
        let ones = vec![1; c];
        let hidden = model.forward_slots(&input, &starts, &ones, &CacheRows::Prefix(c as i64), self.cache_mut())?;
        let logits = model.lm_head(&hidden.select(1, 0));
        for slot in 0..c {
            let id = self.slots[slot].expect("front slots are decoding");
            let seq = self.seqs.get_mut(&id).expect("exists");
            seq.cached += 1;
            seq.logits = Some(logits.get(slot as i64));
        }
        Ok(())
    }

    /// Move the sequences `ids` into slots `0..ids.len()`, swapping out whatever holds those slots.
    fn gather_front(&mut self, ids: &[SeqId]) {
        let c = ids.len();
        let outside: Vec<usize> = ids
            .iter()
            .map(|id| self.seqs[id].slot.expect("decoding sequences hold a slot"))
            .filter(|&s| s >= c)
            .collect();
        if outside.is_empty() {
            return;
        }
        let members: std::collections::HashSet<SeqId> = ids.iter().copied().collect();
        let holes: Vec<usize> = (0..c).filter(|&s| self.slots[s].is_none_or(|o| !members.contains(&o))).collect();
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        let mut cols = 0i64;
        for (&from, &to) in outside.iter().zip(&holes) {
            src.push(from as i64);
            dst.push(to as i64);
            for s in [from, to] {
                if let Some(o) = self.slots[s] {
                    cols = cols.max(self.seqs[&o].cached);
                }
            }
            if self.slots[to].is_some() {
                src.push(to as i64);
                dst.push(from as i64);
            }
            self.slots.swap(from, to);
            for s in [from, to] {
                if let Some(o) = self.slots[s] {
                    self.seqs.get_mut(&o).expect("exists").slot = Some(s);
                }
            }
        }
        self.cache_mut().copy_slots(&src, &dst, 0, cols);
    }

    fn cache_mut(&mut self) -> &mut KvCache {
        self.cache.as_mut().expect("the cache is allocated before its first use")
    }

    /// Make every slot at least `columns` long.
    fn ensure_capacity(&mut self, columns: i64) {
        let round = |c: i64| (c + COLUMN_QUANTUM - 1) / COLUMN_QUANTUM * COLUMN_QUANTUM;
        match &mut self.cache {
            None => self.cache = Some(self.model.new_cache(self.slots.len() as i64, round(columns))),
            Some(cache) if cache.capacity() < columns => {
                let grown = round(columns.max(cache.capacity() * 3 / 2));
                cache.grow(grown);
            }
            Some(_) => {}
        }
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
