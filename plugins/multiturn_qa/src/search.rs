//! Retrieval over the corpus chunks: BM25 through tantivy (an in-memory index built at startup), or dense
//! retrieval with a sentence encoder ([`crate::dense`]), behind one [`Retriever`].

use grpo_sdk::{Error, Result};
use tantivy::collector::TopDocs;
use tantivy::query::BooleanQuery;
use tantivy::schema::{IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED};
use tantivy::tokenizer::TokenStream;
use tantivy::{doc, Index, IndexReader, ReloadPolicy, TantivyDocument, Term};

use crate::corpus::Chunk;

/// The tokenizer: tantivy's `en_stem` (split on non-alphanumerics, drop tokens over 40 bytes, lowercase, English
/// Snowball stemming), so "tanks" finds "tank".
const TOKENIZER: &str = "en_stem";

/// One retrieved chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The chunk's id in the corpus.
    pub chunk: usize,
    /// How well it matches the query, higher is better: the BM25 score (unbounded, not comparable across queries)
    /// or the cosine similarity of the embeddings (-1 to 1).
    pub score: f32,
}

/// Which retriever `multiturn_qa` searches with (`"retriever"` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrieverKind {
    /// Word matching with BM25: no model needed, exact on names and numbers.
    #[default]
    Bm25,
    /// Cosine similarity of sentence embeddings (all-MiniLM-L6-v2): finds paraphrases BM25 misses.
    Dense,
}

/// A built index of the chunks, of either kind. Searching is safe from many threads at once.
pub enum Retriever {
    Bm25(Bm25),
    /// Boxed: the encoder's tokenizer makes it ten times the size of a BM25 index.
    Dense(Box<crate::dense::Dense>),
}

impl Retriever {
    /// The `k` best chunks for `query`, best first.
    pub fn search(&self, query: &str, k: usize) -> std::result::Result<Vec<Hit>, QueryError> {
        match self {
            Retriever::Bm25(index) => index.search(query, k),
            Retriever::Dense(index) => index.search(query, k),
        }
    }
}

/// A BM25 index of the chunks. Searching is safe from many threads at once.
pub struct Bm25 {
    index: Index,
    reader: IndexReader,
    body: tantivy::schema::Field,
    id: tantivy::schema::Field,
}

/// Why a query was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// Empty or whitespace only.
    Empty,
    /// Longer than the limit (bytes).
    TooLong(usize),
    /// No searchable word in it (only punctuation, say).
    NoTerms,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Empty => f.write_str("empty search query"),
            QueryError::TooLong(max) => write!(f, "search query longer than {max} bytes"),
            QueryError::NoTerms => f.write_str("the search query has no searchable words"),
        }
    }
}

/// The longest query accepted, in bytes; a model's turn is far shorter, and longer queries only cost time.
pub const MAX_QUERY_BYTES: usize = 2000;

/// The checks every retriever makes first: the query trimmed, not empty, not too long.
pub(crate) fn checked_query(query: &str) -> std::result::Result<&str, QueryError> {
    let query = query.trim();
    if query.is_empty() {
        return Err(QueryError::Empty);
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(QueryError::TooLong(MAX_QUERY_BYTES));
    }
    Ok(query)
}

impl Bm25 {
    /// Index every chunk.
    pub fn build(chunks: &[Chunk]) -> Result<Self> {
        let mut schema = Schema::builder();
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default().set_tokenizer(TOKENIZER).set_index_option(IndexRecordOption::WithFreqs),
        );
        let body = schema.add_text_field("body", text);
        let id = schema.add_u64_field("id", STORED);
        let index = Index::create_in_ram(schema.build());
        let index_error = |e: tantivy::TantivyError| Error::msg(format!("building the search index: {e}"));
        let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 15_000_000).map_err(index_error)?;
        for c in chunks {
            writer.add_document(doc!(id => c.id as u64, body => c.text.as_str())).map_err(index_error)?;
        }
        writer.commit().map_err(index_error)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(index_error)?;
        Ok(Bm25 { index, reader, body, id })
    }

    /// The `k` best chunks for `query`, best first. Query text is only tokenized, never parsed as query syntax, so
    /// quotes, colons or `AND` in a model's query are just words.
    pub fn search(&self, query: &str, k: usize) -> std::result::Result<Vec<Hit>, QueryError> {
        let query = checked_query(query)?;
        let mut analyzer = self.index.tokenizers().get(TOKENIZER).expect("tantivy registers en_stem by default");
        let mut terms: Vec<Term> = Vec::new();
        let mut stream = analyzer.token_stream(query);
        while let Some(token) = stream.next() {
            let term = Term::from_field_text(self.body, &token.text);
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
        if terms.is_empty() {
            return Err(QueryError::NoTerms);
        }
        let searcher = self.reader.searcher();
        let q = BooleanQuery::new_multiterms_query(terms);
        // Index reads from memory cannot fail in practice; treat a failure as "no results" rather than panic.
        let Ok(top) = searcher.search(&q, &TopDocs::with_limit(k.max(1)).order_by_score()) else {
            return Ok(Vec::new());
        };
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let Ok(doc) = searcher.doc::<TantivyDocument>(address) else {
                continue;
            };
            if let Some(chunk) = doc.get_first(self.id).and_then(|v| v.as_u64()) {
                hits.push(Hit { chunk: chunk as usize, score });
            }
        }
        Ok(hits)
    }
}
