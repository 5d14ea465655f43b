// KV cache in GPU memory: per layer K = [n_ctx x n_head_kv x head_dim_k] and V likewise, BF16
// (default) or F32, the row order of the CPU cache.
#pragma once

#include <cstdint>

#include "model/config.h"
#include "model/model.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/model_ops.h"

namespace qforge::cuda {

class CudaKvCache final : public KvCache {
 public:
  // decode_splits: CTAs per head that share the positions in a one-token step (fixed per cache so
  // that a captured decode graph stays valid). Fails for Q8_0 and when the cache does not fit the
  // free device memory.
  CudaKvCache(const ModelConfig& config, int n_ctx, KvType type, int decode_splits);

  int n_ctx() const override { return n_ctx_; }
  KvType type() const override { return type_; }
  int n_filled() const override { return n_filled_; }
  void clear() override { n_filled_ = 0; }
  void set_filled(int n) { n_filled_ = n; }

  const KvLayout& layout() const { return layout_; }
  void* k(int layer) {
    return storage_.data() + static_cast<std::size_t>(layer) * 2 * layer_bytes_;
  }
  void* v(int layer) {
    return storage_.data() + (static_cast<std::size_t>(layer) * 2 + 1) * layer_bytes_;
  }
  int decode_splits() const { return decode_splits_; }
  std::uint64_t id() const { return id_; }  // unique per cache object, for graph reuse

  static std::size_t bytes_needed(const ModelConfig& config, int n_ctx, KvType type);

 private:
  int n_ctx_;
  KvType type_;
  KvLayout layout_;
  int decode_splits_;
  std::size_t layer_bytes_ = 0;  // bytes of one of K or V of one layer (the larger, aligned)
  int n_filled_ = 0;
  std::uint64_t id_;
  DeviceBuffer<std::byte> storage_;
};

}  // namespace qforge::cuda
