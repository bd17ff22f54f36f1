// libtorch's deterministic-algorithms switch (torch.use_deterministic_algorithms), which tch does not expose.
#include <ATen/Context.h>

extern "C" int grpo_set_deterministic(int on) {
  try {
    at::globalContext().setDeterministicAlgorithms(on != 0, /*warn_only=*/false);
    return at::globalContext().deterministicAlgorithms() ? 1 : 0;
  } catch (...) {
    // Exceptions must not cross into Rust.
    return -1;
  }
}
