#include "runtime/cpu/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"

namespace qforge::cpu {
namespace {

GgmlType storage_type(KvType type) {
  switch (type) {
    case KvType::F32:
      return GgmlType::F32;
    case KvType::BF16:
      return GgmlType::BF16;
    case KvType::Q8_0:
      return GgmlType::Q8_0;
  }
  return GgmlType::F32;
}

void store_row(GgmlType type, std::span<const float> src, std::span<std::byte> dst) {
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst.data(), src.data(), src.size_bytes());
      return;
    case GgmlType::BF16:
      for (std::size_t i = 0; i < src.size(); ++i) {
        const std::uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(dst.data() + 2 * i, &h, 2);
      }
      return;
    default:
      quantize_row(type, src, dst);
  }
}

}  // namespace

CpuKvCache::CpuKvCache(const ModelConfig& config, int n_ctx, KvType type, bool ring)
    : n_ctx_(n_ctx), type_(type), storage_type_(storage_type(type)) {
  if (n_ctx <= 0) fail("KV cache: context size must be > 0, got {}", n_ctx);
  const std::uint32_t block = block_size(storage_type_);
  layers_.resize(static_cast<std::size_t>(config.n_layer));
  max_batch_ = n_ctx;
  for (int il = 0; il < config.n_layer; ++il) {
    if (!config.has_kv(il)) {  // reads the cache of config.kv_source(il)
      const int src = config.kv_source(il);
      if (config.is_sliding(src) && (!config.is_sliding(il) || config.sliding_window <= 0)) {
        fail("KV cache: global layer {} shares the sliding-window cache of layer {}", il, src);
      }
      continue;
    }
    Layer& l = layers_[static_cast<std::size_t>(il)];
    l.n_head_kv = config.n_head_kv_of(il);
    l.k_dim = static_cast<std::size_t>(config.head_dim_k_of(il));
    l.v_dim = static_cast<std::size_t>(config.head_dim_v_of(il));
    if (l.k_dim % block != 0 || l.v_dim % block != 0) {
      fail(
          "KV cache type {} needs head sizes that are multiples of {} (layer {}: key {}, value {})",
          kv_type_name(type), block, il, l.k_dim, l.v_dim);
    }
    l.k_row_bytes = row_bytes(storage_type_, l.k_dim);
    l.v_row_bytes = row_bytes(storage_type_, l.v_dim);
    l.window = ring && config.is_sliding(il) ? config.sliding_window : 0;
    l.slots = l.window > 0 ? std::min(n_ctx, 2 * l.window) : n_ctx;
    if (l.window > 0) max_batch_ = std::min(max_batch_, l.window);
    const auto rows = static_cast<std::size_t>(l.slots) * static_cast<std::size_t>(l.n_head_kv);
    l.k.resize(rows * l.k_row_bytes);
    l.v.resize(rows * l.v_row_bytes);
  }
}

void CpuKvCache::store(int il, int pos, std::span<const float> k, std::span<const float> v) {
  Layer& l = layers_[static_cast<std::size_t>(il)];
  if (l.n_head_kv == 0) fail("KV cache: layer {} has no KV of its own", il);
  for (int h = 0; h < l.n_head_kv; ++h) {
    const auto row =
        static_cast<std::size_t>(pos % l.slots) * static_cast<std::size_t>(l.n_head_kv) +
        static_cast<std::size_t>(h);
    const auto hs = static_cast<std::size_t>(h);
    store_row(storage_type_, k.subspan(hs * l.k_dim, l.k_dim),
              std::span(l.k).subspan(row * l.k_row_bytes, l.k_row_bytes));
    store_row(storage_type_, v.subspan(hs * l.v_dim, l.v_dim),
              std::span(l.v).subspan(row * l.v_row_bytes, l.v_row_bytes));
  }
}

void CpuKvCache::check_restart(int pos0) const {
  for (std::size_t il = 0; il < layers_.size(); ++il) {
    const Layer& l = layers_[il];
    if (l.window <= 0 || l.slots >= n_ctx_) continue;
    // The oldest position pos0 still needs is pos0 - window + 1; it was overwritten once a
    // position `slots` later was stored.
    const int oldest = std::max(0, pos0 - l.window + 1);
    if (oldest + l.slots <= n_filled_ - 1) {
      fail(
          "KV cache: cannot restart at position {} after {} positions: sliding layer {} keeps "
          "only the last {} (restart at most {} positions back, or clear the cache)",
          pos0, n_filled_, il, l.slots, l.slots - l.window + 1);
    }
  }
}

std::size_t CpuKvCache::storage_bytes() const {
  std::size_t total = 0;
  for (const Layer& l : layers_) total += l.k.size() + l.v.size();
  return total;
}

std::span<const std::byte> CpuKvCache::k_row(int il, int pos, int kv_head) const {
  const Layer& l = layers_[static_cast<std::size_t>(il)];
  const auto row = static_cast<std::size_t>(pos % l.slots) * static_cast<std::size_t>(l.n_head_kv) +
                   static_cast<std::size_t>(kv_head);
  return std::span(l.k).subspan(row * l.k_row_bytes, l.k_row_bytes);
}

std::span<const std::byte> CpuKvCache::v_row(int il, int pos, int kv_head) const {
  const Layer& l = layers_[static_cast<std::size_t>(il)];
  const auto row = static_cast<std::size_t>(pos % l.slots) * static_cast<std::size_t>(l.n_head_kv) +
                   static_cast<std::size_t>(kv_head);
  return std::span(l.v).subspan(row * l.v_row_bytes, l.v_row_bytes);
}

void CpuKvCache::k_row_f32(int layer, int pos, int kv_head, std::span<float> out) const {
  dequantize_row(storage_type_, k_row(layer, pos, kv_head), out);
}

void CpuKvCache::v_row_f32(int layer, int pos, int kv_head, std::span<float> out) const {
  dequantize_row(storage_type_, v_row(layer, pos, kv_head), out);
}

float CpuKvCache::dot_k(int layer, int pos, int kv_head, std::span<const float> q) const {
  return dot_row(storage_type_, k_row(layer, pos, kv_head), q);
}

void CpuKvCache::add_scaled_v(int layer, int pos, int kv_head, float weight,
                              std::span<float> out) const {
  const std::span<const std::byte> row = v_row(layer, pos, kv_head);
  const std::size_t v_dim = out.size();
  switch (storage_type_) {
    case GgmlType::F32: {
      for (std::size_t i = 0; i < v_dim; ++i) {
        float x;
        std::memcpy(&x, row.data() + 4 * i, 4);
        out[i] += weight * x;
      }
      return;
    }
    case GgmlType::BF16: {
      for (std::size_t i = 0; i < v_dim; ++i) {
        std::uint16_t h;
        std::memcpy(&h, row.data() + 2 * i, 2);
        out[i] += weight * bf16_to_f32(h);
      }
      return;
    }
    default: {
      // Q8_0: dequantize one 32-element block at a time (no heap allocation per call).
      constexpr std::size_t kBlock = 32;
      const std::size_t block_bytes = type_size(storage_type_);
      float tmp[kBlock];
      for (std::size_t b = 0; b < v_dim / kBlock; ++b) {
        dequantize_row(storage_type_, row.subspan(b * block_bytes, block_bytes), tmp);
        for (std::size_t i = 0; i < kBlock; ++i) out[b * kBlock + i] += weight * tmp[i];
      }
    }
  }
}

}  // namespace qforge::cpu
