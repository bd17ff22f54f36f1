// libtorch runtime switches tch does not expose: the deterministic-algorithms switch
// (torch.use_deterministic_algorithms), and the C++ log level.
#include <ATen/Context.h>
#include <c10/util/Logging.h>

extern "C" int grpo_set_deterministic(int on) {
  try {
    at::globalContext().setDeterministicAlgorithms(on != 0, /*warn_only=*/false);
    return at::globalContext().deterministicAlgorithms() ? 1 : 0;
  } catch (...) {
    // Exceptions must not cross into Rust.
    return -1;
  }
}

// Read TORCH_CPP_LOG_LEVEL (INFO, WARNING, ERROR, FATAL) into libtorch's logger: Python's torch does this when it is
// imported; a C++ program has to ask, or libtorch's own warnings (c10d's, say) ignore the variable.
extern "C" void grpo_init_logging() {
  try {
    c10::initLogging();
  } catch (...) {
    // A bad value keeps libtorch's default level.
  }
}
