//! The decoder's building blocks, one struct per Hugging Face module, each loading its weights by their HF names
//! so that the var store can be saved back as a checkpoint transformers reads.

use std::cell::RefCell;
use std::collections::HashSet;

use tch::{nn, Device, Kind, Tensor};

use super::config::{Activation, Architecture, ModelConfig, Rope, RopeScaling, RotaryPairs};
use super::lora::LoraAdapter;
use super::moe::SparseMoe;
use super::weights::WeightFiles;
use super::Ctx;
use crate::user_error;

/// Reads tensors from a checkpoint into a var store, checking every shape against the config.
pub(crate) struct Loader<'a> {
    pub files: &'a WeightFiles,
    pub root: nn::Path<'a>,
    pub kind: Kind,
    pub device: Device,
    pub used: RefCell<HashSet<String>>,
    /// Projections are GPT-2 `Conv1D`s, stored `[in, out]`.
    pub conv1d: bool,
    /// How older checkpoints name the tensors ([`super::config::ModuleNames::stored_as`]).
    pub stored_as: &'static [(&'static str, &'static str)],
}

/// The name `files` store the tensor `name` by: `name`, or where only that is stored, `name` with the
/// `stored_as` fragments replaced in turn.
pub(crate) fn stored_name(files: &WeightFiles, name: &str, stored_as: &[(&str, &str)]) -> String {
    if stored_as.is_empty() || files.contains(name) {
        return name.to_string();
    }
    let older = stored_as.iter().fold(name.to_string(), |n, (ours, theirs)| n.replacen(ours, theirs, 1));
    if files.contains(&older) {
        older
    } else {
        name.to_string()
    }
}

impl Loader<'_> {
    /// Load `name` (an HF dotted name) as a trainable variable of the expected `shape`. It is read from the name the
    /// checkpoint stores it by ([`stored_name`]) and kept under `name`, which transformers loads either way.
    pub fn get(&self, name: &str, shape: &[i64]) -> anyhow::Result<Tensor> {
        let stored_as = stored_name(self.files, name, self.stored_as);
        let stored_as = stored_as.as_str();
        let stored = self
            .files
            .shape(stored_as)
            .ok_or_else(|| user_error!("the checkpoint is missing tensor {name:?} (required by config.json)"))?;
        if stored != shape {
            return Err(user_error!(
                "tensor {stored_as:?} has shape {stored:?} in the checkpoint but config.json implies {shape:?}"
            ));
        }
        let t = self.files.tensor(stored_as, self.kind, self.device)?;
        self.used.borrow_mut().insert(stored_as.to_string());
        Ok(self.register(name, t))
    }

    /// [`Loader::get`] for a stack of expert matrices that the checkpoint may store in MXFP4 instead (gpt-oss on the
    /// hub: `{name}_blocks` and `{name}_scales`), dequantized to the model's dtype and kept, trained and saved as
    /// `name` from then on.
    pub fn get_experts(&self, name: &str, shape: &[i64]) -> anyhow::Result<Tensor> {
        let (blocks, scales) = (format!("{name}_blocks"), format!("{name}_scales"));
        if self.files.contains(name) || !self.files.contains(&blocks) {
            return self.get(name, shape);
        }
        let read = |n: &str| self.files.tensor(n, Kind::Uint8, self.device);
        let t = super::weights::dequantize_mxfp4(&read(&blocks)?, &read(&scales)?, self.kind);
        if t.size() != shape {
            return Err(user_error!(
                "tensor {name:?} dequantized from MXFP4 has shape {:?} but config.json implies {shape:?}",
                t.size()
            ));
        }
        self.used.borrow_mut().extend([blocks, scales]);
        Ok(self.register(name, t))
    }

    /// `t` as the trainable variable `name`.
    fn register(&self, name: &str, t: Tensor) -> Tensor {
        let parts: Vec<&str> = name.split('.').collect();
        let mut path = self.root.clone();
        for part in &parts[..parts.len() - 1] {
            path = path.sub(*part);
        }
        path.add(parts[parts.len() - 1], t, true)
    }
}

/// A dense projection `x W^T + b` (GPT-2's `Conv1D`: `x W + b`), with an optional LoRA adapter added to its output.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]` (a `Conv1D`'s: `[in, out]`), HF name `<prefix>.weight`.
    pub weight: Tensor,
    /// `[out]`, HF name `<prefix>.bias`, when the architecture has one.
    pub bias: Option<Tensor>,
    /// The low-rank adapter, when LoRA is attached (see [`super::lora`]).
    pub lora: Option<Box<LoraAdapter>>,
    /// The HF name prefix, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    /// The weight is stored `[in, out]` (a GPT-2 `Conv1D`).
    pub transposed: bool,
}

impl Linear {
    pub(crate) fn load(l: &Loader, name: &str, in_dim: i64, out_dim: i64, bias: bool) -> anyhow::Result<Self> {
        let shape = if l.conv1d { [in_dim, out_dim] } else { [out_dim, in_dim] };
        let weight = l.get(&format!("{name}.weight"), &shape)?;
        let bias = if bias { Some(l.get(&format!("{name}.bias"), &[out_dim])?) } else { None };
        Ok(Linear { weight, bias, lora: None, name: name.to_string(), transposed: l.conv1d })
    }

    /// The weight as `[out, in]`.
    pub fn weight_out_in(&self) -> Tensor {
        self.transposed_view().unwrap_or_else(|| self.weight.shallow_clone())
    }

    /// A Conv1D's weight as an `[out, in]` view, which libtorch's matmul reads in place; `None` for a linear layer,
    /// whose weight is that already.
    fn transposed_view(&self) -> Option<Tensor> {
        self.transposed.then(|| self.weight.tr())
    }

    /// Apply the projection, adapted when an adapter is attached and `ctx.adapters` is set.
    pub fn forward(&self, x: &Tensor, ctx: Ctx) -> Tensor {
        // Every forward pass of every layer comes here: a linear layer's weight is used as it is, with no new handle.
        let view = self.transposed_view();
        let weight = view.as_ref().unwrap_or(&self.weight);
        let y = x.linear(weight, self.bias.as_ref());
        match &self.lora {
            Some(lora) if ctx.adapters => lora.apply(x, y, weight, self.bias.as_ref(), ctx),
            _ => y,
        }
    }
}

/// How a [`Norm`] normalises, and how its weight scales the normalised values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gain {
    /// LayerNorm: centred, divided by the standard deviation, then `w * x + b` (StarCoder2's and StableLM's
    /// `nn.LayerNorm`).
    Layer,
    /// LayerNorm with the gain stored as its offset from 1: `(1 + w) * x + b`, `1 + w` in the model's dtype
    /// (Nemotron's `LayerNorm1P`).
    LayerOnePlus,
    /// LayerNorm without a bias, computed in f32 and rounded after the gain (Cohere's and Cohere 2's; OLMo 1's,
    /// whose gain is 1).
    LayerF32,
    /// `w * x` in the input's dtype, after rounding (Llama's `LlamaRMSNorm`).
    Rounded,
    /// `w * x` in f32, then rounded (OLMo 2's norm).
    F32,
    /// `(1 + w) * x` in f32, then rounded (Gemma's, whose weights are stored as offsets from 1).
    OnePlusF32,
}

/// A layer norm: root-mean-square, computed in f32 like transformers' `LlamaRMSNorm`, in most families; a LayerNorm,
/// which also centres, in StarCoder2, StableLM, Nemotron, Phi, GPT-NeoX and GPT-2 (with a bias) and Cohere (without
/// one).
#[derive(Debug)]
pub struct Norm {
    /// The gain, `[dim]` (Gemma: its offset from 1; Command R+'s q/k norms: `[heads, dim]`, one gain per head).
    /// OLMo 1's norms have none: theirs is a constant 1, no parameter of the model.
    pub weight: Tensor,
    /// StableLM 2 12B's q/k norms: a separate LayerNorm per head, each gain a variable of its own under its own
    /// name (`norms.<i>.weight`, `[dim]`), stacked into `[heads, dim]` at each forward pass so that training reaches
    /// them; `weight` is unused then.
    per_head: Vec<Tensor>,
    /// LayerNorm's bias, shaped as the gain.
    pub bias: Option<Tensor>,
    eps: f64,
    gain: Gain,
}

impl Norm {
    pub(crate) fn load(l: &Loader, name: &str, dim: i64, cfg: &ModelConfig) -> anyhow::Result<Self> {
        Self::load_shaped(l, name, &[dim], cfg)
    }

    /// A norm over the last dimension whose gain (and bias) is `shape`: `[dim]`, or `[heads, dim]` for a gain per
    /// head, broadcast over `[B, T, heads, dim]`.
    pub(crate) fn load_shaped(l: &Loader, name: &str, shape: &[i64], cfg: &ModelConfig) -> anyhow::Result<Self> {
        // Norms without parameters, in f32: a constant gain of 1 (multiplying by it is exact), no variable.
        let unit = |gain, eps| {
            let weight = Tensor::ones(shape, (Kind::Float, l.device));
            Ok(Norm { weight, per_head: Vec::new(), bias: None, eps, gain })
        };
        let gain = match cfg.architecture {
            Architecture::Olmo2 | Architecture::Olmo3 | Architecture::GptOss | Architecture::Helium => Gain::F32,
            Architecture::Gemma | Architecture::Gemma2 | Architecture::Gemma3 => Gain::OnePlusF32,
            // OLMo 1's LayerNorm, at its fixed epsilon.
            Architecture::Olmo => return unit(Gain::LayerF32, 1e-5),
            Architecture::NanoChat => return unit(Gain::F32, cfg.rms_norm_eps),
            Architecture::Starcoder2
            | Architecture::StableLm
            | Architecture::Phi
            | Architecture::GptNeoX
            | Architecture::Gpt2 => Gain::Layer,
            Architecture::Nemotron => Gain::LayerOnePlus,
            Architecture::Cohere2 | Architecture::Cohere => Gain::LayerF32,
            _ => Gain::Rounded,
        };
        let bias = match gain {
            Gain::Layer | Gain::LayerOnePlus => Some(l.get(&format!("{name}.bias"), shape)?),
            _ => None,
        };
        let weight = l.get(&format!("{name}.weight"), shape)?;
        Ok(Norm { weight, per_head: Vec::new(), bias, eps: cfg.rms_norm_eps, gain })
    }

    /// A LayerNorm without a bias for each of `heads` heads of `dim`, stored one module per head
    /// (`{name}.norms.<i>.weight`, StableLM's `StableLmLayerNormPerHead`), over `[B, T, heads, dim]`.
    pub(crate) fn load_per_head(
        l: &Loader,
        name: &str,
        heads: i64,
        dim: i64,
        cfg: &ModelConfig,
    ) -> anyhow::Result<Self> {
        let per_head =
            (0..heads).map(|i| l.get(&format!("{name}.norms.{i}.weight"), &[dim])).collect::<Result<_, _>>()?;
        let weight = Tensor::ones([dim], (Kind::Float, l.device));
        Ok(Norm { weight, per_head, bias: None, eps: cfg.rms_norm_eps, gain: Gain::Layer })
    }

    /// Normalise over the last dimension. A LayerNorm runs libtorch's `layer_norm`, as transformers' module does.
    /// RMS runs libtorch's `rms_norm` (one fused kernel where libtorch has one, else its composite): it computes
    /// `x * rsqrt(mean(x^2) + eps)` in f32 and rounds to `x`'s dtype, then the gain multiplies in that dtype, in
    /// transformers' order (bit-equal to the written-out expression on the CPU, f32 and bf16); OLMo 2's, gpt-oss's
    /// and Gemma's gains multiply before the rounding instead.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let dim = x.size().last().copied().unwrap_or(0);
        if !self.per_head.is_empty() {
            // One normalisation for every head, then each head's gain: transformers runs one LayerNorm module per
            // head, which computes the same values up to the rounding of the gain's multiplication.
            let normed = x.layer_norm([dim], None::<&Tensor>, None::<&Tensor>, self.eps, false);
            return normed * Tensor::stack(&self.per_head, 0);
        }
        match self.gain {
            // libtorch's own kernel, as `nn.LayerNorm` runs it.
            Gain::Layer => x.layer_norm([dim], Some(&self.weight), self.bias.as_ref(), self.eps, false),
            Gain::LayerOnePlus => x.layer_norm([dim], Some(&(&self.weight + 1.0)), self.bias.as_ref(), self.eps, false),
            Gain::LayerF32 => {
                let normed =
                    x.to_kind(Kind::Float).layer_norm([dim], None::<&Tensor>, None::<&Tensor>, self.eps, false);
                (self.weight.to_kind(Kind::Float) * normed).to_kind(x.kind())
            }
            Gain::Rounded => &self.weight * x.rms_norm([dim], None::<&Tensor>, self.eps),
            Gain::F32 if x.kind() == Kind::Float => &self.weight * x.rms_norm([dim], None::<&Tensor>, self.eps),
            Gain::F32 | Gain::OnePlusF32 => {
                let normed = x.to_kind(Kind::Float).rms_norm([dim], None::<&Tensor>, self.eps);
                let weight = self.weight.to_kind(Kind::Float);
                let weight = if self.gain == Gain::OnePlusF32 { weight + 1.0 } else { weight };
                (weight * normed).to_kind(x.kind())
            }
        }
    }
}

/// Rotary position embedding: the inverse frequencies, from which cos/sin are computed per batch of positions.
#[derive(Debug)]
pub struct Rotary {
    inv_freq: Tensor,
    /// LongRoPE's frequencies for a forward pass over more than the given number of positions.
    long: Option<(Tensor, i64)>,
    /// cos and sin are multiplied by this (LongRoPE's attention factor; else 1).
    scale: f64,
    /// `[rotary_dim]`: -1 where `rotate_half` negates (the first half, or every even dimension), 1 elsewhere.
    sign: Tensor,
    /// Which dimensions turn together.
    pairs: RotaryPairs,
}

impl Rotary {
    /// Frequencies of `rope` over heads of `dim` exactly as transformers computes them (f32, the same operation
    /// order), so logits match.
    pub fn new(rope: &Rope, dim: i64, pairs: RotaryPairs, device: Device) -> Self {
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim as f64;
        let base = match rope.scaling {
            RopeScaling::NtkAlpha { alpha } => rope.theta * alpha.powf(dim as f64 / (dim - 2) as f64),
            _ => rope.theta,
        };
        let powers = Tensor::pow_scalar(base, &exponents);
        let mut inv_freq = powers.reciprocal();
        let (mut long, mut scale) = (None, 1.0);
        match &rope.scaling {
            RopeScaling::None | RopeScaling::NtkAlpha { .. } => {}
            RopeScaling::Linear { factor } => inv_freq /= *factor,
            &RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = original_max_position_embeddings;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let scaled = inv_freq.where_self(&wavelen.le(low_wavelen), &(&inv_freq / factor));
                let smooth = (wavelen.reciprocal() * old - low_freq_factor) / (high_freq_factor - low_freq_factor);
                let smoothed = (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen.ge(high_wavelen).logical_and(&wavelen.le(low_wavelen));
                inv_freq = smoothed.where_self(&medium, &scaled);
            }
            &RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                // The dimension whose frequency turns `turns` times over the pre-training context, as transformers
                // finds the ramp's ends (in f64, then the ramp in f32).
                let at = |turns: f64| {
                    let ratio = original_max_position_embeddings / (turns * 2.0 * std::f64::consts::PI);
                    (dim as f64 * ratio.ln()) / (2.0 * rope.theta.ln())
                };
                let (mut low, mut high) = (at(beta_fast), at(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min((dim - 1) as f64));
                if low == high {
                    high += 0.001;
                }
                let ramp = ((Tensor::arange(dim / 2, (Kind::Float, device)) - low) / (high - low)).clamp(0.0, 1.0);
                let kept = ramp.ones_like() - ramp;
                let divided = (&powers * factor).reciprocal();
                inv_freq = divided * (kept.ones_like() - &kept) + &inv_freq * &kept;
                scale = attention_factor;
            }
            RopeScaling::LongRope { short_factor, long_factor, original_max_position_embeddings, attention_factor } => {
                let divided = |factors: &[f64]| {
                    (Tensor::from_slice(factors).to_kind(Kind::Float).to_device(device) * &powers).reciprocal()
                };
                inv_freq = divided(short_factor);
                long = Some((divided(long_factor), *original_max_position_embeddings));
                scale = *attention_factor;
            }
        }
        let sign = match pairs {
            RotaryPairs::Halves => Tensor::cat(&[inv_freq.full_like(-1.0), inv_freq.full_like(1.0)], 0),
            RotaryPairs::HalvesReversed => Tensor::cat(&[inv_freq.full_like(1.0), inv_freq.full_like(-1.0)], 0),
            RotaryPairs::Adjacent | RotaryPairs::AdjacentF32 => {
                Tensor::stack(&[inv_freq.full_like(-1.0), inv_freq.full_like(1.0)], 1).view([-1])
            }
        };
        Rotary { inv_freq, long, scale, sign, pairs }
    }

    /// `(cos, signed_sin)`, each `[B, 1, T, rotary_dim]` in `kind`, for integer `positions` `[B, T]`: transformers'
    /// `cos` and `sin`, with the first half of `sin` negated so that `apply_rotary` needs no negation. Computed once
    /// per forward pass for every layer.
    ///
    /// LongRoPE takes its long factors for a row whose last real position (`last`, or else its largest position)
    /// reaches the pre-training context, as transformers does for a sequence on its own; each row decides for
    /// itself, so a sequence's numbers do not depend on the rows beside it, where a padded batch in transformers
    /// follows its longest row.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind, last: Option<&[i64]>) -> (Tensor, Tensor) {
        let inv_freq = match &self.long {
            Some((long, original)) => {
                let last = match last {
                    Some(last) => Tensor::from_slice(last).to_device(positions.device()),
                    None => positions.amax([-1i64].as_slice(), false),
                };
                long.where_self(&last.ge(*original).view([-1, 1, 1]), &self.inv_freq)
            }
            None => self.inv_freq.shallow_clone(),
        };
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq;
        let (emb, kind) = match self.pairs {
            RotaryPairs::Halves | RotaryPairs::HalvesReversed => (Tensor::cat(&[&freqs, &freqs], -1), kind),
            // Each frequency twice in a row.
            RotaryPairs::Adjacent => (freqs.repeat_interleave_self_int(2, -1, None), kind),
            // The tables kept in f32, so that the embedding is computed in f32.
            RotaryPairs::AdjacentF32 => (freqs.repeat_interleave_self_int(2, -1, None), Kind::Float),
        };
        let (cos, sin) = match self.scale {
            1.0 => (emb.cos(), emb.sin()),
            scale => (emb.cos() * scale, emb.sin() * scale),
        };
        (cos.to_kind(kind).unsqueeze(1), (sin * &self.sign).to_kind(kind).unsqueeze(1))
    }
}

/// transformers' `x * cos + rotate_half(x) * sin` for `x` `[B, H, T, D]`, with `rotate_half(x) = [-x2, x1]` taken as
/// `roll(x) = [x2, x1]` times the signed sine (negating a factor is exact, so the result is bit-equal) in four
/// kernels instead of five; for adjacent pairs, `[-x1, x0, -x3, x2, ...]` as the pairs swapped times the signed sine.
/// f32 tables (adjacent pairs') turn `x` in f32, rounded back to its dtype. Where the tables are narrower than the
/// heads (Phi-3's partial rotary embedding), only the leading dimensions turn and the rest pass through.
fn apply_rotary(x: &Tensor, cos: &Tensor, signed_sin: &Tensor, pairs: RotaryPairs) -> Tensor {
    let (dim, rotary) = (x.size()[3], cos.size()[3]);
    if rotary < dim {
        let turned = apply_rotary(&x.narrow(3, 0, rotary), cos, signed_sin, pairs);
        return Tensor::cat(&[turned, x.narrow(3, rotary, dim - rotary)], 3);
    }
    let partner = match pairs {
        RotaryPairs::Halves | RotaryPairs::HalvesReversed => x.roll([dim / 2], [3]),
        RotaryPairs::Adjacent | RotaryPairs::AdjacentF32 => {
            let s = x.size();
            x.reshape([s[0], s[1], s[2], dim / 2, 2]).flip([4]).reshape([s[0], s[1], s[2], dim])
        }
    };
    let y = x * cos + partner * signed_sin;
    if y.kind() != x.kind() {
        y.to_kind(x.kind())
    } else {
        y
    }
}

/// One layer's key/value cache: `[slots, kv_heads, capacity, head_dim]` each, every slot filled from column 0.
#[derive(Debug)]
pub struct LayerCache {
    /// Keys (after the rotary embedding).
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// Where a cached forward pass writes its keys and values and what it reads back: one row per sequence slot.
#[derive(Debug)]
pub struct SlotWrite {
    /// `[B, 1]` int64: each row's slot.
    slots: Tensor,
    /// `Some(B)` when row `i` is slot `i` (read in place); `None`: gather the rows' slots.
    prefix: Option<i64>,
    /// `[B, T]` int64: the cache column of each new token (its position).
    columns: Tensor,
    /// Columns attention reads: the longest row's history and new tokens.
    keys: i64,
}

impl SlotWrite {
    pub(crate) fn new(rows: &super::CacheRows, columns: Tensor, keys: i64, device: Device) -> Self {
        let (slots, prefix) = match rows {
            super::CacheRows::Prefix(n) => (Tensor::arange(*n, (Kind::Int64, device)), Some(*n)),
            super::CacheRows::Slots(s) => (Tensor::from_slice(s).to_device(device), None),
        };
        SlotWrite { slots: slots.unsqueeze(1), prefix, columns, keys }
    }

    /// Write `new` `[B, kv_heads, T, head_dim]` at the rows' columns of `cache` `[slots, kv_heads, capacity,
    /// head_dim]` and return the rows' first `keys` columns `[B, kv_heads, keys, head_dim]`.
    fn write_read(&self, cache: &mut Tensor, new: &Tensor) -> Tensor {
        // Two advanced indices around a full slice put their broadcast shape [B, T] first: [B, T, kv_heads, D].
        let _ = cache.index_put_(&[Some(&self.slots), None, Some(&self.columns)], &new.transpose(1, 2), false);
        let head = cache.narrow(2, 0, self.keys);
        match self.prefix {
            Some(n) => head.narrow(0, 0, n),
            None => head.index_select(0, &self.slots.view([-1])),
        }
    }
}

/// Which keys each query of a forward pass may attend to.
#[derive(Clone, Copy, Debug)]
pub enum AttentionMask<'a> {
    /// Causal over the sequence itself, with no padding to hide: SDPA's causal flag, no mask built or read.
    Causal,
    /// Boolean `[B, 1, T, S]`, true where a query may attend.
    Allowed(&'a Tensor),
    /// One query per row (a decode step), boolean `[B, 1, 1, S]`, true where it may not attend: built once per step
    /// for every layer.
    DecodeBlocked(&'a Tensor),
}

/// The query, key and value projections, as the checkpoint stores them.
#[derive(Debug)]
pub enum QkvProj {
    /// Three matrices, `q_proj`, `k_proj` and `v_proj` (most families).
    Separate {
        /// Query projection.
        q_proj: Linear,
        /// Key projection.
        k_proj: Linear,
        /// Value projection.
        v_proj: Linear,
    },
    /// One matrix, `qkv_proj`, whose output is the queries, then the keys, then the values (Phi-3; GPT-2's `c_attn`).
    Fused {
        /// The stacked projection.
        qkv_proj: Linear,
    },
    /// One matrix, `query_key_value`, whose output holds each head's query, key and value in turn, head after head
    /// (GPT-NeoX, which has as many key/value heads as query heads).
    PerHead {
        /// The stacked projection.
        query_key_value: Linear,
    },
}

/// Grouped-query self-attention.
#[derive(Debug)]
pub struct Attention {
    /// Query, key and value projections.
    pub qkv: QkvProj,
    /// Output projection (`o_proj`; Phi's `dense`).
    pub o_proj: Linear,
    /// The query norm: per head (Qwen3, Gemma 3, EXAONE 4, Hunyuan, Command R+, Phi under `qk_layernorm`), or over
    /// the whole projection (OLMo 2, OLMoE).
    pub q_norm: Option<Norm>,
    /// The key norm, as the query's.
    pub k_norm: Option<Norm>,
    /// The scores' scale when it is not SDPA's default `1/sqrt(head_dim)`.
    scale: Option<f64>,
    /// Gemma 2's cap on the scores (`c tanh(s / c)`), which SDPA cannot apply.
    softcap: Option<f64>,
    /// OLMo's clamp of the query, key and value projections to `[-c, c]` (`clip_qkv`).
    clip: Option<f64>,
    /// gpt-oss's learned sink, `[heads]`: one more logit beside each query's keys, which takes its share of the
    /// softmax and contributes no value (SDPA has none either).
    pub sinks: Option<Tensor>,
    /// Which dimensions the rotary embedding turns together.
    rotary_pairs: RotaryPairs,
    /// Whether queries and keys get the rotary embedding (not in SmolLM3's NoPE layers).
    rope: bool,
    /// What `q_norm` and `k_norm` normalise, and when.
    qk_norm: QkNorm,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

/// Where a family normalises its queries and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QkNorm {
    /// Nowhere.
    None,
    /// Over the whole query and key projections, before the heads are split (OLMo 2 and 3, OLMoE).
    Projection,
    /// Each head, before the rotary embedding (Qwen3, Gemma 3, EXAONE 4; Command R+ and Phi where config.json
    /// turns them on).
    Head,
    /// Each head, after the rotary embedding (Hunyuan's `query_layernorm` and `key_layernorm`).
    HeadAfterRotary,
}

impl Attention {
    pub(crate) fn load(l: &Loader, p: &str, cfg: &ModelConfig, rope: bool) -> anyhow::Result<Self> {
        let (h, kv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (qkv_bias, o_bias) = (cfg.qkv_bias, cfg.o_bias);
        let qk_norm = match cfg.architecture {
            Architecture::Olmo2 | Architecture::Olmo3 | Architecture::Olmoe => QkNorm::Projection,
            Architecture::Qwen3 | Architecture::Gemma3 | Architecture::Exaone4 => QkNorm::Head,
            Architecture::Cohere | Architecture::Phi | Architecture::StableLm if cfg.qk_norm => QkNorm::Head,
            Architecture::Hunyuan | Architecture::NanoChat => QkNorm::HeadAfterRotary,
            _ => QkNorm::None,
        };
        let names = match qk_norm {
            QkNorm::None => None,
            QkNorm::Projection => Some((("q_norm", vec![h * d]), ("k_norm", vec![kv * d]))),
            // Command R+ keeps a gain per head.
            QkNorm::Head if cfg.architecture == Architecture::Cohere => {
                Some((("q_norm", vec![h, d]), ("k_norm", vec![kv, d])))
            }
            QkNorm::Head if cfg.architecture == Architecture::Phi => {
                Some((("q_layernorm", vec![d]), ("k_layernorm", vec![d])))
            }
            QkNorm::Head => Some((("q_norm", vec![d]), ("k_norm", vec![d]))),
            QkNorm::HeadAfterRotary => Some((("query_layernorm", vec![d]), ("key_layernorm", vec![d]))),
        };
        let norm = |(name, shape): (&str, Vec<i64>)| Norm::load_shaped(l, &format!("{p}.{name}"), &shape, cfg);
        let (q_norm, k_norm) = match names {
            // StableLM 2 12B keeps a module per head.
            Some(_) if cfg.architecture == Architecture::StableLm => {
                let per_head = |name: &str, heads| Norm::load_per_head(l, &format!("{p}.{name}"), heads, d, cfg);
                (Some(per_head("q_layernorm", h)?), Some(per_head("k_layernorm", kv)?))
            }
            Some((q, k)) => (Some(norm(q)?), Some(norm(k)?)),
            None => (None, None),
        };
        // The fused and the output projections' names.
        let (fused, out) = match cfg.architecture {
            Architecture::Phi | Architecture::GptNeoX => ("qkv_proj", "dense"),
            Architecture::Gpt2 => ("c_attn", "c_proj"),
            _ => ("qkv_proj", "o_proj"),
        };
        Ok(Attention {
            qkv: match cfg.architecture {
                Architecture::Phi3 | Architecture::Gpt2 => QkvProj::Fused {
                    qkv_proj: Linear::load(l, &format!("{p}.{fused}"), cfg.hidden_size, (h + 2 * kv) * d, qkv_bias)?,
                },
                Architecture::GptNeoX => QkvProj::PerHead {
                    query_key_value: Linear::load(
                        l,
                        &format!("{p}.query_key_value"),
                        cfg.hidden_size,
                        3 * h * d,
                        qkv_bias,
                    )?,
                },
                _ => QkvProj::Separate {
                    q_proj: Linear::load(l, &format!("{p}.q_proj"), cfg.hidden_size, h * d, qkv_bias)?,
                    k_proj: Linear::load(l, &format!("{p}.k_proj"), cfg.hidden_size, kv * d, qkv_bias)?,
                    v_proj: Linear::load(l, &format!("{p}.v_proj"), cfg.hidden_size, kv * d, qkv_bias)?,
                },
            },
            o_proj: Linear::load(l, &format!("{p}.{out}"), h * d, cfg.hidden_size, o_bias)?,
            q_norm,
            k_norm,
            scale: cfg.attention_scale,
            softcap: cfg.attention_softcap,
            clip: cfg.clip_qkv,
            sinks: match cfg.architecture {
                Architecture::GptOss => Some(l.get(&format!("{p}.sinks"), &[h])?),
                _ => None,
            },
            rotary_pairs: cfg.rotary_pairs,
            rope,
            qk_norm,
            heads: h,
            kv_heads: kv,
            head_dim: d,
        })
    }

    /// Attend from `x` `[B, T, hidden]` at positions given by `cos`/`sin` ([`Rotary::cos_sin`]), seeing what
    /// `mask` allows. Without a cache the keys are the sequence itself; with one, the new keys are written where
    /// `cache.1` says and attention reads the columns it gives back.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: AttentionMask,
        cache: Option<(&mut LayerCache, &SlotWrite)>,
        ctx: Ctx,
    ) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        // A reshape, which is a view of a contiguous projection and leaves the per-head split as it is.
        let shape = |y: Tensor, heads: i64| y.reshape([b, t, heads, self.head_dim]);
        let (q, k, v) = match &self.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => {
                (q_proj.forward(x, ctx), k_proj.forward(x, ctx), v_proj.forward(x, ctx))
            }
            QkvProj::Fused { qkv_proj } => {
                let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
                let qkv = qkv_proj.forward(x, ctx);
                (qkv.narrow(2, 0, q), qkv.narrow(2, q, kv), qkv.narrow(2, q + kv, kv))
            }
            QkvProj::PerHead { query_key_value } => {
                let d = self.head_dim;
                let qkv = query_key_value.forward(x, ctx).view([b, t, self.heads, 3 * d]);
                (qkv.narrow(3, 0, d), qkv.narrow(3, d, d), qkv.narrow(3, 2 * d, d))
            }
        };
        let (q, k, v) = match self.clip {
            Some(c) => (q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)),
            None => (q, k, v),
        };
        let norms = self.q_norm.as_ref().zip(self.k_norm.as_ref());
        let normed = |q: Tensor, k: Tensor, at: QkNorm| match norms {
            Some((qn, kn)) if self.qk_norm == at => (qn.forward(&q), kn.forward(&k)),
            _ => (q, k),
        };
        let (q, k) = normed(q, k, QkNorm::Projection);
        let (q, k) = normed(shape(q, self.heads), shape(k, self.kv_heads), QkNorm::Head);
        let v = shape(v, self.kv_heads).transpose(1, 2);
        let (q, k) = match self.rope {
            true => {
                let turn = |x: &Tensor| apply_rotary(&x.transpose(1, 2), cos, sin, self.rotary_pairs);
                (turn(&q), turn(&k))
            }
            false => (q.transpose(1, 2), k.transpose(1, 2)),
        };
        let (q, k) = normed(q, k, QkNorm::HeadAfterRotary);
        let (k, v) = match cache {
            Some((c, at)) => (at.write_read(&mut c.k, &k), at.write_read(&mut c.v, &v)),
            None => (k, v),
        };
        let y = match mask {
            AttentionMask::DecodeBlocked(blocked) => self.decode_attention(&q, &k, &v, blocked),
            // Without a mask, SDPA's causal flag lets libtorch skip materialising and reading one.
            AttentionMask::Causal => self.fused_attention(&q, &k, &v, None),
            AttentionMask::Allowed(allowed) => self.fused_attention(&q, &k, &v, Some(allowed)),
        };
        self.o_proj.forward(&y, ctx)
    }

    /// libtorch's fused attention, `[B, T, heads * head_dim]`: causal when `allowed` is `None`, else as it says.
    /// Capped scores and sinks are computed as written instead ([`Attention::eager_attention`]).
    fn fused_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>) -> Tensor {
        let (b, t) = (q.size()[0], q.size()[2]);
        let y = match (self.softcap, &self.sinks) {
            (None, None) => {
                let gqa = self.heads != self.kv_heads;
                Tensor::scaled_dot_product_attention(q, k, v, allowed, 0.0, allowed.is_none(), self.scale, gqa)
            }
            _ => self.eager_attention(q, k, v, allowed),
        };
        y.transpose(1, 2).reshape([b, t, self.heads * self.head_dim])
    }

    /// Attention as written, `[B, heads, T, head_dim]`, for what SDPA cannot do, in transformers' eager order:
    /// scale, Gemma 2's cap, mask (causal when `allowed` is `None`), gpt-oss's sinks, softmax in f32, back to the
    /// model's dtype.
    fn eager_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>) -> Tensor {
        let group = self.heads / self.kv_heads;
        let (k, v) = (k.repeat_interleave_self_int(group, 1, None), v.repeat_interleave_self_int(group, 1, None));
        let scores = q.matmul(&k.transpose(2, 3)) * self.score_scale();
        let scores = match self.softcap {
            Some(cap) => (scores / cap).tanh() * cap,
            None => scores,
        };
        let (t, s) = (q.size()[2], k.size()[2]);
        let causal;
        let allowed = match allowed {
            Some(allowed) => allowed,
            None => {
                causal = Tensor::ones([t, s], (Kind::Bool, q.device())).tril(s - t);
                &causal
            }
        };
        let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        self.sink_softmax(scores, [1, self.heads, 1, 1]).to_kind(q.kind()).matmul(&v)
    }

    /// The softmax of `scores` over their last dimension in f32, with gpt-oss's sinks (shaped `sink_shape`, one per
    /// head) as one more column that takes its share and is dropped.
    fn sink_softmax(&self, scores: Tensor, sink_shape: [i64; 4]) -> Tensor {
        match &self.sinks {
            Some(sinks) => {
                let mut shape = scores.size();
                let s = shape[3];
                shape[3] = 1;
                let column = sinks.to_kind(scores.kind()).reshape(sink_shape).expand(&shape, false);
                Tensor::cat(&[scores, column], -1).softmax(-1, Kind::Float).narrow(-1, 0, s)
            }
            None => scores.softmax(-1, Kind::Float),
        }
    }

    /// The scores' scale: the configured one, or `1/sqrt(head_dim)`.
    fn score_scale(&self) -> f64 {
        self.scale.unwrap_or(1.0 / (self.head_dim as f64).sqrt())
    }

    /// One query token per row against the cache, `[B, 1, heads * head_dim]`. Query heads are grouped by the
    /// key/value head they share, so the cache is read in place (a strided view of the preallocated buffer)
    /// instead of being repeated per query head or made contiguous, as SDPA's fallback paths would.
    fn decode_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, blocked: &Tensor) -> Tensor {
        let b = q.size()[0];
        let group = self.heads / self.kv_heads;
        let q = q.reshape([b, self.kv_heads, group, self.head_dim]);
        let scores = q.matmul(&k.transpose(2, 3)) * self.score_scale();
        let scores = match self.softcap {
            Some(cap) => (scores / cap).tanh() * cap,
            None => scores,
        };
        let scores = scores.masked_fill(blocked, f64::NEG_INFINITY);
        // Query heads are grouped by their key/value head here: head `kv x group + g`.
        let probs = self.sink_softmax(scores, [1, self.kv_heads, group, 1]).to_kind(q.kind());
        probs.matmul(v).reshape([b, 1, self.heads * self.head_dim])
    }
}

/// The gate and up projections of a gated MLP, as the checkpoint stores them.
#[derive(Debug)]
pub enum GateUpProj {
    /// Two matrices, `gate_proj` and `up_proj` (most families).
    Separate {
        /// Gate projection (through the activation).
        gate_proj: Linear,
        /// Up projection.
        up_proj: Linear,
    },
    /// One matrix, `gate_up_proj`, whose output is the gate, then the up projection (Phi-3).
    Fused {
        /// The stacked projection.
        gate_up_proj: Linear,
    },
    /// No gate: the activation applies to the up projection itself (Arcee's `down(relu(up(x))^2)`, StarCoder2's
    /// `c_proj(gelu(c_fc(x)))`, Phi's `fc2(gelu(fc1(x)))`, GPT-NeoX's `dense_4h_to_h(gelu(dense_h_to_4h(x)))`).
    Ungated {
        /// Up projection.
        up_proj: Linear,
    },
}

/// The feed-forward block: gated (SwiGLU, or Gemma's GELU-gated one), or plain (Arcee's, StarCoder2's, Phi's,
/// GPT-NeoX's).
#[derive(Debug)]
pub struct Mlp {
    /// Gate and up projections.
    pub gate_up: GateUpProj,
    /// Down projection.
    pub down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    /// The layer's dense MLP, `intermediate_size` wide.
    pub(crate) fn load(l: &Loader, p: &str, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let (h, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let ungated = match cfg.architecture {
            Architecture::Starcoder2 | Architecture::Gpt2 => Some(("c_fc", "c_proj")),
            Architecture::Phi | Architecture::NanoChat => Some(("fc1", "fc2")),
            Architecture::GptNeoX => Some(("dense_h_to_4h", "dense_4h_to_h")),
            _ if cfg.activation == Activation::Relu2 => Some(("up_proj", "down_proj")),
            _ => None,
        };
        if let Some((up, down)) = ungated {
            return Ok(Mlp {
                gate_up: GateUpProj::Ungated { up_proj: Linear::load(l, &format!("{p}.{up}"), h, i, b)? },
                down_proj: Linear::load(l, &format!("{p}.{down}"), i, h, b)?,
                activation: cfg.activation,
            });
        }
        match cfg.architecture {
            Architecture::Phi3 | Architecture::Glm | Architecture::Glm4 => Ok(Mlp {
                gate_up: GateUpProj::Fused {
                    gate_up_proj: Linear::load(l, &format!("{p}.gate_up_proj"), h, 2 * i, b)?,
                },
                down_proj: Linear::load(l, &format!("{p}.down_proj"), i, h, b)?,
                activation: cfg.activation,
            }),
            _ => Self::load_named(l, p, ["gate_proj", "up_proj", "down_proj"], i, cfg),
        }
    }

    /// A gated MLP `width` wide whose gate, up and down projections are `names` under `p` (an expert's too).
    pub(crate) fn load_named(
        l: &Loader,
        p: &str,
        names: [&str; 3],
        width: i64,
        cfg: &ModelConfig,
    ) -> anyhow::Result<Self> {
        let (h, b) = (cfg.hidden_size, cfg.mlp_bias);
        let [gate, up, down] = names;
        Ok(Mlp {
            gate_up: GateUpProj::Separate {
                gate_proj: Linear::load(l, &format!("{p}.{gate}"), h, width, b)?,
                up_proj: Linear::load(l, &format!("{p}.{up}"), h, width, b)?,
            },
            down_proj: Linear::load(l, &format!("{p}.{down}"), width, h, b)?,
            activation: cfg.activation,
        })
    }

    /// The gate, up and down projections.
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all: Vec<&mut Linear> = match &mut self.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => vec![gate_proj, up_proj],
            GateUpProj::Fused { gate_up_proj } => vec![gate_up_proj],
            GateUpProj::Ungated { up_proj } => vec![up_proj],
        };
        all.push(&mut self.down_proj);
        all
    }

    /// `down(act(gate(x)) * up(x))`, or `down(act(up(x)))` without a gate.
    pub fn forward(&self, x: &Tensor, ctx: Ctx) -> Tensor {
        let hidden = match &self.gate_up {
            GateUpProj::Ungated { up_proj } => self.activation.apply(&up_proj.forward(x, ctx)),
            GateUpProj::Separate { gate_proj, up_proj } => {
                self.activation.apply(&gate_proj.forward(x, ctx)) * up_proj.forward(x, ctx)
            }
            GateUpProj::Fused { gate_up_proj } => self.activation.gated_halves(&gate_up_proj.forward(x, ctx)),
        };
        self.down_proj.forward(&hidden, ctx)
    }
}

/// A layer's feed-forward block.
#[derive(Debug)]
pub enum FeedForward {
    /// One gated MLP.
    Dense(Mlp),
    /// A mixture of experts.
    Sparse(SparseMoe),
}

impl FeedForward {
    /// The block's output for `x` `[B, T, hidden]`, and a mixture's router scores (see [`SparseMoe::forward`]).
    pub fn forward(&self, x: &Tensor, ctx: Ctx) -> (Tensor, Option<Tensor>) {
        match self {
            FeedForward::Dense(mlp) => (mlp.forward(x, ctx), None),
            FeedForward::Sparse(moe) => {
                let (out, scores) = moe.forward(x, ctx);
                (out, Some(scores))
            }
        }
    }
}

/// Where a decoder layer's RMSNorms sit, by their checkpoint names.
#[derive(Debug)]
pub enum LayerNorms {
    /// On each block's input (Llama, Qwen, Mistral, SmolLM3): `input_layernorm` before attention,
    /// `post_attention_layernorm` before the MLP.
    Pre {
        /// Before attention.
        input: Norm,
        /// Before the MLP.
        post_attention: Norm,
    },
    /// On each block's output, before it joins the residual stream (OLMo 2 and 3).
    Post {
        /// After attention.
        post_attention: Norm,
        /// After the MLP.
        post_feedforward: Norm,
    },
    /// One norm whose output feeds attention and the MLP side by side, both added to the residual stream
    /// (Cohere, Cohere 2, Phi; StableLM 2 12B's `use_parallel_residual`).
    Parallel {
        /// Before both blocks.
        input: Norm,
    },
    /// Attention and the MLP side by side on the layer's input, each behind its own norm, both added to the
    /// residual stream (GPT-NeoX's `use_parallel_residual`).
    ParallelPair {
        /// Before attention.
        input: Norm,
        /// Before the MLP.
        post_attention: Norm,
    },
    /// On each block's input and on its output (Gemma 2 and 3, GLM-4-0414).
    Sandwich {
        /// Before attention.
        input: Norm,
        /// After attention.
        post_attention: Norm,
        /// Before the MLP.
        pre_feedforward: Norm,
        /// After the MLP.
        post_feedforward: Norm,
    },
}

/// One decoder layer: attention and MLP blocks, each added to the residual stream.
#[derive(Debug)]
pub struct DecoderLayer {
    /// The layer's norms.
    pub norms: LayerNorms,
    /// Self-attention.
    pub self_attn: Attention,
    /// Feed-forward block.
    pub mlp: FeedForward,
    /// The sliding window this layer attends within, if any.
    pub window: Option<i64>,
    /// Each block's output is scaled by this before the residual sum (Granite's `residual_multiplier`).
    residual_scale: Option<f64>,
}

impl DecoderLayer {
    pub(crate) fn load(l: &Loader, i: i64, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let names = cfg.architecture.module_names();
        let p = format!("{}.{i}", names.layers);
        let norm = |name: &str| Norm::load(l, &format!("{p}.{name}"), cfg.hidden_size, cfg);
        let norms = match cfg.architecture {
            Architecture::Olmo2 | Architecture::Olmo3 | Architecture::Exaone4 => LayerNorms::Post {
                post_attention: norm("post_attention_layernorm")?,
                post_feedforward: norm("post_feedforward_layernorm")?,
            },
            Architecture::Gemma2 | Architecture::Gemma3 => LayerNorms::Sandwich {
                input: norm("input_layernorm")?,
                post_attention: norm("post_attention_layernorm")?,
                pre_feedforward: norm("pre_feedforward_layernorm")?,
                post_feedforward: norm("post_feedforward_layernorm")?,
            },
            Architecture::Cohere2 | Architecture::Cohere | Architecture::Phi => {
                LayerNorms::Parallel { input: norm("input_layernorm")? }
            }
            Architecture::StableLm if cfg.parallel_blocks => LayerNorms::Parallel { input: norm("input_layernorm")? },
            _ if cfg.parallel_blocks => LayerNorms::ParallelPair {
                input: norm("input_layernorm")?,
                post_attention: norm("post_attention_layernorm")?,
            },
            // The same places under GLM-4's names.
            Architecture::Glm4 => LayerNorms::Sandwich {
                input: norm("input_layernorm")?,
                post_attention: norm("post_self_attn_layernorm")?,
                pre_feedforward: norm("post_attention_layernorm")?,
                post_feedforward: norm("post_mlp_layernorm")?,
            },
            Architecture::Gpt2 => LayerNorms::Pre { input: norm("ln_1")?, post_attention: norm("ln_2")? },
            _ => LayerNorms::Pre { input: norm("input_layernorm")?, post_attention: norm("post_attention_layernorm")? },
        };
        Ok(DecoderLayer {
            norms,
            self_attn: Attention::load(l, &format!("{p}.{}", names.attention), cfg, cfg.rope_layers[i as usize])?,
            mlp: match &cfg.moe {
                Some(moe) if moe.sparse_layers[i as usize] => FeedForward::Sparse(SparseMoe::load(l, &p, moe, cfg)?),
                _ => FeedForward::Dense(Mlp::load(l, &format!("{p}.mlp"), cfg)?),
            },
            window: cfg.layer_window(i as usize),
            residual_scale: cfg.residual_scale,
        })
    }

    /// The layer's projections where LoRA adapters can go, in checkpoint order: attention's, and the dense MLP's
    /// or the shared expert's. A mixture's routed experts, its router and the shared expert's one-output gate get
    /// none (full fine-tuning trains them); adapter_config.json names the adapted projections, and in
    /// transformers 5, which stacks the experts into parameters, those names reach the same modules.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = match &mut self.self_attn.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj],
            QkvProj::Fused { qkv_proj } => vec![qkv_proj],
            QkvProj::PerHead { query_key_value } => vec![query_key_value],
        };
        all.push(&mut self.self_attn.o_proj);
        match &mut self.mlp {
            FeedForward::Dense(mlp) => all.extend(mlp.linears_mut()),
            FeedForward::Sparse(moe) => {
                if let Some(shared) = &mut moe.shared {
                    all.extend(shared.mlp.linears_mut());
                }
            }
        }
        all
    }

    /// A block's output as it joins the residual stream.
    fn scaled(&self, block: Tensor) -> Tensor {
        match self.residual_scale {
            Some(scale) => block * scale,
            None => block,
        }
    }

    /// Residual attention then residual MLP; with the output, a mixture's router scores (see
    /// [`SparseMoe::forward`]).
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: AttentionMask,
        cache: Option<(&mut LayerCache, &SlotWrite)>,
        ctx: Ctx,
    ) -> (Tensor, Option<Tensor>) {
        match &self.norms {
            LayerNorms::Pre { input, post_attention } => {
                let h = x + self.scaled(self.self_attn.forward(&input.forward(x), cos, sin, mask, cache, ctx));
                let (out, scores) = self.mlp.forward(&post_attention.forward(&h), ctx);
                (h + self.scaled(out), scores)
            }
            LayerNorms::Post { post_attention, post_feedforward } => {
                let h = x + post_attention.forward(&self.self_attn.forward(x, cos, sin, mask, cache, ctx));
                let (out, scores) = self.mlp.forward(&h, ctx);
                (h + post_feedforward.forward(&out), scores)
            }
            LayerNorms::Parallel { input } => {
                let normed = input.forward(x);
                let attended = self.self_attn.forward(&normed, cos, sin, mask, cache, ctx);
                let (out, scores) = self.mlp.forward(&normed, ctx);
                (x + attended + out, scores)
            }
            LayerNorms::ParallelPair { input, post_attention } => {
                let attended = self.self_attn.forward(&input.forward(x), cos, sin, mask, cache, ctx);
                let (out, scores) = self.mlp.forward(&post_attention.forward(x), ctx);
                (x + attended + out, scores)
            }
            LayerNorms::Sandwich { input, post_attention, pre_feedforward, post_feedforward } => {
                let attended = self.self_attn.forward(&input.forward(x), cos, sin, mask, cache, ctx);
                let h = x + post_attention.forward(&attended);
                let (out, scores) = self.mlp.forward(&pre_feedforward.forward(&h), ctx);
                (h + post_feedforward.forward(&out), scores)
            }
        }
    }
}
