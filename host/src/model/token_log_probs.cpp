// Log-probabilities of given tokens under a vocabulary projection, as one autograd node that keeps no logits.
//
// Autograd over `linear -> float -> logsumexp/gather` saves every chunk's f32 logits for the backward pass: at
// 8 x 1024 positions and a 151,936-token vocabulary that is about 5 GB. This node saves only its inputs (the
// hidden states, which the projection's backward needs anyway, the weight and the targets) and recomputes each
// chunk's logits in the backward pass, so at most one chunk of logits exists at a time in either direction.
// When all positions fit in one chunk, the forward pass keeps that chunk's softmax instead, which is what plain
// autograd keeps too (one chunk's worth, within the same bound), and the backward pass skips recomputing the
// projection, the costliest matmul of a small model's step. tch has no custom autograd functions, hence C++.
#include <torch/torch.h>

#include "../shim_error.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The entropy -sum p log p of each row of `log_p` [B, C, V] (f32 log-probabilities) -> [B, C]. On the CPU in slices of
// rows whose temporary p log p stays within a few MiB: a chunk-sized temporary (up to 256 MiB) is fresh memory from
// the system on every call, and its page faults cost more than the arithmetic (the default model's training phase:
// 7% slower with one chunk-sized temporary, 1.5% in slices; docs/benchmarks.md). CUDA's caching allocator reuses
// blocks, and there each slice costs kernel launches, so the chunk is done at once.
at::Tensor entropy_of(const at::Tensor& log_p) {
  const int64_t v = log_p.size(-1);
  auto flat = log_p.reshape({-1, v});
  const int64_t rows = flat.size(0);
  const int64_t slice = log_p.is_cuda() ? rows : std::max<int64_t>(1, (int64_t{1} << 21) / v);
  auto out = at::empty({rows}, log_p.options());
  for (int64_t r = 0; r < rows; r += slice) {
    const int64_t k = std::min(slice, rows - r);
    auto x = flat.narrow(0, r, k);
    out.narrow(0, r, k).copy_(x.exp().mul_(x).sum(-1).neg_());
  }
  return out.view({log_p.size(0), log_p.size(1)});
}

// How the nodes turn a chunk's projection `z = hidden x weight^T` into logits: `scale * cap * tanh(z / cap)` with
// Gemma 2's final soft cap, else `scale * z` (`scale`, 1/temperature, is 1 unless a cap asks for it: without one the
// temperature divides the hidden states before the node).
struct LogitMap {
  double cap;  // 0: none
  double scale;

  // The chunk's logits in f32: the same operations, in the same order, as the plain autograd expression.
  at::Tensor logits(const at::Tensor& hs, const at::Tensor& weight) const {
    auto z = at::linear(hs, weight).to(at::kFloat);
    if (cap > 0) z = z.div_(cap).tanh_().mul_(cap);
    if (scale != 1.0) z = z.mul_(scale);
    return z;
  }

  // dL/dz from dL/dlogits (in place) and the chunk's logits: times `scale (1 - tanh^2)` under a cap.
  void to_projection_grad(at::Tensor& grad_logits, const at::Tensor& logits) const {
    if (cap > 0) {
      auto t = logits.div(cap * scale);
      grad_logits.mul_(t.mul_(t).neg_().add_(1.0));
    }
    if (scale != 1.0) grad_logits.mul_(scale);
  }
};

LogitMap logit_map_of(AutogradContext* ctx) {
  return {ctx->saved_data["cap"].toDouble(), ctx->saved_data["scale"].toDouble()};
}

void save_logit_map(AutogradContext* ctx, const LogitMap& map) {
  ctx->saved_data["cap"] = map.cap;
  ctx->saved_data["scale"] = map.scale;
}

// The backward pass of both nodes below, which save (hidden, weight, targets) and "chunk". `g` [B, N] f32 is the
// log-probs' incoming gradient. For the chunk of positions [s, s + c), `softmax_part(logits, s, c, kept)` returns
// dL/dlogits less the target's `onehot * g`, in f32 [B, c, V], as a tensor it may have built in place (not in
// `logits`' storage); `kept` is the single chunk's tensor the forward pass saved under `kept_name`, if it did: handed
// over once and let go, so a second backward pass over a retained graph recomputes it. `logits` are the chunk's
// (LogitMap::logits), recomputed unless `kept` spares them (never under a cap, whose gradient needs them). Returns
// the gradients of the hidden states and the weight (undefined where not wanted).
template <typename SoftmaxPart>
std::pair<at::Tensor, at::Tensor> head_backward(AutogradContext* ctx, const at::Tensor& g, const char* kept_name,
                                                SoftmaxPart softmax_part) {
  auto saved = ctx->get_saved_variables();
  const auto& hidden = saved[0];
  const auto& weight = saved[1];
  const auto& targets = saved[2];
  const int64_t chunk = ctx->saved_data["chunk"].toInt();
  const LogitMap map = logit_map_of(ctx);
  const bool want_hidden = ctx->needs_input_grad(0);
  const bool want_weight = ctx->needs_input_grad(1);
  const int64_t n = hidden.size(1), h = hidden.size(2), v = weight.size(0);
  at::Tensor grad_hidden = want_hidden ? at::zeros_like(hidden) : at::Tensor();
  // Summed over chunks in f32, then cast once (autograd would sum the chunks' contributions in the weight dtype).
  at::Tensor grad_weight = want_weight ? at::zeros({v, h}, weight.options().dtype(at::kFloat)) : at::Tensor();
  at::Tensor kept;
  if (ctx->saved_data.count(kept_name) > 0) {
    kept = ctx->saved_data[kept_name].toTensor();
    ctx->saved_data.erase(kept_name);
  }
  for (int64_t s = 0; s < n && (want_hidden || want_weight); s += chunk) {
    const int64_t c = std::min(chunk, n - s);
    auto hs = hidden.narrow(1, s, c);
    auto logits = kept.defined() ? at::Tensor() : map.logits(hs, weight);
    auto grad_logits = softmax_part(logits, s, c, std::move(kept));
    grad_logits.scatter_add_(-1, targets.narrow(1, s, c).unsqueeze(-1), g.narrow(1, s, c).unsqueeze(-1));
    map.to_projection_grad(grad_logits, logits);
    auto gl = grad_logits.to(weight.scalar_type());
    if (want_hidden) grad_hidden.narrow(1, s, c).copy_(at::matmul(gl, weight));
    if (want_weight) grad_weight.add_(at::mm(gl.reshape({-1, v}).t(), hs.reshape({-1, h})).to(at::kFloat));
  }
  return {grad_hidden, want_weight ? grad_weight.to(weight.scalar_type()) : at::Tensor()};
}

// hidden [B, N, H] (model dtype), weight [V, H], targets [B, N] int64 -> [B, N] f32.
struct TokenLogProbs : public torch::autograd::Function<TokenLogProbs> {
  // `keep`: a backward pass will follow, so a single chunk's softmax is worth keeping for it. `hits`, unless null
  // ([B, N] bool, outside autograd): set to whether each target is its position's most likely token, read from the
  // logits the forward computes anyway. `entropy`, unless null ([B, N] f32, outside autograd): set to the entropy of
  // each position's distribution, `-sum p log p`.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk, LogitMap map, bool keep, at::Tensor* hits,
                            at::Tensor* entropy) {
    const int64_t n = hidden.size(1);
    auto out = at::empty({hidden.size(0), n}, hidden.options().dtype(at::kFloat));
    // A capped chunk's backward needs its logits, not the softmax: keeping it would save nothing.
    keep = keep && map.cap == 0;
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t c = std::min(chunk, n - s);
      auto logits = map.logits(hidden.narrow(1, s, c), weight);
      auto picked = logits.gather(-1, targets.narrow(1, s, c).unsqueeze(-1)).squeeze(-1);
      auto lse = logits.logsumexp({-1}, false);
      out.narrow(1, s, c).copy_(picked - lse);
      if (hits != nullptr) hits->narrow(1, s, c).copy_(logits.argmax(-1).eq(targets.narrow(1, s, c)));
      const bool keep_softmax = keep && c == n;
      if (entropy != nullptr || keep_softmax) {
        // The logits are not needed after this: log p in place.
        auto log_p = logits.sub_(lse.unsqueeze(-1));
        if (entropy != nullptr) entropy->narrow(1, s, c).copy_(entropy_of(log_p));
        // exp(logits - logsumexp), in place: logsumexp's own backward formula, so the gradient is autograd's.
        if (keep_softmax) ctx->saved_data["softmax"] = log_p.exp_();
      }
    }
    ctx->save_for_backward({hidden, weight, targets});
    ctx->saved_data["chunk"] = chunk;
    save_logit_map(ctx, map);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto g = grads[0].to(at::kFloat);
    auto [grad_hidden, grad_weight] = head_backward(
        ctx, g, "softmax", [&](const at::Tensor& logits, int64_t s, int64_t c, at::Tensor kept) {
          // d(picked - logsumexp)/d logits = onehot(target) - softmax(logits), times the incoming gradient.
          auto probs = kept.defined() ? std::move(kept) : logits.softmax(-1);
          return probs.mul_(g.narrow(1, s, c).unsqueeze(-1)).neg_();
        });
    return {grad_hidden, grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// The same log-probs, and the entropy of each position's distribution as a second differentiable output, for a loss
// that rewards entropy (`--entropy-coeff`). As in TokenLogProbs, the backward pass recomputes each chunk's log p
// (it needs log p as well as p), except that a single chunk's is kept from the forward pass when a backward pass
// will follow. d(-sum p log p)/dz = -p (log p + H).
struct TokenLogProbsWithEntropy : public torch::autograd::Function<TokenLogProbsWithEntropy> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& targets, int64_t chunk, LogitMap map, bool keep) {
    const int64_t n = hidden.size(1);
    auto out = at::empty({hidden.size(0), n}, hidden.options().dtype(at::kFloat));
    auto entropy = at::empty({hidden.size(0), n}, hidden.options().dtype(at::kFloat));
    keep = keep && map.cap == 0;
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t c = std::min(chunk, n - s);
      auto logits = map.logits(hidden.narrow(1, s, c), weight);
      auto picked = logits.gather(-1, targets.narrow(1, s, c).unsqueeze(-1)).squeeze(-1);
      auto lse = logits.logsumexp({-1}, false);
      out.narrow(1, s, c).copy_(picked - lse);
      auto log_p = logits.sub_(lse.unsqueeze(-1));
      entropy.narrow(1, s, c).copy_(entropy_of(log_p));
      if (keep && c == n) ctx->saved_data["log_p"] = log_p;
    }
    ctx->save_for_backward({hidden, weight, targets});
    ctx->saved_data["chunk"] = chunk;
    save_logit_map(ctx, map);
    return {out, entropy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // An output the loss does not use arrives undefined: its gradient is 0.
    const auto g = grads[0].defined() ? grads[0].to(at::kFloat)
                                      : at::zeros(grads[1].sizes(), grads[1].options().dtype(at::kFloat));
    const bool with_entropy = grads[1].defined();
    const auto g_h = with_entropy ? grads[1].to(at::kFloat) : at::Tensor();
    auto [grad_hidden, grad_weight] = head_backward(
        ctx, g, "log_p", [&](const at::Tensor& logits, int64_t s, int64_t c, at::Tensor kept) {
          auto log_p = kept.defined() ? std::move(kept) : logits.log_softmax(-1);
          auto p = log_p.exp();
          auto gs = g.narrow(1, s, c).unsqueeze(-1);
          if (!with_entropy) return p.mul_(gs).neg_();
          // -p * (g + g_H (log p + H)), built in log_p's storage.
          auto entropy = p.mul(log_p).sum(-1, true).neg_();
          return log_p.add_(entropy).mul_(g_h.narrow(1, s, c).unsqueeze(-1)).add_(gs).mul_(p).neg_();
        });
    return {grad_hidden, grad_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

// Log-probs and, through `entropy` (set to a new tensor), each position's entropy, both differentiable (see
// TokenLogProbsWithEntropy).
extern "C" at::Tensor* grpo_token_log_probs_entropy(at::Tensor* hidden, at::Tensor* weight, at::Tensor* targets,
                                                    int64_t chunk, double cap, double scale, at::Tensor** entropy,
                                                    char* err, size_t err_len) {
  try {
    const bool keep = at::GradMode::is_enabled() && (hidden->requires_grad() || weight->requires_grad());
    auto outs = TokenLogProbsWithEntropy::apply(*hidden, *weight, *targets, std::max<int64_t>(chunk, 1),
                                                LogitMap{cap, scale}, keep);
    *entropy = new at::Tensor(outs[1]);
    return new at::Tensor(outs[0]);
  } catch (const std::exception& e) {
    grpo::put_exception(e, err, err_len);
    return nullptr;
  }
}

// `hits` and `entropy` may be null; otherwise [B, N] bool and f32 tensors the forward fills (see
// TokenLogProbs::forward). `cap` (0: none) and `scale` make the logits (LogitMap).
extern "C" at::Tensor* grpo_token_log_probs(at::Tensor* hidden, at::Tensor* weight, at::Tensor* targets,
                                            int64_t chunk, double cap, double scale, at::Tensor* hits,
                                            at::Tensor* entropy, char* err, size_t err_len) {
  try {
    const bool keep = at::GradMode::is_enabled() && (hidden->requires_grad() || weight->requires_grad());
    return new at::Tensor(TokenLogProbs::apply(*hidden, *weight, *targets, std::max<int64_t>(chunk, 1),
                                               LogitMap{cap, scale}, keep, hits, entropy));
  } catch (const std::exception& e) {
    // Exceptions must not cross into Rust.
    grpo::put_exception(e, err, err_len);
    return nullptr;
  }
}
