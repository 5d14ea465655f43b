// The CPU implementation of Model: one decoder forward pass for every supported architecture,
// steered by ModelConfig (norm placement, activation, rope style, sliding windows, softcaps).
#pragma once

#include <memory>

#include "formats/gguf.h"
#include "model/model.h"
#include "model/weights.h"

namespace qforge::cpu {

class CpuModel final : public Model {
 public:
  // Takes ownership of the reader: the weights are views into its mapping.
  CpuModel(std::unique_ptr<GgufReader> gguf, ModelConfig config);

  const ModelConfig& config() const override { return config_; }
  std::unique_ptr<KvCache> new_cache(int n_ctx, KvType type) const override;
  std::vector<float> forward(std::span<const std::int32_t> tokens, int pos0, KvCache& cache,
                             const ForwardOptions& options = {}) override;

 private:
  std::unique_ptr<GgufReader> gguf_;
  ModelConfig config_;
  ModelWeights weights_;
};

}  // namespace qforge::cpu
