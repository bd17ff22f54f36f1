//! Dense retrieval: every chunk embedded with a sentence encoder ([`crate::bert`]), queries embedded as they come,
//! chunks ranked by cosine similarity. Embedding a corpus takes tens of seconds on a CPU, so the chunk embeddings
//! are kept on disk, keyed by the encoder's weights and the chunks' text, and a later run over the same corpus
//! reads them back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use grpo_sdk::{Error, Result};
use sha2::{Digest, Sha256};

use crate::bert::SentenceEncoder;
use crate::corpus::Chunk;
use crate::search::{checked_query, Hit, QueryError};

/// Where `cargo xtask setup` puts all-MiniLM-L6-v2: `models/all-MiniLM-L6-v2` in the grpo-rs cache.
pub fn default_model_dir() -> PathBuf {
    cache_root().join("models").join("all-MiniLM-L6-v2")
}

/// Where chunk embeddings are kept between runs: `embeddings/` in the grpo-rs cache.
pub fn default_embedding_cache() -> PathBuf {
    cache_root().join("embeddings")
}

/// The grpo-rs cache (`$GRPO_RS_CACHE`, else `$XDG_CACHE_HOME/grpo-rs`, else `~/.cache/grpo-rs`). xtask and the
/// host compute the same directory; the plugin cannot depend on either, so the rule is repeated here and must
/// stay in step.
fn cache_root() -> PathBuf {
    match std::env::var_os("GRPO_RS_CACHE").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp")).join(".cache")
            })
            .join("grpo-rs"),
    }
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
    /// Load the encoder from `model_dir` and embed every chunk, or read the embeddings a run over the same chunks
    /// with the same weights left in `cache_dir` (written there after embedding; `None` keeps nothing on disk).
    /// A cache file that cannot be read or written is ignored: the run embeds instead.
    pub fn build(chunks: &[Chunk], model_dir: &Path, cache_dir: Option<&Path>) -> Result<Self> {
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
        let cache_file = match cache_dir {
            Some(dir) => Some(dir.join(format!("{}.f32", cache_key(model_dir, &texts, dim)?))),
            None => None,
        };
        let cached = cache_file.as_deref().and_then(|f| read_cache(f, texts.len() * dim));
        let embeddings = match cached {
            Some(rows) => rows,
            None => {
                let rows = encoder.embed(&texts)?.concat();
                if let Some(f) = &cache_file {
                    // Best effort: a read-only or full disk costs the next run the embedding time, nothing else.
                    let _ = write_cache(f, &rows);
                }
                rows
            }
        };
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

/// The cache file name: a digest of the encoder's weights and configuration, the embedding width and every chunk's
/// text (length-prefixed, so no two chunk lists collide by concatenation).
fn cache_key(model_dir: &Path, texts: &[&str], dim: usize) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"grpo-rs dense chunk embeddings v1\0");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let bytes = std::fs::read(model_dir.join(file))
            .map_err(|e| Error::msg(format!("multiturn_qa: reading {}: {e}", model_dir.join(file).display())))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.update((dim as u64).to_le_bytes());
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The embeddings in `file` (little-endian f32, nothing else) when it holds exactly `floats` of them.
fn read_cache(file: &Path, floats: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(file).ok()?;
    if bytes.len() != floats * 4 {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Write `rows` to `file` under a temporary name, then rename it, so that a reader never sees half a file.
fn write_cache(file: &Path, rows: &[f32]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    tmp.write_all(&bytes)?;
    tmp.persist(file).map_err(|e| e.error)?;
    Ok(())
}
