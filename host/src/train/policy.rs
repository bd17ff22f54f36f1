//! The model being trained, its tokenizer, and the reference policy the KL term compares against.
//!
//! With LoRA the reference is the same model with its adapters switched off, so it costs no memory; with full
//! fine-tuning it is a frozen second copy; with `--kl-weight 0` there is none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use super::config::{CheckpointSettings, ModelSettings, RecomputeOld};
use super::experience::{Chunking, Experience};
use super::optimizer::{AdamW, AdamWConfig};
use super::precision::LossScaler;
use super::precision::Precision;
use crate::checkpoint::{AdapterInfo, CheckpointData, TrainerState};
use crate::model::lora::merged_weight;
use crate::model::{self, Model, Padding};
use crate::tokenizer::Tokenizer;
use crate::user_error;

enum Reference {
    None,
    AdaptersOff,
    Copy(Box<Model>),
}

/// The trained model and what goes with it.
pub struct Policy {
    model: Model,
    /// A copy in the rollout dtype when it differs from the training dtype (`--rollout-dtype`).
    sampler: Option<Box<Model>>,
    tokenizer: Tokenizer,
    reference: Reference,
    model_dir: PathBuf,
    precision: Precision,
    /// The PEFT adapter a fresh run starts its adapters from (`--lora-adapter`).
    initial_adapter: Option<PathBuf>,
    /// `--chat-template`'s text, which checkpoints save in place of the model's template.
    chat_template: Option<String>,
}

impl Policy {
    /// Load the model, attach LoRA adapters when asked (initialised from `seed`, so a run is reproducible from
    /// its seed alone), and set up the reference when `with_reference` (a KL term in the loss or the reward).
    pub fn load(settings: &ModelSettings, with_reference: bool, seed: u64) -> Result<Policy> {
        let model_dir =
            model::resolve_model_dir(settings.model.as_deref(), settings.revision.as_deref(), settings.allow_download)?;
        let device = settings.device.resolve()?;
        let precision = Precision::resolve(settings.mixed_precision, settings.dtype, device)?
            .with_rollout(settings.rollout_dtype, device);
        let kind = precision.working;
        let load = |kind| load_model(&model_dir, device, kind, settings.cast_lm_head_to_fp32);
        let mut model = load(kind)?;
        model.set_gradient_checkpointing(settings.gradient_checkpointing);
        model.set_router_aux_loss_coef(settings.router_aux_loss_coef);
        let mut tokenizer = Tokenizer::from_dir(&model_dir)?;
        if let Some(template) = &settings.chat_template {
            tokenizer.set_chat_template(template)?;
        }
        tokenizer.set_template_vars(settings.chat_template_kwargs.clone());
        if let Some(lora) = settings.lora {
            tch::manual_seed(seed as i64);
            model.attach_lora(lora)?;
        }
        let reference = if !with_reference {
            Reference::None
        } else if settings.lora.is_some() {
            Reference::AdaptersOff
        } else {
            let mut copy = load(kind)?;
            copy.var_store_mut().freeze();
            Reference::Copy(Box::new(copy))
        };
        // Frozen: it only ever receives the trained weights (`refresh_sampler`), never gradients. With LoRA it holds
        // the merged weights, so it needs no adapters of its own.
        let sampler = if precision.separate_rollout() {
            let mut copy = load(precision.rollout)?;
            copy.var_store_mut().freeze();
            Some(Box::new(copy))
        } else {
            None
        };
        let initial_adapter = settings.lora_adapter.as_ref().map(PathBuf::from);
        let chat_template = settings.chat_template.clone();
        Ok(Policy { model, sampler, tokenizer, reference, model_dir, precision, initial_adapter, chat_template })
    }

    /// Under mixed precision with full fine-tuning, the model's weights as stored on disk in f32, loaded on the CPU,
    /// for the optimizer's master weights to start from (their bf16 working copies are a rounding of them);
    /// `None` otherwise (no masters, or LoRA, whose adapters start in the working dtype).
    pub fn initial_master_weights(&self) -> Result<Option<BTreeMap<String, Tensor>>> {
        if !self.precision.master_weights || self.model.lora_var_store().is_some() {
            return Ok(None);
        }
        let full = Model::load(&self.model_dir, Device::Cpu, Kind::Float)?;
        Ok(Some(full.var_store().variables().into_iter().collect()))
    }

    /// Score tokens at `temperature` in every model of the policy: the trained one, the sampler, the reference
    /// ([`Model::set_logprob_temperature`]).
    pub fn set_logprob_temperature(&mut self, temperature: f64) {
        self.model.set_logprob_temperature(temperature);
        if let Some(sampler) = &mut self.sampler {
            sampler.set_logprob_temperature(temperature);
        }
        if let Reference::Copy(copy) = &mut self.reference {
            copy.set_logprob_temperature(temperature);
        }
    }

    /// Add NEFTune's noise of scale `alpha` to the trained model's input embeddings in training forwards (0: none;
    /// [`Model::set_neftune_noise_alpha`]).
    pub fn set_neftune_noise_alpha(&mut self, alpha: f64) {
        self.model.set_neftune_noise_alpha(alpha);
    }

    /// The model rollouts sample from: the rollout-dtype copy, or the trained model itself.
    pub fn sampler(&self) -> &Model {
        self.sampler.as_deref().unwrap_or(&self.model)
    }

    /// Copy the trained weights into the rollout-dtype copy (nothing without one): from the optimizer's f32 masters
    /// when given (one rounding, straight to the rollout dtype), with LoRA the merged weights. Called before each
    /// batch's rollouts, so they always sample from the weights the last update left.
    pub fn refresh_sampler(&self, masters: Option<&BTreeMap<String, Tensor>>) {
        let Some(sampler) = &self.sampler else { return };
        let source = match (self.merged_weights(), masters) {
            (Some(merged), _) => merged,
            (None, Some(masters)) => masters.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect(),
            (None, None) => self.weights(),
        };
        tch::no_grad(|| {
            for (name, var) in sampler.var_store().variables() {
                if let Some(w) = source.get(&name) {
                    var.shallow_clone().copy_(&w.to_kind(var.kind()));
                }
            }
        });
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Its tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model directory the run started from.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// Where the model runs.
    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The run's precision: the parameters' dtype and whether the optimizer keeps f32 masters.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Its dtype.
    pub fn kind(&self) -> Kind {
        self.model.kind()
    }

    fn trained_store(&self) -> &tch::nn::VarStore {
        self.model.lora_var_store().unwrap_or_else(|| self.model.var_store())
    }

    /// The parameters the optimizer updates, by name, in a fixed order.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.trained_store().variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Whether old log-probs need a forward pass: the sampler's are the same computation only when both sample and
    /// train in f32 (in bf16 the incremental decode and a full forward round differently enough to bias the ratio;
    /// a sampler in another dtype is another policy, numerically).
    pub fn recompute_old(&self, choice: RecomputeOld) -> bool {
        match choice {
            RecomputeOld::Always => true,
            RecomputeOld::Never => false,
            RecomputeOld::Auto => self.precision.working != Kind::Float || self.precision.rollout != Kind::Float,
        }
    }

    /// Log-probs of the experience's tokens under the current policy in eval mode, without grad.
    pub fn log_probs(&self, exp: &Experience, chunks: impl Into<Chunking>) -> Result<Tensor> {
        self.model.set_training(false);
        Ok(batched_log_probs(&self.model, exp, chunks.into()))
    }

    /// Make the model as it is now the KL reference (`--sft-warmup-steps`: the penalty should hold RL near the
    /// warmed-up model, not pull it back to one that never wrote the environment's protocol). With LoRA the
    /// reference becomes a frozen copy of the merged weights, since switching the adapters off would give the base
    /// model again. Returns the reference's weights for the run's checkpoints (nothing without a reference).
    pub fn rebase_reference(&mut self) -> Result<Option<BTreeMap<String, Tensor>>> {
        let weights = match &self.reference {
            Reference::None => return Ok(None),
            Reference::AdaptersOff => self.merged_weights().context("LoRA adapters without a LoRA config")?,
            Reference::Copy(_) => self.model.var_store().variables().into_iter().collect(),
        };
        self.set_reference(&weights)?;
        // The frozen copy's own tensors: they cost nothing to hand out.
        Ok(self.reference_weights())
    }

    /// Put `weights` (full model, Hugging Face names) into the reference, creating the copy it needs when the
    /// reference was the adapters-off model. Used after the warm-up and when resuming past it.
    pub fn set_reference(&mut self, weights: &BTreeMap<String, Tensor>) -> Result<()> {
        if matches!(self.reference, Reference::None) {
            return Ok(());
        }
        if matches!(self.reference, Reference::AdaptersOff) {
            let mut copy = load_model(&self.model_dir, self.device(), self.kind(), self.model.lm_head_in_f32())?;
            copy.var_store_mut().freeze();
            copy.set_logprob_temperature(self.model.logprob_temperature());
            self.reference = Reference::Copy(Box::new(copy));
        }
        let Reference::Copy(copy) = &self.reference else { unreachable!("set above") };
        copy_by_name(&copy.var_store().variables(), weights, "the KL reference")
    }

    /// Give the reference weights of its own (`--sync-ref-model` moves them): with LoRA, a frozen copy of the base
    /// model instead of the adapters switched off. Nothing changes with a copy already, or without a reference.
    pub fn own_reference(&mut self) -> Result<()> {
        if !matches!(self.reference, Reference::AdaptersOff) {
            return Ok(());
        }
        let base: BTreeMap<String, Tensor> = self.model.var_store().variables().into_iter().collect();
        self.set_reference(&base)
    }

    /// `reference = alpha * policy + (1 - alpha) * reference` (`--sync-ref-model`), computed in f32 and rounded
    /// once into the reference's dtype. The policy is the optimizer's f32 masters when given (the weights before
    /// their rounding into the working dtype), with LoRA the merged weights. Needs [`Policy::own_reference`] first.
    pub fn mix_into_reference(&self, alpha: f64, masters: Option<&BTreeMap<String, Tensor>>) -> Result<()> {
        let copy = match &self.reference {
            Reference::None => return Ok(()),
            Reference::AdaptersOff => anyhow::bail!("the KL reference is the adapters-off model; own_reference first"),
            Reference::Copy(copy) => copy,
        };
        let policy = match (self.merged_weights(), masters) {
            (Some(merged), _) => merged,
            (None, Some(masters)) => masters.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect(),
            (None, None) => self.model.var_store().variables().into_iter().collect(),
        };
        tch::no_grad(|| {
            for (name, var) in copy.var_store().variables() {
                let now = policy.get(&name).with_context(|| format!("the policy has no tensor `{name}`"))?;
                let now = now.to_device(var.device()).to_kind(Kind::Float);
                let mixed = now * alpha + var.to_kind(Kind::Float) * (1.0 - alpha);
                var.shallow_clone().copy_(&mixed.to_kind(var.kind()));
            }
            Ok(())
        })
    }

    /// The reference's weights when it has its own (a frozen copy), for a checkpoint; `None` otherwise.
    pub fn reference_weights(&self) -> Option<BTreeMap<String, Tensor>> {
        match &self.reference {
            Reference::Copy(copy) => Some(copy.var_store().variables().into_iter().collect()),
            _ => None,
        }
    }

    /// Log-probs under the reference policy when `wanted`, or `None` (also without a reference).
    pub fn reference_log_probs(
        &self,
        exp: &Experience,
        chunks: impl Into<Chunking>,
        wanted: bool,
    ) -> Result<Option<Tensor>> {
        let chunks = chunks.into();
        if !wanted {
            return Ok(None);
        }
        self.model.set_training(false);
        Ok(match &self.reference {
            Reference::None => None,
            Reference::AdaptersOff => {
                self.model.set_adapters_enabled(false);
                let lp = batched_log_probs(&self.model, exp, chunks);
                self.model.set_adapters_enabled(true);
                Some(lp)
            }
            Reference::Copy(reference) => Some(batched_log_probs(reference, exp, chunks)),
        })
    }

    /// The trained weights for a checkpoint: the adapter (PEFT names without `base_model.model.`) or the full model
    /// (Hugging Face names; a tied output head is stored once, as the embedding).
    pub fn weights(&self) -> BTreeMap<String, Tensor> {
        self.trained_store().variables().into_iter().collect()
    }

    /// AdamW over the trainable weights, with f32 master weights when the precision keeps them (under
    /// `--mixed-precision no` the updates go into the parameters in their own dtype, as asked). The masters start
    /// empty: load [`Policy::initial_master_weights`] or a checkpoint's into them.
    pub fn optimizer(&self, config: AdamWConfig) -> AdamW {
        if self.precision.master_weights {
            AdamW::new(self.trainable(), config)
        } else {
            AdamW::without_master_weights(self.trainable(), config)
        }
    }

    /// Where and how the model runs, as a run's `config.json` records it: its directory, device, dtype, precision,
    /// rollout dtype and whether f32 master weights are kept.
    pub fn resolved_settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let p = &self.precision;
        let mut m = serde_json::Map::new();
        m.insert("model_dir".into(), self.model_dir.display().to_string().into());
        m.insert("device".into(), format!("{:?}", self.device()).into());
        m.insert("dtype".into(), format!("{:?}", self.kind()).into());
        m.insert("mixed_precision".into(), serde_json::to_value(p.mode).unwrap_or_default());
        m.insert("rollout_dtype".into(), format!("{:?}", p.rollout).into());
        m.insert("master_weights".into(), p.master_weights.into());
        m
    }

    /// What a checkpoint of this model holds: the f32 masters when the optimizer keeps them (under mixed precision
    /// the working copies are their rounding), else the trained weights; the moments (not with `--save-only-model`),
    /// the loss scale and `state`; the merged weights too for a LoRA run with `--save-merged`.
    pub fn checkpoint_data(
        &self,
        optimizer: &AdamW,
        scaler: &LossScaler,
        mut state: TrainerState,
        settings: &CheckpointSettings,
    ) -> CheckpointData<'_> {
        state.loss_scaler = scaler.enabled().then(|| scaler.state());
        state.mixed_precision = Some(self.precision().mode.to_string());
        CheckpointData {
            weights: if optimizer.has_master_weights() { optimizer.master_weights() } else { self.weights() },
            adapter: self.adapter_info(),
            base_model: self.model_dir(),
            chat_template: self.chat_template.as_deref(),
            merged: if settings.save_merged { self.merged_weights() } else { None },
            optimizer: (!settings.save_only_model).then(|| optimizer.state()),
            state,
            reference: None,
        }
    }

    /// A fresh run's start: its adapters take `--lora-adapter`'s weights, when it gave one (a resumed run takes its
    /// checkpoint's instead, and needs the adapter folder no more).
    pub fn load_initial_adapter(&mut self) -> Result<()> {
        match &self.initial_adapter {
            Some(dir) => load_adapter(&self.model, dir),
            None => Ok(()),
        }
    }

    /// The LoRA settings for peft's adapter_config.json.
    pub fn adapter_info(&self) -> Option<AdapterInfo> {
        self.model.lora_config().map(|c| AdapterInfo {
            rank: c.rank,
            alpha: c.alpha,
            rslora: c.rslora,
            dora: c.dora,
            dropout: c.dropout,
            target_modules: self.model.lora_modules().to_vec(),
            fan_in_fan_out: self.model.config().architecture.conv1d(),
        })
    }

    /// Full weights with the adapter merged in (`W + scale * B A`, the scale `alpha/r` or rsLoRA's; under DoRA each
    /// row rescaled to its magnitude), for runs that ask for them.
    pub fn merged_weights(&self) -> Option<BTreeMap<String, Tensor>> {
        let cfg = self.model.lora_config()?;
        let lora = self.model.lora_var_store()?.variables();
        let scale = cfg.scale();
        // A Conv1D's weight is stored `[in, out]`: it is merged as `[out, in]` and stored back transposed.
        let conv1d = self.model.config().architecture.conv1d();
        let merged = tch::no_grad(|| {
            self.model
                .var_store()
                .variables()
                .into_iter()
                .map(|(name, w)| {
                    let base = name.strip_suffix(".weight").unwrap_or(&name);
                    let a = lora.get(&format!("{base}.lora_A.weight"));
                    let b = lora.get(&format!("{base}.lora_B.weight"));
                    let magnitude = lora.get(&format!("{base}.lora_magnitude_vector"));
                    let w = match (a, b) {
                        (Some(a), Some(b)) if conv1d => {
                            merged_weight(&w.tr(), a, b, magnitude, scale).tr().contiguous().to_kind(w.kind())
                        }
                        (Some(a), Some(b)) => merged_weight(&w, a, b, magnitude, scale).to_kind(w.kind()),
                        _ => w.copy(),
                    };
                    (name, w)
                })
                .collect()
        });
        Some(merged)
    }

    /// Put checkpoint weights into the model (the adapter's, or all of them).
    pub fn load_weights(&mut self, weights: &BTreeMap<String, Tensor>, adapter: bool) -> Result<()> {
        if adapter != self.model.lora_var_store().is_some() {
            return Err(user_error!(
                "the checkpoint holds {} but this run trains {}; use the same --lora-rank as the run being resumed",
                if adapter { "a LoRA adapter" } else { "full weights" },
                if adapter { "full weights" } else { "a LoRA adapter" }
            ));
        }
        copy_by_name(&self.trained_store().variables(), weights, "the checkpoint")
    }
}

/// The model in `dir`, with its output projection kept in f32 when `f32_head` (`--cast-lm-head-to-fp32`): every
/// copy that samples or scores (the trained model, the reference, the rollout-dtype sampler) gets the same head, so
/// their numbers agree.
fn load_model(dir: &Path, device: Device, kind: Kind, f32_head: bool) -> Result<Model> {
    let mut model = Model::load(dir, device, kind)?;
    if f32_head {
        model.cast_lm_head_to_f32()?;
    }
    Ok(model)
}

/// Start `model`'s adapters (attached with the adapter's settings) from the PEFT adapter in `dir`: every adapter
/// tensor of the model must be there, and every tensor there must have a place in the model.
fn load_adapter(model: &Model, dir: &Path) -> Result<()> {
    let Some(store) = model.lora_var_store() else {
        return Err(user_error!("--lora-adapter {}: this run trains no adapters", dir.display()));
    };
    let vars = store.variables();
    let weights = crate::model::lora::PeftAdapter::read_weights(dir)?;
    let source = format!("--lora-adapter {}", dir.display());
    if let Some(extra) = weights.keys().find(|name| !vars.contains_key(*name)) {
        return Err(user_error!(
            "{source}: tensor `{extra}` has no place in this model; give the adapter's own base model as --model"
        ));
    }
    copy_by_name(&vars, &weights, &source)
}

/// Copy `weights` into the variables of the same names, each converted to its variable's dtype and device; `source`
/// names where the weights came from in the one-line errors for a missing tensor or another shape.
fn copy_by_name(
    vars: &std::collections::HashMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
    source: &str,
) -> Result<()> {
    tch::no_grad(|| {
        for (name, var) in vars {
            let saved = weights
                .get(name)
                .with_context(|| format!("{source} has no tensor `{name}`; it belongs to another model"))?;
            if saved.size() != var.size() {
                return Err(user_error!(
                    "{source}'s tensor `{name}` has shape {:?}, the model {:?}; use the same model and --lora-rank",
                    saved.size(),
                    var.size()
                ));
            }
            var.shallow_clone().copy_(&saved.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    })
}

/// `[N, T-1]` log-probs of every sequence of `exp`, in the passes `chunks` makes, without grad.
fn batched_log_probs(model: &Model, exp: &Experience, chunks: Chunking) -> Tensor {
    tch::no_grad(|| {
        let all: Vec<usize> = (0..exp.len()).collect();
        let passes = chunks.split(&all, &exp.lengths);
        let width = exp.tokens.size()[1] - 1;
        let mut parts = Vec::new();
        for rows in &passes {
            let mb = exp.select(rows);
            let lp = model.token_log_probs_padded(&mb.tokens, &mb.attention_mask, Padding::Right);
            let pad = width - lp.size()[1];
            parts.push(if pad > 0 { lp.constant_pad_nd([0, pad]) } else { lp });
        }
        let out = Tensor::cat(&parts, 0);
        let order = passes.concat();
        if order.iter().enumerate().all(|(i, &row)| i == row) {
            return out;
        }
        // Back to the batch's order: row `r` is at position `at[r]` of the passes' concatenation.
        let mut at = vec![0i64; order.len()];
        for (position, &row) in order.iter().enumerate() {
            at[row] = position as i64;
        }
        out.index_select(0, &Tensor::from_slice(&at).to_device(out.device()))
    })
}
