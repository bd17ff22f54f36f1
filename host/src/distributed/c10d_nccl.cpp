// NCCL for CUDA tensors (c10d's ProcessGroupNCCL, exported by libtorch_cuda), beside Gloo for CPU tensors, as
// torch.distributed's "cpu:gloo,cuda:nccl". Compiled for real only when build.rs finds the CUDA and NCCL headers its
// header needs (the nvidia-cuda-crt, nvidia-cuda-cccl and nvidia-nccl wheels that setup installs); otherwise the
// factory says so and CUDA tensors go through Gloo by way of host memory.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

#ifdef GRPO_WITH_NCCL
#define USE_C10D_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

c10::intrusive_ptr<c10d::Backend> grpo_make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                 std::chrono::milliseconds timeout) {
#ifdef GRPO_WITH_NCCL
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
#else
  (void)store;
  (void)rank;
  (void)size;
  (void)timeout;
  return {};
#endif
}

bool grpo_nccl_built() {
#ifdef GRPO_WITH_NCCL
  return true;
#else
  return false;
#endif
}
