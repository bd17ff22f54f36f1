//! LoRA adapters (Hu et al. 2021) on every linear layer of the decoder except `lm_head`: `y = W x + (alpha / r) *
//! B A dropout(x)`, with A `[r, in]` initialised like PEFT (uniform +-1/sqrt(in)) and B `[out, r]` zero, so an
//! attached adapter starts as the identity change. Adapter variables live in their own var store, named
//! `<linear>.lora_A.weight` / `<linear>.lora_B.weight` (PEFT's names without its `base_model.model.` prefix), so
//! the optimizer sees only them and the base weights stay frozen. With adapters switched off
//! ([`super::Model::set_adapters_enabled`]) the same model is the reference policy.

use tch::{nn, Tensor};

/// LoRA hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    /// Rank r of the update.
    pub rank: i64,
    /// Scale numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
}

/// The adapter attached to one linear layer.
#[derive(Debug)]
pub struct LoraAdapter {
    /// Down projection `[r, in]`.
    pub a: Tensor,
    /// Up projection `[out, r]`.
    pub b: Tensor,
    scale: f64,
    dropout: f64,
}

impl LoraAdapter {
    /// Create the adapter's variables under `path` (the linear layer's HF name) for a `[out, in]` weight.
    pub(crate) fn new(path: &nn::Path, cfg: &LoraConfig, in_dim: i64, out_dim: i64) -> Self {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = path.sub("lora_A").uniform("weight", &[cfg.rank, in_dim], -bound, bound);
        let b = path.sub("lora_B").zeros("weight", &[out_dim, cfg.rank]);
        LoraAdapter { a, b, scale: cfg.alpha / cfg.rank as f64, dropout: cfg.dropout }
    }

    /// The low-rank update for input `x`; dropout applies only when `train` is set.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let x = if train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        x.linear::<Tensor>(&self.a, None).linear::<Tensor>(&self.b, None) * self.scale
    }
}
