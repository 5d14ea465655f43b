// The CPU implementation of Model: one decoder forward pass for every supported architecture,
// steered by ModelConfig (norm placement, activation, rope style, sliding windows, softcaps,
// Gemma 4's per-layer shapes, KV sharing, per-layer embeddings and MoE).
#pragma once

#include <memory>

#include "formats/gguf.h"
#include "model/model.h"
#include "model/weights.h"

namespace qforge::cpu {

class CpuKvCache;

class CpuModel final : public Model {
 public:
  // Takes ownership of the reader: the weights are views into its mapping.
  CpuModel(std::unique_ptr<GgufReader> gguf, ModelConfig config);

  const ModelConfig& config() const override { return config_; }
  std::unique_ptr<KvCache> new_cache(int n_ctx, KvType type) const override;
  std::vector<float> forward(std::span<const std::int32_t> tokens, int pos0, KvCache& cache,
                             const ForwardOptions& options = {}) override;

  // See replace_matrix in model/weights.h.
  int replace_matrix(std::string_view name, GgmlType type, std::span<const std::byte> data) {
    return qforge::replace_matrix(weights_, name, type, data);
  }

 private:
  struct Batch;  // per-call state shared by the blocks below (positions, RoPE tables, ...)

  void attention_block(int il, const Batch& b, CpuKvCache& cache, std::vector<float>& x) const;
  void ffn_block(int il, const Batch& b, std::vector<float>& x) const;
  std::vector<float> moe_block(const MoeWeights& w, const Batch& b, std::span<const float> x) const;
  std::vector<float> per_layer_inputs(std::span<const std::int32_t> tokens,
                                      std::span<const float> x) const;
  void per_layer_input_block(int il, const Batch& b, std::vector<float>& x) const;

  std::unique_ptr<GgufReader> gguf_;
  ModelConfig config_;
  ModelWeights weights_;
};

}  // namespace qforge::cpu
