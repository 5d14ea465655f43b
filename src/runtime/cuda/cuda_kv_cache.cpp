#include "runtime/cuda/cuda_kv_cache.h"

#include <algorithm>
#include <atomic>

#include "core/error.h"
#include "runtime/cuda/graph.h"

namespace qforge::cuda {
namespace {

std::size_t per_layer_bytes(const ModelConfig& c, int n_ctx, KvType type) {
  const std::size_t elem = type == KvType::BF16 ? 2 : 4;
  const std::size_t dim = static_cast<std::size_t>(std::max(c.head_dim_k, c.head_dim_v));
  const std::size_t bytes =
      static_cast<std::size_t>(n_ctx) * static_cast<std::size_t>(c.n_head_kv) * dim * elem;
  return (bytes + 255) / 256 * 256;
}

std::uint64_t next_id() {
  static std::atomic<std::uint64_t> counter{0};
  return ++counter;
}

}  // namespace

std::size_t CudaKvCache::bytes_needed(const ModelConfig& config, int n_ctx, KvType type) {
  return per_layer_bytes(config, n_ctx, type) * 2 * static_cast<std::size_t>(config.n_layer);
}

CudaKvCache::CudaKvCache(const ModelConfig& config, int n_ctx, KvType type, int decode_splits)
    : n_ctx_(n_ctx), type_(type), decode_splits_(decode_splits), id_(next_id()) {
  if (n_ctx <= 0) fail("KV cache: context size must be > 0, got {}", n_ctx);
  if (type == KvType::Q8_0) {
    fail("CUDA backend: KV cache type q8_0 is not supported on the GPU (use bf16 or f32)");
  }
  layout_ = KvLayout{config.n_head_kv, config.head_dim_k, config.head_dim_v, type == KvType::BF16};
  layer_bytes_ = per_layer_bytes(config, n_ctx, type);
  const std::size_t total = bytes_needed(config, n_ctx, type);
  const CurrentDevice dev = current_device();
  if (total > dev.free_bytes) {
    fail(
        "CUDA backend: a {} KV cache of {} tokens needs {} bytes of GPU memory but only {} are "
        "free on GPU {} ({}); use a smaller --ctx",
        kv_type_name(type), n_ctx, total, dev.free_bytes, dev.index, dev.name);
  }
  storage_ = DeviceBuffer<std::byte>(total);
}

}  // namespace qforge::cuda
