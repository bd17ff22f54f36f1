//! A mixture-of-experts feed-forward block (Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE): a router and its experts, each
//! a gated MLP loading its weights by the checkpoint's per-expert names.

use tch::{Kind, Tensor};

use super::config::{ModelConfig, Moe};
use super::layers::{Linear, Loader, Mlp};
use super::Ctx;

/// A shared expert that every token passes through beside the routed ones, scaled by a sigmoid gate of the token
/// (Qwen2-MoE).
#[derive(Debug)]
pub struct SharedExpert {
    /// The expert, `mlp.shared_expert`.
    pub mlp: Mlp,
    /// `[1, hidden]`, `mlp.shared_expert_gate`.
    pub gate: Linear,
}

/// A mixture-of-experts block (see [`Moe`]): a linear router scores the experts, each token goes through the
/// `top_k` most probable, and their outputs are added, weighed by the router's probabilities.
#[derive(Debug)]
pub struct SparseMoe {
    /// `[experts, hidden]`, the router (`mlp.gate`, Mixtral's `block_sparse_moe.gate`).
    pub router: Linear,
    /// The routed experts, in checkpoint order.
    pub experts: Vec<Mlp>,
    /// Qwen2-MoE's shared expert (boxed, so that a mixture's handles take no more room than a dense MLP's).
    pub shared: Option<Box<SharedExpert>>,
    top_k: i64,
    normalize_top_k: bool,
    f32_weights: bool,
}

impl SparseMoe {
    pub(crate) fn load(l: &Loader, layer: &str, moe: &Moe, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let p = format!("{layer}.{}", moe.names.block());
        let experts = (0..moe.experts)
            .map(|e| Mlp::load_named(l, &format!("{p}.experts.{e}"), moe.names.projections(), moe.expert_size, cfg))
            .collect::<anyhow::Result<_>>()?;
        let shared = match moe.shared_expert_size {
            Some(width) => Some(Box::new(SharedExpert {
                mlp: Mlp::load_named(
                    l,
                    &format!("{p}.shared_expert"),
                    ["gate_proj", "up_proj", "down_proj"],
                    width,
                    cfg,
                )?,
                gate: Linear::load(l, &format!("{p}.shared_expert_gate"), cfg.hidden_size, 1, false)?,
            })),
            None => None,
        };
        Ok(SparseMoe {
            router: Linear::load(l, &format!("{p}.gate"), cfg.hidden_size, moe.experts, false)?,
            experts,
            shared,
            top_k: moe.experts_per_token,
            normalize_top_k: moe.normalize_top_k,
            f32_weights: moe.f32_weights,
        })
    }

    /// Route each token of `x` `[B, T, hidden]` to its experts and add their weighed outputs. The (token, choice)
    /// pairs are sorted by expert so that each expert runs once, on one contiguous slice of the tokens it was
    /// given: reading the experts' counts is the block's one wait for the device.
    pub fn forward(&self, x: &Tensor, ctx: Ctx) -> Tensor {
        let shape = x.size();
        let flat = x.reshape([-1, shape[shape.len() - 1]]);
        let probs = self.router.forward(&flat, ctx).softmax(-1, Kind::Float);
        let (mut weights, chosen) = probs.topk(self.top_k, -1, true, true);
        if self.normalize_top_k {
            weights = &weights / weights.sum_dim_intlist(-1, true, Kind::Float);
        }
        if !self.f32_weights {
            weights = weights.to_kind(x.kind());
        }
        let chosen = chosen.reshape([-1]);
        let order = chosen.argsort_stable(true, 0, false);
        let tokens = order.floor_divide_scalar(self.top_k);
        let counts = Vec::<i64>::try_from(chosen.bincount(None::<Tensor>, self.experts.len() as i64))
            .expect("bincount gives one i64 count per expert");
        let inputs = flat.index_select(0, &tokens);
        let mut outputs = Vec::new();
        let mut start = 0;
        for (expert, &n) in self.experts.iter().zip(&counts) {
            if n > 0 {
                outputs.push(expert.forward(&inputs.narrow(0, start, n), ctx));
            }
            start += n;
        }
        let routed = match outputs.is_empty() {
            true => flat.zeros_like(),
            false => {
                let weighed = Tensor::cat(&outputs, 0) * weights.reshape([-1]).index_select(0, &order).unsqueeze(-1);
                flat.zeros_like().index_add(0, &tokens, &weighed.to_kind(x.kind()))
            }
        };
        let out = match &self.shared {
            Some(shared) => routed + shared.gate.forward(&flat, ctx).sigmoid() * shared.mlp.forward(&flat, ctx),
            None => routed,
        };
        out.reshape(shape)
    }
}
