//! The batched sampling engine. One [`generate`] call samples `group_size` completions for each of a batch of
//! prompts (token ids; the caller owns the token history, so continuing a multi-turn episode is "pass the whole
//! history"). Each distinct prompt is prefilled once, left-padded to the longest prompt so every row writes its
//! next token at the same cache column; its KV cache is then copied across its group. The cache is preallocated
//! for the longest prompt plus `max_new_tokens`. Sampling (temperature, top-k, top-p, min-p) runs on the device;
//! the only per-step transfer to the host is the sampled ids and their log-probs, which stopping needs. Finished
//! sequences are dropped from the batch (the cache rows compacted) once a quarter of the rows have finished, so
//! they stop costing compute without a copy per finished sequence.

pub mod sampling;

use std::time::Instant;

use grpo_sdk::rng::SplitMix64;
use tch::{Device, Kind, Tensor};

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

struct SeqState {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    model_logprobs: Vec<f32>,
    finish: Option<FinishReason>,
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
    if !req.stop_strings.is_empty() && tokenizer.is_none() {
        return Err(user_error!("stop strings need a tokenizer"));
    }
    req.sampling.validate()?;
    let n = req.prompts.len() * req.group_size;
    if !req.row_seeds.is_empty() && req.row_seeds.len() != n {
        anyhow::bail!("{} row seeds for {n} completions", req.row_seeds.len());
    }
    if let Some(seed) = req.seed {
        tch::manual_seed(seed as i64);
    }
    tch::no_grad(|| run(model, tokenizer, req, &mut on_token))
}

fn run(
    model: &Model,
    tokenizer: Option<&Tokenizer>,
    req: &GenerateRequest,
    on_token: &mut Option<&mut dyn FnMut(usize, u32)>,
) -> anyhow::Result<GenerateOutput> {
    let start = Instant::now();
    let device = model.device();
    let n_prompts = req.prompts.len();
    let group = req.group_size;
    let n = n_prompts * group;
    let lens: Vec<i64> = req.prompts.iter().map(|p| p.len() as i64).collect();
    let lmax = *lens.iter().max().unwrap_or(&1);
    let max_new = req.max_new_tokens as i64;

    let mut seqs: Vec<SeqState> = (0..n)
        .map(|_| SeqState { tokens: Vec::new(), logprobs: Vec::new(), model_logprobs: Vec::new(), finish: None })
        .collect();
    let mut stats = GenerateStats { prefill_tokens: lens.iter().sum::<i64>() as usize, ..Default::default() };
    if max_new == 0 {
        return Ok(finish(seqs, tokenizer, group, stats));
    }

    // Left-pad the distinct prompts to a common length and prefill them once.
    let mut ids = vec![0i64; n_prompts * lmax as usize];
    let mut valid = vec![false; n_prompts * lmax as usize];
    for (p, prompt) in req.prompts.iter().enumerate() {
        let off = p * lmax as usize + (lmax as usize - prompt.len());
        for (j, &t) in prompt.iter().enumerate() {
            ids[off + j] = t as i64;
            valid[off + j] = true;
        }
    }
    let ids = Tensor::from_slice(&ids).view([n_prompts as i64, lmax]).to_device(device);
    let valid = Tensor::from_slice(&valid).view([n_prompts as i64, lmax]).to_device(device);
    let positions = Model::position_ids(&valid);
    let mut cache = model.new_cache(n_prompts as i64, lmax + max_new);
    let hidden = model.forward_cached(&ids, &positions, &valid, &mut cache)?;
    let mut logits = model.lm_head(&hidden.select(1, lmax - 1));

    let mut key_valid = Tensor::cat(&[valid, Tensor::ones([n_prompts as i64, max_new], (Kind::Bool, device))], 1);
    let mut next_pos = Tensor::from_slice(&lens).to_device(device);
    if group > 1 {
        let rows =
            Tensor::arange(n_prompts as i64, (Kind::Int64, device)).repeat_interleave_self_int(group as i64, 0, None);
        cache.select_rows(&rows);
        logits = logits.index_select(0, &rows);
        key_valid = key_valid.index_select(0, &rows);
        next_pos = next_pos.index_select(0, &rows);
    }
    sync(device);
    stats.prefill_secs = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();

    let stop_window = req.stop_strings.iter().map(String::len).max().unwrap_or(0) + 2;
    // Batch row -> completion index; rows of finished completions linger until the next compaction.
    let mut row_seq: Vec<usize> = (0..n).collect();
    let mut remaining = n;
    let mut streams: Vec<SplitMix64> = req.row_seeds.iter().map(|&s| SplitMix64::new(s)).collect();
    for step in 0..max_new {
        // A completion's own stream advances only while it is unfinished, so its draws do not depend on when the
        // batch is compacted or on its neighbours.
        let uniforms = (!streams.is_empty()).then(|| {
            let u: Vec<f64> =
                row_seq.iter().map(|&s| if seqs[s].finish.is_none() { streams[s].unit() } else { 0.5 }).collect();
            Tensor::from_slice(&u)
        });
        let (tok, lp, mlp) = sampling::sample(&logits, &req.sampling, uniforms.as_ref());
        let host: Vec<f64> = Vec::try_from(
            Tensor::stack(&[tok.to_kind(Kind::Double), lp.to_kind(Kind::Double), mlp.to_kind(Kind::Double)], 0)
                .to_device(Device::Cpu)
                .view([-1]),
        )?;
        let rows = row_seq.len();
        for (r, &s) in row_seq.iter().enumerate() {
            let seq = &mut seqs[s];
            if seq.finish.is_some() {
                continue;
            }
            if host[2 * rows + r].is_nan() {
                return Err(user_error!(
                    "the model's logits are not finite at new token {} of completion {s}; its weights have \
                     diverged or the checkpoint is damaged (lower --lr, or resume from an earlier checkpoint)",
                    step + 1
                ));
            }
            let t = host[r] as u32;
            seq.tokens.push(t);
            seq.logprobs.push(host[rows + r] as f32);
            seq.model_logprobs.push(host[2 * rows + r] as f32);
            if let Some(cb) = on_token.as_deref_mut() {
                cb(s, t);
            }
            if req.eos_ids.contains(&t) {
                seq.finish = Some(FinishReason::Eos);
            } else if let Some(stop) = stop_hit(tokenizer, &seq.tokens, &req.stop_strings, stop_window)? {
                seq.finish = Some(FinishReason::Stop(stop));
            } else if seq.tokens.len() as i64 == max_new {
                seq.finish = Some(FinishReason::Length);
            }
            if seq.finish.is_some() {
                remaining -= 1;
            }
        }
        stats.generated_tokens = seqs.iter().map(|s| s.tokens.len()).sum();
        if remaining == 0 || step + 1 == max_new {
            break;
        }
        let mut tok = tok;
        let dead = row_seq.iter().filter(|&&s| seqs[s].finish.is_some()).count();
        if dead > 0 && dead * 4 >= rows {
            let keep: Vec<i64> = (0..rows).filter(|&r| seqs[row_seq[r]].finish.is_none()).map(|r| r as i64).collect();
            let keep_t = Tensor::from_slice(&keep).to_device(device);
            cache.select_rows(&keep_t);
            key_valid = key_valid.index_select(0, &keep_t);
            next_pos = next_pos.index_select(0, &keep_t);
            tok = tok.index_select(0, &keep_t);
            row_seq = keep.iter().map(|&r| row_seq[r as usize]).collect();
        }
        let rows = row_seq.len() as i64;
        let kv = key_valid.narrow(1, 0, cache.len + 1);
        let hidden = model.forward_cached(&tok.view([rows, 1]), &next_pos.view([rows, 1]), &kv, &mut cache)?;
        logits = model.lm_head(&hidden.select(1, 0));
        next_pos += 1;
    }
    stats.decode_secs = decode_start.elapsed().as_secs_f64();
    Ok(finish(seqs, tokenizer, group, stats))
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The stop string the completion's text now contains, decoding only its last few tokens (a stop string of
/// L bytes spans at most L tokens).
fn stop_hit(
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

fn finish(seqs: Vec<SeqState>, tokenizer: Option<&Tokenizer>, group: usize, stats: GenerateStats) -> GenerateOutput {
    let completions = seqs
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
