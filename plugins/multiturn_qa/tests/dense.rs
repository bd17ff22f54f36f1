//! The dense retriever: the sentence encoder against sentence-transformers' own embeddings
//! (tests/fixtures/retrieval/minilm_embeddings.json, written by tests/oracles/minilm_embeddings.py), and retrieval
//! on the Apollo 13 report with both retrievers.
//!
//! These tests need all-MiniLM-L6-v2 where `cargo xtask setup` puts it; `cargo xtask test` runs setup first, so a
//! missing model is a failure, not a skip.

mod common;
use common::apollo_dir;

use std::path::PathBuf;
use std::sync::OnceLock;

use grpo_multiturn_qa::bert::SentenceEncoder;
use grpo_multiturn_qa::search::{QueryError, MAX_QUERY_BYTES};
use grpo_multiturn_qa::{dense, MultiturnQa};
use grpo_sdk::{Environment, Plugin, Split};
use serde_json::json;

fn model_dir() -> PathBuf {
    let dir = dense::default_model_dir();
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 is expected in {}; run `cargo xtask setup` to fetch it",
        dir.display()
    );
    dir
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn embeddings_match_sentence_transformers() {
    let path = repo_root().join("tests/fixtures/retrieval/minilm_embeddings.json");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let encoder = SentenceEncoder::load(&model_dir()).unwrap();
    assert_eq!(encoder.max_tokens() as u64, fixture["max_seq_length"].as_u64().unwrap());
    assert_eq!(encoder.dim(), 384);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();

    let ids = encoder.tokenize(&texts).unwrap();
    for (c, got) in cases.iter().zip(&ids) {
        let want: Vec<u32> = serde_json::from_value(c["input_ids"].clone()).unwrap();
        assert_eq!(got, &want, "word pieces of {:?}", c["text"]);
    }

    // All at once (mixed lengths padded together, in an order of their own) and one by one must both match.
    let together = encoder.embed(&texts).unwrap();
    let alone: Vec<Vec<f32>> = texts.iter().map(|t| encoder.embed(&[t]).unwrap().remove(0)).collect();
    let mut worst = 0f32;
    for (i, c) in cases.iter().enumerate() {
        let want: Vec<f32> = serde_json::from_value(c["embedding"].clone()).unwrap();
        for got in [&together[i], &alone[i]] {
            assert_eq!(got.len(), want.len());
            let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            worst = worst.max(diff);
            assert!(diff <= 1e-4, "{:?}: max abs diff {diff}", c["text"]);
        }
    }
    eprintln!("largest difference from sentence-transformers: {worst:e}");
}

/// Questions about the Apollo 13 report, each with a phrase that occurs in exactly one chunk: the chunk that answers
/// it. Worded as a model would ask, not copied from the text.
const APOLLO_QUESTIONS: [(&str, &str); 6] = [
    (
        "At about 23 hours, to what percentage did the potable water quantity reading decrease?",
        "decreased from 98 to 79 percent",
    ),
    ("How much energy did the S-IVB lunar impact release, in tons of TNT?", "7.7 tons of trinitrotoluene"),
    ("Where was the crew flown the morning after they spent the night aboard the recovery ship?", "Pago Pago"),
    ("What replaced the Teflon bristles on the vacuum brush?", "changed from Teflon to Nylon"),
    (
        "How high was the carbon dioxide partial pressure allowed to rise in the lunar module?",
        "increased from the nominal 7.6 to 15mm Hg",
    ),
    ("What was the pericynthion altitude achieved at translunar injection?", "415.8 miles"),
];

fn apollo_env(retriever: &str) -> MultiturnQa {
    let questions = tempfile::NamedTempFile::new().unwrap();
    let rows: Vec<serde_json::Value> =
        APOLLO_QUESTIONS.iter().map(|(q, fact)| json!({"question": q, "answer": fact})).collect();
    std::fs::write(questions.path(), serde_json::to_string(&rows).unwrap()).unwrap();
    let start = std::time::Instant::now();
    let env = MultiturnQa::new(json!({
        "corpus_dir": apollo_dir(), "questions_path": questions.path(), "eval_every": 0, "retriever": retriever
    }))
    .unwrap();
    eprintln!("{retriever}: {} chunks indexed in {:.1?}", env.chunks().len(), start.elapsed());
    env
}

/// Both retrievers put each question's answer chunk in the top 3.
fn answers_in_top_3(env: &MultiturnQa, retriever: &str) {
    for (question, fact) in APOLLO_QUESTIONS {
        let holding: Vec<usize> = env.chunks().iter().filter(|c| c.text.contains(fact)).map(|c| c.id).collect();
        assert_eq!(holding.len(), 1, "{fact:?} should be in exactly one chunk");
        let hits = env.search(question).unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "best first: {hits:?}");
        assert!(
            hits.iter().any(|h| h.chunk == holding[0]),
            "{retriever}: {question:?} missed chunk {}: {hits:?}",
            holding[0]
        );
    }
}

fn dense_apollo() -> &'static MultiturnQa {
    static ENV: OnceLock<MultiturnQa> = OnceLock::new();
    ENV.get_or_init(|| apollo_env("dense"))
}

#[test]
fn apollo13_bm25_answers_in_top_3() {
    answers_in_top_3(&apollo_env("bm25"), "bm25");
}

#[test]
fn apollo13_dense_answers_in_top_3() {
    let env = dense_apollo();
    answers_in_top_3(env, "dense");
    // Scores are cosine similarities of unit vectors.
    let start = std::time::Instant::now();
    let hits = env.search(APOLLO_QUESTIONS[1].0).unwrap();
    eprintln!("dense: one query in {:.1?}", start.elapsed());
    assert!(hits.iter().all(|h| (-1.0..=1.0 + 1e-5).contains(&h.score)), "{hits:?}");
    assert!(hits[0].score > 0.3, "{hits:?}");
    // The resolved config names the model it used.
    assert_eq!(env.config()["retriever"], "dense");
    assert_eq!(env.config()["dense_model_dir"], json!(model_dir()));
}

#[test]
fn dense_queries_are_checked_like_bm25() {
    let env = dense_apollo();
    assert_eq!(env.search("   "), Err(QueryError::Empty));
    assert_eq!(env.search("!!! ???"), Err(QueryError::NoTerms));
    assert_eq!(env.search(&"oxygen ".repeat(MAX_QUERY_BYTES)), Err(QueryError::TooLong(MAX_QUERY_BYTES)));
    // A query longer than the encoder's 256 word pieces is truncated, not refused.
    assert_eq!(env.search(&"oxygen tank ".repeat(150)).unwrap().len(), 3);

    // Through an episode: a refused query is a tool failure (+0.2 for the call, -1.0 for the failure).
    let task = env.task(Split::Train, 0, 0).unwrap();
    let (mut state, _) = env.reset(&task).unwrap();
    let out = env.step(&mut state, "<tool:search>!!! ???</tool>").unwrap();
    assert!(out.done && (out.total_reward() + 0.8).abs() < 1e-9);
    let (mut state, _) = env.reset(&task).unwrap();
    let out = env.step(&mut state, "<tool:search>potable water quantity 23 hours</tool>").unwrap();
    assert!(!out.done);
    assert!(out.messages[0].content.contains("79 percent"), "{}", out.messages[0].content);
}

#[test]
fn a_missing_model_is_one_line_naming_the_path_and_the_fix() {
    let err = MultiturnQa::new(json!({"retriever": "dense", "dense_model_dir": "/nonexistent/minilm"}))
        .err()
        .expect("no model there")
        .to_string();
    assert!(err.contains("/nonexistent/minilm/config.json"), "{err}");
    assert!(err.contains("cargo xtask setup"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let err = MultiturnQa::new(json!({"retriever": "tfidf"})).err().expect("unknown retriever").to_string();
    assert!(err.contains("tfidf"), "{err}");
}

/// The chunk embeddings go to the cache directory once and are read back from there: a file of the right size
/// is trusted (zeros in it give zero scores, proving the read), one of the wrong size is replaced.
#[test]
fn chunk_embeddings_are_cached_on_disk() {
    use grpo_multiturn_qa::corpus::Chunk;
    let cache = tempfile::tempdir().unwrap();
    let chunk = |id: usize, text: &str| Chunk { id, source: "a.txt".into(), text: text.into() };
    let chunks = vec![chunk(0, "The oxygen tank exploded."), chunk(1, "The crew returned safely to Earth.")];
    let first = dense::Dense::build(&chunks, &model_dir(), Some(cache.path())).unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), 2 * 384 * 4);
    let hits = first.search("what exploded", 2).unwrap();
    assert_eq!(hits[0].chunk, 0);
    assert!(hits[0].score > 0.2, "{hits:?}");

    let again = dense::Dense::build(&chunks, &model_dir(), Some(cache.path())).unwrap();
    assert_eq!(again.search("what exploded", 2).unwrap(), hits);

    std::fs::write(&files[0], vec![0u8; 2 * 384 * 4]).unwrap();
    let zeros = dense::Dense::build(&chunks, &model_dir(), Some(cache.path())).unwrap();
    assert!(zeros.search("what exploded", 2).unwrap().iter().all(|h| h.score == 0.0));

    std::fs::write(&files[0], b"truncated").unwrap();
    let rebuilt = dense::Dense::build(&chunks, &model_dir(), Some(cache.path())).unwrap();
    assert_eq!(rebuilt.search("what exploded", 2).unwrap(), hits);
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), 2 * 384 * 4);

    // Other chunks, another file.
    dense::Dense::build(&chunks[..1], &model_dir(), Some(cache.path())).unwrap();
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 2);
}
