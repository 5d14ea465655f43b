// Model weights as named views into the mapped GGUF (llama.cpp tensor names). Matrices stay in
// their stored (possibly quantized) type; small vectors (norm weights, rope factors) are converted
// to F32 once at load time.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "quant/ggml_type.h"

namespace qforge {

class GgufReader;

// A 2-D tensor: `rows` rows of `cols` elements each (ggml: ne0 = cols, ne1 = rows), row-major.
// As a linear layer it maps a cols-long input to a rows-long output.
struct WeightMatrix {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::size_t rows = 0;
  std::size_t cols = 0;
  std::size_t row_stride = 0;  // bytes per row
  std::span<const std::byte> data;

  std::span<const std::byte> row(std::size_t i) const {
    return data.subspan(i * row_stride, row_stride);
  }
};

struct LayerWeights {
  std::vector<float> attn_norm;
  WeightMatrix wq, wk, wv, wo;
  std::vector<float> q_norm, k_norm;  // qk_norm only
  std::vector<float> post_attn_norm;  // post_norms only
  std::vector<float> ffn_norm;
  WeightMatrix ffn_gate, ffn_up, ffn_down;
  std::vector<float> post_ffn_norm;  // post_norms only
};

struct ModelWeights {
  WeightMatrix token_embd;
  std::vector<float> output_norm;
  WeightMatrix output;            // token_embd when the model ties input and output embeddings
  std::vector<float> rope_freqs;  // optional per-dimension-pair frequency divisors (llama 3)
  std::vector<LayerWeights> layers;
};

// Looks up and shape-checks every tensor the config needs; fails naming the file and the tensor.
// The returned views point into `gguf`'s mapping, which must outlive them.
ModelWeights bind_weights(const GgufReader& gguf, const ModelConfig& config);

}  // namespace qforge
