//! `config.json` of a Hugging Face decoder checkpoint of one of the families [`Architecture`] lists (Llama and its
//! kin, the GPT-2 and GPT-NeoX lines, Phi, Gemma, OLMo, Cohere, and the mixtures of experts), reduced to the fields
//! the runtime uses. Both the transformers 4 spelling (`rope_theta` + `rope_scaling`, Gemma's
//! `rope_local_base_freq`) and the transformers 5 one (`rope_parameters`, per layer type for Gemma 3) are read, and
//! the fields some families name their own way (GPT-2's `n_embd`, ...) under the common names.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::user_error;

/// The layer structure of a checkpoint's family: where its norms sit, what attention and the MLP hold. Families
/// that share one (Granite and ERNIE 4.5 on Llama's, the mixtures on their dense kin's) differ by config fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3.x, SmolLM2, and other `model_type: llama` checkpoints.
    Llama,
    /// Qwen2 and Qwen2.5: q/k/v projections carry a bias.
    Qwen2,
    /// Qwen3: RMSNorm on each head of q and k before the rotary embedding.
    Qwen3,
    /// Mistral (Mistral-Nemo, Mistral-Small, and 7B v0.1 with its sliding window) and Ministral (`ministral`, its
    /// sliding layers as `layer_types` lists them): Llama's layers.
    Mistral,
    /// SmolLM3: Llama's layers, every fourth (or as `no_rope_layers` says) without the rotary embedding (NoPE).
    SmolLM3,
    /// OLMo 2: RMSNorm on each block's output instead of its input, and on the whole query and key projections.
    Olmo2,
    /// OLMo 3: OLMo 2's layers, three in four attending within a sliding window, the others with their own rotary
    /// rescaling (YaRN in the long-context models).
    Olmo3,
    /// Gemma (`gemma`, Gemma 1 2B and 7B, CodeGemma): Llama's layers with Gemma's `1 + w` RMSNorm gain, a scaled
    /// embedding, the tanh GELU and 256-wide heads.
    Gemma,
    /// OLMo (`olmo`, OLMo 1 and 1.7): Llama's layers with LayerNorms that have no parameters at all, computed in f32,
    /// and the query, key and value projections clamped to `clip_qkv` where it is set.
    Olmo,
    /// nanochat (`nanochat`): Llama's layers with RMSNorms that have no parameters (one more on the embedding),
    /// the rotary embedding turned the other way, q/k norms after it, an ungated `fc2(relu(fc1(x))^2)` MLP, and
    /// the final logits soft-capped.
    NanoChat,
    /// Gemma 2 (`gemma2`): Gemma 3's norms, GELU, scaled embedding and query scale without its q/k norms, every
    /// other layer within a sliding window, and tanh soft caps on the attention scores and the final logits.
    Gemma2,
    /// Gemma 3 (text, `gemma3_text`): norms around each block's input and output with a `1 + w` gain, per-head q/k
    /// norms, a scaled embedding, GELU, and sliding-window layers with their own rotary embedding.
    Gemma3,
    /// Phi-3, Phi-3.5 and Phi-4-mini (`phi3`): fused `qkv_proj` and `gate_up_proj`, the rotary embedding on part of
    /// each head, LongRoPE.
    Phi3,
    /// GLM-4 (`glm`, GLM-4-9B-chat): Llama's norms, a fused `gate_up_proj`, q/k/v biases, and the rotary embedding
    /// on adjacent pairs of half of each head.
    Glm,
    /// GLM-4-0414 and GLM-Z1 (`glm4`): GLM's layers with norms after attention and after the MLP as well
    /// (`post_self_attn_layernorm`, `post_mlp_layernorm`).
    Glm4,
    /// OLMoE (`olmoe`): OLMo 2's norms over the whole query and key projections, Llama's norms before each block,
    /// a mixture of experts.
    Olmoe,
    /// EXAONE 4.0 (`exaone4`): OLMo 2's norms on each block's output with Qwen3's per-head q/k norms; in the hybrid
    /// models three layers in four attend within a sliding window with the rotary embedding, the fourth to
    /// everything without it (NoPE).
    Exaone4,
    /// gpt-oss (`gpt_oss`): Llama's pre-norms (gains in f32), biases on every attention projection, a learned
    /// attention sink per head, every other layer within a 128-token window, and a mixture of experts with a
    /// biased router and clamped SwiGLU experts stored stacked.
    GptOss,
    /// Hunyuan dense (`hunyuan_v1_dense`, Hunyuan 0.5B to 7B): Llama's layers with per-head q/k norms after the
    /// rotary embedding (`query_layernorm`, `key_layernorm`), whose base NTK-alpha stretches.
    Hunyuan,
    /// StarCoder2 (`starcoder2`): LayerNorms with biases, biases on every projection (`use_bias`), an ungated GELU
    /// MLP (`c_fc`, `c_proj`), tied embeddings, and an optional sliding window on every layer.
    Starcoder2,
    /// StableLM 2 (`stablelm`): Llama's layers with LayerNorms (with biases), the rotary embedding on a quarter of
    /// each head, and q/k/v biases under `use_qkv_bias`; the 12B's per-head q/k LayerNorms under `qk_layernorm` and
    /// one LayerNorm feeding attention and the MLP side by side under `use_parallel_residual`.
    StableLm,
    /// Nemotron (`nemotron`, Nemotron-Mini and Minitron): LayerNorms whose gain is stored as its offset from 1
    /// (`LayerNorm1P`), the rotary embedding on half of each head, and Arcee's ungated relu^2 MLP.
    Nemotron,
    /// Command R7B and Command A (`cohere2`): one LayerNorm (without a bias, in f32) feeding attention and the MLP
    /// side by side, three layers in four within a sliding window with the rotary embedding on adjacent pairs and
    /// the fourth global without it, tied embeddings, and the logits multiplied by `logit_scale`.
    Cohere2,
    /// Helium (`helium`, Kyutai's Helium 1): Llama's layers with RMSNorm gains in f32, the rotary embedding on
    /// adjacent pairs, and no bias on the output projection even where `attention_bias` puts them on q, k and v.
    Helium,
    /// Llama's layers under EXAONE 3's names (`exaone`, EXAONE 3.0, 3.5 and EXAONE Deep): `transformer.h.<i>`,
    /// `attn.attention.out_proj`, `ln_1`, `mlp.c_fc_0`, ..., as its checkpoints store them; kept, trained and saved
    /// under the Llama names transformers 5 gives them.
    Exaone,
    /// Command R, Command R+ and Aya (`cohere`): Cohere 2's parallel blocks and f32 LayerNorm with the rotary
    /// embedding (adjacent pairs) on every layer and no window; under `use_qk_norm` (Command R+) the queries and
    /// keys of each head take a LayerNorm with per-head gains.
    Cohere,
    /// Phi-1, Phi-1.5 and Phi-2 (`phi`): one LayerNorm (with a bias) feeding attention and the MLP side by side,
    /// biases on every projection, the rotary embedding on part of each head, an ungated GELU MLP (`fc1`, `fc2`),
    /// the output projection named `dense`, a final `final_layernorm` and an `lm_head` with a bias; under
    /// `qk_layernorm` each head's queries and keys take a LayerNorm.
    Phi,
    /// GPT-NeoX and Pythia (`gpt_neox`): LayerNorms with biases before attention and before the MLP, the two blocks
    /// side by side under `use_parallel_residual` (the default), a fused `query_key_value` projection whose output
    /// holds each head's query, key and value together, the rotary embedding on a quarter of each head, an ungated
    /// GELU MLP (`dense_h_to_4h`, `dense_4h_to_h`), biases everywhere, under `gpt_neox.` with the head `embed_out`.
    GptNeoX,
    /// GPT-2 (`gpt2`, and DistilGPT2): learned absolute positions (`wpe`) added to the token embedding and no rotary
    /// embedding, LayerNorms with biases (`ln_1`, `ln_2`, `ln_f`), every projection a `Conv1D` stored `[in, out]`
    /// with a bias (the fused `c_attn`, `c_proj`, and the ungated `c_fc` MLP), tied embeddings, under `transformer.`
    /// (or no prefix at all, as the original checkpoints are stored).
    Gpt2,
}

/// Where a family's checkpoint keeps the modules most families name `model.embed_tokens`, `model.layers.<i>`,
/// `self_attn` and `model.norm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleNames {
    /// The token embedding.
    pub embed: &'static str,
    /// The decoder layers' prefix, before their index.
    pub layers: &'static str,
    /// The attention module within a layer.
    pub attention: &'static str,
    /// The norm after the last layer.
    pub final_norm: &'static str,
    /// How older checkpoints name what transformers names otherwise: `(ours, theirs)` fragments, each `ours`
    /// replaced by `theirs` in turn, to form the name a tensor is read under where its own name is missing (GPT-2's
    /// original checkpoints leave out `transformer.`; EXAONE 3's use their GPT-2-like names, which transformers 5
    /// renames to Llama's as it loads them).
    pub stored_as: &'static [(&'static str, &'static str)],
    /// Endings of the names of tensors a checkpoint may hold that are not weights (older GPT-NeoX and GPT-2
    /// checkpoints' causal-mask buffers), skipped as transformers skips them.
    pub buffers: &'static [&'static str],
}

impl Architecture {
    /// The checkpoint's module names.
    pub fn module_names(self) -> ModuleNames {
        let usual = ModuleNames {
            embed: "model.embed_tokens",
            layers: "model.layers",
            attention: "self_attn",
            final_norm: "model.norm",
            stored_as: &[],
            buffers: &[],
        };
        match self {
            Architecture::Phi => ModuleNames { final_norm: "model.final_layernorm", ..usual },
            Architecture::GptNeoX => ModuleNames {
                embed: "gpt_neox.embed_in",
                layers: "gpt_neox.layers",
                attention: "attention",
                final_norm: "gpt_neox.final_layer_norm",
                stored_as: &[],
                buffers: &[".attention.bias", ".attention.masked_bias"],
            },
            Architecture::Gpt2 => ModuleNames {
                embed: "transformer.wte",
                layers: "transformer.h",
                attention: "attn",
                final_norm: "transformer.ln_f",
                stored_as: &[("transformer.", "")],
                buffers: &[".attn.bias", ".attn.masked_bias"],
            },
            Architecture::Exaone => ModuleNames {
                stored_as: &[
                    ("model.embed_tokens.", "transformer.wte."),
                    ("model.layers.", "transformer.h."),
                    ("model.norm.", "transformer.ln_f."),
                    (".self_attn.o_proj.", ".attn.attention.out_proj."),
                    (".self_attn.", ".attn.attention."),
                    (".input_layernorm.", ".ln_1."),
                    (".post_attention_layernorm.", ".ln_2."),
                    (".mlp.gate_proj.", ".mlp.c_fc_0."),
                    (".mlp.up_proj.", ".mlp.c_fc_1."),
                    (".mlp.down_proj.", ".mlp.c_proj."),
                ],
                ..usual
            },
            _ => usual,
        }
    }

    /// Whether every projection is a GPT-2 `Conv1D`, whose weight is stored `[in, out]`, transposed from a linear
    /// layer's.
    pub fn conv1d(self) -> bool {
        self == Architecture::Gpt2
    }
}

/// A mixture-of-experts feed-forward block (Qwen2-MoE and Qwen3-MoE on Qwen's layers, Mixtral on Mistral's,
/// OLMoE, GraniteMoE on Granite's): a router picks `experts_per_token` of `experts` gated MLPs for each token and
/// adds their outputs weighed by its softmax probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Moe {
    /// Routed experts in each sparse layer (`num_experts`, Mixtral's `num_local_experts`).
    pub experts: i64,
    /// Experts each token is sent to (`num_experts_per_tok`).
    pub experts_per_token: i64,
    /// Width of each routed expert's MLP (`moe_intermediate_size`; Mixtral's and OLMoE's `intermediate_size`).
    pub expert_size: i64,
    /// How the router's scores become the chosen experts' weights.
    pub routing: Routing,
    /// Width of the shared expert every token also passes through, behind a sigmoid gate (Qwen2-MoE).
    pub shared_expert_size: Option<i64>,
    /// Per layer, whether its feed-forward block is the mixture; the others are dense MLPs of
    /// `intermediate_size` (Qwen's `mlp_only_layers` and `decoder_sparse_step`).
    pub sparse_layers: Vec<bool>,
    /// How the checkpoint names the block's tensors.
    pub names: ExpertNames,
    /// The router's linear layer has a bias (gpt-oss).
    pub router_bias: bool,
    /// gpt-oss's clamped SwiGLU in place of the experts' usual activation.
    pub swiglu: Option<ClampedSwiglu>,
}

/// gpt-oss's expert activation: `(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)` with
/// `g = min(gate, limit)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClampedSwiglu {
    /// The sigmoid's slope (`swiglu_alpha`, 1.702).
    pub alpha: f64,
    /// The clamp (`swiglu_limit`, 7).
    pub limit: f64,
}

impl ClampedSwiglu {
    /// The activation of `gate_up` `[.., 2 x width]`, whose gate and up columns alternate (gate first).
    pub fn apply(&self, gate_up: &tch::Tensor) -> tch::Tensor {
        let gate = gate_up.slice(-1, 0, None, 2).clamp_max(self.limit);
        let up = gate_up.slice(-1, 1, None, 2).clamp(-self.limit, self.limit);
        (up + 1.0) * (&gate * (&gate * self.alpha).sigmoid())
    }
}

/// How a router's scores become the weights of the experts it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// A softmax over every expert, in f32, then the `k` most probable (Qwen, Mixtral, OLMoE).
    SoftmaxThenTopK {
        /// Rescale the chosen probabilities to sum to 1 (`norm_topk_prob`; always in Mixtral).
        normalize: bool,
        /// Keep the weights in f32 when they scale the experts' outputs (Mixtral), rather than rounding them to the
        /// model's dtype first (Qwen, OLMoE): the two differ under bf16.
        f32_weights: bool,
    },
    /// The `k` largest scores, then a softmax over those alone, in f32, rounded to the model's dtype (GraniteMoE):
    /// the renormalised probabilities of the first kind, in transformers' order of operations for this family.
    TopKThenSoftmax,
}

/// The checkpoint names of a mixture-of-experts block, as the hub's checkpoints store it (one tensor per expert
/// and projection, the layout transformers 5 writes back when it saves, except GraniteMoE's stacked experts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertNames {
    /// `mlp.gate` (the router), `mlp.experts.<e>.{gate_proj,up_proj,down_proj}` (Qwen, OLMoE).
    Qwen,
    /// `block_sparse_moe.gate`, `block_sparse_moe.experts.<e>.{w1,w3,w2}` (Mixtral).
    Mixtral,
    /// `block_sparse_moe.router.layer`, and every expert stacked in `block_sparse_moe.input_linear` (`[experts,
    /// 2 x width, hidden]`, gate then up) and `block_sparse_moe.output_linear` (`[experts, hidden, width]`)
    /// (GraniteMoE).
    Granite,
    /// `mlp.router` (with a bias), and every expert stacked in `mlp.experts.gate_up_proj` (`[experts, hidden,
    /// 2 x width]`, gate and up columns alternating) and `mlp.experts.down_proj` (`[experts, width, hidden]`), each
    /// with a bias (`gate_up_proj_bias`, `down_proj_bias`) (gpt-oss).
    GptOss,
}

impl ExpertNames {
    /// The block's module name within a layer.
    pub fn block(self) -> &'static str {
        match self {
            ExpertNames::Qwen | ExpertNames::GptOss => "mlp",
            ExpertNames::Mixtral | ExpertNames::Granite => "block_sparse_moe",
        }
    }

    /// The router's module name within the block.
    pub fn router(self) -> &'static str {
        match self {
            ExpertNames::Qwen | ExpertNames::Mixtral => "gate",
            ExpertNames::Granite => "router.layer",
            ExpertNames::GptOss => "router",
        }
    }

    /// An expert's gate, up and down projections, where each expert has its own (not GraniteMoE or gpt-oss).
    pub fn projections(self) -> [&'static str; 3] {
        match self {
            ExpertNames::Qwen | ExpertNames::Granite | ExpertNames::GptOss => ["gate_proj", "up_proj", "down_proj"],
            ExpertNames::Mixtral => ["w1", "w3", "w2"],
        }
    }
}

/// How the embedding's output is scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EmbeddingScale {
    /// By this factor rounded to the model's dtype first, as transformers does Gemma's `sqrt(hidden_size)`.
    Rounded(f64),
    /// By this factor as a scalar (Granite's `embedding_multiplier`).
    Exact(f64),
}

/// Which dimensions of a head the rotary embedding turns together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryPairs {
    /// Dimension `i` with `i + d/2`, in the model's dtype (transformers' `rotate_half`: Llama and most families).
    Halves,
    /// The same pairs turned the other way: `rotate_half` is `[x2, -x1]` (nanochat's).
    HalvesReversed,
    /// Dimension `2i` with `2i + 1`, each frequency on two adjacent dimensions (GLM's).
    Adjacent,
    /// Adjacent pairs computed in f32 and rounded back to the model's dtype (ERNIE 4.5's).
    AdjacentF32,
}

/// The MLP's gate activation (`hidden_act`, or Gemma's `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu`: SwiGLU (Llama, Qwen, Mistral, SmolLM3, OLMo 2).
    Silu,
    /// `gelu_pytorch_tanh`: GELU's tanh approximation (Gemma).
    GeluTanh,
    /// `relu2`: `relu(x)^2`, on an MLP with no gate (Arcee).
    Relu2,
    /// `gelu`: the exact GELU, `x Phi(x)`.
    Gelu,
}

impl Activation {
    /// The activation of the gate's output `g`.
    pub fn apply(self, g: &tch::Tensor) -> tch::Tensor {
        match self {
            Activation::Silu => g.silu(),
            Activation::GeluTanh => g.gelu("tanh"),
            Activation::Relu2 => g.relu().square(),
            Activation::Gelu => g.gelu("none"),
        }
    }

    /// `act(gate) * up` for a fused projection's output `[.., 2 x width]`, the gate's half first (Phi-3's and GLM's
    /// `gate_up_proj`, GraniteMoE's stacked experts).
    pub fn gated_halves(self, both: &tch::Tensor) -> tch::Tensor {
        let half = both.size()[both.dim() - 1] / 2;
        self.apply(&both.narrow(-1, 0, half)) * both.narrow(-1, half, half)
    }
}

/// A rotary embedding: its base and how its frequencies are rescaled.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// The base (`rope_theta`).
    pub theta: f64,
    /// The rescaling.
    pub scaling: RopeScaling,
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
    /// YaRN (Qwen3's and OLMo 3's long contexts): the frequencies that turn many times within the pre-training
    /// context kept, those that turn less than once divided by `factor`, a linear ramp between, and cos/sin scaled
    /// by `attention_factor`.
    Yarn {
        /// The divisor of the slow frequencies.
        factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: f64,
        /// Frequencies that turn at least this many times within that context are kept.
        beta_fast: f64,
        /// Frequencies that turn at most this many times are divided by `factor`.
        beta_slow: f64,
        /// cos and sin are multiplied by this.
        attention_factor: f64,
        /// Round the ramp's ends to whole dimensions.
        truncate: bool,
    },
    /// NTK-alpha (Hunyuan's `"dynamic"` with an `alpha`): the base multiplied by `alpha^(d / (d - 2))` for `d`
    /// rotary dimensions, at every length.
    NtkAlpha {
        /// The stretch.
        alpha: f64,
    },
    /// LongRoPE (Phi-3.5, Phi-4-mini): each frequency divided by its own factor, the short ones up to the
    /// pre-training context and the long ones for a forward pass past it, and cos/sin scaled by `attention_factor`.
    LongRope {
        /// Per-frequency divisors within the pre-training context.
        short_factor: Vec<f64>,
        /// Per-frequency divisors for sequences longer than it.
        long_factor: Vec<f64>,
        /// The pre-training context: a forward pass over more positions takes the long factors.
        original_max_position_embeddings: i64,
        /// cos and sin are multiplied by this.
        attention_factor: f64,
    },
}

/// The architecture hyper-parameters of a checkpoint.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// config.json's `model_type`, as written.
    pub model_type: String,
    /// The decoder family `model_type` belongs to.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding and of `lm_head`).
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the gated MLP.
    pub intermediate_size: i64,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// Number of decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// The leading dimensions of each head the rotary embedding turns (all but Phi-3's `partial_rotary_factor`).
    pub rotary_dim: i64,
    /// Which of them turn together.
    pub rotary_pairs: RotaryPairs,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// The rotary embedding (of the full-attention layers, where the sliding-window ones have their own).
    pub rope: Rope,
    /// The sliding-window layers' own rotary embedding (Gemma 3's local base frequency); `None`: they use `rope`.
    pub sliding_rope: Option<Rope>,
    /// The attention scores' scale when it is not `1/sqrt(head_dim)` (Gemma's `query_pre_attn_scalar^-1/2`).
    pub attention_scale: Option<f64>,
    /// The embedding's output is multiplied by this (Gemma's `sqrt(hidden_size)`, Granite's `embedding_multiplier`).
    pub embedding_scale: Option<EmbeddingScale>,
    /// Each block's output is multiplied by this before it joins the residual stream (Granite's
    /// `residual_multiplier`).
    pub residual_scale: Option<f64>,
    /// The logits are divided by this (Granite's `logits_scaling`), before a cap or temperature.
    pub logits_divisor: Option<f64>,
    /// Attention scores `s` become `c tanh(s / c)` before the mask and softmax (Gemma 2's `attn_logit_softcapping`).
    pub attention_softcap: Option<f64>,
    /// Logits `z` become `c tanh(z / c)` (Gemma 2's `final_logit_softcapping`), before any temperature.
    pub final_logit_softcap: Option<f64>,
    /// Whether `lm_head` reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether the q/k/v projections carry biases (`attention_bias`; always in Qwen2, Qwen2-MoE's `qkv_bias`).
    pub qkv_bias: bool,
    /// Whether the output projection carries a bias (`attention_bias`, never in Qwen2).
    pub o_bias: bool,
    /// Whether the MLP projections carry biases (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Whether `lm_head` carries a bias (Phi's).
    pub lm_head_bias: bool,
    /// The embedding's output goes through the final norm before the first layer (nanochat).
    pub embedding_norm: bool,
    /// OLMo's clamp on the query, key and value projections (`clip_qkv`): each is cut to `[-c, c]`.
    pub clip_qkv: Option<f64>,
    /// Whether attention and the MLP run side by side on the layer's input rather than one after the other, where the
    /// family makes that optional (GPT-NeoX's `use_parallel_residual`).
    pub parallel_blocks: bool,
    /// The number of learned absolute positions (GPT-2's `n_positions`) where the model has a position embedding
    /// instead of a rotary one: no sequence may be longer.
    pub learned_positions: Option<i64>,
    /// Whether the queries and keys of each head are normalised where the family makes that optional (Cohere's
    /// `use_qk_norm`, Phi's `qk_layernorm`); the families whose norms are always there ignore it.
    pub qk_norm: bool,
    /// Longest context the model was trained for (informational; longer sequences are allowed).
    pub max_position_embeddings: i64,
    /// End-of-sequence ids listed in config.json (`eos_token_id`, int or list).
    pub eos_token_ids: Vec<u32>,
    /// Per layer, whether it applies the rotary embedding (SmolLM3's NoPE layers do not).
    pub rope_layers: Vec<bool>,
    /// Sliding-window layers attend to the last this many tokens only, themselves included; `None` when no layer
    /// has a window.
    pub sliding_window: Option<i64>,
    /// Per layer, whether it attends within `sliding_window` (`layer_types`' `sliding_attention`: every layer of
    /// Mistral 7B v0.1, Qwen2's from `max_window_layers` on, five in six of Gemma 3's).
    pub sliding_layers: Vec<bool>,
    /// The mixture of experts, in the families that have one.
    pub moe: Option<Moe>,
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
        let mut v: Value = serde_json::from_str(text).map_err(|e| user_error!("config.json is not valid JSON: {e}"))?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
        field_aliases(&mut v, &model_type);
        let v = v;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let architecture = match MODEL_TYPES.iter().find(|(name, _)| *name == model_type) {
            Some(&(_, architecture)) => architecture,
            None if model_type == "gemma3" => {
                return Err(user_error!(
                    "model_type \"gemma3\" is Gemma 3's image-text model, which is not supported; use a text-only \
                     Gemma 3 checkpoint (model_type gemma3_text, e.g. google/gemma-3-1b-it)"
                ))
            }
            None => {
                let names: Vec<&str> = MODEL_TYPES.iter().map(|(name, _)| *name).collect();
                return Err(user_error!(
                    "unsupported model_type {model_type:?} in config.json; supported: {}",
                    names.join(", ")
                ));
            }
        };
        let (options, instead) = unsupported_options(architecture);
        if let Some((field, what)) =
            options.iter().find(|(field, _)| v.get(*field).and_then(Value::as_bool) == Some(true))
        {
            return Err(user_error!("config.json {field}=true ({what}) is not supported{instead}"));
        }
        let gemma = matches!(architecture, Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3);
        // Gemma 2's caps are on unless config.json says null; other families have none unless it gives one.
        let softcap = |field: &str, gemma2_default: f64| match v.get(field) {
            None if architecture == Architecture::Gemma2 => Ok(Some(gemma2_default)),
            _ => optional_positive_number(&v, field),
        };
        let attention_softcap = softcap("attn_logit_softcapping", 50.0)?;
        let final_logit_softcap = softcap("final_logit_softcapping", 30.0)?;
        // Granite's multipliers, each `None` where it is 1 (or the family is another).
        let granite = |field: &str| -> anyhow::Result<Option<f64>> {
            match model_type.starts_with("granite") {
                true => Ok(optional_positive_number(&v, field)?.filter(|x| *x != 1.0)),
                false => Ok(None),
            }
        };
        if v.get("use_bidirectional_attention").and_then(Value::as_bool) == Some(true) {
            return Err(user_error!("config.json use_bidirectional_attention=true is not supported"));
        }
        if let Some(q) = v.get("quantization_config").filter(|q| q.is_object()) {
            let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("unknown");
            // gpt-oss's MXFP4 experts are dequantized as they are loaded (`Loader::get_experts`).
            if !(method == "mxfp4" && architecture == Architecture::GptOss) {
                return Err(user_error!(
                    "config.json quantization_config ({method}): quantized checkpoints are not supported (but \
                     gpt-oss's MXFP4 experts); use one with the full bf16 or f32 weights"
                ));
            }
        }
        let clip_qkv = optional_positive_number(&v, "clip_qkv")?;
        if clip_qkv.is_some() && architecture != Architecture::Olmo {
            return Err(user_error!("config.json clip_qkv is supported in OLMo (model_type olmo) only"));
        }
        let int = |name: &str| -> anyhow::Result<i64> {
            v.get(name)
                .and_then(Value::as_i64)
                .filter(|x| *x > 0)
                .ok_or_else(|| user_error!("config.json field {name:?} is missing or not a positive integer"))
        };
        // Arcee's, Nemotron's and nanochat's MLPs have no gate; relu^2 is their activation and no other family's.
        let relu2_mlp = matches!(model_type, "arcee" | "nemotron" | "nanochat");
        let named = v.get("hidden_activation").or_else(|| v.get("hidden_act")).and_then(Value::as_str);
        let tanh_default =
            gemma || matches!(architecture, Architecture::Starcoder2 | Architecture::Phi | Architecture::Gpt2);
        let gelu_default = architecture == Architecture::GptNeoX;
        let activation = match (relu2_mlp, named) {
            (true, None | Some("relu2")) => Activation::Relu2,
            (false, None) if tanh_default => Activation::GeluTanh,
            (false, None) if gelu_default => Activation::Gelu,
            (false, None | Some("silu")) => Activation::Silu,
            // `gelu_new` is the tanh approximation written out (Phi's), the same function.
            (false, Some("gelu_pytorch_tanh" | "gelu_new")) => Activation::GeluTanh,
            // Gemma 1's configs say `gelu` for the tanh approximation it was trained with, as transformers reads it.
            (false, Some("gelu")) if architecture == Architecture::Gemma => Activation::GeluTanh,
            (false, Some("gelu")) => Activation::Gelu,
            (_, Some(act)) => {
                let supported = if relu2_mlp { "relu2" } else { "silu, gelu, gelu_new, gelu_pytorch_tanh" };
                return Err(user_error!("config.json activation {act:?} is not supported here ({supported})"));
            }
        };
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
        let ernie = model_type == "ernie4_5";
        let head_dim = match v.get("head_dim") {
            // Cohere 2 derives it, whatever config.json says.
            _ if architecture == Architecture::Cohere2 => hidden_size / num_attention_heads,
            // ERNIE 4.5's and Seed-OSS's class defaults.
            None if ernie || model_type == "seed_oss" => 128,
            None if architecture == Architecture::Gemma => 256,
            None if architecture == Architecture::Helium => 128,
            Some(Value::Null) | None => hidden_size / num_attention_heads,
            Some(_) => int("head_dim")?,
        };
        let (rope, sliding_rope) = ropes(&v, architecture)?;
        let glm = matches!(architecture, Architecture::Glm | Architecture::Glm4);
        let rotary_dim = match architecture {
            Architecture::Phi3
            | Architecture::Glm
            | Architecture::Glm4
            | Architecture::StableLm
            | Architecture::Nemotron
            | Architecture::Phi
            | Architecture::GptNeoX => {
                let params = v.get("rope_parameters").filter(|r| r.is_object());
                let default = match architecture {
                    _ if glm || matches!(architecture, Architecture::Nemotron | Architecture::Phi) => 0.5,
                    Architecture::StableLm | Architecture::GptNeoX => 0.25,
                    _ => 1.0,
                };
                let factor = params
                    .and_then(|r| r.get("partial_rotary_factor"))
                    .or_else(|| v.get("partial_rotary_factor"))
                    // GPT-NeoX's own name for it.
                    .or_else(|| v.get("rotary_pct"))
                    .and_then(Value::as_f64)
                    .unwrap_or(default);
                (head_dim as f64 * factor) as i64
            }
            _ => head_dim,
        };
        if rotary_dim <= 0 || rotary_dim > head_dim || rotary_dim % 2 != 0 {
            return Err(user_error!(
                "config.json partial_rotary_factor gives {rotary_dim} rotary dimensions of {head_dim}; they must be \
                 even and at least 2"
            ));
        }
        for r in std::iter::once(&rope).chain(&sliding_rope) {
            if let RopeScaling::LongRope { short_factor, long_factor, .. } = &r.scaling {
                if short_factor.len() as i64 != rotary_dim / 2 || long_factor.len() as i64 != rotary_dim / 2 {
                    return Err(user_error!(
                        "config.json longrope: short_factor and long_factor need {} numbers each (one per rotary \
                         frequency), not {} and {}",
                        rotary_dim / 2,
                        short_factor.len(),
                        long_factor.len()
                    ));
                }
            }
        }
        let default_tie = !matches!(
            architecture,
            Architecture::Llama
                | Architecture::Mistral
                | Architecture::Olmo
                | Architecture::Olmo2
                | Architecture::Olmo3
                | Architecture::NanoChat
                | Architecture::Exaone
                | Architecture::Helium
                | Architecture::Phi3
                | Architecture::Olmoe
                | Architecture::Glm
                | Architecture::Glm4
                | Architecture::Exaone4
                | Architecture::GptOss
                | Architecture::Hunyuan
                | Architecture::StableLm
                | Architecture::Nemotron
                | Architecture::Phi
                | Architecture::GptNeoX
        ) && !model_type.ends_with("_moe")
            || ernie;
        let num_hidden_layers = int("num_hidden_layers")?;
        let (sliding_window, sliding_layers) = sliding_layers(&v, architecture, num_hidden_layers)?;
        let rope_layers = rope_layers(&v, architecture, num_hidden_layers, &sliding_layers)?;
        let flag = |name: &str, default: bool| v.get(name).and_then(Value::as_bool).unwrap_or(default);
        // ERNIE 4.5's and StarCoder2's `use_bias` put a bias on every projection (StarCoder2's by default).
        let use_bias = match architecture {
            Architecture::Starcoder2 => flag("use_bias", true),
            // Phi's and GPT-2's projections always have one.
            Architecture::Phi | Architecture::Gpt2 => true,
            _ => ernie && flag("use_bias", false),
        };
        let gpt_oss = architecture == Architecture::GptOss;
        // GPT-NeoX's MLP always has biases, its attention by default.
        let neox = architecture == Architecture::GptNeoX;
        let attention_bias = flag("attention_bias", gpt_oss || neox) || use_bias;
        let qkv_bias = match model_type {
            "qwen2" => true,
            "stablelm" => flag("use_qkv_bias", false),
            "seed_oss" => flag("attention_bias", true),
            "qwen2_moe" => flag("qkv_bias", true),
            _ if glm => flag("attention_bias", true),
            _ => attention_bias,
        };
        let o_bias = match model_type {
            // Seed-OSS sets the output projection's bias apart.
            "seed_oss" => flag("attention_out_bias", false),
            _ => attention_bias && !matches!(architecture, Architecture::Qwen2 | Architecture::Helium) && !glm,
        };
        let intermediate_size = int("intermediate_size")?;
        let moe = moe(&v, model_type, num_hidden_layers, intermediate_size)?;
        let max_position_embeddings = v.get("max_position_embeddings").and_then(Value::as_i64).unwrap_or(4096);
        let attention_scale =
            match v.get("query_pre_attn_scalar") {
                _ if !gemma || architecture == Architecture::Gemma => None,
                Some(x) => Some(x.as_f64().filter(|x| *x > 0.0).ok_or_else(|| {
                    user_error!("config.json field \"query_pre_attn_scalar\" is not a positive number")
                })?),
                None => Some(256.0),
            };
        Ok(ModelConfig {
            model_type: model_type.to_string(),
            architecture,
            vocab_size: int("vocab_size")?,
            hidden_size,
            intermediate_size,
            activation,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rotary_dim,
            // StarCoder2's LayerNorms read `norm_epsilon`.
            rms_norm_eps: v
                .get(match architecture {
                    Architecture::Starcoder2 => "norm_epsilon",
                    Architecture::StableLm
                    | Architecture::Cohere2
                    | Architecture::Cohere
                    | Architecture::Phi
                    | Architecture::GptNeoX
                    | Architecture::Gpt2 => "layer_norm_eps",
                    Architecture::Nemotron => "norm_eps",
                    _ => "rms_norm_eps",
                })
                .and_then(Value::as_f64)
                .unwrap_or(
                    // The class defaults.
                    match architecture {
                        Architecture::Helium => 1e-8,
                        Architecture::Exaone4
                        | Architecture::GptOss
                        | Architecture::Hunyuan
                        | Architecture::Starcoder2
                        | Architecture::StableLm
                        | Architecture::Nemotron
                        | Architecture::Cohere2
                        | Architecture::Cohere
                        | Architecture::Phi
                        | Architecture::GptNeoX
                        | Architecture::Gpt2
                        | Architecture::Exaone => 1e-5,
                        _ if ernie => 1e-5,
                        _ => 1e-6,
                    },
                ),
            rotary_pairs: match architecture {
                Architecture::NanoChat => RotaryPairs::HalvesReversed,
                Architecture::Helium => RotaryPairs::Adjacent,
                _ if ernie => RotaryPairs::AdjacentF32,
                _ if glm || matches!(architecture, Architecture::Cohere2 | Architecture::Cohere) => {
                    RotaryPairs::Adjacent
                }
                _ => RotaryPairs::Halves,
            },
            sliding_rope: sliding_rope.filter(|r| *r != rope),
            rope,
            attention_scale: match attention_scale {
                Some(s) => Some(s.powf(-0.5)),
                // GPT-2 without `scale_attn_weights` leaves its scores unscaled.
                None if architecture == Architecture::Gpt2 && !flag("scale_attn_weights", true) => Some(1.0),
                // Granite's scale replaces 1/sqrt(head_dim), whatever its value (1 by default).
                None if model_type.starts_with("granite") => Some(granite("attention_multiplier")?.unwrap_or(1.0)),
                None => None,
            },
            embedding_scale: match gemma {
                true => Some(EmbeddingScale::Rounded((hidden_size as f64).sqrt())),
                false => granite("embedding_multiplier")?.map(EmbeddingScale::Exact),
            },
            residual_scale: granite("residual_multiplier")?,
            logits_divisor: match architecture {
                // Cohere multiplies by its scale (a power of two, 1/16, in its models: the same as dividing).
                Architecture::Cohere2 | Architecture::Cohere => {
                    let scale = optional_positive_number(&v, "logit_scale")?.unwrap_or(0.0625);
                    (scale != 1.0).then(|| 1.0 / scale)
                }
                _ => granite("logits_scaling")?,
            },
            attention_softcap,
            final_logit_softcap,
            tie_word_embeddings: flag("tie_word_embeddings", default_tie),
            qkv_bias,
            o_bias,
            mlp_bias: flag("mlp_bias", false) || use_bias || neox,
            lm_head_bias: architecture == Architecture::Phi,
            clip_qkv,
            embedding_norm: architecture == Architecture::NanoChat,
            parallel_blocks: match architecture {
                Architecture::StableLm => flag("use_parallel_residual", false),
                _ => neox && flag("use_parallel_residual", true),
            },
            // GPT-2's `n_positions`, 1024 where config.json does not say (`field_aliases`).
            learned_positions: (architecture == Architecture::Gpt2).then_some(max_position_embeddings),
            qk_norm: match architecture {
                Architecture::Cohere => flag("use_qk_norm", false),
                Architecture::Phi | Architecture::StableLm => flag("qk_layernorm", false),
                _ => false,
            },
            max_position_embeddings,
            eos_token_ids: ids_of(v.get("eos_token_id")),
            rope_layers,
            sliding_window,
            sliding_layers,
            moe,
        })
    }

    /// LongRoPE's pre-training context (Phi-3): a sequence longer than this takes the long factors.
    pub fn longrope_context(&self) -> Option<i64> {
        std::iter::once(&self.rope).chain(&self.sliding_rope).find_map(|r| match r.scaling {
            RopeScaling::LongRope { original_max_position_embeddings, .. } => Some(original_max_position_embeddings),
            _ => None,
        })
    }

    /// The window layer `i` attends within, or `None` when it attends to everything before it.
    pub fn layer_window(&self, i: usize) -> Option<i64> {
        self.sliding_window.filter(|_| self.sliding_layers[i])
    }
}

/// The rotary embeddings of the full-attention layers and, for Gemma 3 and OLMo 3, of the sliding-window ones: from
/// `rope_parameters` (one object, or one per layer type), else from `rope_theta`, `rope_scaling` (the full layers'
/// only) and Gemma's `rope_local_base_freq`, with each family's default bases.
fn ropes(v: &Value, architecture: Architecture) -> anyhow::Result<(Rope, Option<Rope>)> {
    let params = v.get("rope_parameters").filter(|r| r.is_object());
    let by_type = |kind: &str| params.and_then(|r| r.get(kind)).filter(|r| r.is_object());
    let theta = |r: Option<&Value>, key: &str, default: f64| {
        r.and_then(|r| r.get("rope_theta")).or_else(|| v.get(key)).and_then(Value::as_f64).unwrap_or(default)
    };
    let per_type = match architecture {
        Architecture::Gemma3 => Some((1e6, "rope_local_base_freq", 1e4)),
        Architecture::Olmo3 => Some((500000.0, "rope_theta", 500000.0)),
        _ => None,
    };
    if let Some((full_theta, local_key, local_theta)) = per_type {
        // The full layers take `rope_scaling`; the sliding ones plain RoPE (at Gemma's own base).
        let (full, local) = (by_type("full_attention"), by_type("sliding_attention"));
        let legacy = v.get("rope_scaling").filter(|r| r.is_object());
        let scaling = parse_rope_scaling(full.or(legacy), v)?;
        let rope = Rope { theta: theta(full, "rope_theta", full_theta), scaling };
        let sliding = Rope { theta: theta(local, local_key, local_theta), scaling: parse_rope_scaling(local, v)? };
        return Ok((rope, Some(sliding)));
    }
    let legacy = v.get("rope_scaling").filter(|r| r.is_object());
    if architecture == Architecture::GptOss && params.or(legacy).is_none() {
        // gpt-oss's class defaults: YaRN from a 4096-token context, at a base of 150000.
        let yarn = serde_json::json!({"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": false, "original_max_position_embeddings": 4096});
        let theta = theta(None, "rope_theta", 150000.0);
        return Ok((Rope { theta, scaling: parse_rope_scaling(Some(&yarn), v)? }, None));
    }
    let scaling = parse_rope_scaling(params.or(legacy), v)?;
    let default_theta = match architecture {
        Architecture::GptOss => 150000.0,
        Architecture::Exaone => 500000.0,
        Architecture::Helium => 100000.0,
        _ => 10000.0,
    };
    // GPT-NeoX's configs on the hub name the base `rotary_emb_base`.
    let key = if architecture == Architecture::GptNeoX && v.get("rope_theta").is_none() {
        "rotary_emb_base"
    } else {
        "rope_theta"
    };
    Ok((Rope { theta: theta(params, key, default_theta), scaling }, None))
}

/// The sliding window's width and, per layer, whether it attends within it: from `layer_types` where config.json
/// lists them, else as each family's transformers class lays them out (Mistral: every layer; Qwen2, Qwen3 and
/// SmolLM3 under `use_sliding_window`: those from `max_window_layers` on; Gemma 2: every other one from the first;
/// Gemma 3: all but every `sliding_window_pattern`-th; OLMo 3: all but every fourth; EXAONE 4: as its
/// `sliding_window_pattern` says, every fourth full by default, or its letters, `"LLLG"`, repeated). The width is `None`
/// when no layer slides.
fn sliding_layers(v: &Value, architecture: Architecture, layers: i64) -> anyhow::Result<(Option<i64>, Vec<bool>)> {
    let positive = |name: &str| optional_positive(v, name);
    let qwen_like = matches!(architecture, Architecture::Qwen2 | Architecture::Qwen3 | Architecture::SmolLM3);
    let window = match architecture {
        Architecture::Mistral | Architecture::Phi3 | Architecture::Starcoder2 => positive("sliding_window")?,
        Architecture::Gemma2 | Architecture::Gemma3 | Architecture::Olmo3 => {
            Some(positive("sliding_window")?.unwrap_or(4096))
        }
        // A window unless config.json says null (the dense EXAONE 4.0 1.2B).
        Architecture::Exaone4 | Architecture::Cohere2 => window_unless_null(v, 4096)?,
        Architecture::GptOss => window_unless_null(v, 128)?,
        _ if qwen_like && v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) => {
            positive("sliding_window")?
        }
        _ => None,
    };
    if architecture == Architecture::Cohere2 && window.is_none() {
        // Under a null window every layer attends to everything, whatever `layer_types` names.
        return Ok((None, vec![false; layers as usize]));
    }
    let sliding: Vec<bool> = match v.get("layer_types").filter(|t| !t.is_null()) {
        Some(types) => {
            let kinds: Option<Vec<bool>> = types.as_array().and_then(|a| {
                a.iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Some(false),
                        Some("sliding_attention") => Some(true),
                        _ => None,
                    })
                    .collect()
            });
            match kinds {
                Some(kinds) if kinds.len() == layers as usize => kinds,
                _ => {
                    return Err(user_error!(
                        "config.json layer_types: give one \"full_attention\" or \"sliding_attention\" per layer \
                         ({layers})"
                    ))
                }
            }
        }
        None => {
            let first = match architecture {
                _ if qwen_like => positive("max_window_layers")?.unwrap_or(28),
                _ => 0,
            };
            if architecture == Architecture::Exaone4 {
                return Ok(match window {
                    Some(width) => (Some(width), exaone_layers(v.get("sliding_window_pattern"), layers)?),
                    None => (None, vec![false; layers as usize]),
                });
            }
            let default_pattern = if architecture == Architecture::Cohere2 { 4 } else { 6 };
            let pattern =
                positive("sliding_window_pattern")?.or(positive("_sliding_window_pattern")?).unwrap_or(default_pattern);
            (0..layers)
                .map(|i| match architecture {
                    Architecture::Gemma2 | Architecture::GptOss => i % 2 == 0,
                    Architecture::Gemma3 | Architecture::Cohere2 => (i + 1) % pattern != 0,
                    Architecture::Olmo3 => (i + 1) % 4 != 0,
                    _ => window.is_some() && i >= first,
                })
                .collect()
        }
    };
    if !sliding.iter().any(|s| *s) {
        return Ok((None, sliding));
    }
    if window.is_none() {
        return Err(user_error!(
            "config.json layer_types names sliding_attention layers, but no sliding_window applies (Qwen2, Qwen3 and \
             SmolLM3 take one under use_sliding_window=true)"
        ));
    }
    Ok((window, sliding))
}

/// The mixture of experts of `model_type`'s families, `None` for the dense ones.
fn moe(v: &Value, model_type: &str, layers: i64, intermediate_size: i64) -> anyhow::Result<Option<Moe>> {
    let names = match model_type {
        "qwen2_moe" | "qwen3_moe" | "olmoe" => ExpertNames::Qwen,
        "mixtral" => ExpertNames::Mixtral,
        "granitemoe" => ExpertNames::Granite,
        "gpt_oss" => ExpertNames::GptOss,
        _ => return Ok(None),
    };
    let required = |name: &str| {
        optional_positive(v, name)?
            .ok_or_else(|| user_error!("config.json field {name:?} is missing (a positive integer)"))
    };
    // transformers 5 writes `num_local_experts` where the hub's Qwen3-MoE configs say `num_experts`.
    let experts = match optional_positive(v, "num_experts")? {
        Some(n) => n,
        None => required("num_local_experts")?,
    };
    let experts_per_token = required("num_experts_per_tok")?;
    if experts_per_token > experts {
        return Err(user_error!(
            "config.json num_experts_per_tok ({experts_per_token}) is more than the {experts} experts"
        ));
    }
    if v.get("router_jitter_noise").and_then(Value::as_f64).is_some_and(|x| x != 0.0) {
        return Err(user_error!("config.json router_jitter_noise is not supported (only 0)"));
    }
    let qwen = model_type.starts_with("qwen");
    let expert_size = if qwen { required("moe_intermediate_size")? } else { intermediate_size };
    let sparse_layers = if qwen {
        let step = optional_positive(v, "decoder_sparse_step")?.unwrap_or(1);
        let dense: Option<Vec<i64>> = match v.get("mlp_only_layers") {
            Some(Value::Null) | None => Some(Vec::new()),
            Some(x) => x.as_array().and_then(|a| a.iter().map(Value::as_i64).collect()),
        };
        let dense = dense.ok_or_else(|| user_error!("config.json mlp_only_layers: give a list of layer indices"))?;
        (0..layers).map(|i| !dense.contains(&i) && (i + 1) % step == 0).collect()
    } else {
        vec![true; layers as usize]
    };
    Ok(Some(Moe {
        experts,
        experts_per_token,
        expert_size,
        routing: match model_type {
            "granitemoe" | "gpt_oss" => Routing::TopKThenSoftmax,
            _ => Routing::SoftmaxThenTopK {
                normalize: model_type == "mixtral" || v.get("norm_topk_prob").and_then(Value::as_bool) == Some(true),
                f32_weights: model_type == "mixtral",
            },
        },
        shared_expert_size: match model_type {
            "qwen2_moe" => Some(required("shared_expert_intermediate_size")?),
            _ => None,
        },
        sparse_layers,
        names,
        router_bias: names == ExpertNames::GptOss,
        swiglu: match names {
            ExpertNames::GptOss => {
                let number = |name: &str, default: f64| optional_positive_number(v, name).map(|x| x.unwrap_or(default));
                Some(ClampedSwiglu { alpha: number("swiglu_alpha", 1.702)?, limit: number("swiglu_limit", 7.0)? })
            }
            _ => None,
        },
    }))
}

/// EXAONE 4's sliding layers from its `sliding_window_pattern`: every `n`-th layer full (4 by default), or a
/// string of `L` (sliding) and `G` (global) letters repeated over the layers.
fn exaone_layers(pattern: Option<&Value>, layers: i64) -> anyhow::Result<Vec<bool>> {
    let letters: Vec<bool> = match pattern {
        None | Some(Value::Null) => (0..4).map(|i| i != 3).collect(),
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n > 0) => {
            let n = n.as_i64().unwrap_or(4);
            (0..n).map(|i| i != n - 1).collect()
        }
        Some(Value::String(s)) if !s.is_empty() && s.chars().all(|c| c == 'L' || c == 'G') => {
            s.chars().map(|c| c == 'L').collect()
        }
        Some(other) => {
            return Err(user_error!(
                "config.json sliding_window_pattern {other}: give a positive integer or letters L (sliding) and G \
                 (global), such as \"LLLG\""
            ))
        }
    };
    Ok((0..layers as usize).map(|i| letters[i % letters.len()]).collect())
}

/// Whether each of the `layers` layers applies the rotary embedding: all of them, except SmolLM3's NoPE layers
/// (`no_rope_layers`, 1 where a layer uses RoPE, or else every `no_rope_layer_interval`-th layer without),
/// EXAONE 4's layers outside the `sliding` ones unless its `sliding_window` is null, and Cohere 2's outside them, or
/// all of them under a null window (transformers' rules, which look at the setting, not at whether any layer
/// slides).
fn rope_layers(v: &Value, architecture: Architecture, layers: i64, sliding: &[bool]) -> anyhow::Result<Vec<bool>> {
    let windowed = !matches!(v.get("sliding_window"), Some(Value::Null));
    match architecture {
        Architecture::Exaone4 => return Ok(sliding.iter().map(|&s| s || !windowed).collect()),
        // Cohere 2 turns the sliding layers' queries and keys alone, and none under a null window.
        Architecture::Cohere2 => return Ok(sliding.iter().map(|&s| s && windowed).collect()),
        // GPT-2's positions are learned embeddings instead.
        Architecture::Gpt2 => return Ok(vec![false; layers as usize]),
        _ => {}
    }
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
    let interval = optional_positive(v, "no_rope_layer_interval")?.unwrap_or(4);
    Ok((0..layers).map(|i| (i + 1) % interval != 0).collect())
}

/// config.json under the names the other families use where a family spells a field its own way (transformers'
/// `attribute_map`): GPT-2's `n_embd`, `n_layer`, ... (with its class defaults, and `n_inner` four times the width
/// when null), EXAONE 3's `num_layers`, `layer_norm_epsilon` and `activation_function`, InternLM3's `qkv_bias` and
/// `bias`. Each is set only where config.json does not already give it.
fn field_aliases(v: &mut Value, model_type: &str) {
    let Some(fields) = v.as_object_mut() else { return };
    let width = fields.get("n_embd").and_then(Value::as_i64).unwrap_or(768);
    let aliases: Vec<(&str, &str, Option<Value>)> = match model_type {
        "gpt2" => vec![
            ("hidden_size", "n_embd", Some(768.into())),
            ("num_hidden_layers", "n_layer", Some(12.into())),
            ("num_attention_heads", "n_head", Some(12.into())),
            ("max_position_embeddings", "n_positions", Some(1024.into())),
            ("intermediate_size", "n_inner", Some((4 * width).into())),
            ("layer_norm_eps", "layer_norm_epsilon", Some(1e-5.into())),
            ("hidden_act", "activation_function", Some("gelu_new".into())),
        ],
        "exaone" => vec![
            ("num_hidden_layers", "num_layers", None),
            ("rms_norm_eps", "layer_norm_epsilon", None),
            ("hidden_act", "activation_function", None),
        ],
        "internlm3" => vec![("attention_bias", "qkv_bias", None), ("mlp_bias", "bias", None)],
        _ => Vec::new(),
    };
    for (ours, theirs, default) in aliases {
        if !fields.contains_key(ours) {
            if let Some(value) = fields.get(theirs).filter(|x| !x.is_null()).cloned().or(default) {
                fields.insert(ours.to_string(), value);
            }
        }
    }
}

/// Every `model_type` this host implements, with the layer structure it has. Granite is Llama's layers with its four
/// multipliers, ERNIE 4.5 Llama's with biases (`use_bias`) and adjacent rotary pairs, Arcee (AFM) Llama's with an
/// ungated relu^2 MLP, Seed-OSS Llama's with q/k/v biases, InternLM3 Llama's with its own names for the biases
/// (`field_aliases`); Ministral is Mistral with its layers' kinds in `layer_types`; each mixture of experts has its
/// dense kin's layers.
const MODEL_TYPES: &[(&str, Architecture)] = &[
    ("arcee", Architecture::Llama),
    ("cohere", Architecture::Cohere),
    ("cohere2", Architecture::Cohere2),
    ("ernie4_5", Architecture::Llama),
    ("exaone", Architecture::Exaone),
    ("exaone4", Architecture::Exaone4),
    ("gemma", Architecture::Gemma),
    ("gemma2", Architecture::Gemma2),
    ("gemma3_text", Architecture::Gemma3),
    ("glm", Architecture::Glm),
    ("glm4", Architecture::Glm4),
    ("gpt2", Architecture::Gpt2),
    ("gpt_neox", Architecture::GptNeoX),
    ("gpt_oss", Architecture::GptOss),
    ("granite", Architecture::Llama),
    ("granitemoe", Architecture::Llama),
    ("helium", Architecture::Helium),
    ("hunyuan_v1_dense", Architecture::Hunyuan),
    ("internlm3", Architecture::Llama),
    ("llama", Architecture::Llama),
    ("ministral", Architecture::Mistral),
    ("mistral", Architecture::Mistral),
    ("mixtral", Architecture::Mistral),
    ("nanochat", Architecture::NanoChat),
    ("nemotron", Architecture::Nemotron),
    ("olmo", Architecture::Olmo),
    ("olmo2", Architecture::Olmo2),
    ("olmo3", Architecture::Olmo3),
    ("olmoe", Architecture::Olmoe),
    ("phi", Architecture::Phi),
    ("phi3", Architecture::Phi3),
    ("qwen2", Architecture::Qwen2),
    ("qwen2_moe", Architecture::Qwen2),
    ("qwen3", Architecture::Qwen3),
    ("qwen3_moe", Architecture::Qwen3),
    ("seed_oss", Architecture::Llama),
    ("smollm3", Architecture::SmolLM3),
    ("stablelm", Architecture::StableLm),
    ("starcoder2", Architecture::Starcoder2),
];

/// A family's config.json switches that change its layers beyond what is implemented, each `(field, what it
/// does)`, and what to use instead: a config that sets one to true is refused in one line.
fn unsupported_options(architecture: Architecture) -> (&'static [(&'static str, &'static str)], &'static str) {
    match architecture {
        Architecture::Gpt2 => (
            &[
                ("scale_attn_by_inverse_layer_idx", "GPT-2 with scores divided by the layer's index"),
                ("reorder_and_upcast_attn", "GPT-2 with attention reordered and upcast to f32"),
                ("add_cross_attention", "GPT-2 with cross-attention"),
            ],
            "",
        ),
        _ => (&[], ""),
    }
}

/// The sliding window of a family whose class default has one (EXAONE 4, gpt-oss, Cohere 2): `default` where
/// config.json does not say, none where it says null, else its width.
fn window_unless_null(v: &Value, default: i64) -> anyhow::Result<Option<i64>> {
    match v.get("sliding_window") {
        None => Ok(Some(default)),
        Some(_) => optional_positive(v, "sliding_window"),
    }
}

/// The integer field `name`: `None` where it is missing or null, an error where it is not a positive integer.
fn optional_positive(v: &Value, name: &str) -> anyhow::Result<Option<i64>> {
    optional_field(v, name, |x| x.as_i64().filter(|x| *x > 0), "a positive integer")
}

/// The number field `name`: `None` where it is missing or null, an error where it is not a positive number.
fn optional_positive_number(v: &Value, name: &str) -> anyhow::Result<Option<f64>> {
    optional_field(v, name, |x| x.as_f64().filter(|x| *x > 0.0), "a positive number")
}

/// The field `name` as `read` takes it: `None` where it is missing or null, an error saying it must be `what` where
/// `read` refuses it.
fn optional_field<T>(
    v: &Value,
    name: &str,
    read: impl Fn(&Value) -> Option<T>,
    what: &str,
) -> anyhow::Result<Option<T>> {
    match v.get(name) {
        Some(Value::Null) | None => Ok(None),
        Some(x) => match read(x) {
            Some(x) => Ok(Some(x)),
            None => Err(user_error!("config.json field {name:?} is not {what} or null")),
        },
    }
}

/// An id field that may be an integer, a list of integers or null.
pub(crate) fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}

/// The rescaling `r` (a `rope_scaling` or `rope_parameters` object) describes; `config` is the whole config.json,
/// where LongRoPE's context lengths may sit instead.
fn parse_rope_scaling(r: Option<&Value>, config: &Value) -> anyhow::Result<RopeScaling> {
    let Some(r) = r else {
        return Ok(RopeScaling::None);
    };
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(Value::as_str).unwrap_or("default");
    // Phi-3's first releases call LongRoPE `su`; transformers reads both names (and Phi-3's `yarn`) as LongRoPE.
    let kind = if matches!(kind, "su" | "yarn") && r.get("short_factor").is_some() { "longrope" } else { kind };
    let num = |name: &str| -> anyhow::Result<f64> {
        r.get(name)
            .and_then(Value::as_f64)
            .ok_or_else(|| user_error!("config.json rope scaling {kind:?} needs the number {name:?}"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        // A fixed alpha makes Hunyuan's "dynamic" scaling static, as transformers reads it.
        "dynamic" if r.get("alpha").is_some_and(|a| !a.is_null()) => {
            let alpha = num("alpha")?;
            if alpha.is_nan() || alpha <= 0.0 {
                return Err(user_error!("config.json rope scaling \"dynamic\": alpha must be above 0, got {alpha}"));
            }
            Ok(RopeScaling::NtkAlpha { alpha })
        }
        "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        "yarn" => {
            let original = pretraining_context(r, config, kind)?;
            let factor = match r.get("factor").and_then(Value::as_f64) {
                Some(f) => f,
                None => config.get("max_position_embeddings").and_then(Value::as_f64).unwrap_or(original) / original,
            };
            // As transformers: 0.1 ln(factor) + 1 (scaled by `mscale`, over `mscale_all_dim`'s, where both are
            // given) unless `attention_factor` says otherwise; a zero or missing beta takes its default.
            let mscale = |m: f64| if factor <= 1.0 { 1.0 } else { 0.1 * m * factor.ln() + 1.0 };
            let nonzero = |name: &str| r.get(name).and_then(Value::as_f64).filter(|x| *x != 0.0);
            let attention_factor = match (num("attention_factor").ok(), nonzero("mscale"), nonzero("mscale_all_dim")) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) => mscale(m) / mscale(all),
                _ => mscale(1.0),
            };
            Ok(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: nonzero("beta_fast").unwrap_or(32.0),
                beta_slow: nonzero("beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: r.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            })
        }
        "longrope" => {
            let factors = |name: &str| -> anyhow::Result<Vec<f64>> {
                r.get(name).and_then(Value::as_array).and_then(|a| a.iter().map(Value::as_f64).collect()).ok_or_else(
                    || user_error!("config.json rope scaling \"longrope\" needs the list of numbers {name:?}"),
                )
            };
            let original = pretraining_context(r, config, kind)?;
            // As transformers: without a `factor`, the ratio of the context lengths; without an `attention_factor`,
            // sqrt(1 + ln(factor) / ln(original)) where the context was extended.
            let factor = r.get("factor").and_then(Value::as_f64).unwrap_or_else(|| {
                config.get("max_position_embeddings").and_then(Value::as_f64).unwrap_or(original) / original
            });
            let attention_factor = match r.get("attention_factor").and_then(Value::as_f64) {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / original.ln()).sqrt(),
            };
            Ok(RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original as i64,
                attention_factor,
            })
        }
        other => Err(user_error!(
            "config.json rope scaling type {other:?} is not supported (default, linear, llama3, yarn, longrope)"
        )),
    }
}

/// The context length a rescaled rotary embedding was pre-trained with, where transformers looks for it: the
/// config's own `original_max_position_embeddings` (Phi-3 keeps it there), the rescaling's, else
/// `max_position_embeddings`.
fn pretraining_context(r: &Value, config: &Value, kind: &str) -> anyhow::Result<f64> {
    let field = "original_max_position_embeddings";
    config
        .get(field)
        .or_else(|| r.get(field))
        .or_else(|| config.get("max_position_embeddings"))
        .and_then(Value::as_f64)
        .filter(|x| *x >= 1.0)
        .ok_or_else(|| user_error!("config.json rope scaling {kind:?} needs the number {field:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small config.json of `model_type` (vocabulary 10, hidden 8, MLP 16, two heads) with `fields` added, each
    /// after a comma.
    fn small(model_type: &str, fields: &str) -> anyhow::Result<ModelConfig> {
        ModelConfig::from_json_str(&format!(
            r#"{{"model_type":"{model_type}","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_attention_heads":2{fields}}}"#
        ))
    }

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
        assert_eq!(c.rope.theta, 500000.0);
        assert_eq!(c.head_dim, 4);
        assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(c.sliding_rope, None);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert!(!c.tie_word_embeddings);
    }

    /// EXAONE 4's layers: three in four within the window with RoPE and the fourth global without it, by default or
    /// as `sliding_window_pattern` says (a number or L/G letters); every layer full with RoPE under a null window;
    /// `layer_types` where given, the window's setting still deciding RoPE, as in transformers.
    #[test]
    fn exaone4_lays_out_its_sliding_and_nope_layers() {
        let config = |extra: &str| small("exaone4", &format!(r#","num_hidden_layers":5{extra}"#));
        let c = config("").unwrap();
        assert_eq!((c.architecture, c.sliding_window, c.rms_norm_eps), (Architecture::Exaone4, Some(4096), 1e-5));
        assert_eq!(c.sliding_layers, [true, true, true, false, true]);
        assert_eq!(c.rope_layers, c.sliding_layers);
        assert!(!c.tie_word_embeddings);
        let c = config(r#","sliding_window":8,"sliding_window_pattern":"LG""#).unwrap();
        assert_eq!((c.sliding_window, &c.sliding_layers[..]), (Some(8), &[true, false, true, false, true][..]));
        let c = config(r#","sliding_window_pattern":2"#).unwrap();
        assert_eq!(c.sliding_layers, [true, false, true, false, true]);
        let c = config(r#","sliding_window":null"#).unwrap();
        assert_eq!((c.sliding_window, &c.rope_layers[..]), (None, &[true; 5][..]));
        let all_full =
            r#","layer_types":["full_attention","full_attention","full_attention","full_attention","full_attention"]"#;
        assert_eq!(config(all_full).unwrap().rope_layers, [false; 5], "a window set: no layer takes RoPE");
        let err = config(r#","sliding_window_pattern":"LLX""#).unwrap_err();
        assert!(err.to_string().contains("letters L (sliding) and G (global)"), "{err}");
    }

    /// gpt-oss takes its class defaults: YaRN (untruncated) at a base of 150000, a 128-token window on every other
    /// layer from the first, biased attention, untied embeddings, eps 1e-5, and a biased router over experts with
    /// the clamped SwiGLU; its MXFP4 experts are read, another quantization is refused in one line.
    #[test]
    fn gpt_oss_takes_its_class_defaults_and_refuses_quantized_experts() {
        let config = |extra: &str| {
            let fields = r#","num_hidden_layers":3,"num_key_value_heads":1,"head_dim":4,"num_local_experts":4"#;
            small("gpt_oss", &format!(r#"{fields},"num_experts_per_tok":2{extra}"#))
        };
        let c = config("").unwrap();
        assert_eq!(c.architecture, Architecture::GptOss);
        assert_eq!(c.rope.theta, 150000.0);
        assert!(matches!(c.rope.scaling, RopeScaling::Yarn { factor, truncate: false, .. } if factor == 32.0));
        assert_eq!((c.sliding_window, &c.sliding_layers[..]), (Some(128), &[true, false, true][..]));
        assert!(c.qkv_bias && c.o_bias && !c.tie_word_embeddings && c.rms_norm_eps == 1e-5);
        let moe = c.moe.unwrap();
        assert_eq!((moe.experts, moe.experts_per_token, moe.routing), (4, 2, Routing::TopKThenSoftmax));
        assert!(moe.router_bias && moe.names == ExpertNames::GptOss);
        assert_eq!(moe.swiglu, Some(ClampedSwiglu { alpha: 1.702, limit: 7.0 }));
        assert!(config(r#","quantization_config":{"quant_method":"mxfp4"}"#).is_ok(), "dequantized on loading");
        let err = config(r#","quantization_config":{"quant_method":"awq"}"#).unwrap_err();
        assert!(err.to_string().contains("quantization_config (awq): quantized checkpoints are not supported"));
    }

    /// Hunyuan's `"dynamic"` scaling with an `alpha` is NTK-alpha, a fixed stretch of the base; without one,
    /// dynamic scaling (which depends on each sequence's length) is refused.
    #[test]
    fn hunyuan_reads_ntk_alpha() {
        let config =
            |rope: &str| small("hunyuan_v1_dense", &format!(r#","num_hidden_layers":1,"rope_scaling":{rope}"#));
        let c = config(r#"{"type":"dynamic","alpha":1000.0,"factor":1.0}"#).unwrap();
        assert_eq!(
            (c.architecture, c.rope.scaling.clone()),
            (Architecture::Hunyuan, RopeScaling::NtkAlpha { alpha: 1000.0 })
        );
        assert!(!c.tie_word_embeddings && c.rms_norm_eps == 1e-5);
        assert!(config(r#"{"type":"dynamic","factor":2.0}"#).is_err());
    }

    /// StarCoder2's defaults: biases everywhere (`use_bias`), GELU, tied embeddings, its LayerNorms' eps read from
    /// `norm_epsilon` (not `rms_norm_eps`), and no window unless one is set, then on every layer.
    #[test]
    fn starcoder2_takes_its_class_defaults() {
        let c = small("starcoder2", r#","num_hidden_layers":2,"rms_norm_eps":1e-6"#).unwrap();
        assert_eq!(
            (c.architecture, c.activation, c.rms_norm_eps),
            (Architecture::Starcoder2, Activation::GeluTanh, 1e-5)
        );
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias && c.tie_word_embeddings && c.sliding_window.is_none());
        let c = small("starcoder2", r#","num_hidden_layers":2,"use_bias":false,"sliding_window":8"#).unwrap();
        assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias);
        assert_eq!((c.sliding_window, &c.sliding_layers[..]), (Some(8), &[true, true][..]));
    }

    /// Cohere (Command R, R+): Cohere 2's parallel blocks with the rotary embedding on adjacent pairs in every layer
    /// and no window, its optional per-head q/k norms under `use_qk_norm`, tied embeddings, the logits times
    /// `logit_scale`.
    #[test]
    fn cohere_takes_its_class_defaults() {
        let c = small("cohere", r#","num_hidden_layers":3,"layer_norm_eps":1e-4"#).unwrap();
        assert_eq!((c.architecture, c.head_dim, c.rms_norm_eps), (Architecture::Cohere, 4, 1e-4));
        assert_eq!((c.rotary_pairs, &c.rope_layers[..]), (RotaryPairs::Adjacent, &[true; 3][..]));
        assert_eq!((c.sliding_window, c.logits_divisor, c.tie_word_embeddings), (None, Some(16.0), true));
        assert!(!c.qk_norm && !c.qkv_bias && !c.o_bias && !c.lm_head_bias);
        let c = small("cohere", r#","num_hidden_layers":1,"use_qk_norm":true,"attention_bias":true"#).unwrap();
        assert!(c.qk_norm && c.qkv_bias && c.o_bias && !c.mlp_bias);
    }

    /// Phi-1 to Phi-2: biases on every projection and on `lm_head`, half of each head rotary unless
    /// `partial_rotary_factor` says otherwise (Phi-2's 0.4), `gelu_new` (the tanh GELU), LayerNorms at
    /// `layer_norm_eps`, untied, and the q/k LayerNorms only under `qk_layernorm`.
    #[test]
    fn phi_takes_its_class_defaults() {
        let c = small("phi", r#","num_hidden_layers":1,"head_dim":20,"rms_norm_eps":1e-6"#).unwrap();
        assert_eq!((c.architecture, c.rotary_dim, c.rms_norm_eps), (Architecture::Phi, 10, 1e-5));
        assert_eq!((c.activation, c.rotary_pairs), (Activation::GeluTanh, RotaryPairs::Halves));
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias && c.lm_head_bias && !c.tie_word_embeddings && !c.qk_norm);
        let c = small(
            "phi",
            r#","num_hidden_layers":1,"head_dim":20,"partial_rotary_factor":0.4,"hidden_act":"gelu","qk_layernorm":true"#,
        )
        .unwrap();
        assert_eq!((c.rotary_dim, c.activation, c.qk_norm), (8, Activation::Gelu, true));
    }

    /// GPT-NeoX as Pythia's configs write it: `rotary_pct` (a quarter by default) and `rotary_emb_base`, exact GELU,
    /// biases everywhere (`attention_bias` may drop attention's), untied, attention and the MLP side by side unless
    /// `use_parallel_residual` is false, and its own module names.
    #[test]
    fn gpt_neox_reads_pythias_config() {
        let c = small("gpt_neox", r#","num_hidden_layers":1,"head_dim":16,"rotary_emb_base":20000"#).unwrap();
        assert_eq!((c.architecture, c.rotary_dim, c.rope.theta), (Architecture::GptNeoX, 4, 20000.0));
        assert_eq!((c.activation, c.rms_norm_eps, c.rotary_pairs), (Activation::Gelu, 1e-5, RotaryPairs::Halves));
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias && !c.lm_head_bias && !c.tie_word_embeddings);
        assert!(c.parallel_blocks);
        assert_eq!(c.architecture.module_names().layers, "gpt_neox.layers");
        let fields = r#","num_hidden_layers":1,"rotary_pct":0.5,"use_parallel_residual":false,"attention_bias":false"#;
        let c = small("gpt_neox", fields).unwrap();
        assert_eq!((c.rotary_dim, c.parallel_blocks, c.qkv_bias, c.o_bias, c.mlp_bias), (2, false, false, false, true));
    }

    /// Gemma 1: the tanh GELU for its configs' legacy `gelu`, 256-wide heads, tied, the scaled embedding, Gemma's
    /// norms, SDPA's own scale (no `query_pre_attn_scalar`). OLMo 1: untied, its `clip_qkv` read (and refused in
    /// any other family).
    #[test]
    fn gemma_and_olmo_take_their_class_defaults() {
        let c = small("gemma", r#","num_hidden_layers":1,"hidden_act":"gelu""#).unwrap();
        assert_eq!((c.architecture, c.activation, c.head_dim), (Architecture::Gemma, Activation::GeluTanh, 256));
        assert_eq!((c.embedding_scale, c.attention_scale), (Some(EmbeddingScale::Rounded(8f64.sqrt())), None));
        assert!(c.tie_word_embeddings && c.attention_softcap.is_none() && c.final_logit_softcap.is_none());
        let c = small("olmo", r#","num_hidden_layers":1,"clip_qkv":8.0"#).unwrap();
        assert_eq!((c.architecture, c.clip_qkv, c.tie_word_embeddings), (Architecture::Olmo, Some(8.0), false));
        assert_eq!(small("olmo", r#","num_hidden_layers":1,"clip_qkv":null"#).unwrap().clip_qkv, None);
        let err = small("llama", r#","num_hidden_layers":1,"clip_qkv":8.0"#).unwrap_err().to_string();
        assert!(err.contains("clip_qkv is supported in OLMo"), "{err}");
    }

    /// Helium's class defaults: 128-wide heads, norms at 1e-8, a base of 100000, adjacent rotary pairs, untied, and
    /// `attention_bias` on q, k and v but never on the output projection.
    #[test]
    fn helium_takes_its_class_defaults() {
        let c = small("helium", r#","num_hidden_layers":1,"attention_bias":true"#).unwrap();
        assert_eq!((c.architecture, c.head_dim, c.rms_norm_eps), (Architecture::Helium, 128, 1e-8));
        assert_eq!((c.rope.theta, c.rotary_pairs), (100000.0, RotaryPairs::Adjacent));
        assert!(c.qkv_bias && !c.o_bias && !c.tie_word_embeddings);
    }

    /// EXAONE 3's and InternLM3's own field names, read as Llama's: `num_layers`, `layer_norm_epsilon`,
    /// `activation_function`; `qkv_bias` and `bias`. EXAONE's base defaults to 500000 and its norms' epsilon to 1e-5.
    #[test]
    fn exaone_and_internlm3_read_their_own_field_names() {
        let exaone = r#"{"model_type":"exaone","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_attention_heads":2,"num_layers":3,"activation_function":"silu"}"#;
        let c = ModelConfig::from_json_str(exaone).unwrap();
        assert_eq!((c.architecture, c.num_hidden_layers, c.rms_norm_eps), (Architecture::Exaone, 3, 1e-5));
        assert_eq!((c.rope.theta, c.activation, c.tie_word_embeddings), (500000.0, Activation::Silu, false));
        let c = small("exaone", r#","num_layers":1,"layer_norm_epsilon":1e-6"#).unwrap();
        assert_eq!(c.rms_norm_eps, 1e-6);
        let c = small("internlm3", r#","num_hidden_layers":1,"qkv_bias":true,"bias":true"#).unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias);
        let c = small("internlm3", r#","num_hidden_layers":1,"qkv_bias":false,"bias":false"#).unwrap();
        assert!(!c.qkv_bias && !c.o_bias && !c.mlp_bias);
    }

    /// nanochat: relu^2 (its default, and no other activation), untied, the rotary embedding turned the other way,
    /// the embedding normalised, the final logits capped at `final_logit_softcapping`.
    #[test]
    fn nanochat_takes_its_class_defaults() {
        let c = small("nanochat", r#","num_hidden_layers":1,"final_logit_softcapping":15.0"#).unwrap();
        assert_eq!(
            (c.architecture, c.activation, c.rotary_pairs),
            (Architecture::NanoChat, Activation::Relu2, RotaryPairs::HalvesReversed)
        );
        assert!(c.embedding_norm && !c.tie_word_embeddings && !c.mlp_bias && !c.qkv_bias);
        assert_eq!((c.final_logit_softcap, c.attention_softcap), (Some(15.0), None));
        let err = small("nanochat", r#","num_hidden_layers":1,"hidden_act":"silu""#).unwrap_err().to_string();
        assert!(err.contains("(relu2)"), "{err}");
    }

    /// GPT-2's config.json names (`n_embd`, `n_layer`, `n_head`, `n_positions`, `n_inner`, `layer_norm_epsilon`,
    /// `activation_function`) and class defaults; no rotary embedding, learned positions instead; its attention
    /// variants beyond the plain one are refused in one line.
    #[test]
    fn gpt2_reads_its_own_field_names() {
        let gpt2 = |fields: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"gpt2","vocab_size":50257,"n_embd":64,"n_head":4{fields}}}"#
            ))
        };
        let c = gpt2("").unwrap();
        assert_eq!(
            (c.architecture, c.hidden_size, c.intermediate_size, c.num_hidden_layers),
            (Architecture::Gpt2, 64, 256, 12)
        );
        assert_eq!((c.head_dim, c.learned_positions, c.rms_norm_eps), (16, Some(1024), 1e-5));
        assert_eq!(
            (c.activation, c.attention_scale, &c.rope_layers[..2]),
            (Activation::GeluTanh, None, &[false, false][..])
        );
        assert!(c.qkv_bias && c.o_bias && c.mlp_bias && c.tie_word_embeddings && c.architecture.conv1d());
        let c = gpt2(r#","n_layer":2,"n_inner":100,"n_positions":512,"layer_norm_epsilon":1e-4,"activation_function":"gelu","scale_attn_weights":false"#)
            .unwrap();
        assert_eq!((c.num_hidden_layers, c.intermediate_size, c.learned_positions), (2, 100, Some(512)));
        assert_eq!((c.rms_norm_eps, c.activation, c.attention_scale), (1e-4, Activation::Gelu, Some(1.0)));
        for field in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"] {
            let err = gpt2(&format!(r#","{field}":true"#)).unwrap_err().to_string();
            assert!(err.contains(&format!("{field}=true")) && err.contains("not supported"), "{err}");
        }
    }

    /// StableLM 2: LayerNorms at `layer_norm_eps`, the rotary embedding on a quarter of each head by default, q/k/v
    /// biases only under `use_qkv_bias`; the 12B's per-head q/k LayerNorms and parallel blocks only where
    /// config.json turns them on (both off in the class).
    #[test]
    fn stablelm_takes_its_class_defaults() {
        let c = small("stablelm", r#","num_hidden_layers":1,"head_dim":16,"layer_norm_eps":1e-4"#).unwrap();
        assert_eq!((c.architecture, c.rotary_dim, c.rms_norm_eps), (Architecture::StableLm, 4, 1e-4));
        assert!(!c.qkv_bias && !c.o_bias && !c.tie_word_embeddings && !c.qk_norm && !c.parallel_blocks);
        assert!(small("stablelm", r#","num_hidden_layers":1,"head_dim":16,"use_qkv_bias":true"#).unwrap().qkv_bias);
        let fields = r#","num_hidden_layers":1,"head_dim":16,"qk_layernorm":true,"use_parallel_residual":true"#;
        let c = small("stablelm", fields).unwrap();
        assert!(c.qk_norm && c.parallel_blocks);
    }

    /// Nemotron: relu^2 by default (and no other activation), half of each head rotary, eps from `norm_eps`.
    #[test]
    fn nemotron_takes_its_class_defaults() {
        let c = small("nemotron", r#","num_hidden_layers":1,"head_dim":16,"norm_eps":1e-4"#).unwrap();
        assert_eq!((c.architecture, c.activation), (Architecture::Nemotron, Activation::Relu2));
        assert_eq!((c.rotary_dim, c.rms_norm_eps, c.tie_word_embeddings), (8, 1e-4, false));
        let err = small("nemotron", r#","num_hidden_layers":1,"head_dim":16,"hidden_act":"silu""#).unwrap_err();
        assert!(err.to_string().contains("(relu2)"), "{err}");
    }

    /// Cohere 2: three layers in four sliding by default, RoPE on adjacent pairs of the sliding layers alone (none
    /// under a null window), eps from `layer_norm_eps`, `head_dim` derived whatever config.json says, and the logits
    /// multiplied by `logit_scale` (1/16 by default).
    #[test]
    fn cohere2_lays_out_its_layers_and_scales_its_logits() {
        let c = small("cohere2", r#","num_hidden_layers":5,"head_dim":99,"layer_norm_eps":1e-4"#).unwrap();
        assert_eq!((c.architecture, c.head_dim, c.rms_norm_eps), (Architecture::Cohere2, 4, 1e-4));
        assert_eq!((c.sliding_window, &c.sliding_layers[..]), (Some(4096), &[true, true, true, false, true][..]));
        assert_eq!((c.rope_layers, c.rotary_pairs), (c.sliding_layers.clone(), RotaryPairs::Adjacent));
        assert_eq!((c.logits_divisor, c.tie_word_embeddings), (Some(16.0), true));
        let c = small("cohere2", r#","num_hidden_layers":2,"sliding_window":null,"logit_scale":1.0"#).unwrap();
        assert_eq!((c.sliding_window, &c.rope_layers[..], c.logits_divisor), (None, &[false, false][..], None));
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
        assert!(!c.tie_word_embeddings && !c.qkv_bias && !c.o_bias);
        assert_eq!(c.sliding_window, None);
        assert_eq!(config("4096").unwrap().sliding_window, Some(4096));
        assert_eq!(config("4096").unwrap().sliding_layers, [true]);
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

    /// Gemma 3 as its hub configs spell it in transformers 4: five sliding layers in six, the local base frequency
    /// for those, the scaling for the full ones only, and the query scale.
    #[test]
    fn gemma3_reads_its_layer_pattern_and_two_rotary_embeddings() {
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"gemma3_text","vocab_size":10,"hidden_size":16,"intermediate_size":16,
            "num_hidden_layers":7,"num_attention_heads":2,"num_key_value_heads":1,"head_dim":8,
            "query_pre_attn_scalar":64,"sliding_window":512,"sliding_window_pattern":6,"rope_theta":1000000.0,
            "rope_local_base_freq":10000.0,"rope_scaling":{"rope_type":"linear","factor":8.0},
            "final_logit_softcapping":null,"hidden_activation":"gelu_pytorch_tanh"}"#,
        )
        .unwrap();
        assert_eq!(c.architecture, Architecture::Gemma3);
        assert_eq!(c.activation, Activation::GeluTanh);
        assert_eq!(c.sliding_window, Some(512));
        assert_eq!(c.sliding_layers, [true, true, true, true, true, false, true]);
        assert_eq!((c.layer_window(0), c.layer_window(5)), (Some(512), None));
        assert_eq!(c.rope, Rope { theta: 1e6, scaling: RopeScaling::Linear { factor: 8.0 } });
        assert_eq!(c.sliding_rope, Some(Rope { theta: 1e4, scaling: RopeScaling::None }));
        assert_eq!(c.attention_scale, Some(0.125));
        assert_eq!(c.embedding_scale, Some(EmbeddingScale::Rounded(4.0)));
        assert!(c.tie_word_embeddings);
        let refused = |text: &str, needle: &str| {
            let err = ModelConfig::from_json_str(text).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
            assert_eq!(crate::error::exit_code(&err), 2);
        };
        refused(r#"{"model_type":"gemma3"}"#, "use a text-only Gemma 3 checkpoint (model_type gemma3_text");
        refused(
            r#"{"model_type":"gemma3_text","final_logit_softcapping":-1}"#,
            "\"final_logit_softcapping\" is not a positive number or null",
        );
    }

    /// Qwen2's `use_sliding_window`: the layers from `max_window_layers` on slide, as do those `layer_types` names;
    /// without the switch there is no window, and a sliding layer with no window is refused.
    #[test]
    fn qwen2_slides_from_max_window_layers_under_use_sliding_window() {
        let config = |extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"qwen2","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":3,"num_attention_heads":2,"sliding_window":32,"max_window_layers":1{extra}}}"#
            ))
        };
        let off = config("").unwrap();
        assert_eq!((off.sliding_window, off.sliding_layers), (None, vec![false; 3]));
        let on = config(r#","use_sliding_window":true"#).unwrap();
        assert_eq!((on.sliding_window, on.sliding_layers), (Some(32), vec![false, true, true]));
        let listed = config(
            r#","use_sliding_window":true,"layer_types":["sliding_attention","full_attention","full_attention"]"#,
        )
        .unwrap();
        assert_eq!(listed.sliding_layers, [true, false, false]);
        let err = config(r#","layer_types":["sliding_attention","full_attention","full_attention"]"#).unwrap_err();
        assert!(err.to_string().contains("no sliding_window applies"), "{err}");
        let err = config(r#","layer_types":["full_attention"]"#).unwrap_err();
        assert!(err.to_string().contains("layer_types: give one"), "{err}");
    }

    /// YaRN as Qwen3's long-context configs spell it, its attention factor by default and from DeepSeek's mscales;
    /// and OLMo 3's layout: three sliding layers in four, the rescaling on the full ones only.
    #[test]
    fn yarn_reads_its_defaults_and_olmo3_scales_only_its_full_layers() {
        let config = |family: &str, scaling: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"{family}","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":4,"num_attention_heads":2,"max_position_embeddings":131072,
                "rope_theta":1000000.0,"rope_scaling":{scaling}}}"#
            ))
            .unwrap()
        };
        let qwen = config("qwen3", r#"{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}"#);
        let expected = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32768.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 0.1 * 4f64.ln() + 1.0,
            truncate: true,
        };
        assert_eq!(qwen.rope.scaling, expected);
        let deepseek = config(
            "qwen3",
            r#"{"type":"yarn","factor":40,"original_max_position_embeddings":4096,"mscale":1.0,"mscale_all_dim":1.0}"#,
        );
        assert!(matches!(deepseek.rope.scaling, RopeScaling::Yarn { attention_factor, .. } if attention_factor == 1.0));
        let olmo = config("olmo3", r#"{"rope_type":"yarn","factor":8.0,"original_max_position_embeddings":8192}"#);
        assert_eq!(olmo.sliding_layers, [true, true, true, false]);
        assert_eq!(olmo.sliding_window, Some(4096));
        assert!(matches!(olmo.rope.scaling, RopeScaling::Yarn { factor, .. } if factor == 8.0));
        assert_eq!(olmo.sliding_rope, Some(Rope { theta: 1e6, scaling: RopeScaling::None }));
    }

    #[test]
    fn ernie_takes_its_class_defaults_biases_and_adjacent_rotary_pairs() {
        let config = |extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"ernie4_5","vocab_size":10,"hidden_size":16,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2{extra}}}"#
            ))
            .unwrap()
        };
        let c = config("");
        assert_eq!(
            (c.architecture, c.rotary_pairs, c.head_dim, c.rms_norm_eps),
            (Architecture::Llama, RotaryPairs::AdjacentF32, 128, 1e-5)
        );
        assert!(c.tie_word_embeddings && !c.qkv_bias && !c.o_bias && !c.mlp_bias);
        let biased = config(r#","use_bias":true,"head_dim":null"#);
        assert!(biased.qkv_bias && biased.o_bias && biased.mlp_bias);
        assert_eq!(biased.head_dim, 8);
        let llama = ModelConfig::from_json_str(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":16,"intermediate_size":16,"num_hidden_layers":2,
            "num_attention_heads":2,"use_bias":true}"#,
        )
        .unwrap();
        assert_eq!((llama.rotary_pairs, llama.mlp_bias, llama.head_dim), (RotaryPairs::Halves, false, 8));
    }

    #[test]
    fn glm_turns_half_of_each_head_on_adjacent_pairs_with_biased_qkv() {
        for (model_type, architecture) in [("glm", Architecture::Glm), ("glm4", Architecture::Glm4)] {
            let c = ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"{model_type}","vocab_size":10,"hidden_size":16,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2,"head_dim":8}}"#
            ))
            .unwrap();
            assert_eq!((c.architecture, c.rotary_pairs, c.rotary_dim), (architecture, RotaryPairs::Adjacent, 4));
            assert!(c.qkv_bias && !c.o_bias && !c.tie_word_embeddings, "{model_type}");
        }
    }

    #[test]
    fn granite_reads_its_multipliers_and_scales_attention_by_its_own() {
        let config = |extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"granite","vocab_size":10,"hidden_size":16,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2{extra}}}"#
            ))
        };
        let c = config(
            r#","embedding_multiplier":12.0,"residual_multiplier":0.22,"attention_multiplier":0.0078125,"logits_scaling":8.0"#,
        )
        .unwrap();
        assert_eq!((c.architecture, c.embedding_scale), (Architecture::Llama, Some(EmbeddingScale::Exact(12.0))));
        assert_eq!((c.residual_scale, c.attention_scale, c.logits_divisor), (Some(0.22), Some(0.0078125), Some(8.0)));
        // transformers' defaults: every multiplier 1, so attention is scaled by 1, not 1/sqrt(head_dim).
        let plain = config("").unwrap();
        assert_eq!((plain.embedding_scale, plain.residual_scale, plain.logits_divisor), (None, None, None));
        assert_eq!(plain.attention_scale, Some(1.0));
        // Other families ignore the fields.
        let llama = ModelConfig::from_json_str(
            r#"{"model_type":"llama","vocab_size":10,"hidden_size":16,"intermediate_size":16,"num_hidden_layers":2,
            "num_attention_heads":2,"logits_scaling":8.0}"#,
        )
        .unwrap();
        assert_eq!((llama.attention_scale, llama.logits_divisor), (None, None));
        let err = config(r#","logits_scaling":0"#).unwrap_err();
        assert!(err.to_string().contains("\"logits_scaling\" is not a positive number"), "{err}");
    }

    #[test]
    fn arcee_squares_relu_on_an_ungated_mlp_and_no_other_family_does() {
        let config = |model_type: &str, extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"{model_type}","vocab_size":10,"hidden_size":16,"intermediate_size":16,
                "num_hidden_layers":2,"num_attention_heads":2{extra}}}"#
            ))
        };
        let arcee = config("arcee", "").unwrap();
        assert_eq!((arcee.architecture, arcee.activation), (Architecture::Llama, Activation::Relu2));
        let err = config("arcee", r#","hidden_act":"silu""#).unwrap_err();
        assert!(err.to_string().contains("activation \"silu\" is not supported here (relu2)"), "{err}");
        let err = config("llama", r#","hidden_act":"relu2""#).unwrap_err();
        assert!(err.to_string().contains("(silu, gelu, gelu_new, gelu_pytorch_tanh)"), "{err}");
    }

    #[test]
    fn gemma2_caps_by_default_and_slides_every_other_layer() {
        let config = |extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"gemma2","vocab_size":10,"hidden_size":16,"intermediate_size":16,
                "num_hidden_layers":4,"num_attention_heads":2,"head_dim":8{extra}}}"#
            ))
            .unwrap()
        };
        let c = config("");
        assert_eq!(c.architecture, Architecture::Gemma2);
        assert_eq!((c.attention_softcap, c.final_logit_softcap), (Some(50.0), Some(30.0)));
        assert_eq!((c.sliding_window, c.sliding_layers.clone()), (Some(4096), vec![true, false, true, false]));
        assert_eq!(
            (c.attention_scale, c.embedding_scale),
            (Some(256f64.powf(-0.5)), Some(EmbeddingScale::Rounded(4.0)))
        );
        assert!(c.tie_word_embeddings && c.sliding_rope.is_none() && c.activation == Activation::GeluTanh);
        let uncapped = config(r#","attn_logit_softcapping":null,"final_logit_softcapping":null"#);
        assert_eq!((uncapped.attention_softcap, uncapped.final_logit_softcap), (None, None));
        assert_eq!(config(r#","final_logit_softcapping":12.5"#).final_logit_softcap, Some(12.5));
    }

    #[test]
    fn mixtures_read_their_experts_sparse_layers_and_names() {
        let config = |model_type: &str, extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"model_type":"{model_type}","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":4,"num_attention_heads":2,"num_experts_per_tok":2{extra}}}"#
            ))
        };
        // The hub's Qwen3-MoE spelling (num_experts), dense layers from mlp_only_layers and decoder_sparse_step.
        let qwen3 = config(
            "qwen3_moe",
            r#","num_experts":8,"moe_intermediate_size":4,"norm_topk_prob":true,"mlp_only_layers":[0],"decoder_sparse_step":2"#,
        )
        .unwrap();
        let moe = qwen3.moe.as_ref().unwrap();
        assert_eq!((moe.experts, moe.experts_per_token, moe.expert_size), (8, 2, 4));
        assert_eq!(moe.sparse_layers, [false, true, false, true]);
        assert_eq!(moe.routing, Routing::SoftmaxThenTopK { normalize: true, f32_weights: false });
        assert!(moe.shared_expert_size.is_none());
        assert_eq!(
            (qwen3.architecture, moe.names, qwen3.tie_word_embeddings),
            (Architecture::Qwen3, ExpertNames::Qwen, false)
        );
        // transformers 5's spelling (num_local_experts); Qwen2-MoE's shared expert and q/k/v biases.
        let qwen2 = config(
            "qwen2_moe",
            r#","num_local_experts":4,"moe_intermediate_size":4,"shared_expert_intermediate_size":12"#,
        )
        .unwrap();
        let moe = qwen2.moe.as_ref().unwrap();
        assert_eq!((moe.experts, moe.shared_expert_size), (4, Some(12)));
        assert_eq!(moe.routing, Routing::SoftmaxThenTopK { normalize: false, f32_weights: false });
        assert!(qwen2.qkv_bias && !qwen2.o_bias);
        // Mixtral: experts as wide as intermediate_size, always renormalised, weights kept in f32.
        let mixtral = config("mixtral", r#","num_local_experts":4"#).unwrap();
        let moe = mixtral.moe.as_ref().unwrap();
        assert_eq!((moe.expert_size, moe.names, moe.sparse_layers.clone()), (16, ExpertNames::Mixtral, vec![true; 4]));
        assert_eq!(moe.routing, Routing::SoftmaxThenTopK { normalize: true, f32_weights: true });
        let granite = config("granitemoe", r#","num_local_experts":4"#).unwrap();
        let moe = granite.moe.as_ref().unwrap();
        assert_eq!((moe.routing, moe.names, moe.expert_size), (Routing::TopKThenSoftmax, ExpertNames::Granite, 16));
        assert_eq!(config("olmoe", r#","num_experts":4"#).unwrap().architecture, Architecture::Olmoe);
        assert!(config("qwen2", "").unwrap().moe.is_none());
        for (model_type, extra, message) in [
            ("mixtral", r#","num_local_experts":1"#, "num_experts_per_tok (2) is more than the 1 experts"),
            ("mixtral", r#","num_local_experts":4,"router_jitter_noise":0.1"#, "router_jitter_noise is not supported"),
            ("qwen3_moe", r#","num_experts":4"#, "\"moe_intermediate_size\" is missing"),
            ("olmoe", r#","num_experts":4,"clip_qkv":8"#, "clip_qkv is supported in OLMo (model_type olmo) only"),
        ] {
            let err = config(model_type, extra).unwrap_err();
            assert!(err.to_string().contains(message), "{model_type}: {err}");
            assert_eq!(crate::error::exit_code(&err), 2);
        }
    }

    #[test]
    fn rejects_unknown_model_type() {
        let err = ModelConfig::from_json_str(r#"{"model_type":"bloom"}"#).unwrap_err();
        assert!(err.to_string().contains("bloom"), "{err}");
        assert_eq!(crate::error::exit_code(&err), 2);
    }
}
