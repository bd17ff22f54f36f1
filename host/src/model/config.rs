//! `config.json` of a Hugging Face Llama-family checkpoint (Llama, Qwen2, Qwen3, Mistral, SmolLM3, OLMo 2), reduced
//! to the fields the runtime uses. Both the transformers 4 spelling (`rope_theta` + `rope_scaling`) and the
//! transformers 5 one (`rope_parameters`) are read.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::user_error;

/// Which decoder family a checkpoint belongs to; they differ only in biases and norms inside attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3.x, SmolLM2, and other `model_type: llama` checkpoints.
    Llama,
    /// Qwen2 and Qwen2.5: q/k/v projections carry a bias.
    Qwen2,
    /// Qwen3: RMSNorm on each head of q and k before the rotary embedding.
    Qwen3,
    /// Mistral (Mistral-Nemo, Mistral-Small, and 7B v0.1 with its sliding window): Llama's layers.
    Mistral,
    /// SmolLM3: Llama's layers, every fourth (or as `no_rope_layers` says) without the rotary embedding (NoPE).
    SmolLM3,
    /// OLMo 2: RMSNorm on each block's output instead of its input, and on the whole query and key projections.
    Olmo2,
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Every frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's piecewise rescaling of low and medium frequencies.
    Llama3 {
        /// Divisor for the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are fully rescaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// The architecture hyper-parameters of a checkpoint.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The decoder family (`model_type`).
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding and of `lm_head`).
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: i64,
    /// Number of decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE rescaling.
    pub rope_scaling: RopeScaling,
    /// Whether `lm_head` reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v (and Llama's o) projections carry biases.
    pub attention_bias: bool,
    /// Whether the MLP projections carry biases (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Longest context the model was trained for (informational; longer sequences are allowed).
    pub max_position_embeddings: i64,
    /// End-of-sequence ids listed in config.json (`eos_token_id`, int or list).
    pub eos_token_ids: Vec<u32>,
    /// Per layer, whether it applies the rotary embedding (SmolLM3's NoPE layers do not).
    pub rope_layers: Vec<bool>,
    /// Every layer attends to the last this many tokens only, itself included (Mistral 7B v0.1); `None`: to all.
    pub sliding_window: Option<i64>,
}

impl ModelConfig {
    /// Read and validate `dir/config.json`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            user_error!("cannot read {}: {e}; --model must be a Hugging Face model directory", path.display())
        })?;
        Self::from_json_str(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parse the text of a config.json.
    pub fn from_json_str(text: &str) -> anyhow::Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| user_error!("config.json is not valid JSON: {e}"))?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            "mistral" => Architecture::Mistral,
            "smollm3" => Architecture::SmolLM3,
            "olmo2" => Architecture::Olmo2,
            other => {
                return Err(user_error!(
                    "unsupported model_type {other:?} in config.json; supported: llama, mistral, olmo2, qwen2, qwen3, \
                     smollm3"
                ))
            }
        };
        // Mistral 7B v0.1 attends to the last `sliding_window` tokens in every layer; later Mistral models set it to
        // null. Other families name a window they do not use unless `use_sliding_window` says so (refused below).
        let sliding_window = match v.get("sliding_window").filter(|_| architecture == Architecture::Mistral) {
            Some(Value::Null) | None => None,
            Some(w) => Some(w.as_i64().filter(|w| *w > 0).ok_or_else(|| {
                user_error!("config.json field \"sliding_window\" is not a positive integer or null")
            })?),
        };
        let int = |name: &str| -> anyhow::Result<i64> {
            v.get(name)
                .and_then(Value::as_i64)
                .filter(|x| *x > 0)
                .ok_or_else(|| user_error!("config.json field {name:?} is missing or not a positive integer"))
        };
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(user_error!("config.json hidden_act {act:?} is not supported (only silu)"));
            }
        }
        if let Some(types) = v.get("layer_types").and_then(Value::as_array) {
            if types.iter().any(|t| t.as_str() != Some("full_attention")) {
                return Err(user_error!("config.json layer_types: only full_attention layers are supported"));
            }
        }
        if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(user_error!("config.json use_sliding_window=true is not supported"));
        }
        let hidden_size = int("hidden_size")?;
        let num_attention_heads = int("num_attention_heads")?;
        let num_key_value_heads = match v.get("num_key_value_heads") {
            Some(Value::Null) | None => num_attention_heads,
            Some(_) => int("num_key_value_heads")?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(user_error!(
                "config.json: num_attention_heads ({num_attention_heads}) is not a multiple of num_key_value_heads ({num_key_value_heads})"
            ));
        }
        let head_dim = match v.get("head_dim") {
            Some(Value::Null) | None => hidden_size / num_attention_heads,
            Some(_) => int("head_dim")?,
        };
        let rope = v.get("rope_parameters").filter(|r| r.is_object());
        let legacy = v.get("rope_scaling").filter(|r| r.is_object());
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        let rope_scaling = parse_rope_scaling(rope.or(legacy))?;
        let default_tie = !matches!(architecture, Architecture::Llama | Architecture::Mistral | Architecture::Olmo2);
        let num_hidden_layers = int("num_hidden_layers")?;
        let rope_layers = rope_layers(&v, architecture, num_hidden_layers)?;
        let flag = |name: &str, default: bool| v.get(name).and_then(Value::as_bool).unwrap_or(default);
        Ok(ModelConfig {
            architecture,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: flag("tie_word_embeddings", default_tie),
            attention_bias: flag("attention_bias", architecture == Architecture::Qwen2),
            mlp_bias: flag("mlp_bias", false),
            max_position_embeddings: v.get("max_position_embeddings").and_then(Value::as_i64).unwrap_or(4096),
            eos_token_ids: ids_of(v.get("eos_token_id")),
            rope_layers,
            sliding_window,
        })
    }
}

/// Whether each of the `layers` layers applies the rotary embedding: all of them, except SmolLM3's NoPE layers
/// (`no_rope_layers`, 1 where a layer uses RoPE, or else every `no_rope_layer_interval`-th layer without).
fn rope_layers(v: &Value, architecture: Architecture, layers: i64) -> anyhow::Result<Vec<bool>> {
    if architecture != Architecture::SmolLM3 {
        return Ok(vec![true; layers as usize]);
    }
    if let Some(flags) = v.get("no_rope_layers").filter(|f| !f.is_null()) {
        let flags: Option<Vec<bool>> =
            flags.as_array().and_then(|a| a.iter().map(|f| f.as_i64().map(|x| x != 0)).collect());
        return match flags {
            Some(flags) if flags.len() == layers as usize => Ok(flags),
            _ => Err(user_error!("config.json no_rope_layers: give one 0 or 1 per layer ({layers})")),
        };
    }
    let interval = match v.get("no_rope_layer_interval") {
        Some(Value::Null) | None => 4,
        Some(i) => i
            .as_i64()
            .filter(|i| *i > 0)
            .ok_or_else(|| user_error!("config.json field \"no_rope_layer_interval\" is not a positive integer"))?,
    };
    Ok((0..layers).map(|i| (i + 1) % interval != 0).collect())
}

/// An id field that may be an integer, a list of integers or null.
pub(crate) fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}

fn parse_rope_scaling(r: Option<&Value>) -> anyhow::Result<RopeScaling> {
    let Some(r) = r else {
        return Ok(RopeScaling::None);
    };
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |name: &str| -> anyhow::Result<f64> {
        r.get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| user_error!("config.json rope scaling {kind:?} needs the number {name:?}"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(user_error!("config.json rope scaling type {other:?} is not supported (default, linear, llama3)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transformers5_rope_parameters() {
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64},
            "eos_token_id":[3,4]}"#,
        )
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.head_dim, 4);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert!(!c.tie_word_embeddings);
    }

    /// Mistral reads as Llama's layers with untied embeddings, and with v0.1's sliding window where it has one.
    #[test]
    fn mistral_reads_with_or_without_a_sliding_window() {
        let config = |window: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"mistral","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"sliding_window":{window}}}"#
            ))
        };
        let c = config("null").unwrap();
        assert_eq!(c.architecture, Architecture::Mistral);
        assert!(!c.tie_word_embeddings && !c.attention_bias);
        assert_eq!(c.sliding_window, None);
        assert_eq!(config("4096").unwrap().sliding_window, Some(4096));
        let err = config("0").unwrap_err();
        assert!(err.to_string().contains("\"sliding_window\" is not a positive integer or null"), "{err}");
        assert_eq!(crate::error::exit_code(&err), 2);
    }

    /// SmolLM3's NoPE layers: as `no_rope_layers` lists them, else every `no_rope_layer_interval`-th (4 by
    /// default).
    #[test]
    fn smollm3_skips_the_rotary_embedding_in_its_nope_layers() {
        let config = |extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"smollm3","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":5,"num_attention_heads":2{extra}}}"#
            ))
        };
        assert_eq!(config("").unwrap().rope_layers, [true, true, true, false, true]);
        assert_eq!(config(r#","no_rope_layer_interval":2"#).unwrap().rope_layers, [true, false, true, false, true]);
        assert_eq!(config(r#","no_rope_layers":[0,1,1,1,0]"#).unwrap().rope_layers, [false, true, true, true, false]);
        assert!(config("").unwrap().tie_word_embeddings);
        let err = config(r#","no_rope_layers":[1,0]"#).unwrap_err();
        assert!(err.to_string().contains("no_rope_layers: give one 0 or 1 per layer (5)"), "{err}");
    }

    #[test]
    fn rejects_unknown_model_type() {
        let err = ModelConfig::from_json_str(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(err.to_string().contains("gpt2"), "{err}");
        assert_eq!(crate::error::exit_code(&err), 2);
    }
}
