//! Sampling from the model. One [`generate`] call samples `group_size` completions for each of a batch of prompts
//! (token ids) on the continuous-batching [`engine`]: each prompt is prefilled once for its group, without padding
//! to the longest, and a completion that ends frees its slot for the next at once. Multi-turn rollouts drive the
//! engine directly ([`crate::rollout`]) so that an episode keeps its cache between turns. Sampling (temperature,
//! top-k, top-p, min-p) runs on the device; the only per-step transfer to the host is the sampled ids and their
//! log-probs, which stopping needs.

pub mod engine;
pub mod sampling;

pub use engine::{Engine, EngineConfig, EngineStats, SeqId, Turn};
pub use sampling::SamplingParams;

use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::user_error;

/// Why a completion ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// It sampled an end-of-sequence id (the id is the last token of the completion).
    Eos,
    /// Its text came to contain this stop string (the completing token is the last token).
    Stop(String),
    /// It reached `max_new_tokens`.
    Length,
}

impl FinishReason {
    /// `eos`, `stop` or `length`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop(_) => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The prompts, as token ids (already rendered through the chat template, special tokens included).
    pub prompts: Vec<Vec<u32>>,
    /// Completions per prompt (the GRPO group).
    pub group_size: usize,
    /// Upper bound on generated tokens per completion.
    pub max_new_tokens: usize,
    /// Temperature and filters.
    pub sampling: SamplingParams,
    /// Stop when the decoded completion contains any of these (needs a tokenizer).
    pub stop_strings: Vec<String>,
    /// End-of-sequence ids; usually [`Tokenizer::eos_token_ids`]. Empty: never stop on a token.
    pub eos_ids: Vec<u32>,
    /// Seed for the sampling RNG (libtorch's global generator); the same seed gives the same samples on CPU.
    pub seed: Option<u64>,
    /// One seed per completion (prompt-major, as [`GenerateOutput::completions`]): each completion then draws from
    /// its own stream, so what it samples does not depend on which other rows share its batch (or which
    /// data-parallel rank runs it). Empty: every row draws from libtorch's generator, seeded by `seed`.
    pub row_seeds: Vec<u64>,
    /// Completions decoding at once (`--max-batch-rows`); `None`: all of them, as memory allows.
    pub max_batch_rows: Option<usize>,
    /// Decode steps per host read (`--multi-step`; see [`Engine::step`]).
    pub multi_step: usize,
}

impl GenerateRequest {
    /// A request with greedy decoding, no stop strings and no seed.
    pub fn new(prompts: Vec<Vec<u32>>, group_size: usize, max_new_tokens: usize, eos_ids: Vec<u32>) -> Self {
        GenerateRequest {
            prompts,
            group_size,
            max_new_tokens,
            sampling: SamplingParams::greedy(),
            stop_strings: Vec::new(),
            eos_ids,
            seed: None,
            row_seeds: Vec::new(),
            max_batch_rows: None,
            multi_step: 1,
        }
    }
}

/// One generated completion.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Which prompt it continues.
    pub prompt_index: usize,
    /// Which sample of that prompt's group.
    pub sample_index: usize,
    /// The generated ids, including the final eos id when it stopped on one.
    pub tokens: Vec<u32>,
    /// `tokens` decoded with special tokens skipped (empty without a tokenizer).
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Log-prob of each token under the distribution it was sampled from (after temperature and filters);
    /// 0 for greedy decoding, whose distribution is a point mass.
    pub logprobs: Vec<f32>,
    /// Log-prob of each token under the plain model (temperature 1, no filters), from the decode pass.
    pub model_logprobs: Vec<f32>,
}

/// Timing of one call.
#[derive(Debug, Clone, Default)]
pub struct GenerateStats {
    /// Prompt tokens prefilled (distinct prompts only, padding excluded).
    pub prefill_tokens: usize,
    /// Tokens generated over all completions.
    pub generated_tokens: usize,
    /// Seconds spent on the prefill.
    pub prefill_secs: f64,
    /// Seconds spent sampling and decoding.
    pub decode_secs: f64,
}

impl GenerateStats {
    /// Generated tokens per second of the whole call (prefill included).
    pub fn tokens_per_second(&self) -> f64 {
        let t = self.prefill_secs + self.decode_secs;
        if t > 0.0 {
            self.generated_tokens as f64 / t
        } else {
            0.0
        }
    }
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    /// `prompts.len() * group_size` completions, prompt-major: index `p * group_size + s`.
    pub completions: Vec<Completion>,
    /// Timing.
    pub stats: GenerateStats,
}

/// Generate completions for every prompt of `req`. `tokenizer` decodes text and checks stop strings (optional
/// otherwise). `on_token(completion_index, token)` is called for every sampled token, in order, e.g. to stream.
pub fn generate(
    model: &Model,
    tokenizer: Option<&Tokenizer>,
    req: &GenerateRequest,
    mut on_token: Option<&mut dyn FnMut(usize, u32)>,
) -> anyhow::Result<GenerateOutput> {
    if req.prompts.is_empty() {
        return Ok(GenerateOutput { completions: Vec::new(), stats: GenerateStats::default() });
    }
    if req.group_size == 0 {
        return Err(user_error!("the group size (samples per prompt) must be at least 1"));
    }
    if let Some(i) = req.prompts.iter().position(Vec::is_empty) {
        return Err(user_error!("prompt {i} is empty; every prompt needs at least one token"));
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(bad) = req.prompts.iter().flatten().find(|&&t| t >= vocab) {
        return Err(user_error!("prompt token id {bad} is outside the model's vocabulary of {vocab}"));
    }
    // The engine checks the sampling settings and that stop strings have a tokenizer.
    let group = req.group_size;
    let n = req.prompts.len() * group;
    if !req.row_seeds.is_empty() && req.row_seeds.len() != n {
        anyhow::bail!("{} row seeds for {n} completions", req.row_seeds.len());
    }
    if let Some(seed) = req.seed {
        tch::manual_seed(seed as i64);
    }
    let longest = req.prompts.iter().map(Vec::len).max().unwrap_or(0);
    let cfg = EngineConfig {
        max_rows: req.max_batch_rows.unwrap_or_else(|| engine::default_rows(model, n, longest + req.max_new_tokens)),
        max_new_tokens: req.max_new_tokens,
        sampling: req.sampling,
        eos_ids: req.eos_ids.clone(),
        stop_strings: req.stop_strings.clone(),
        multi_step: req.multi_step,
    };
    tch::no_grad(|| {
        let mut engine = Engine::new(model, tokenizer, cfg)?;
        for (p, prompt) in req.prompts.iter().enumerate() {
            for s in 0..group {
                let id = p * group + s;
                engine.submit(id, prompt.clone(), (group > 1).then_some(p), req.row_seeds.get(id).copied())?;
            }
        }
        let mut turns: Vec<Turn> = vec![Turn::default(); n];
        let mut cb = |id: usize, t: u32| {
            if let Some(f) = on_token.as_deref_mut() {
                f(id, t);
            }
        };
        while engine.runnable() {
            for (id, turn) in engine.step(&mut cb)? {
                // A finished completion frees its slot for the next waiting one at once.
                engine.release(id);
                turns[id] = turn;
            }
        }
        let e = engine.stats;
        let stats = GenerateStats {
            prefill_tokens: e.prefill_tokens as usize,
            generated_tokens: e.generated_tokens as usize,
            prefill_secs: e.prefill_secs,
            decode_secs: e.decode_secs,
        };
        Ok(finish(turns, tokenizer, group, stats))
    })
}

/// The stop string the completion's text now contains, decoding only its last few tokens (a stop string of
/// L bytes spans at most L tokens).
pub(crate) fn stop_hit(
    tokenizer: Option<&Tokenizer>,
    tokens: &[u32],
    stops: &[String],
    window: usize,
) -> anyhow::Result<Option<String>> {
    let Some(tok) = tokenizer.filter(|_| !stops.is_empty()) else {
        return Ok(None);
    };
    let tail = &tokens[tokens.len().saturating_sub(window)..];
    let text = tok.decode(tail, true)?;
    Ok(stops.iter().find(|s| text.contains(s.as_str())).cloned())
}

fn finish(turns: Vec<Turn>, tokenizer: Option<&Tokenizer>, group: usize, stats: GenerateStats) -> GenerateOutput {
    let completions = turns
        .into_iter()
        .enumerate()
        .map(|(i, s)| Completion {
            prompt_index: i / group,
            sample_index: i % group,
            text: tokenizer.and_then(|t| t.decode(&s.tokens, true).ok()).unwrap_or_default(),
            tokens: s.tokens,
            finish_reason: s.finish.unwrap_or(FinishReason::Length),
            logprobs: s.logprobs,
            model_logprobs: s.model_logprobs,
        })
        .collect();
    GenerateOutput { completions, stats }
}
