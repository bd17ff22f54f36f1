//! A mixture-of-experts feed-forward block (Qwen2-MoE, Qwen3-MoE, Mixtral, OLMoE, GraniteMoE, gpt-oss): a router and
//! its experts, each a gated MLP loading its weights by the checkpoint's names.

use tch::{Kind, Tensor};

use super::config::{Activation, ClampedSwiglu, ExpertNames, ModelConfig, Moe, Routing};
use super::layers::{Linear, Loader, Mlp};
use super::Ctx;

/// A block's routed experts, as the checkpoint stores them.
#[derive(Debug)]
pub enum Experts {
    /// One gated MLP per expert, each with its own tensors.
    Separate(Vec<Mlp>),
    /// Every expert in two stacked tensors (GraniteMoE): `gate_up` `[experts, 2 x width, hidden]`, gate then up, and
    /// `down` `[experts, hidden, width]`. An expert is a slice of them, so its gradient lands in the stack.
    Stacked {
        /// `input_linear`.
        gate_up: Tensor,
        /// `output_linear`.
        down: Tensor,
        /// The gate's activation.
        activation: Activation,
    },
    /// Every expert in two stacked tensors that multiply from the right, each with a bias (gpt-oss): `gate_up`
    /// `[experts, hidden, 2 x width]` with the gate and up columns alternating, and `down` `[experts, width,
    /// hidden]`.
    Interleaved {
        /// `gate_up_proj`.
        gate_up: Tensor,
        /// `gate_up_proj_bias`, `[experts, 2 x width]`.
        gate_up_bias: Tensor,
        /// `down_proj`.
        down: Tensor,
        /// `down_proj_bias`, `[experts, hidden]`.
        down_bias: Tensor,
        /// The activation between them.
        swiglu: ClampedSwiglu,
    },
}

impl Experts {
    /// How many there are.
    fn len(&self) -> i64 {
        match self {
            Experts::Separate(experts) => experts.len() as i64,
            Experts::Stacked { gate_up, .. } | Experts::Interleaved { gate_up, .. } => gate_up.size()[0],
        }
    }

    /// Expert `e` on `x` `[N, hidden]`.
    fn forward(&self, e: usize, x: &Tensor, ctx: Ctx) -> Tensor {
        match self {
            Experts::Separate(experts) => experts[e].forward(x, ctx),
            Experts::Stacked { gate_up, down, activation } => {
                let both = x.linear::<Tensor>(&gate_up.get(e as i64), None);
                activation.gated_halves(&both).linear::<Tensor>(&down.get(e as i64), None)
            }
            Experts::Interleaved { gate_up, gate_up_bias, down, down_bias, swiglu } => {
                let e = e as i64;
                let both = x.matmul(&gate_up.get(e)) + gate_up_bias.get(e);
                swiglu.apply(&both).matmul(&down.get(e)) + down_bias.get(e)
            }
        }
    }
}

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
    pub experts: Experts,
    /// Qwen2-MoE's shared expert (boxed, so that a mixture's handles take no more room than a dense MLP's).
    pub shared: Option<Box<SharedExpert>>,
    top_k: i64,
    routing: Routing,
}

impl SparseMoe {
    pub(crate) fn load(l: &Loader, layer: &str, moe: &Moe, cfg: &ModelConfig) -> anyhow::Result<Self> {
        let p = format!("{layer}.{}", moe.names.block());
        let (e, h, w) = (moe.experts, cfg.hidden_size, moe.expert_size);
        let experts = match moe.names {
            ExpertNames::Granite => Experts::Stacked {
                gate_up: l.get(&format!("{p}.input_linear.weight"), &[e, 2 * w, h])?,
                down: l.get(&format!("{p}.output_linear.weight"), &[e, h, w])?,
                activation: cfg.activation,
            },
            ExpertNames::GptOss => Experts::Interleaved {
                gate_up: l.get_experts(&format!("{p}.experts.gate_up_proj"), &[e, h, 2 * w])?,
                gate_up_bias: l.get(&format!("{p}.experts.gate_up_proj_bias"), &[e, 2 * w])?,
                down: l.get_experts(&format!("{p}.experts.down_proj"), &[e, w, h])?,
                down_bias: l.get(&format!("{p}.experts.down_proj_bias"), &[e, h])?,
                swiglu: moe.swiglu.unwrap_or(ClampedSwiglu { alpha: 1.702, limit: 7.0 }),
            },
            names => Experts::Separate(
                (0..e)
                    .map(|e| Mlp::load_named(l, &format!("{p}.experts.{e}"), names.projections(), w, cfg))
                    .collect::<anyhow::Result<_>>()?,
            ),
        };
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
            router: Linear::load(
                l,
                &format!("{p}.{}", moe.names.router()),
                cfg.hidden_size,
                moe.experts,
                moe.router_bias,
            )?,
            experts,
            shared,
            top_k: moe.experts_per_token,
            routing: moe.routing,
        })
    }

    /// Route each token of `x` `[B, T, hidden]` to its experts and add their weighed outputs; with them, the
    /// router's scores `[B x T, experts]` (before any softmax, in the model's dtype) for the load-balancing loss.
    /// The (token, choice) pairs are sorted by expert so that each expert runs once, on one contiguous slice of the
    /// tokens it was given: reading the experts' counts is the block's one wait for the device.
    pub fn forward(&self, x: &Tensor, ctx: Ctx) -> (Tensor, Tensor) {
        let shape = x.size();
        let flat = x.reshape([-1, shape[shape.len() - 1]]);
        let scores = self.router.forward(&flat, ctx);
        let (weights, chosen) = match self.routing {
            Routing::SoftmaxThenTopK { normalize, f32_weights } => {
                let (mut weights, chosen) = scores.softmax(-1, Kind::Float).topk(self.top_k, -1, true, true);
                if normalize {
                    weights = &weights / weights.sum_dim_intlist(-1, true, Kind::Float);
                }
                (if f32_weights { weights } else { weights.to_kind(x.kind()) }, chosen)
            }
            Routing::TopKThenSoftmax => {
                let (top, chosen) = scores.to_kind(Kind::Float).topk(self.top_k, -1, true, true);
                (top.softmax(-1, Kind::Float).to_kind(x.kind()), chosen)
            }
        };
        let chosen = chosen.reshape([-1]);
        let order = chosen.argsort_stable(true, 0, false);
        let tokens = order.floor_divide_scalar(self.top_k);
        let counts = Vec::<i64>::try_from(chosen.bincount(None::<Tensor>, self.experts.len()))
            .expect("bincount gives one i64 count per expert");
        let inputs = flat.index_select(0, &tokens);
        let mut outputs = Vec::new();
        let mut start = 0;
        for (e, &n) in counts.iter().enumerate() {
            if n > 0 {
                outputs.push(self.experts.forward(e, &inputs.narrow(0, start, n), ctx));
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
        (out.reshape(shape), scores)
    }
}

/// The router scores of the sparse layers of one forward pass, `[B x T, experts]` each in layer order, kept with
/// their graph for the load-balancing loss ([`RouterScores::load_balancing_loss`]).
#[derive(Debug, Default)]
pub struct RouterScores(Vec<Tensor>);

impl RouterScores {
    /// An empty record, for a forward pass to fill.
    pub fn new() -> RouterScores {
        RouterScores::default()
    }

    /// Add the next sparse layer's scores.
    pub(crate) fn push(&mut self, scores: Tensor) {
        self.0.push(scores);
    }

    /// How many sparse layers were recorded.
    pub fn layers(&self) -> usize {
        self.0.len()
    }

    /// The Switch Transformer load-balancing loss as transformers computes it (`load_balancing_loss_func`, the
    /// `aux_loss` of a mixture's `*ForCausalLM` under `output_router_logits`): over the real tokens of
    /// `attention_mask` `[B, T]` in every recorded layer together, the share of the `top_k` choices each expert
    /// received times its mean router probability, summed over the experts and multiplied by their number. It is
    /// `top_k` when the experts share the tokens evenly and grows as the routing concentrates; its gradient reaches
    /// the routers (and the layers below them) through the probabilities alone. `None` with no layer recorded.
    pub fn load_balancing_loss(&self, attention_mask: &Tensor, top_k: i64) -> Option<Tensor> {
        let first = self.0.first()?;
        let (experts, device) = (first.size()[1], first.device());
        let real = attention_mask.reshape([-1]).to_kind(Kind::Float);
        let per_choice = real.repeat_interleave_self_int(top_k, None, None);
        let mut chosen_sum = Tensor::zeros([experts], (Kind::Float, device));
        let mut prob_sum = Tensor::zeros([experts], (Kind::Float, device));
        for scores in &self.0 {
            let probs = scores.softmax(-1, Kind::Float);
            let (_, chosen) = probs.topk(top_k, -1, true, true);
            // A count per expert, weighted by the mask, without reading anything back to the host.
            chosen_sum = chosen_sum.scatter_add(0, &chosen.reshape([-1]), &per_choice);
            // Out of place: the sums carry the probabilities' graph.
            prob_sum = prob_sum.g_add(&(probs * real.unsqueeze(-1)).sum_dim_intlist(0, false, Kind::Float));
        }
        // Every layer covers the same rows; an empty mask would divide by zero, so it counts as one row.
        let rows = real.sum(Kind::Float).clamp_min(1.0) * self.0.len() as f64;
        let loss = ((&chosen_sum / &rows) * (&prob_sum / &rows)).sum(Kind::Float) * experts as f64;
        Some(loss)
    }
}
