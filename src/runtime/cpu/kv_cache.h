// CPU KV cache: per layer, one row of head_dim elements per (position, kv head), in F32, BF16 or
// Q8_0. Rows are converted once when stored; reads go through dot products / accumulation in F32.
// Layers may differ in KV heads and head size (Gemma 4); KV-sharing layers have no storage.
// Sliding-window layers keep a ring of min(n_ctx, 2 * window) positions (position p in slot
// p mod slots): a forward call of at most `window` tokens (max_batch()) then never overwrites a
// position that one of its own queries still needs, and memory stays bounded for long contexts.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "quant/ggml_type.h"

namespace qforge::cpu {

class CpuKvCache final : public KvCache {
 public:
  // ring = false keeps every position on sliding layers too (the reference layout in tests).
  CpuKvCache(const ModelConfig& config, int n_ctx, KvType type, bool ring = true);

  int n_ctx() const override { return n_ctx_; }
  KvType type() const override { return type_; }
  int n_filled() const override { return n_filled_; }
  void clear() override { n_filled_ = 0; }
  void set_filled(int n) { n_filled_ = n; }

  // Most tokens one forward call may store (the smallest sliding window; n_ctx without any).
  int max_batch() const { return max_batch_; }
  // Fails when restarting at pos0 < n_filled() needs positions a sliding ring has overwritten.
  void check_restart(int pos0) const;
  // Bytes of K/V storage (for tests and reports).
  std::size_t storage_bytes() const;

  // k: n_head_kv * head_dim_k floats, v: n_head_kv * head_dim_v floats (the layer's), for one
  // position.
  void store(int layer, int pos, std::span<const float> k, std::span<const float> v);

  // dot(K[layer, pos, kv_head], q)
  float dot_k(int layer, int pos, int kv_head, std::span<const float> q) const;
  // out += weight * V[layer, pos, kv_head] (out.size() is the layer's value length)
  void add_scaled_v(int layer, int pos, int kv_head, float weight, std::span<float> out) const;
  // The stored K / V row as F32 (out.size() is the layer's key / value length).
  void k_row_f32(int layer, int pos, int kv_head, std::span<float> out) const;
  void v_row_f32(int layer, int pos, int kv_head, std::span<float> out) const;

 private:
  std::span<const std::byte> k_row(int layer, int pos, int kv_head) const;
  std::span<const std::byte> v_row(int layer, int pos, int kv_head) const;

  struct Layer {
    int n_head_kv = 0;
    int slots = 0;   // positions held: n_ctx, or the ring size of a sliding layer
    int window = 0;  // sliding window (0: global layer)
    std::size_t k_dim = 0;
    std::size_t v_dim = 0;
    std::size_t k_row_bytes = 0;
    std::size_t v_row_bytes = 0;
    std::vector<std::byte> k;  // [n_ctx * n_head_kv] rows
    std::vector<std::byte> v;
  };

  int n_ctx_;
  KvType type_;
  GgmlType storage_type_;
  int n_filled_ = 0;
  int max_batch_ = 0;
  std::vector<Layer> layers_;
};

}  // namespace qforge::cpu
