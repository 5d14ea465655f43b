// CPU KV cache: per layer, one row of head_dim elements per (position, kv head), in F32, BF16 or
// Q8_0. Rows are converted once when stored; reads go through dot products / accumulation in F32.
// Layers may differ in KV heads and head size (Gemma 4); KV-sharing layers have no storage.
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
  CpuKvCache(const ModelConfig& config, int n_ctx, KvType type);

  int n_ctx() const override { return n_ctx_; }
  KvType type() const override { return type_; }
  int n_filled() const override { return n_filled_; }
  void clear() override { n_filled_ = 0; }
  void set_filled(int n) { n_filled_ = n; }

  // k: n_head_kv * head_dim_k floats, v: n_head_kv * head_dim_v floats (the layer's), for one
  // position.
  void store(int layer, int pos, std::span<const float> k, std::span<const float> v);

  // dot(K[layer, pos, kv_head], q)
  float dot_k(int layer, int pos, int kv_head, std::span<const float> q) const;
  // out += weight * V[layer, pos, kv_head] (out.size() is the layer's value length)
  void add_scaled_v(int layer, int pos, int kv_head, float weight, std::span<float> out) const;

 private:
  std::span<const std::byte> k_row(int layer, int pos, int kv_head) const;
  std::span<const std::byte> v_row(int layer, int pos, int kv_head) const;

  struct Layer {
    int n_head_kv = 0;
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
  std::vector<Layer> layers_;
};

}  // namespace qforge::cpu
