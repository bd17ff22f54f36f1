// One AdamW update of a list of f32 tensors through ATen's fused kernel (what torch.optim.AdamW(fused=True) calls):
// one pass over each parameter and its moments instead of one per arithmetic operation, and on CUDA a few launches
// for the whole list instead of about a dozen per tensor. tch binds no operator that takes tensor lists, hence C++.
#include <ATen/ATen.h>

#include <vector>

#include "../shim_error.h"

// params, grads, exp_avgs and exp_avg_sqs: n tensors each, paired by index, all f32 on one device. step: a float
// scalar on that device holding the update's 1-based count (bias correction reads it; the kernel does not change it).
extern "C" int grpo_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                                at::Tensor** exp_avg_sqs, size_t n, at::Tensor* step, double lr, double beta1,
                                double beta2, double weight_decay, double eps, char* err, size_t err_len) {
  try {
    std::vector<at::Tensor> p, g, m, v, steps;
    p.reserve(n);
    g.reserve(n);
    m.reserve(n);
    v.reserve(n);
    steps.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      steps.push_back(*step);
    }
    at::_fused_adamw_(p, g, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt, /*found_inf=*/std::nullopt);
    return 0;
  } catch (const std::exception& e) {
    grpo::put_exception(e, err, err_len);
    return 1;
  }
}
