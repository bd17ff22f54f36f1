// Memory statistics of libtorch's CUDA caching allocator, which tch does not expose: the numbers behind
// torch.cuda.memory_allocated() and torch.cuda.memory_reserved(). Only c10 headers are used (no CUDA headers), so this
// builds against any libtorch; on a CPU-only libtorch, or before CUDA is registered, it reports failure.
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>

extern "C" int grpo_cuda_memory_stats(int device, int64_t* allocated, int64_t* reserved) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[aggregate].current;
    *reserved = stats.reserved_bytes[aggregate].current;
    return 0;
  } catch (...) {
    // Exceptions must not cross into Rust.
    return -1;
  }
}
