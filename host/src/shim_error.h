// How the C++ shims hand an error to Rust: the message copied into the caller's buffer, always NUL-terminated and
// cut to fit (read back by crate::runtime::ErrBuf).
#pragma once

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstring>
#include <exception>

namespace grpo {

inline void put_error(const char* what, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}

// A caught exception's message. libtorch's own (c10::Error and its distributed kinds) carry a C++ stack trace in
// what(); the user is given the message alone, as Python's torch does unless TORCH_SHOW_CPP_STACKTRACES is set.
inline void put_exception(const std::exception& e, char* err, size_t err_len) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    put_error(c10->what_without_backtrace(), err, err_len);
  } else {
    put_error(e.what(), err, err_len);
  }
}

}  // namespace grpo
