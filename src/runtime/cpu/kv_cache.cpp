#include "runtime/cpu/kv_cache.h"

#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"

namespace qforge::cpu {
namespace {

GgmlType storage_type(KvType type) {
  switch (type) {
    case KvType::F32: return GgmlType::F32;
    case KvType::BF16: return GgmlType::BF16;
    case KvType::Q8_0: return GgmlType::Q8_0;
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

CpuKvCache::CpuKvCache(const ModelConfig& config, int n_ctx, KvType type)
    : n_ctx_(n_ctx),
      type_(type),
      storage_type_(storage_type(type)),
      n_head_kv_(config.n_head_kv),
      k_dim_(static_cast<std::size_t>(config.head_dim_k)),
      v_dim_(static_cast<std::size_t>(config.head_dim_v)) {
  if (n_ctx <= 0) fail("KV cache: context size must be > 0, got {}", n_ctx);
  const std::uint32_t block = block_size(storage_type_);
  if (k_dim_ % block != 0 || v_dim_ % block != 0) {
    fail("KV cache type {} needs head sizes that are multiples of {} (key {}, value {})",
         kv_type_name(type), block, k_dim_, v_dim_);
  }
  k_row_bytes_ = row_bytes(storage_type_, k_dim_);
  v_row_bytes_ = row_bytes(storage_type_, v_dim_);
  const auto rows = static_cast<std::size_t>(n_ctx) * static_cast<std::size_t>(n_head_kv_);
  k_.resize(static_cast<std::size_t>(config.n_layer));
  v_.resize(static_cast<std::size_t>(config.n_layer));
  for (std::size_t il = 0; il < k_.size(); ++il) {
    k_[il].resize(rows * k_row_bytes_);
    v_[il].resize(rows * v_row_bytes_);
  }
}

void CpuKvCache::store(int layer, int pos, std::span<const float> k, std::span<const float> v) {
  auto& kl = k_[static_cast<std::size_t>(layer)];
  auto& vl = v_[static_cast<std::size_t>(layer)];
  for (int h = 0; h < n_head_kv_; ++h) {
    const auto row = static_cast<std::size_t>(pos) * static_cast<std::size_t>(n_head_kv_) +
                     static_cast<std::size_t>(h);
    const auto hs = static_cast<std::size_t>(h);
    store_row(storage_type_, k.subspan(hs * k_dim_, k_dim_),
              std::span(kl).subspan(row * k_row_bytes_, k_row_bytes_));
    store_row(storage_type_, v.subspan(hs * v_dim_, v_dim_),
              std::span(vl).subspan(row * v_row_bytes_, v_row_bytes_));
  }
}

std::span<const std::byte> CpuKvCache::k_row(int layer, int pos, int kv_head) const {
  const auto row = static_cast<std::size_t>(pos) * static_cast<std::size_t>(n_head_kv_) +
                   static_cast<std::size_t>(kv_head);
  return std::span(k_[static_cast<std::size_t>(layer)]).subspan(row * k_row_bytes_, k_row_bytes_);
}

std::span<const std::byte> CpuKvCache::v_row(int layer, int pos, int kv_head) const {
  const auto row = static_cast<std::size_t>(pos) * static_cast<std::size_t>(n_head_kv_) +
                   static_cast<std::size_t>(kv_head);
  return std::span(v_[static_cast<std::size_t>(layer)]).subspan(row * v_row_bytes_, v_row_bytes_);
}

float CpuKvCache::dot_k(int layer, int pos, int kv_head, std::span<const float> q) const {
  return dot_row(storage_type_, k_row(layer, pos, kv_head), q);
}

void CpuKvCache::add_scaled_v(int layer, int pos, int kv_head, float weight,
                              std::span<float> out) const {
  const std::span<const std::byte> row = v_row(layer, pos, kv_head);
  switch (storage_type_) {
    case GgmlType::F32: {
      for (std::size_t i = 0; i < v_dim_; ++i) {
        float x;
        std::memcpy(&x, row.data() + 4 * i, 4);
        out[i] += weight * x;
      }
      return;
    }
    case GgmlType::BF16: {
      for (std::size_t i = 0; i < v_dim_; ++i) {
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
      for (std::size_t b = 0; b < v_dim_ / kBlock; ++b) {
        dequantize_row(storage_type_, row.subspan(b * block_bytes, block_bytes), tmp);
        for (std::size_t i = 0; i < kBlock; ++i) out[b * kBlock + i] += weight * tmp[i];
      }
    }
  }
}

}  // namespace qforge::cpu
