//! Dense retrieval: every chunk embedded once at startup with a sentence encoder ([`crate::bert`]), queries
//! embedded as they come, chunks ranked by cosine similarity.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use grpo_sdk::{Error, Result};

use crate::bert::SentenceEncoder;
use crate::corpus::Chunk;
use crate::search::{checked_query, Hit, QueryError};

/// Where `cargo xtask setup` puts all-MiniLM-L6-v2: `models/all-MiniLM-L6-v2` in the grpo-rs cache
/// (`$GRPO_RS_CACHE`, else `$XDG_CACHE_HOME/grpo-rs`, else `~/.cache/grpo-rs`). xtask and the host compute the
/// same cache directory; the plugin cannot depend on either, so the rule is repeated here and must stay in step.
pub fn default_model_dir() -> PathBuf {
    let cache = match std::env::var_os("GRPO_RS_CACHE").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".cache")
            })
            .join("grpo-rs"),
    };
    cache.join("models").join("all-MiniLM-L6-v2")
}

/// The chunks' embeddings and the encoder for queries. Searching is safe from many threads at once.
pub struct Dense {
    /// libtorch tensors are `Send` but not `Sync`; the lock lets episodes on several threads share one encoder.
    /// A query is a few word pieces, so the time spent holding it is a millisecond or so.
    encoder: Mutex<SentenceEncoder>,
    /// Row-major `[chunks, dim]`, each row of unit length; kept as plain floats so a search needs no tensor.
    embeddings: Vec<f32>,
    dim: usize,
    /// The chunk id of each row.
    ids: Vec<usize>,
}

impl Dense {
    /// Load the encoder from `model_dir` and embed every chunk.
    pub fn build(chunks: &[Chunk], model_dir: &Path) -> Result<Self> {
        let required = ["config.json", "model.safetensors", "tokenizer.json"];
        if let Some(missing) = required.iter().find(|f| !model_dir.join(f).is_file()) {
            return Err(Error::msg(format!(
                "multiturn_qa: the dense retriever's model is missing ({} not found); run `cargo xtask setup`, \
                 which puts all-MiniLM-L6-v2 in {}, or set dense_model_dir to a sentence-transformers BERT model",
                model_dir.join(missing).display(),
                default_model_dir().display()
            )));
        }
        let encoder = SentenceEncoder::load(model_dir)?;
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        let dim = encoder.dim();
        let embeddings = encoder.embed(&texts)?.concat();
        let ids = chunks.iter().map(|c| c.id).collect();
        Ok(Dense { encoder: Mutex::new(encoder), embeddings, dim, ids })
    }

    /// The `k` chunks most similar to `query`, best first; `Hit::score` is the cosine similarity (-1 to 1).
    /// Queries are checked as BM25 checks them, and one with no letter or digit has no terms.
    pub fn search(&self, query: &str, k: usize) -> std::result::Result<Vec<Hit>, QueryError> {
        let query = checked_query(query)?;
        if !query.chars().any(char::is_alphanumeric) {
            return Err(QueryError::NoTerms);
        }
        let q = {
            // A panic elsewhere while the lock was held cannot leave the encoder half-updated: it is never mutated.
            let encoder = self.encoder.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Tokenizing and running a short text cannot fail in practice; treat a failure as "no results", as
            // BM25 does a failed index read.
            match encoder.embed(&[query]) {
                Ok(mut rows) => rows.pop().unwrap_or_default(),
                Err(_) => return Ok(Vec::new()),
            }
        };
        let mut scored: Vec<Hit> = self
            .embeddings
            .chunks_exact(self.dim)
            .zip(&self.ids)
            .map(|(row, &chunk)| Hit { chunk, score: row.iter().zip(&q).map(|(a, b)| a * b).sum() })
            .collect();
        // Ties keep chunk order, so results are the same on every run.
        scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.chunk.cmp(&b.chunk)));
        scored.truncate(k.max(1));
        Ok(scored)
    }
}
