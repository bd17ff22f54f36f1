//! The native policy model: Llama-family decoders (Llama, Qwen2, Qwen3, Mistral, SmolLM3, OLMo 2 and 3, Gemma 3,
//! Phi-3) in libtorch (tch), loaded from Hugging Face checkpoints, with the entry points training and generation
//! need.
//!
//! - [`Model::load`] reads `config.json` and the safetensors weights into a [`tch::nn::VarStore`] under the HF
//!   tensor names, so the trainer can build an optimizer over [`Model::var_store`], save it back as a checkpoint,
//!   and freeze it (the reference policy).
//! - [`Model::forward`] / [`Model::token_log_probs`] are the training forwards over padded batches.
//! - [`Model::new_cache`] + [`Model::forward_slots`] are the incremental path used by [`crate::generate`].
//! - [`Model::attach_lora`] adds LoRA adapters; [`Model::set_adapters_enabled`] switches them off so the same
//!   weights serve as the reference policy.
//! - [`Model::set_gradient_checkpointing`] makes training forwards keep only each layer's input and run the layer
//!   again in the backward pass ([`recompute`]).

pub mod config;
pub mod device;
pub mod layers;
pub mod lora;
pub mod moe;
pub mod recompute;
pub mod resolve;
pub mod weights;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tch::{nn, Device, Kind, Tensor};

pub use config::{Activation, Architecture, EmbeddingScale, ExpertNames, ModelConfig, Moe, Rope, RopeScaling, Routing};
pub use device::{cuda_free_bytes, DeviceSpec, DtypeSpec};
pub use layers::{AttentionMask, LayerCache, SlotWrite};
pub use lora::{LoraConfig, LoraTargets};
pub use moe::RouterScores;
pub use resolve::resolve_model_dir;
pub use weights::WeightFiles;

use layers::{DecoderLayer, FeedForward, Loader, Norm, Rotary};

use crate::user_error;

/// Flags threaded through a forward pass.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// Add the LoRA adapters' updates (when attached).
    pub adapters: bool,
    /// Training mode: LoRA dropout is active.
    pub train: bool,
    /// While some [`WeightsFixed`] is held, which hold this is (a new number each time the first one is taken):
    /// what is computed from the weights alone (DoRA's row norms) may be kept for its duration.
    pub fixed: Option<u64>,
}

/// A promise that no weight of the model changes while it is held ([`Model::hold_weights_fixed`]): the generation
/// engine holds one for its lifetime, so a DoRA adapter computes its row norms once, not at every decode step.
#[derive(Debug)]
pub struct WeightsFixed<'a> {
    model: &'a Model,
}

/// See [`Model::hold_weights_fixed`].
#[derive(Debug, Default)]
struct FixedHolds {
    holds: u64,
    period: u64,
}

impl Drop for WeightsFixed<'_> {
    fn drop(&mut self) {
        self.model.fixed.lock().unwrap_or_else(|e| e.into_inner()).holds -= 1;
    }
}

/// The key/value caches of every layer for a set of independent sequences, one slot (row) each, preallocated to a
/// fixed number of columns. Every slot holds its own sequence from column 0 and its own length, so sequences of
/// different lengths share a forward pass without left padding, and a slot is reused as soon as its sequence is
/// released (see [`crate::generate::engine`]).
#[derive(Debug)]
pub struct KvCache {
    /// One cache per decoder layer.
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    /// Slots (sequences) in the cache.
    pub fn slots(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.k.size()[0])
    }

    /// Columns allocated per slot.
    pub fn capacity(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.k.size()[2])
    }

    /// Copy columns `from..to` of slot `src[i]` into slot `dst[i]`, for every `i` at once (the sources are read
    /// before any destination is written, so two slots can swap).
    pub fn copy_slots(&mut self, src: &[i64], dst: &[i64], from: i64, to: i64) {
        let to = to.min(self.capacity());
        if src.is_empty() || to <= from {
            return;
        }
        let device = self.layers[0].k.device();
        let src = Tensor::from_slice(src).to_device(device);
        let dst = Tensor::from_slice(dst).to_device(device);
        for l in &mut self.layers {
            for t in [&mut l.k, &mut l.v] {
                let mut part = t.narrow(2, from, to - from);
                let moved = part.index_select(0, &src);
                let _ = part.index_copy_(0, &dst, &moved);
            }
        }
    }

    /// Grow every slot to `capacity` columns, keeping what is cached.
    pub fn grow(&mut self, capacity: i64) {
        let old = self.capacity();
        if capacity <= old {
            return;
        }
        for l in &mut self.layers {
            for t in [&mut l.k, &mut l.v] {
                let mut size = t.size();
                size[2] = capacity;
                let bigger = Tensor::zeros(size.as_slice(), (t.kind(), t.device()));
                bigger.narrow(2, 0, old).copy_(t);
                *t = bigger;
            }
        }
    }
}

/// How the rows of an uncached forward pass are padded, when the caller knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// Every row's real tokens come first, then its padding (rollouts and experience are built so): plain causal
    /// attention is exact for the real tokens, and nothing is read back from the device to decide it. Debug builds
    /// check the claim.
    Right,
    /// Unknown: the model reads the mask back to the host to tell (a device synchronisation on CUDA).
    Any,
}

/// Whether the entropy [`Model::token_log_probs_and_entropy`] returns carries a gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntropyGrad {
    /// A value outside autograd, for the `training_step/entropy` metric or a mask: no extra work in the backward pass.
    No,
    /// Differentiable, for a loss that rewards entropy (`--entropy-coeff`).
    Yes,
}

/// Which cache slots the rows of a cached forward pass use.
#[derive(Debug, Clone)]
pub enum CacheRows {
    /// Row `i` is slot `i`, for the first `n` slots: attention reads the cache in place.
    Prefix(i64),
    /// Row `i` is slot `slots[i]`: attention reads a gathered copy of those slots.
    Slots(Vec<i64>),
}

impl CacheRows {
    fn len(&self) -> i64 {
        match self {
            CacheRows::Prefix(n) => *n,
            CacheRows::Slots(s) => s.len() as i64,
        }
    }
}

/// What a checkpoint computes from its final hidden states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputHead {
    /// `lm_head` (or the tied embedding): next-token logits, as `*ForCausalLM`.
    LanguageModel,
    /// `score`: one value per label, read at the last token, as `*ForSequenceClassification` (a reward model).
    Score,
}

/// A loaded decoder-only language model.
pub struct Model {
    cfg: ModelConfig,
    dir: PathBuf,
    vs: nn::VarStore,
    lora_vs: Option<nn::VarStore>,
    lora_cfg: Option<LoraConfig>,
    /// The projections that carry adapters, by name, in decoder order.
    lora_modules: Vec<String>,
    embed_tokens: Tensor,
    /// GPT-2's learned position embedding `[positions, hidden]`, added to the token embedding.
    position_embed: Option<Tensor>,
    /// Shared with the recomputing autograd nodes of gradient checkpointing, which may outlive a forward call.
    layers: Vec<Arc<DecoderLayer>>,
    norm: Norm,
    /// The output projection when it is not the tied embedding: `lm_head`, or a classifier's `score`.
    lm_head: Option<Tensor>,
    /// The output projection's checkpoint name, without `.weight`: `lm_head` (GPT-NeoX's hub checkpoints:
    /// `embed_out`), `score`, or the tied embedding's.
    head_name: String,
    /// `lm_head`'s bias `[vocab]`, where the family has one (Phi).
    lm_head_bias: Option<Tensor>,
    rotary: Rotary,
    /// The sliding-window layers' own rotary embedding, where they have one (Gemma 3).
    sliding_rotary: Option<Rotary>,
    kind: Kind,
    adapters_enabled: AtomicBool,
    training: AtomicBool,
    /// The [`WeightsFixed`] holds alive, and which period of holding this is.
    fixed: Mutex<FixedHolds>,
    gradient_checkpointing: AtomicBool,
    /// The temperature of the distribution [`Model::token_log_probs`] scores tokens under (1: the model's own).
    logprob_temperature: f64,
    /// The weight training gives a mixture's load-balancing loss (0: none, and always 0 for a dense model).
    router_aux_loss_coef: f64,
    /// NEFTune's scale of the noise on training forwards' input embeddings (0: none).
    neftune_noise_alpha: f64,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("dir", &self.dir).field("config", &self.cfg).field("kind", &self.kind).finish()
    }
}

impl Model {
    /// Load the checkpoint in `dir` (config.json plus model.safetensors or a sharded index) onto `device` in
    /// `dtype` (f32, bf16 or f16). Every tensor the config requires must be present with the right shape, and no
    /// unexpected tensor may remain; either mistake is one error naming the tensor.
    pub fn load(dir: &Path, device: Device, dtype: Kind) -> anyhow::Result<Model> {
        Self::load_with_head(dir, device, dtype, OutputHead::LanguageModel)
    }

    /// [`Model::load`] for a checkpoint whose output is `head`: a sequence classifier's `score` replaces `lm_head`
    /// (see [`Model::sequence_scores`]).
    pub fn load_with_head(dir: &Path, device: Device, dtype: Kind, head: OutputHead) -> anyhow::Result<Model> {
        if !matches!(dtype, Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(user_error!("model dtype {dtype:?} is not supported (f32, bf16, f16)"));
        }
        let cfg = ModelConfig::from_dir(dir)?;
        let files = WeightFiles::open(dir)?;
        let vs = nn::VarStore::new(device);
        let names = cfg.architecture.module_names();
        let loader = Loader {
            files: &files,
            root: vs.root(),
            kind: dtype,
            device,
            used: RefCell::new(HashSet::new()),
            conv1d: cfg.architecture.conv1d(),
            stored_as: names.stored_as,
        };
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed_tokens = loader.get(&format!("{}.weight", names.embed), &[v, h])?;
        let position_embed = match cfg.learned_positions {
            Some(positions) => Some(loader.get("transformer.wpe.weight", &[positions, h])?),
            None => None,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(&loader, i, &cfg).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let norm = Norm::load(&loader, names.final_norm, h, &cfg)?;
        // GPT-NeoX's checkpoints on the hub call the head `embed_out` (transformers 5 renames it `lm_head` as it
        // loads and back as it saves); the head keeps the name it was read under.
        let head_name = match head {
            OutputHead::LanguageModel if cfg.tie_word_embeddings => names.embed,
            OutputHead::LanguageModel if files.contains("embed_out.weight") => "embed_out",
            OutputHead::LanguageModel => "lm_head",
            OutputHead::Score => "score",
        };
        let lm_head = match head {
            OutputHead::LanguageModel if cfg.tie_word_embeddings => None,
            OutputHead::LanguageModel => Some(loader.get(&format!("{head_name}.weight"), &[v, h])?),
            OutputHead::Score => {
                let labels = files.shape("score.weight").and_then(|s| s.first().copied()).ok_or_else(|| {
                    user_error!(
                        "{}: the checkpoint has no \"score.weight\": it is not a sequence-classification model (a \
                         reward model saved as *ForSequenceClassification)",
                        dir.display()
                    )
                })?;
                Some(loader.get("score.weight", &[labels, h])?)
            }
        };
        let lm_head_bias = match head {
            OutputHead::LanguageModel if cfg.lm_head_bias => Some(loader.get("lm_head.bias", &[v])?),
            _ => None,
        };
        let used = loader.used.into_inner();
        let mut unexpected: Vec<&str> = files
            .names()
            .filter(|n| !used.contains(*n))
            .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
            .filter(|n| !names.buffers.iter().any(|b| n.ends_with(b)))
            .filter(|n| !(head == OutputHead::LanguageModel && cfg.tie_word_embeddings && *n == "lm_head.weight"))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(user_error!(
                "{}: unexpected tensor {:?} in the checkpoint ({} unexpected in all) for model_type {:?}",
                dir.display(),
                unexpected[0],
                unexpected.len(),
                cfg.model_type
            ));
        }
        let rotary = Rotary::new(&cfg.rope, cfg.rotary_dim, cfg.rotary_pairs, device);
        let sliding_rotary =
            cfg.sliding_rope.as_ref().map(|rope| Rotary::new(rope, cfg.rotary_dim, cfg.rotary_pairs, device));
        Ok(Model {
            cfg,
            dir: dir.to_path_buf(),
            vs,
            lora_vs: None,
            lora_cfg: None,
            lora_modules: Vec::new(),
            embed_tokens,
            position_embed,
            layers,
            norm,
            lm_head,
            head_name: head_name.to_string(),
            lm_head_bias,
            rotary,
            sliding_rotary,
            kind: dtype,
            adapters_enabled: AtomicBool::new(true),
            training: AtomicBool::new(false),
            fixed: Mutex::new(FixedHolds::default()),
            gradient_checkpointing: AtomicBool::new(false),
            logprob_temperature: 1.0,
            router_aux_loss_coef: 0.0,
            neftune_noise_alpha: 0.0,
        })
    }

    /// The architecture hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The most tokens a sequence may have, where the model has learned absolute positions (GPT-2's
    /// `n_positions`); `None` for a rotary embedding, which has no such bound.
    pub fn position_limit(&self) -> Option<i64> {
        self.cfg.learned_positions
    }

    /// A one-line error where `--max-length` (`None`: no bound) lets a sequence grow past [`Model::position_limit`],
    /// for a run to refuse before it starts.
    pub fn check_max_length(&self, max_length: Option<usize>) -> anyhow::Result<()> {
        match (self.cfg.learned_positions, max_length) {
            (Some(limit), None) => Err(user_error!(
                "--max-length 0 keeps sequences of any length, but this {} model has {limit} learned positions; give \
                 --max-length {limit} or less",
                self.cfg.model_type
            )),
            (Some(limit), Some(n)) if n as i64 > limit => Err(user_error!(
                "--max-length {n} is longer than this {} model's {limit} learned positions; give --max-length {limit} \
                 or less",
                self.cfg.model_type
            )),
            _ => Ok(()),
        }
    }

    /// A one-line error where a sequence of `tokens` tokens is longer than [`Model::position_limit`]; `what` names
    /// the sequence and `fix` the setting that bounds it.
    pub fn check_length(&self, tokens: i64, what: &str, fix: &str) -> anyhow::Result<()> {
        match self.cfg.learned_positions {
            Some(limit) if tokens > limit => Err(user_error!(
                "{what} has {tokens} tokens, but this {} model has {limit} learned positions; {fix}",
                self.cfg.model_type
            )),
            _ => Ok(()),
        }
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the parameters live.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The parameters' dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The base weights, under their Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, ...).
    /// `var_store().save("x.safetensors")` writes a checkpoint transformers can load (tied `lm_head` omitted).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Mutable access, e.g. to [`nn::VarStore::freeze`] the weights.
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// The LoRA adapters' var store, once [`Model::attach_lora`] has run.
    pub fn lora_var_store(&self) -> Option<&nn::VarStore> {
        self.lora_vs.as_ref()
    }

    /// The LoRA settings, once attached.
    pub fn lora_config(&self) -> Option<LoraConfig> {
        self.lora_cfg
    }

    /// The projections that carry adapters (PEFT's `target_modules`), in decoder order: those the settings name
    /// that this model has.
    pub fn lora_modules(&self) -> &[String] {
        &self.lora_modules
    }

    /// Attach LoRA adapters to the linear layers `cfg.targets` names (never `lm_head`) and freeze the base weights,
    /// so an optimizer over [`Model::lora_var_store`] trains only the adapters.
    pub fn attach_lora(&mut self, cfg: LoraConfig) -> anyhow::Result<()> {
        if self.lora_vs.is_some() {
            return Err(user_error!("LoRA adapters are already attached"));
        }
        if cfg.rank <= 0 || cfg.alpha <= 0.0 || !(0.0..1.0).contains(&cfg.dropout) {
            return Err(user_error!(
                "LoRA settings rank={} alpha={} dropout={} are invalid (rank > 0, alpha > 0, 0 <= dropout < 1)",
                cfg.rank,
                cfg.alpha,
                cfg.dropout
            ));
        }
        let mut present = Vec::new();
        for layer in &mut self.layers {
            let layer = Arc::get_mut(layer)
                .ok_or_else(|| user_error!("LoRA adapters cannot be attached while a backward pass is pending"))?;
            for lin in layer.linears_mut() {
                let name = lin.name.rsplit('.').next().unwrap_or_default().to_string();
                if !present.contains(&name) {
                    present.push(name);
                }
            }
        }
        let missing = cfg.targets.names().into_iter().find(|t| !present.iter().any(|p| p == t));
        if let Some(missing) = missing.filter(|_| cfg.targets != LoraTargets::ALL) {
            return Err(user_error!(
                "--lora-target-modules {missing}: this model has no {missing} (its projections: {}); use all-linear \
                 or some of those",
                present.join(",")
            ));
        }
        self.vs.freeze();
        let mut lvs = nn::VarStore::new(self.device());
        for layer in &mut self.layers {
            let layer = Arc::get_mut(layer)
                .ok_or_else(|| user_error!("LoRA adapters cannot be attached while a backward pass is pending"))?;
            for lin in layer.linears_mut() {
                if !cfg.targets.contains(lin.name.rsplit('.').next().unwrap_or_default()) {
                    continue;
                }
                let mut path = lvs.root();
                for part in lin.name.split('.') {
                    path = path.sub(part);
                }
                lin.lora = Some(Box::new(lora::LoraAdapter::new(&path, &cfg, &lin.weight_out_in())));
            }
        }
        if self.kind != Kind::Float {
            lvs.set_kind(self.kind);
        }
        self.lora_vs = Some(lvs);
        self.lora_cfg = Some(cfg);
        self.lora_modules = present.into_iter().filter(|p| cfg.targets.contains(p)).collect();
        Ok(())
    }

    /// Keep the output projection's weight in f32 in a model of a lower dtype (TRL's `cast_lm_head_to_fp32`):
    /// every logit is then computed in f32 from the hidden states cast up, instead of being rounded to bf16 (whose
    /// spacing at a logit of 20 is 0.125), and the weight trains in f32. It is read again from the checkpoint in
    /// f32, so it starts from the stored values rather than from their rounding. A tied model's one matrix is its
    /// embedding too, whose lookups are rounded to the model's dtype as before. Nothing changes in an f32 model.
    pub fn cast_lm_head_to_f32(&mut self) -> anyhow::Result<()> {
        if self.output_weight().kind() == Kind::Float {
            return Ok(());
        }
        let files = WeightFiles::open(&self.dir)?;
        let name = format!("{}.weight", self.head_name);
        let name = layers::stored_name(&files, &name, self.cfg.architecture.module_names().stored_as);
        // The var store and this struct share the variable, so both see the f32 data.
        self.output_weight().shallow_clone().set_data(&files.tensor(&name, Kind::Float, self.device())?);
        if let Some(bias) = &self.lm_head_bias {
            bias.shallow_clone().set_data(&files.tensor("lm_head.bias", Kind::Float, self.device())?);
        }
        Ok(())
    }

    /// Whether the output projection computes in f32 in a model of a lower dtype ([`Model::cast_lm_head_to_f32`]).
    pub fn lm_head_in_f32(&self) -> bool {
        self.kind != Kind::Float && self.output_weight().kind() == Kind::Float
    }

    /// `hidden` in the output projection's dtype (f32 under [`Model::cast_lm_head_to_f32`]).
    fn head_input(&self, hidden: Tensor) -> Tensor {
        match self.output_weight().kind() {
            kind if kind != hidden.kind() => hidden.to_kind(kind),
            _ => hidden,
        }
    }

    /// `hidden` as the log-prob node takes it: in the head's dtype, with a column of ones where `lm_head` has a bias
    /// (see [`Model::node_weight`]), divided by Granite's logits divisor (W (h / s) is (W h) / s, so the node need
    /// not know of it).
    fn node_input(&self, hidden: Tensor) -> Tensor {
        let hidden = self.head_input(hidden);
        let hidden = match &self.lm_head_bias {
            Some(_) => {
                let ones = hidden.narrow(-1, 0, 1).ones_like();
                Tensor::cat(&[hidden, ones], -1)
            }
            None => hidden,
        };
        match self.cfg.logits_divisor {
            Some(divisor) => hidden / divisor,
            None => hidden,
        }
    }

    /// Switch the LoRA adapters on or off (off: the model computes the base, i.e. reference, policy).
    pub fn set_adapters_enabled(&self, on: bool) {
        self.adapters_enabled.store(on, Ordering::Relaxed);
    }

    /// Training mode turns on LoRA dropout; generation and log-prob evaluation run in eval mode.
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    /// Promise that the weights stay as they are until the returned hold is dropped (see [`WeightsFixed`]). Holds
    /// nest: the period lasts until the last one is dropped.
    pub fn hold_weights_fixed(&self) -> WeightsFixed<'_> {
        let mut fixed = self.fixed.lock().unwrap_or_else(|e| e.into_inner());
        if fixed.holds == 0 {
            fixed.period += 1;
        }
        fixed.holds += 1;
        WeightsFixed { model: self }
    }

    /// Score tokens under the model's distribution at `temperature` (logits divided by it) in every token log-prob
    /// and entropy this model computes, and in the engine's record of the sampled tokens' log-probs
    /// (`--logprob-temperature sampling`): the distribution a run's tokens were drawn from, filters aside, as TRL
    /// and verl score them. 1, the default, is the model's own distribution.
    pub fn set_logprob_temperature(&mut self, temperature: f64) {
        self.logprob_temperature = temperature;
    }

    /// The temperature of [`Model::set_logprob_temperature`].
    pub fn logprob_temperature(&self) -> f64 {
        self.logprob_temperature
    }

    /// Weigh a mixture of experts' load-balancing loss by `coef` in training (`--router-aux-loss-coef`, TRL's
    /// `router_aux_loss_coef`); a dense model has none, and keeps 0.
    pub fn set_router_aux_loss_coef(&mut self, coef: f64) {
        self.router_aux_loss_coef = if self.cfg.moe.is_some() { coef } else { 0.0 };
    }

    /// Add NEFTune's noise ([`neftune_noise`]) of scale `alpha` to the input embeddings of forward passes in
    /// training mode (`--neftune-noise-alpha`, transformers' `neftune_noise_alpha`); 0 turns it off. Passes in eval
    /// mode (generation, log-probs, held-out evaluation) see the embeddings as they are.
    pub fn set_neftune_noise_alpha(&mut self, alpha: f64) {
        self.neftune_noise_alpha = alpha;
    }

    /// The weight of [`Model::set_router_aux_loss_coef`]: above 0, training forwards record the router scores
    /// (see [`Model::router_record`]).
    pub fn router_aux_loss_coef(&self) -> f64 {
        self.router_aux_loss_coef
    }

    /// An empty record for a training forward pass to fill with the router scores, when training weighs a
    /// load-balancing loss (see [`Model::load_balancing_loss`]); `None` otherwise.
    pub fn router_record(&self) -> Option<RouterScores> {
        (self.router_aux_loss_coef > 0.0).then(RouterScores::new)
    }

    /// A mixture's load-balancing loss over the real tokens of `attention_mask` `[B, T]`, from the router scores a
    /// forward pass over those rows recorded ([`RouterScores::load_balancing_loss`] at the model's experts per
    /// token); `None` for a dense model or an empty record.
    pub fn load_balancing_loss(&self, routers: &RouterScores, attention_mask: &Tensor) -> Option<Tensor> {
        routers.load_balancing_loss(attention_mask, self.cfg.moe.as_ref()?.experts_per_token)
    }

    /// Gradient checkpointing for training forwards (see [`recompute`]): each layer keeps only its input and runs
    /// again in the backward pass. Forwards with gradients off, or outside training mode, are unaffected.
    pub fn set_gradient_checkpointing(&self, on: bool) {
        self.gradient_checkpointing.store(on, Ordering::Relaxed);
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            adapters: self.adapters_enabled.load(Ordering::Relaxed),
            train: self.training.load(Ordering::Relaxed),
            fixed: {
                let fixed = self.fixed.lock().unwrap_or_else(|e| e.into_inner());
                (fixed.holds > 0).then_some(fixed.period)
            },
        }
    }

    /// Position ids from an attention mask (1 = real token): `cumsum - 1`, padding set to 1 like transformers.
    pub fn position_ids(attention_mask: &Tensor) -> Tensor {
        let m = attention_mask.to_kind(Kind::Int64);
        let pos = m.cumsum(-1, Kind::Int64) - 1;
        pos.masked_fill(&m.eq(0), 1)
    }

    /// Boolean `[B, 1, T, S]` mask for queries at columns `offset..offset+T` over keys `0..S`: causal (within
    /// `window` where there is one), padding keys excluded, and each query always sees itself so that rows of pure
    /// padding stay finite.
    fn mask_4d(key_valid: &Tensor, t: i64, offset: i64, window: Option<i64>) -> Tensor {
        let device = key_valid.device();
        let s = key_valid.size()[1];
        let q = Tensor::arange_start(offset, offset + t, (Kind::Int64, device)).unsqueeze(1);
        let k = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0);
        let causal = within_window(k.le_tensor(&q), &k, &q, window);
        let diag = k.eq_tensor(&q);
        let valid = key_valid.to_kind(Kind::Bool).unsqueeze(1);
        causal.unsqueeze(0).logical_and(&valid).logical_or(&diag.unsqueeze(0)).unsqueeze(1)
    }

    /// The layers on `x` (embedded ids at positions `pos`; `last`, each row's last real position where padding
    /// follows it at higher positions). Each kind of layer the model has (full attention, and the sliding-window
    /// ones) attends with `mask(its window)`, built once per pass, and with its own rotary table's cos/sin. A
    /// mixture's router scores go to `routers` when given.
    fn run(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        last: Option<&[i64]>,
        mask: impl Fn(Option<i64>) -> Mask,
        mut cache: Option<(&mut KvCache, &SlotWrite)>,
        mut routers: Option<&mut RouterScores>,
    ) -> Tensor {
        let ctx = self.ctx();
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        if x.kind() != self.kind {
            // A tied embedding kept in f32 for the output projection looks up in the model's dtype.
            x = x.to_kind(self.kind);
        }
        if ctx.train && self.neftune_noise_alpha > 0.0 {
            // On the token embedding's own output, as transformers hooks it: before positions and scales.
            x = neftune_noise(&x, self.neftune_noise_alpha);
        }
        if let (Some(table), Some(limit)) = (&self.position_embed, self.cfg.learned_positions) {
            // Real tokens stay below the table's length (`Model::position_limit`, checked where sequences are made
            // and in the cached forward); a padding token beyond it takes the last row, and nothing reads its output.
            x += Tensor::embedding(table, &pos.clamp_max(limit - 1), -1, false, false);
        }
        match self.cfg.embedding_scale {
            // transformers rounds the scale to the model's dtype first (Gemma's sqrt(3072) is 55.5 in bf16).
            Some(EmbeddingScale::Rounded(scale)) => x = &x * Tensor::from(scale).to_kind(self.kind).double_value(&[]),
            Some(EmbeddingScale::Exact(scale)) => x = &x * scale,
            None => {}
        }
        if self.cfg.embedding_norm {
            // nanochat normalises the embedding with its final norm, which has no parameters.
            x = self.norm.forward(&x);
        }
        let (cos, sin) = self.rotary.cos_sin(pos, self.kind, last);
        let full = self.layers.iter().any(|l| l.window.is_none()).then(|| KindInputs {
            mask: mask(None),
            cos: cos.shallow_clone(),
            sin: sin.shallow_clone(),
        });
        let sliding = self.cfg.sliding_window.map(|window| {
            let (cos, sin) = match &self.sliding_rotary {
                Some(rotary) => rotary.cos_sin(pos, self.kind, last),
                None => (cos.shallow_clone(), sin.shallow_clone()),
            };
            KindInputs { mask: mask(Some(window)), cos, sin }
        });
        let recompute = ctx.train && cache.is_none() && self.gradient_checkpointing.load(Ordering::Relaxed);
        for (i, layer) in self.layers.iter().enumerate() {
            let inputs = if layer.window.is_some() { &sliding } else { &full };
            let Some(KindInputs { mask, cos, sin }) = inputs else {
                unreachable!("inputs are built for every kind of layer the model has")
            };
            let (out, scores) = match mask.view() {
                mask @ (AttentionMask::Causal | AttentionMask::Allowed(_)) if recompute => {
                    self.recomputed(layer, &x, cos, sin, mask, ctx, routers.is_some())
                }
                mask => {
                    let c = cache.as_mut().map(|(c, at)| (&mut c.layers[i], *at));
                    layer.forward(&x, cos, sin, mask, c, ctx)
                }
            };
            x = out;
            if let (Some(routers), Some(scores)) = (routers.as_mut(), scores) {
                routers.push(scores);
            }
        }
        self.norm.forward(&x)
    }

    /// `layer` on `x` (no cache) through a node that runs it again in the backward pass; its own copies of what the
    /// layer reads go with it, since the backward pass comes after this forward call has returned. With `routed`,
    /// a mixture's router scores come out too (with their gradient through the node).
    #[allow(clippy::too_many_arguments)]
    fn recomputed(
        &self,
        layer: &Arc<DecoderLayer>,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: AttentionMask,
        ctx: Ctx,
        routed: bool,
    ) -> (Tensor, Option<Tensor>) {
        let experts = match (&layer.mlp, routed) {
            (FeedForward::Sparse(_), true) => self.cfg.moe.as_ref().map(|moe| moe.experts),
            _ => None,
        };
        let (layer, cos, sin) = (Arc::clone(layer), cos.shallow_clone(), sin.shallow_clone());
        let allowed = match mask {
            AttentionMask::Allowed(m) => Some(m.shallow_clone()),
            _ => None,
        };
        let dropout = self.lora_cfg.is_some_and(|c| c.dropout > 0.0);
        let out = recompute::recompute_in_backward(
            x,
            move |x| {
                let mask = allowed.as_ref().map_or(AttentionMask::Causal, AttentionMask::Allowed);
                let (out, scores) = layer.forward(x, &cos, &sin, mask, None, ctx);
                match (experts, scores) {
                    // The node has one output, so the scores travel beside the hidden state, one more column per
                    // expert, and are cut off again below; each part's gradient reaches its own graph.
                    (Some(_), Some(scores)) => {
                        let scores = scores.reshape([out.size()[0], out.size()[1], -1]).to_kind(out.kind());
                        Tensor::cat(&[out, scores], -1)
                    }
                    _ => out,
                }
            },
            dropout,
        );
        match experts {
            Some(experts) => {
                let hidden = self.cfg.hidden_size;
                let scores = out.narrow(-1, hidden, experts).reshape([-1, experts]);
                (out.narrow(-1, 0, hidden), Some(scores))
            }
            None => (out, None),
        }
    }

    /// Final hidden states `[B, T, hidden]` (after the last norm) for padded `input_ids` `[B, T]` with
    /// `attention_mask` `[B, T]` (1 = real token, padding anywhere) and `position_ids` `[B, T]`.
    pub fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor, position_ids: &Tensor) -> Tensor {
        self.hidden_states_padded(input_ids, attention_mask, position_ids, Padding::Any, None)
    }

    /// [`Model::hidden_states`] for rows padded as `padding` says (see [`Model::token_log_probs_padded`]), a
    /// mixture's router scores going to `routers` when given (for [`Model::load_balancing_loss`]).
    pub fn hidden_states_padded(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        pos: &Tensor,
        padding: Padding,
        routers: Option<&mut RouterScores>,
    ) -> Tensor {
        let right = match padding {
            Padding::Right => {
                debug_assert!(Self::right_padded(attention_mask), "rows said to be right-padded are not");
                true
            }
            Padding::Any => Self::right_padded(attention_mask),
        };
        let t = ids.size()[1];
        // Real tokens never see the trailing padding under a causal mask, so no explicit mask is needed where a
        // window, if any, spans the rows (rollouts are right-padded: this is every training and log-prob forward).
        let mask = |window| match right && window_spans(window, t) {
            true => Mask::Causal,
            false => Mask::Allowed(Self::mask_4d(attention_mask, t, 0, window)),
        };
        // Padding sits at position 1, below every row's last real position.
        self.run(ids, pos, None, mask, None, routers)
    }

    /// Whether every row's real tokens come before all of its padding.
    fn right_padded(attention_mask: &Tensor) -> bool {
        let t = attention_mask.size()[1];
        if t < 2 {
            return true;
        }
        let m = attention_mask.to_kind(Kind::Bool);
        let real_after_pad = m.narrow(1, 1, t - 1).logical_and(&m.narrow(1, 0, t - 1).logical_not());
        real_after_pad.any().int64_value(&[]) == 0
    }

    /// The output projection: logits `[.., vocab]` in the model dtype (f32 under [`Model::cast_lm_head_to_f32`])
    /// for hidden states `[.., hidden]`, divided by Granite's `logits_scaling` and soft-capped where the model caps
    /// them (Gemma 2), in that dtype as transformers does.
    pub fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let logits = match self.cfg.logits_divisor {
            Some(divisor) => self.project(hidden) / divisor,
            None => self.project(hidden),
        };
        match self.cfg.final_logit_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// The output head's projection of `hidden`, uncapped (a classifier's scores).
    fn project(&self, hidden: &Tensor) -> Tensor {
        self.head_input(hidden.shallow_clone()).linear(self.output_weight(), self.lm_head_bias.as_ref())
    }

    /// A sequence classifier's scores `[B, labels]` (f32) of right-padded `input_ids` `[B, T]` whose rows hold
    /// `lengths` real tokens each: its `score` head on each row's last real token, as transformers'
    /// `*ForSequenceClassification` reads it. Only for a model loaded with [`OutputHead::Score`].
    pub fn sequence_scores(&self, input_ids: &Tensor, lengths: &[i64]) -> Tensor {
        let (b, t) = (input_ids.size()[0], input_ids.size()[1]);
        let device = input_ids.device();
        let lengths = Tensor::from_slice(lengths).to_device(device);
        let mask = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0).lt_tensor(&lengths.unsqueeze(1));
        let hidden = self.hidden_states_padded(input_ids, &mask, &Self::position_ids(&mask), Padding::Right, None);
        let h = hidden.size()[2];
        let last = (lengths - 1).view([b, 1, 1]).expand([b, 1, h], false);
        self.project(&hidden.gather(1, &last, false).squeeze_dim(1)).to_kind(Kind::Float)
    }

    /// The output projection's weight `[vocab, hidden]`: `lm_head`'s, or the embedding's when they are tied (a
    /// classifier's `score` `[labels, hidden]`).
    fn output_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// The weight the log-prob node projects [`Model::node_input`]'s hidden states with: the output weight, and
    /// where `lm_head` has a bias, the bias as one more column (`W h + b = [W b] [h 1]`), so that the node needs no
    /// bias of its own. That costs a copy of the head per forward pass, in the one family that has the bias (Phi).
    fn node_weight(&self) -> Tensor {
        match &self.lm_head_bias {
            Some(bias) => Tensor::cat(&[self.output_weight(), &bias.unsqueeze(1)], 1),
            None => self.output_weight().shallow_clone(),
        }
    }

    /// Positions per vocabulary projection for `rows` rows, so that one chunk holds at most [`LOGITS_PER_CHUNK`]
    /// logits.
    fn log_prob_chunk(&self, rows: i64) -> i64 {
        (LOGITS_PER_CHUNK / (rows * self.cfg.vocab_size).max(1)).max(1)
    }

    /// Logits `[B, T, vocab]` (model dtype). For long vocabularies prefer [`Model::token_log_probs`], which
    /// never holds all of them in f32.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, position_ids: &Tensor) -> Tensor {
        self.lm_head(&self.hidden_states(input_ids, attention_mask, position_ids))
    }

    /// `[B, T-1]` f32: entry `t` is log p(input_ids[t+1] | input_ids[..=t]). Positions come from the mask.
    /// The vocabulary projection and log-softmax run in chunks of positions so that at most about 2^26 f32
    /// logits exist at once, in the forward and in the backward pass (which recomputes them: see
    /// [`token_log_probs_of`]). Rows may be padded anywhere; see [`Model::token_log_probs_padded`].
    pub fn token_log_probs(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.token_log_probs_padded(input_ids, attention_mask, Padding::Any)
    }

    /// [`Model::token_log_probs`] for rows padded as `padding` says. [`Padding::Right`] spares reading the mask back
    /// to the host to find out, which on a GPU stalls the queue of kernels before every training micro-batch.
    pub fn token_log_probs_padded(&self, input_ids: &Tensor, attention_mask: &Tensor, padding: Padding) -> Tensor {
        self.log_probs(input_ids, attention_mask, self.log_prob_chunk(input_ids.size()[0]), padding)
    }

    /// [`Model::token_log_probs_padded`], and `[B, T-1]` f32 the entropy of each position's next-token distribution,
    /// read from the logits the log-probs are computed from (one more pass over each chunk of them), with a gradient
    /// when `grad` says so (model/token_log_probs.cpp). A mixture's router scores go to `routers` when given.
    pub fn token_log_probs_and_entropy(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        padding: Padding,
        grad: EntropyGrad,
        routers: Option<&mut RouterScores>,
    ) -> (Tensor, Tensor) {
        let chunk = self.log_prob_chunk(input_ids.size()[0]);
        match self.head_inputs(input_ids, attention_mask, padding, routers) {
            Some((hidden, targets, map)) => {
                log_probs_and_entropy(&hidden, &self.node_weight(), &targets, chunk, map, grad)
            }
            None => {
                let empty = Tensor::zeros([input_ids.size()[0], 0], (Kind::Float, input_ids.device()));
                (empty.shallow_clone(), empty)
            }
        }
    }

    /// [`Model::token_log_probs`] with an explicit chunk length (positions per vocabulary projection).
    pub fn token_log_probs_chunked(&self, input_ids: &Tensor, attention_mask: &Tensor, chunk: i64) -> Tensor {
        self.log_probs(input_ids, attention_mask, chunk, Padding::Any)
    }

    /// Log-probs `[N]` of `targets` `[N]` under the output head applied to `hidden` `[N, hidden]` (final hidden
    /// states, one row per predicted token), whether each target is the most likely token, and each distribution's
    /// entropy, through the same chunked node as [`Model::token_log_probs`], so no more than about 2^26 f32 logits
    /// exist at once.
    pub fn head_log_probs(&self, hidden: &Tensor, targets: &Tensor) -> HeadOutputs {
        let (hidden, targets, chunk) =
            (self.node_input(hidden.unsqueeze(0)), targets.unsqueeze(0), self.log_prob_chunk(1));
        let hits = Tensor::zeros(targets.size(), (Kind::Bool, targets.device()));
        let entropy = Tensor::zeros(targets.size(), (Kind::Float, targets.device()));
        let extra = Outputs { hits: Some(&hits), entropy: Some(&entropy) };
        let map = LogitMap { cap: self.cfg.final_logit_softcap, scale: 1.0 };
        let log_probs = log_probs_node(&hidden, &self.node_weight(), &targets, chunk, map, extra);
        HeadOutputs { log_probs: log_probs.squeeze_dim(0), hits: hits.squeeze_dim(0), entropy: entropy.squeeze_dim(0) }
    }

    fn log_probs(&self, input_ids: &Tensor, attention_mask: &Tensor, chunk: i64, padding: Padding) -> Tensor {
        match self.head_inputs(input_ids, attention_mask, padding, None) {
            Some((hidden, targets, map)) => {
                log_probs_node(&hidden, &self.node_weight(), &targets, chunk, map, Outputs::default())
            }
            None => Tensor::zeros([input_ids.size()[0], 0], (Kind::Float, input_ids.device())),
        }
    }

    /// The final hidden states `[B, T-1, H]` that predict each next token, those tokens `[B, T-1]`, and how the
    /// node makes their logits (the log-prob temperature divides the hidden states, or, after a soft cap, the
    /// capped logits); `None` for sequences of fewer than two tokens.
    fn head_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        padding: Padding,
        routers: Option<&mut RouterScores>,
    ) -> Option<(Tensor, Tensor, LogitMap)> {
        let t = input_ids.size()[1];
        if t < 2 {
            return None;
        }
        let pos = Self::position_ids(attention_mask);
        let hidden = self.hidden_states_padded(input_ids, attention_mask, &pos, padding, routers);
        let targets = input_ids.narrow(1, 1, t - 1);
        let hidden = self.node_input(hidden.narrow(1, 0, t - 1));
        let temperature = self.logprob_temperature;
        if let Some(cap) = self.cfg.final_logit_softcap {
            return Some((hidden, targets, LogitMap { cap: Some(cap), scale: 1.0 / temperature }));
        }
        // W (h / T) = (W h) / T: the logits divided by the temperature without the node knowing of it.
        let hidden = if temperature == 1.0 { hidden } else { hidden / temperature };
        Some((hidden, targets, LogitMap::PLAIN))
    }

    /// An empty cache of `slots` sequences of up to `capacity` tokens each.
    pub fn new_cache(&self, slots: i64, capacity: i64) -> KvCache {
        let shape = [slots, self.cfg.num_key_value_heads, capacity, self.cfg.head_dim];
        let opts = (self.kind, self.device());
        let layers = (0..self.cfg.num_hidden_layers)
            .map(|_| LayerCache { k: Tensor::zeros(shape, opts), v: Tensor::zeros(shape, opts) })
            .collect();
        KvCache { layers }
    }

    /// Bytes the cache holds per token of one sequence (keys and values of every layer).
    pub fn cache_bytes_per_token(&self) -> i64 {
        2 * self.cfg.num_hidden_layers
            * self.cfg.num_key_value_heads
            * self.cfg.head_dim
            * self.kind.elt_size_in_bytes() as i64
    }

    /// Run `input_ids` `[B, T]` on top of the cached sequences in `rows`: row `b` continues its slot's sequence of
    /// `starts[b]` cached tokens, so its tokens take positions (and cache columns) `starts[b]..starts[b] + T` and
    /// attend to its own columns before them. Rows may be right-padded to the common `T`: row `b` holds `lengths[b]`
    /// real tokens, and a padding token writes beyond its row's real end, where the row's next real tokens overwrite
    /// it before anything can attend to it. Returns the final hidden states `[B, T, hidden]`; apply
    /// [`Model::lm_head`] where logits are needed.
    pub fn forward_slots(
        &self,
        input_ids: &Tensor,
        starts: &[i64],
        lengths: &[i64],
        rows: &CacheRows,
        cache: &mut KvCache,
    ) -> anyhow::Result<Tensor> {
        anyhow::ensure!(
            input_ids.size()[0] == starts.len() as i64,
            "{} rows of input for {} starts",
            input_ids.size()[0],
            starts.len()
        );
        anyhow::ensure!(lengths.len() == starts.len(), "{} lengths for {} starts", lengths.len(), starts.len());
        let longest = starts.iter().max().copied().unwrap_or(0);
        let last: Vec<i64> = starts.iter().zip(lengths).map(|(s, n)| s + n - 1).collect();
        let starts = Tensor::from_slice(starts).to_device(self.device());
        self.slots_forward(input_ids, &starts, longest, Some(&last), rows, cache)
    }

    /// [`Model::forward_slots`] with the starts already on the device (`starts` `[B]` int64; `longest` is the
    /// largest of them, or more), so that nothing is copied from the host: decode steps queued back to back with
    /// no host read between them feed each other this way.
    pub fn forward_slots_from(
        &self,
        input_ids: &Tensor,
        starts: &Tensor,
        longest: i64,
        rows: &CacheRows,
        cache: &mut KvCache,
    ) -> anyhow::Result<Tensor> {
        self.slots_forward(input_ids, starts, longest, None, rows, cache)
    }

    /// [`Model::forward_slots_from`], with each row's last real position where rows are padded (else their last).
    fn slots_forward(
        &self,
        input_ids: &Tensor,
        starts: &Tensor,
        longest: i64,
        last: Option<&[i64]>,
        rows: &CacheRows,
        cache: &mut KvCache,
    ) -> anyhow::Result<Tensor> {
        let (b, t) = (input_ids.size()[0], input_ids.size()[1]);
        anyhow::ensure!(
            b == rows.len() && [b] == starts.size()[..],
            "{b} rows of input for {} cache rows and starts of shape {:?}",
            rows.len(),
            starts.size()
        );
        let keys = longest + t;
        let reach = last.map_or(keys, |last| last.iter().max().map_or(0, |l| l + 1));
        self.check_length(
            reach,
            "a sequence",
            "keep prompt and completion within it (--max-length, --max-new-tokens)",
        )?;
        if keys > cache.capacity() {
            anyhow::bail!("KV cache overflow: {keys} columns exceed its capacity {}", cache.capacity());
        }
        let device = self.device();
        let positions = starts.unsqueeze(1) + Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0);
        // A query at position p sees the columns 0..=p of its own slot: its history and itself.
        let columns = Tensor::arange(keys, (Kind::Int64, device)).view([1, 1, 1, keys]);
        let query = positions.view([b, 1, t, 1]);
        let at = SlotWrite::new(rows, positions.shallow_clone(), keys, device);
        let mask = |window: Option<i64>| {
            if t == 1 {
                let ahead = columns.gt_tensor(&query);
                return Mask::DecodeBlocked(match window {
                    Some(window) => ahead.logical_or(&columns.le_tensor(&(&query - window))),
                    None => ahead,
                });
            }
            if keys == t && window_spans(window, keys) {
                // Every row starts at column 0 (a first prefill): "columns 0..=p" is plain causal attention over
                // the new tokens, so SDPA can take its causal path (flash attention where it has one) with no
                // mask. A shorter row's padded tail attends to its own padding, which no later query reads: those
                // columns are overwritten by the row's next tokens before its position reaches them.
                return Mask::Causal;
            }
            Mask::Allowed(within_window(columns.le_tensor(&query), &columns, &query, window))
        };
        Ok(self.run(input_ids, &positions, last, mask, Some((cache, &at)), None))
    }
}

/// What the layers of one kind (full attention, or sliding window) read in a forward pass.
struct KindInputs {
    mask: Mask,
    cos: Tensor,
    sin: Tensor,
}

/// An attention mask a forward pass builds for its layers to borrow as an [`AttentionMask`].
enum Mask {
    Causal,
    Allowed(Tensor),
    DecodeBlocked(Tensor),
}

impl Mask {
    fn view(&self) -> AttentionMask<'_> {
        match self {
            Mask::Causal => AttentionMask::Causal,
            Mask::Allowed(t) => AttentionMask::Allowed(t),
            Mask::DecodeBlocked(t) => AttentionMask::DecodeBlocked(t),
        }
    }
}

/// Whether every query can reach every one of `keys` keys: no sliding window, or one that spans them all.
fn window_spans(window: Option<i64>, keys: i64) -> bool {
    window.is_none_or(|w| w >= keys)
}

/// `allowed` (keys at columns `k` for queries at columns `q`, broadcast) less the keys `window` or more columns
/// behind their query, as transformers' sliding-window mask (`k > q - window`). Real tokens sit in consecutive
/// columns, so columns behind are tokens behind.
fn within_window(allowed: Tensor, k: &Tensor, q: &Tensor, window: Option<i64>) -> Tensor {
    match window {
        Some(window) => allowed.logical_and(&k.gt_tensor(&(q - window))),
        None => allowed,
    }
}

/// Token rows as one `[B, width]` int64 tensor on `device`: each row's ids from column 0, then 0s. The model reads
/// where a row ends from its length or attention mask, never from a pad id; `width` is at least the longest row.
pub fn right_padded<'a>(rows: impl ExactSizeIterator<Item = &'a [u32]>, width: usize, device: Device) -> Tensor {
    let b = rows.len();
    let mut ids = vec![0i64; b * width];
    for (r, row) in rows.enumerate() {
        for (j, &id) in row.iter().enumerate() {
            ids[r * width + j] = id as i64;
        }
    }
    Tensor::from_slice(&ids).view([b as i64, width as i64]).to_device(device)
}

/// `x` `[B, T, hidden]` plus NEFTune's noise (Jain et al., 2023): each element drawn uniformly from
/// `+-alpha / sqrt(T * hidden)` by libtorch's generator, padding positions included, as transformers draws it.
pub fn neftune_noise(x: &Tensor, alpha: f64) -> Tensor {
    let bound = alpha / ((x.size()[1] * x.size()[2]) as f64).sqrt();
    let mut noise = x.zeros_like();
    let _ = noise.uniform_(-bound, bound);
    x + noise
}

/// The most logits one vocabulary projection of the log-probs computes (2^26 f32: 256 MiB), which bounds what the
/// forward and backward passes hold of them at once.
pub const LOGITS_PER_CHUNK: i64 = 1 << 26;

extern "C" {
    fn grpo_token_log_probs(
        hidden: *mut std::ffi::c_void,
        weight: *mut std::ffi::c_void,
        targets: *mut std::ffi::c_void,
        chunk: i64,
        cap: f64,
        scale: f64,
        hits: *mut std::ffi::c_void,
        entropy: *mut std::ffi::c_void,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> *mut torch_sys::C_tensor;
    fn grpo_token_log_probs_entropy(
        hidden: *mut std::ffi::c_void,
        weight: *mut std::ffi::c_void,
        targets: *mut std::ffi::c_void,
        chunk: i64,
        cap: f64,
        scale: f64,
        entropy: *mut *mut torch_sys::C_tensor,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> *mut torch_sys::C_tensor;
}

/// [`token_log_probs_and_entropy_of`] with the entropy differentiable: `[B, N]` log-probs and entropies, both with
/// gradients to `hidden` and `weight` (the entropy's `-p (log p + H)` per logit).
fn differentiable_entropy_node(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    chunk: i64,
    map: LogitMap,
) -> (Tensor, Tensor) {
    let mut err = crate::runtime::ErrBuf::new();
    let mut entropy: *mut torch_sys::C_tensor = std::ptr::null_mut();
    // SAFETY: the pointers are live tensors for the duration of the call; non-null results are new heap-allocated
    // tensors whose ownership passes to the returned values.
    let out = unsafe {
        grpo_token_log_probs_entropy(
            hidden.as_ptr() as *mut _,
            weight.as_ptr() as *mut _,
            targets.as_ptr() as *mut _,
            chunk.max(1),
            map.cap.unwrap_or(0.0),
            map.scale,
            &mut entropy,
            err.ptr(),
            1024,
        )
    };
    if out.is_null() || entropy.is_null() {
        panic!("token log-probs and entropy: {}", err.text());
    }
    unsafe { (Tensor::from_ptr(out), Tensor::from_ptr(entropy)) }
}

/// `[B, N]` f32 log-probs of `targets` `[B, N]` under the logits `hidden` `[B, N, H]` x `weight` `[V, H]`, computed
/// `chunk` positions at a time. One autograd node (model/token_log_probs.cpp) that holds at most one chunk of f32
/// logits at a time instead of all of them (about 5 GB at 8 x 1024 tokens and Qwen's 151,936-token vocabulary): its
/// backward recomputes each chunk's, except when all positions fit in one chunk, whose softmax the forward keeps.
/// Values and gradients are the plain autograd expression's (`linear`, f32, `gather - logsumexp`); panics, as tch's
/// own operations do, when libtorch fails.
pub fn token_log_probs_of(hidden: &Tensor, weight: &Tensor, targets: &Tensor, chunk: i64) -> Tensor {
    log_probs_node(hidden, weight, targets, chunk, LogitMap::PLAIN, Outputs::default())
}

/// [`token_log_probs_of`], and `[B, N]` bool: whether each target is its position's most likely token (the
/// argmax of its logits), read from the logits the node computes anyway.
pub fn token_log_probs_and_hits(hidden: &Tensor, weight: &Tensor, targets: &Tensor, chunk: i64) -> (Tensor, Tensor) {
    let hits = Tensor::zeros(targets.size(), (Kind::Bool, targets.device()));
    let extra = Outputs { hits: Some(&hits), ..Outputs::default() };
    (log_probs_node(hidden, weight, targets, chunk, LogitMap::PLAIN, extra), hits)
}

/// [`token_log_probs_of`], and `[B, N]` f32 the entropy `-sum p log p` of each position's distribution, computed
/// from the logits the node computes anyway: outside autograd, or differentiable too under [`EntropyGrad::Yes`].
pub fn token_log_probs_and_entropy_of(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    chunk: i64,
    grad: EntropyGrad,
) -> (Tensor, Tensor) {
    log_probs_and_entropy(hidden, weight, targets, chunk, LogitMap::PLAIN, grad)
}

fn log_probs_and_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    chunk: i64,
    map: LogitMap,
    grad: EntropyGrad,
) -> (Tensor, Tensor) {
    if grad == EntropyGrad::Yes {
        return differentiable_entropy_node(hidden, weight, targets, chunk, map);
    }
    let entropy = Tensor::zeros(targets.size(), (Kind::Float, targets.device()));
    let extra = Outputs { entropy: Some(&entropy), ..Outputs::default() };
    (log_probs_node(hidden, weight, targets, chunk, map, extra), entropy)
}

/// What [`Model::head_log_probs`] computes for each of `N` predicted tokens.
pub struct HeadOutputs {
    /// `[N]` f32 log-probs of the targets (with grad).
    pub log_probs: Tensor,
    /// `[N]` bool: the target is the most likely token.
    pub hits: Tensor,
    /// `[N]` f32 entropy of the predicted distribution (no grad).
    pub entropy: Tensor,
}

/// What the log-prob node also fills from the logits it computes, besides the log-probs: tensors shaped as the
/// targets, or `None` for nothing.
#[derive(Default)]
struct Outputs<'a> {
    /// Bool: the target is its position's most likely token.
    hits: Option<&'a Tensor>,
    /// F32: the entropy of the position's distribution.
    entropy: Option<&'a Tensor>,
}

/// How the log-prob node makes logits of `hidden x weight^T`: `scale * cap * tanh(z / cap)` under a cap (Gemma 2's
/// final soft cap, with the log-prob temperature as `1 / scale` applied after it), else `scale * z`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LogitMap {
    cap: Option<f64>,
    scale: f64,
}

impl LogitMap {
    /// The projection itself.
    const PLAIN: LogitMap = LogitMap { cap: None, scale: 1.0 };
}

fn log_probs_node(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    chunk: i64,
    map: LogitMap,
    extra: Outputs,
) -> Tensor {
    let mut err = crate::runtime::ErrBuf::new();
    let pointer = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut _);
    // SAFETY: the pointers are live tensors (or null) for the duration of the call, and a non-null result is a new
    // heap-allocated tensor whose ownership passes to the returned value.
    let out = unsafe {
        grpo_token_log_probs(
            hidden.as_ptr() as *mut _,
            weight.as_ptr() as *mut _,
            targets.as_ptr() as *mut _,
            chunk.max(1),
            map.cap.unwrap_or(0.0),
            map.scale,
            pointer(extra.hits),
            pointer(extra.entropy),
            err.ptr(),
            1024,
        )
    };
    if out.is_null() {
        panic!("token log-probs: {}", err.text());
    }
    unsafe { Tensor::from_ptr(out) }
}
