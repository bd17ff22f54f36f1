// See ../README.md: declarations only, for c10d's ProcessGroupGloo.hpp (whose inline setTimeout calls this one).
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
}  // namespace gloo
