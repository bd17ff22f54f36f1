// The process-group shim: libtorch's own c10d (TCPStore, PrefixStore, ProcessGroupGloo, and ProcessGroupNCCL for
// CUDA tensors when built: c10d_nccl.cpp) behind a small C API for the Rust side (host/src/distributed/mod.rs). Nothing here is a protocol of ours: rendezvous, transport and the
// collectives are c10d's and Gloo's, as in torch.distributed. Every entry point catches C++ exceptions (a peer that
// died, a timeout) and returns them as text; none may unwind into Rust.
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "../shim_error.h"

#include <chrono>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

// c10d_nccl.cpp: a ProcessGroupNCCL, or null when NCCL was not built in.
c10::intrusive_ptr<c10d::Backend> grpo_make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                 std::chrono::milliseconds timeout);
bool grpo_nccl_built();

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  // Gloo: CPU tensors, barriers.
  c10::intrusive_ptr<c10d::Backend> backend;
  // NCCL: CUDA tensors (null when not asked for).
  c10::intrusive_ptr<c10d::Backend> nccl;
  std::chrono::milliseconds timeout;

  const c10::intrusive_ptr<c10d::Backend>& for_tensor(const at::Tensor& t) const {
    return (t.is_cuda() && nccl) ? nccl : backend;
  }
};

using grpo::put_error;

// Run `f`, turning an exception into -1 and its message.
template <typename F>
int guarded(char* err, size_t err_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    grpo::put_exception(e, err, err_len);
  } catch (...) {
    put_error("unknown C++ exception in c10d", err, err_len);
  }
  return -1;
}

std::vector<at::Tensor> tensors_of(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work, std::chrono::milliseconds timeout) {
  if (!work->wait(timeout)) throw std::runtime_error("the collective did not complete");
}

}  // namespace

extern "C" {

// Connect to (or, when `is_server`, host) the TCPStore at addr:port, scope it under `prefix`, and start a Gloo
// process group of `world` ranks, with an NCCL one beside it for CUDA tensors when `nccl`. Returns an owned handle,
// or null with the error in `err`.
void* grpo_pg_new(const char* addr, int port, int rank, int world, int is_server, const char* prefix, int nccl,
                  int64_t timeout_ms, char* err, size_t err_len) {
  Group* group = nullptr;
  int rc = guarded(err, err_len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = false;
    opts.timeout = timeout;
    opts.multiTenant = true;
    c10::intrusive_ptr<c10d::Store> tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    c10::intrusive_ptr<c10d::Backend> device_backend;
    if (nccl != 0) {
      auto nccl_store = c10::make_intrusive<c10d::PrefixStore>("nccl/", store);
      device_backend = grpo_make_nccl(nccl_store, rank, world, timeout);
      if (!device_backend) {
        throw std::runtime_error(
            "this grpo-host was built without NCCL (the CUDA and NCCL header wheels were missing at build time; "
            "run cargo xtask setup and rebuild)");
      }
    }
    group = new Group{store, backend, device_backend, timeout};
  });
  return rc == 0 ? group : nullptr;
}

void grpo_pg_free(void* handle) { delete static_cast<Group*>(handle); }

// 1 when this build has NCCL.
int grpo_pg_has_nccl() { return grpo_nccl_built() ? 1 : 0; }

// In-place all-reduce of one dense tensor. op: 0 sum, 1 max, 2 min.
int grpo_pg_all_reduce(void* handle, at::Tensor* t, int op, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto* g = static_cast<Group*>(handle);
    std::vector<at::Tensor> tensors{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = op == 1 ? c10d::ReduceOp::MAX : (op == 2 ? c10d::ReduceOp::MIN : c10d::ReduceOp::SUM);
    opts.timeout = g->timeout;
    wait(g->for_tensor(*t)->allreduce(tensors, opts), g->timeout);
  });
}

// In-place broadcast of one dense tensor from `root`.
int grpo_pg_broadcast(void* handle, at::Tensor* t, int root, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto* g = static_cast<Group*>(handle);
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    opts.timeout = g->timeout;
    wait(g->for_tensor(*t)->broadcast(tensors, opts), g->timeout);
  });
}

// Every rank's `input` into `outputs[0..world]` (each the shape of `input`).
int grpo_pg_all_gather(void* handle, at::Tensor* input, at::Tensor** outputs, size_t world, char* err,
                       size_t err_len) {
  return guarded(err, err_len, [&] {
    auto* g = static_cast<Group*>(handle);
    std::vector<std::vector<at::Tensor>> out{tensors_of(outputs, world)};
    std::vector<at::Tensor> in{*input};
    c10d::AllgatherOptions opts;
    opts.timeout = g->timeout;
    wait(g->for_tensor(*input)->allgather(out, in, opts), g->timeout);
  });
}

int grpo_pg_barrier(void* handle, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto* g = static_cast<Group*>(handle);
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    wait(g->backend->barrier(opts), g->timeout);
  });
}

// The store the group rendezvoused through, for the survivors of a failed collective to tell each other apart
// from the lost ranks.
int grpo_pg_store_set(void* handle, const char* key, const char* value, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    std::string v(value);
    static_cast<Group*>(handle)->store->set(std::string(key), std::vector<uint8_t>(v.begin(), v.end()));
  });
}

// 1 when `key` is set, 0 when not, -1 on error.
int grpo_pg_store_check(void* handle, const char* key, char* err, size_t err_len) {
  bool present = false;
  int rc = guarded(err, err_len, [&] { present = static_cast<Group*>(handle)->store->check({std::string(key)}); });
  return rc == 0 ? (present ? 1 : 0) : -1;
}

}  // extern "C"
