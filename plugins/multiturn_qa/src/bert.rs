//! A BERT sentence encoder in libtorch, enough to run sentence-transformers models such as all-MiniLM-L6-v2 the
//! way sentence-transformers does: word pieces truncated to the model's `max_seq_length`, the encoder, mean
//! pooling over the real (unpadded) tokens, L2 normalisation.
//!
//! The model directory is in Hugging Face layout: `config.json`, `model.safetensors`, `tokenizer.json`, and, when
//! present, sentence-transformers' `sentence_bert_config.json` (the truncation length) and `1_Pooling/config.json`
//! (which must ask for mean pooling). Inference only, always under `no_grad`, in f32 on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use grpo_sdk::{Error, Result};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// The fields of a BERT `config.json` the encoder uses; the rest are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: usize,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

/// sentence-transformers' `sentence_bert_config.json`.
#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// sentence-transformers' `1_Pooling/config.json` (the fields that choose the pooling).
#[derive(Deserialize, Default)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// Word pieces per forward batch. Batches are formed from texts of similar length, so this bounds the padded
/// activations (batch x longest x hidden) and the attention scores (batch x heads x longest^2) together.
const TOKENS_PER_BATCH: usize = 8192;

/// The weights by name, taken out as each layer claims them so a missing or misspelt name is an error that names it.
struct Weights {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
    path: PathBuf,
}

impl Weights {
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .tensors
            .remove(&full)
            .ok_or_else(|| Error::msg(format!("{} has no tensor {full}", self.path.display())))?;
        if t.size() != shape {
            return Err(Error::msg(format!(
                "{}: {full} has shape {:?}, config.json implies {shape:?}",
                self.path.display(),
                t.size()
            )));
        }
        Ok(t.to_kind(Kind::Float))
    }

    fn linear(&mut self, name: &str, inputs: i64, outputs: i64) -> Result<Linear> {
        Ok(Linear {
            weight: self.take(&format!("{name}.weight"), &[outputs, inputs])?,
            bias: self.take(&format!("{name}.bias"), &[outputs])?,
        })
    }

    fn layer_norm(&mut self, name: &str, size: i64, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.take(&format!("{name}.weight"), &[size])?,
            bias: self.take(&format!("{name}.bias"), &[size])?,
            eps,
        })
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        // cudnn_enable only matters on CUDA; the encoder runs on the CPU.
        x.layer_norm([self.weight.size()[0]], Some(&self.weight), Some(&self.bias), self.eps, false)
    }
}

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    /// Sentence-pair inputs never occur in retrieval, so every token has type 0 and positions start at 0.
    fn forward(&self, ids: &Tensor) -> Tensor {
        let t = ids.size()[1];
        let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu));
        let x = Tensor::embedding(&self.word, ids, -1, false, false)
            + Tensor::embedding(&self.position, &positions, -1, false, false).unsqueeze(0)
            + self.token_type.get(0);
        self.norm.forward(&x)
    }
}

/// One transformer layer: post-norm self-attention and feed-forward, as in the original BERT.
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: i64,
}

impl Layer {
    fn load(w: &mut Weights, i: usize, c: &BertConfig) -> Result<Self> {
        let (h, f, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let p = format!("encoder.layer.{i}");
        Ok(Layer {
            query: w.linear(&format!("{p}.attention.self.query"), h, h)?,
            key: w.linear(&format!("{p}.attention.self.key"), h, h)?,
            value: w.linear(&format!("{p}.attention.self.value"), h, h)?,
            attention_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
            attention_norm: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
            intermediate: w.linear(&format!("{p}.intermediate.dense"), h, f)?,
            output: w.linear(&format!("{p}.output.dense"), f, h)?,
            output_norm: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            heads: c.num_attention_heads,
        })
    }

    /// `x`: `[batch, tokens, hidden]`; `keep`: `[batch, 1, 1, tokens]`, true where a key is a real token.
    fn forward(&self, x: &Tensor, keep: &Tensor) -> Tensor {
        let (b, t, h) = x.size3().expect("hidden states are [batch, tokens, hidden]");
        let split = |y: Tensor| y.view([b, t, self.heads, h / self.heads]).transpose(1, 2);
        let q = split(self.query.forward(x));
        let k = split(self.key.forward(x));
        let v = split(self.value.forward(x));
        // Padding rows attend to real keys like any other row (every text has at least [CLS] and [SEP]), so no
        // softmax row is empty; their outputs are dropped by the pooling mask.
        let a = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(keep), 0.0, false, None, false);
        let a = a.transpose(1, 2).reshape([b, t, h]);
        let x = self.attention_norm.forward(&(self.attention_out.forward(&a) + x));
        // BERT's "gelu" is the exact, erf-based GELU.
        let f = self.intermediate.forward(&x).gelu("none");
        self.output_norm.forward(&(self.output.forward(&f) + x))
    }
}

/// The encoder with its tokenizer. Tensors are not `Sync`; callers that share an encoder between threads put it
/// behind a lock (see [`crate::dense`]).
pub struct SentenceEncoder {
    tokenizer: Tokenizer,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    config: BertConfig,
    max_tokens: usize,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::msg(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::msg(format!("{} is not valid: {e}", path.display())))
}

impl SentenceEncoder {
    /// Load a sentence-transformers BERT model from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let unsupported = |what: String| Err(Error::msg(format!("{}: unsupported {what}", dir.display())));
        if config.hidden_act != "gelu" {
            return unsupported(format!("hidden_act \"{}\" (only \"gelu\")", config.hidden_act));
        }
        if config.position_embedding_type != "absolute" {
            return unsupported(format!(
                "position_embedding_type \"{}\" (only \"absolute\")",
                config.position_embedding_type
            ));
        }
        if config.num_attention_heads <= 0 || config.hidden_size % config.num_attention_heads != 0 {
            return unsupported("hidden_size not divisible by num_attention_heads".into());
        }
        let pooling_path = dir.join("1_Pooling/config.json");
        if pooling_path.exists() {
            let p: PoolingConfig = read_json(&pooling_path)?;
            let mean_only = p.pooling_mode_mean_tokens
                && !(p.pooling_mode_cls_token || p.pooling_mode_max_tokens || p.pooling_mode_mean_sqrt_len_tokens);
            if !mean_only {
                return unsupported("pooling in 1_Pooling/config.json (only mean pooling)".into());
            }
        }
        // sentence-transformers truncates to max_seq_length (256 for all-MiniLM-L6-v2), not to the 128 that the
        // model's tokenizer.json declares, nor to the 512 positions the model has.
        let sbert = dir.join("sentence_bert_config.json");
        let max_tokens = if sbert.exists() { read_json::<SentenceBertConfig>(&sbert)?.max_seq_length } else { None }
            .unwrap_or(config.max_position_embeddings as usize)
            .min(config.max_position_embeddings as usize);

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| Error::msg(format!("cannot load {}: {e}", tokenizer_path.display())))?;
        // Batches are padded here, to their own longest text; the fixed padding in tokenizer.json would pad every
        // text to 128 word pieces.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::msg(format!("{}: {e}", tokenizer_path.display())))?;

        let weights_path = dir.join("model.safetensors");
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(&weights_path)
            .map_err(|e| Error::msg(format!("cannot read {}: {e}", weights_path.display())))?
            .into_iter()
            .collect();
        // A BertModel saved inside a task model (BertForMaskedLM, say) carries a "bert." prefix.
        let prefix = if tensors.contains_key("embeddings.word_embeddings.weight") { "" } else { "bert." };
        let mut w = Weights { tensors, prefix, path: weights_path };
        let h = config.hidden_size;
        let embeddings = Embeddings {
            word: w.take("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: w.take("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            token_type: w.take("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?,
            norm: w.layer_norm("embeddings.LayerNorm", h, config.layer_norm_eps)?,
        };
        let layers = (0..config.num_hidden_layers).map(|i| Layer::load(&mut w, i, &config)).collect::<Result<_>>()?;
        Ok(SentenceEncoder { tokenizer, embeddings, layers, config, max_tokens })
    }

    /// The embedding size.
    pub fn dim(&self) -> usize {
        self.config.hidden_size as usize
    }

    /// Word pieces per text after truncation, [CLS] and [SEP] included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The word-piece ids the model sees for each text (truncated, with [CLS] and [SEP]).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::msg(format!("tokenizing for the sentence encoder: {e}")))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Unit-length embeddings of `texts`, one row of [`Self::dim`] floats each, in order.
    ///
    /// Texts are sorted by length and cut into batches of similar lengths, so little compute goes to padding.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        let mut start = 0;
        while start < order.len() {
            // The longest text of a batch comes first, so it fixes the padded length.
            let longest = ids[order[start]].len().max(1);
            let size = (TOKENS_PER_BATCH / longest).max(1).min(order.len() - start);
            let batch = &order[start..start + size];
            let rows: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, e) in batch.iter().zip(self.embed_batch(&rows)) {
                out[i] = e;
            }
            start += size;
        }
        Ok(out)
    }

    fn embed_batch(&self, rows: &[&[u32]]) -> Vec<Vec<f32>> {
        let b = rows.len();
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut flat = vec![0i64; b * t];
        let mut mask = vec![0f32; b * t];
        for (r, row) in rows.iter().enumerate() {
            for (j, &id) in row.iter().enumerate() {
                flat[r * t + j] = i64::from(id);
                mask[r * t + j] = 1.0;
            }
        }
        tch::no_grad(|| {
            let ids = Tensor::from_slice(&flat).view([b as i64, t as i64]);
            let mask = Tensor::from_slice(&mask).view([b as i64, t as i64]);
            let keep = mask.gt(0.5).view([b as i64, 1, 1, t as i64]);
            let mut x = self.embeddings.forward(&ids);
            for layer in &self.layers {
                x = layer.forward(&x, &keep);
            }
            // Mean over real tokens, then unit length (sentence-transformers clamps both denominators the same way).
            let m = mask.unsqueeze(-1);
            let summed = (x * &m).sum_dim_intlist(1, false, Kind::Float);
            let counts = m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9);
            let mean = summed / counts;
            let norm = mean.norm_scalaropt_dim(2, 1, true).clamp_min(1e-12);
            let unit = (mean / norm).contiguous();
            let h = self.dim();
            let values: Vec<f32> = Vec::try_from(unit.view([-1])).expect("f32 embeddings");
            values.chunks(h).map(<[f32]>::to_vec).collect()
        })
    }
}
