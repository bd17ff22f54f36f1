// How the C++ shims hand an error to Rust: the message copied into the caller's buffer, always NUL-terminated and
// cut to fit (read back by crate::runtime::ErrBuf).
#pragma once

#include <cstddef>
#include <cstring>

namespace grpo {

inline void put_error(const char* what, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}

}  // namespace grpo
