//! `grpo-host gen-qa`: question-answer pairs for `multiturn_qa` generated from a corpus by a model (re-grpo's
//! generate_data step). Each chunk is shown to the model with a little of its neighbours for context, and the model
//! writes questions answerable from that chunk. Rows use re-grpo's schema (`chunk_id`, `question`, `answer`,
//! `difficulty`, `context`) and name chunks by the ids the environment gives them (the same `grpo-corpus` chunker).
//!
//! Resumable: the output is rewritten atomically after every batch, and a rerun skips chunks that already have
//! rows. Unlike re-grpo, only the generated text is parsed (re-grpo parsed its own echoed prompt too), and a field
//! is recognised only at the start of a line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::args::{ModelArgs, SamplingArgs};
use crate::generate::{generate, GenerateRequest, SamplingParams};
use crate::model::Model;
use crate::user_error;

/// Flags of `grpo-host gen-qa`.
#[derive(Debug, Args)]
pub struct GenQaArgs {
    /// A directory of `.md`, `.markdown` or `.txt` files (searched recursively), as `multiturn_qa`'s `corpus_dir`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// The JSON file to write (and to continue, when it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// The model, device, dtype and threads.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Chunk size in characters; must equal the environment's `chunk_size` for the chunk ids to match.
    #[arg(long, default_value_t = 1000)]
    pub chunk_size: usize,
    /// Questions asked for, and kept at most, per chunk.
    #[arg(long, default_value_t = 2)]
    pub questions_per_chunk: usize,
    /// `easy`, `medium` or `hard` asks for that difficulty; `mixed` asks for a spread.
    #[arg(long, default_value = "medium")]
    pub difficulty: Difficulty,
    /// Only the first N chunks of the corpus (all by default).
    #[arg(long)]
    pub max_chunks: Option<usize>,
    /// Chunks generated for in one batched call.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Most tokens generated per chunk.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Temperature and sampling filters (default: temperature 0.2, top-p 0.9).
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

crate::choice_enum! {
    /// The difficulty the model is asked for.
    pub enum Difficulty {
        /// Easy questions.
        Easy = "easy",
        /// Medium questions.
        Medium = "medium",
        /// Hard questions.
        Hard = "hard",
        /// A spread of the three.
        Mixed = "mixed",
    }
}

/// gen-qa's sampling defaults: a little randomness for varied questions, nucleus-filtered.
/// re-grpo's `generate(temperature=0.2, top_p=0.9, repetition_penalty=1.2)`.
const GEN_QA_SAMPLING: SamplingParams =
    SamplingParams { temperature: 0.2, top_k: 0, top_p: 0.9, min_p: 0.0, repetition_penalty: 1.2 };

/// One question, in re-grpo's `questions.json` schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaRow {
    /// The chunk the question is about (its id in the chunked corpus).
    pub chunk_id: usize,
    /// The question.
    pub question: String,
    /// Its answer.
    pub answer: String,
    /// `easy`, `medium` or `hard`, as the model labelled it (`medium` when it did not).
    pub difficulty: String,
    /// The chunk's text.
    pub context: String,
}

/// Characters of the neighbouring chunks shown around the chunk (re-grpo used 600).
const NEIGHBOUR_CHARS: usize = 600;

/// Run `grpo-host gen-qa`.
pub fn run(args: GenQaArgs) -> anyhow::Result<i32> {
    args.model.apply_threads()?;
    let sampling = args.sampling.resolve(GEN_QA_SAMPLING)?;
    if args.batch_size == 0 || args.questions_per_chunk == 0 || args.max_new_tokens == 0 {
        return Err(user_error!("--batch-size, --questions-per-chunk and --max-new-tokens must be at least 1"));
    }
    let mut chunks = grpo_corpus::load_dir(&args.corpus, args.chunk_size)
        .map_err(|e| user_error!("--corpus {}: {e}", args.corpus.display()))?;
    let all = chunks.clone();
    if let Some(n) = args.max_chunks {
        chunks.truncate(n);
    }
    let mut rows = read_rows(&args.out)?;
    let done: BTreeSet<usize> = rows.iter().map(|r| r.chunk_id).collect();
    let todo: Vec<usize> = chunks.iter().map(|c| c.id).filter(|id| !done.contains(id)).collect();
    eprintln!(
        "gen-qa: {} chunks in {}, {} with questions already in {}, {} to do",
        chunks.len(),
        args.corpus.display(),
        done.len(),
        args.out.display(),
        todo.len()
    );
    if todo.is_empty() {
        return Ok(0);
    }

    let device = args.model.device.resolve()?;
    let dtype = args.model.dtype.resolve(device);
    let dir = args.model.model_dir()?;
    let tokenizer = args.model.tokenizer(&dir)?;
    let model = Model::load(&dir, device, dtype)?;

    for (batch_index, batch) in todo.chunks(args.batch_size).enumerate() {
        let mut prompts = Vec::with_capacity(batch.len());
        for &id in batch {
            let message =
                json!({"role": "user", "content": prompt(&all, id, args.questions_per_chunk, args.difficulty)});
            let text = tokenizer.render_chat(&[message], None, true)?;
            prompts.push(tokenizer.encode(&text, false)?);
        }
        let mut request = GenerateRequest::new(prompts, 1, args.max_new_tokens, tokenizer.eos_token_ids().to_vec());
        request.sampling = sampling;
        request.seed = Some(args.seed.wrapping_add(batch_index as u64));
        let output = generate(&model, Some(&tokenizer), &request, None)?;
        let mut found = 0;
        for (&id, completion) in batch.iter().zip(&output.completions) {
            for (question, answer, difficulty) in parse_pairs(&completion.text, args.questions_per_chunk) {
                rows.push(QaRow { chunk_id: id, question, answer, difficulty, context: all[id].text.clone() });
                found += 1;
            }
        }
        write_rows(&args.out, &rows)?;
        eprintln!(
            "gen-qa: chunks {}..={}: {found} questions ({} in total)",
            batch[0],
            batch[batch.len() - 1],
            rows.len()
        );
    }
    Ok(0)
}

/// The instruction for chunk `id`: the chunk between the end of the one before and the start of the one after.
fn prompt(chunks: &[grpo_corpus::Chunk], id: usize, n: usize, difficulty: Difficulty) -> String {
    let before = id.checked_sub(1).map(|i| tail_chars(&chunks[i].text, NEIGHBOUR_CHARS)).unwrap_or_default();
    let after = chunks.get(id + 1).map(|c| head_chars(&c.text, NEIGHBOUR_CHARS)).unwrap_or_default();
    let level = if difficulty == Difficulty::Mixed {
        "Label each one easy, medium or hard, and include some of each.".to_string()
    } else {
        format!("Make them {difficulty} and label them so.")
    };
    format!(
        "Below is an excerpt of a document. The passage between the markers PASSAGE START and PASSAGE END is the one \
         to ask about; the text around it is only there for context.\n\n{before}\n\nPASSAGE START\n{}\nPASSAGE END\n\n\
         {after}\n\nWrite {n} questions that the passage answers, each about a fact stated in it, each ending in a \
         question mark, with a short answer taken from the passage. {level} Write each as three lines, with a blank \
         line between questions and nothing else:\n\nQuestion: ...\nAnswer: ...\nDifficulty: ...",
        chunks[id].text
    )
}

fn head_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn tail_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// The (question, answer, difficulty) triples in a model's reply, at most `max`. A block needs a `Question:` line
/// ending in `?` and a non-empty `Answer:` line; `Difficulty:` defaults to `medium`. Field names are matched at the
/// start of a line, case-insensitively, optionally after list markers such as `1.` or `**`.
pub fn parse_pairs(text: &str, max: usize) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    let (mut q, mut a, mut d): (Option<String>, Option<String>, Option<String>) = (None, None, None);
    let mut flush = |q: &mut Option<String>, a: &mut Option<String>, d: &mut Option<String>| {
        if let (Some(question), Some(answer)) = (q.take(), a.take()) {
            let difficulty =
                d.take().map(|d| d.to_lowercase()).filter(|d| ["easy", "medium", "hard"].contains(&d.as_str()));
            if question.ends_with('?') && !answer.is_empty() && !out.iter().any(|(seen, _, _)| *seen == question) {
                out.push((question, answer, difficulty.unwrap_or_else(|| "medium".into())));
            }
        }
        *d = None;
    };
    for line in text.lines() {
        let line =
            line.trim().trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ')' | '-' | '*' | '#'));
        let line = line.trim();
        if let Some(v) = field(line, "question") {
            flush(&mut q, &mut a, &mut d);
            q = Some(v);
        } else if let Some(v) = field(line, "answer") {
            a = Some(v);
        } else if let Some(v) = field(line, "difficulty") {
            d = Some(v);
        }
    }
    flush(&mut q, &mut a, &mut d);
    out.truncate(max);
    out
}

/// The value of `name: value` at the start of `line` (case-insensitive, `**` emphasis allowed around the name).
fn field(line: &str, name: &str) -> Option<String> {
    let line = line.trim_start_matches('*');
    let head = line.get(..name.len())?;
    if !head.eq_ignore_ascii_case(name) {
        return None;
    }
    let rest = line[name.len()..].trim_start_matches('*').trim_start();
    let value = rest.strip_prefix(':')?.trim().trim_matches('*').trim();
    Some(value.to_string())
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<QaRow>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            user_error!(
                "--out {}: not a questions file ({e}); give a new path or remove it to start over",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(user_error!("--out {}: cannot read it: {e}", path.display())),
    }
}

/// Write to a temporary name and rename, so an interrupted run leaves the previous complete file.
fn write_rows(path: &Path, rows: &[QaRow]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, serde_json::to_string_pretty(rows)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_parsed_from_the_reply_only() {
        let reply = "Question: Which tank failed?\nAnswer: Oxygen tank 2\nDifficulty: Easy\n\n\
                     2. **Question:** When did the crew return?\n**Answer:** April 17\n\n\
                     Question: This is not a question\nAnswer: dropped\n\n\
                     Question: Which tank failed?\nAnswer: a duplicate\n\n\
                     Question: No answer?\n\nShow me: how\n";
        let pairs = parse_pairs(reply, 10);
        assert_eq!(
            pairs,
            vec![
                ("Which tank failed?".into(), "Oxygen tank 2".into(), "easy".into()),
                ("When did the crew return?".into(), "April 17".into(), "medium".into()),
            ]
        );
        assert_eq!(parse_pairs(reply, 1).len(), 1);
        assert!(parse_pairs("", 2).is_empty());
    }

    #[test]
    fn the_prompt_shows_the_passage_between_its_neighbours() {
        let chunks: Vec<grpo_corpus::Chunk> = ["first", "second", "third"]
            .iter()
            .enumerate()
            .map(|(id, t)| grpo_corpus::Chunk { id, source: "a.md".into(), text: t.to_string() })
            .collect();
        let p = prompt(&chunks, 1, 2, Difficulty::Mixed);
        let (start, end) = (p.find("PASSAGE START\nsecond\nPASSAGE END").unwrap(), p.find("third").unwrap());
        assert!(p.find("first").unwrap() < start && start < end);
        assert!(p.contains("Write 2 questions"));
        assert!(prompt(&chunks, 2, 1, Difficulty::Hard).contains("Make them hard"));
    }
}
