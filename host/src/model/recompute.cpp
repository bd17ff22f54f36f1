// Gradient (activation) checkpointing: a function of one tensor, run without autograd in the forward pass with only
// its input kept, and run again with autograd in the backward pass to back-propagate through. The function is Rust
// code (a decoder layer), so the node calls back into Rust through a function pointer; tch has no custom autograd
// functions, hence C++.
//
// The backward pass is reentrant, as torch.utils.checkpoint's original form: it calls autograd's backward on the
// recomputed output, which accumulates the parameters' gradients directly and the input's gradient into a detached
// copy, returned as this node's. A zero-element "anchor" input that requires grad makes the node exist even when
// the input does not (a frozen embedding under LoRA), or the layers' adapters would get no gradient.
#include <torch/torch.h>

#include <mutex>

#include "../shim_error.h"

extern "C" {
// Runs the Rust function on `x` (an at::Tensor*, borrowed) and returns a new at::Tensor* that the caller owns, or
// null with a message in `err` when it failed.
typedef at::Tensor* (*grpo_recompute_call)(void* data, at::Tensor* x, char* err, size_t err_len);
// Frees the Rust function.
typedef void (*grpo_recompute_drop)(void* data);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The Rust function, owned: freed when the autograd graph that holds it is.
struct RustFunction : torch::CustomClassHolder {
  RustFunction(void* data, grpo_recompute_call call, grpo_recompute_drop drop) : data(data), call(call), drop(drop) {}
  RustFunction(const RustFunction&) = delete;
  RustFunction& operator=(const RustFunction&) = delete;
  ~RustFunction() override { drop(data); }

  at::Tensor operator()(const at::Tensor& x) const {
    char err[1024] = {0};
    at::Tensor input = x;
    at::Tensor* out = call(data, &input, err, sizeof err);
    if (out == nullptr) throw std::runtime_error(err);
    at::Tensor y = std::move(*out);
    delete out;
    return y;
  }

  void* data;
  grpo_recompute_call call;
  grpo_recompute_drop drop;
};

at::Generator default_generator(const at::Device& device) {
  return at::globalContext().defaultGenerator(device);
}

at::Tensor rng_state(const at::Device& device) {
  auto gen = default_generator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const at::Device& device, const at::Tensor& state) {
  auto gen = default_generator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Puts the generator's state back when it goes out of scope, the recomputation thrown out of included.
struct RngRestore {
  at::Device device;
  at::Tensor state;  // undefined: nothing to restore
  ~RngRestore() {
    if (!state.defined()) return;
    try {
      set_rng_state(device, state);
    } catch (...) {
      // A destructor must not throw; the error being unwound, if any, is the one to report.
    }
  }
};

struct Recompute : public torch::autograd::Function<Recompute> {
  // Autograd runs this with gradients off: only `x` is kept, and the output carries this node as its grad_fn.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& anchor,
                            c10::intrusive_ptr<RustFunction> f, bool preserve_rng) {
    (void)anchor;
    if (preserve_rng) ctx->saved_data["rng"] = rng_state(x.device());
    ctx->saved_data["f"] = at::IValue::make_capsule(f);
    ctx->save_for_backward({x});
    return (*f)(x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    auto f = c10::static_intrusive_pointer_cast<RustFunction>(ctx->saved_data["f"].toCapsule());
    at::Tensor input = x.detach().requires_grad_(x.requires_grad());
    at::Tensor y;
    {
      // Dropout in the recomputation draws what the forward pass drew; the generator then goes on from where it
      // was, so gradient checkpointing changes no later random draw either.
      const bool replay = ctx->saved_data.count("rng") > 0;
      RngRestore restore{x.device(), replay ? rng_state(x.device()) : at::Tensor()};
      if (replay) set_rng_state(x.device(), ctx->saved_data["rng"].toTensor());
      at::AutoGradMode enable(true);
      y = (*f)(input);
    }
    if (y.requires_grad()) torch::autograd::backward({y}, {grads[0]});
    at::Tensor grad_x = input.requires_grad() ? input.grad() : at::Tensor();
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

// `f(x)` through a recomputing node when gradients are on, else plainly. Takes ownership of `data` on every path.
extern "C" at::Tensor* grpo_recompute_in_backward(at::Tensor* x, void* data, grpo_recompute_call call,
                                                  grpo_recompute_drop drop, int preserve_rng, char* err,
                                                  size_t err_len) {
  auto f = c10::make_intrusive<RustFunction>(data, call, drop);
  try {
    if (!at::GradMode::is_enabled()) return new at::Tensor((*f)(*x));
    auto anchor = at::empty({0}, x->options().dtype(at::kFloat)).requires_grad_(true);
    return new at::Tensor(Recompute::apply(*x, anchor, f, preserve_rng != 0));
  } catch (const std::exception& e) {
    // Exceptions must not cross into Rust.
    grpo::put_exception(e, err, err_len);
    return nullptr;
  }
}
