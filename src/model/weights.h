// Model weights as named views into the mapped GGUF (llama.cpp tensor names). Matrices stay in
// their stored (possibly quantized) type; small vectors (norm weights, rope factors) are converted
// to F32 once at load time.
#pragma once

#include <cstddef>
#include <optional>
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
  int expert = -1;    // index within a stacked expert tensor (MoE), -1 otherwise
  int n_experts = 0;  // number of experts in that stack

  std::span<const std::byte> row(std::size_t i) const {
    return data.subspan(i * row_stride, row_stride);
  }
  bool present() const { return rows > 0; }  // optional tensors that are absent stay empty
};

// Gemma 4's mixture-of-experts block, computed beside the dense FFN of the same layer.
struct MoeWeights {
  WeightMatrix router;                 // ffn_gate_inp: [n_expert x n_embd], F32
  std::vector<float> router_scale;     // ffn_gate_inp.scale [n_embd]
  std::vector<float> expert_scale;     // ffn_down_exps.scale [n_expert]
  std::vector<float> pre_norm;         // pre_ffw_norm_2: input of the experts
  std::vector<float> post_norm_dense;  // post_ffw_norm_1: output of the dense FFN
  std::vector<float> post_norm_moe;    // post_ffw_norm_2: output of the experts
  std::vector<WeightMatrix> gate_up;   // per expert [2*n_ff_exp x n_embd]: gate rows, then up rows
  std::vector<WeightMatrix> down;      // per expert [n_embd x n_ff_exp]
};

// Per-layer embedding input of Gemma 4 E models (one small vector per token and layer).
struct PerLayerInputWeights {
  WeightMatrix gate;             // inp_gate: [n_embd_per_layer x n_embd]
  WeightMatrix proj;             // proj: [n_embd x n_embd_per_layer]
  std::vector<float> post_norm;  // post_norm [n_embd]
};

struct LayerWeights {
  std::vector<float> attn_norm;
  WeightMatrix wq, wk, wv, wo;        // wk/wv absent on KV-sharing layers; wv absent when V = K
  std::vector<float> q_norm, k_norm;  // qk_norm only (k_norm: layers with their own KV)
  std::vector<float> post_attn_norm;  // post_norms only
  std::vector<float> ffn_norm;
  WeightMatrix ffn_gate, ffn_up, ffn_down;
  std::vector<float> post_ffn_norm;  // post_norms only
  std::optional<MoeWeights> moe;
  std::optional<PerLayerInputWeights> per_layer_input;
  float output_scale = 1.0f;  // layer_output_scale (Gemma 4 layer_scalar): scales the layer output
};

struct ModelWeights {
  WeightMatrix token_embd;
  std::vector<float> output_norm;
  WeightMatrix output;            // token_embd when the model ties input and output embeddings
  std::vector<float> rope_freqs;  // optional per-dimension-pair frequency divisors (llama 3)
  // Per-layer embeddings (Gemma 4 E models; absent otherwise).
  WeightMatrix per_layer_token_embd;       // [n_vocab_per_layer x n_layer*n_embd_per_layer]
  WeightMatrix per_layer_model_proj;       // [n_layer*n_embd_per_layer x n_embd]
  std::vector<float> per_layer_proj_norm;  // [n_embd_per_layer]
  std::vector<LayerWeights> layers;
};

// Looks up and shape-checks every tensor the config needs; fails naming the file and the tensor.
// The returned views point into `gguf`'s mapping, which must outlive them.
ModelWeights bind_weights(const GgufReader& gguf, const ModelConfig& config);

// Points every matrix bound from the GGUF tensor `name` (both uses of tied embeddings, every
// expert of a stacked tensor) at `data`: the whole tensor re-encoded as `type`, same shape. Used
// to measure the effect of quantizing one tensor alone (dynamic recipes). `data` must outlive the
// use. Returns the number of matrices changed (0: no matrix comes from that tensor).
int replace_matrix(ModelWeights& weights, std::string_view name, GgmlType type,
                   std::span<const std::byte> data);

}  // namespace qforge
