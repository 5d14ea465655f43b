// Hyper-parameters of a decoder-only transformer, read from GGUF metadata (`<arch>.*` keys as
// llama.cpp writes them). Architecture differences (Llama vs Gemma 3) are expressed as data here,
// so one forward pass (and later one CUDA implementation) serves every supported architecture.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qforge {

class GgufReader;

enum class RopeStyle {
  kAdjacentPairs,  // "normal" rope: (x[2i], x[2i+1]) rotate together (llama; GGUF Q/K are permuted)
  kHalves,         // NeoX rope: (x[i], x[i + n_rot/2]) rotate together (gemma)
};

enum class FfnActivation {
  kSiluGlu,      // SwiGLU: silu(gate) * up
  kGeluTanhGlu,  // GeGLU with the tanh approximation of GELU
};

struct RopeParams {
  double freq_base = 10000.0;
  double freq_scale = 1.0;  // linear scaling: positions are multiplied by this (1 / factor)
};

struct ModelConfig {
  std::string arch;
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_ff = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim_k = 0;  // key/query length per head
  int head_dim_v = 0;
  int n_rot = 0;       // rotated dimensions per head (<= head_dim_k)
  int n_ctx_train = 0;
  float norm_eps = 1e-5f;

  RopeStyle rope_style = RopeStyle::kAdjacentPairs;
  RopeParams rope_global;  // layers with full attention
  RopeParams rope_local;   // sliding-window layers

  FfnActivation ffn_act = FfnActivation::kSiluGlu;
  float embed_scale = 1.0f;  // token embeddings are multiplied by this (gemma: sqrt(n_embd))
  float attn_scale = 0.0f;   // query scale before the softmax
  float attn_softcap = 0.0f;   // 0 = off; else scores -> cap * tanh(scores / cap)
  float final_softcap = 0.0f;  // same for the output logits
  bool qk_norm = false;        // per-head RMSNorm of Q and K (attn_q_norm / attn_k_norm)
  bool post_norms = false;     // RMSNorm of the attention and FFN outputs before the residual add

  int sliding_window = 0;            // tokens a sliding layer sees, itself included; 0 = none
  std::vector<bool> layer_sliding;   // per layer: true when the layer uses the sliding window

  std::int32_t bos_token = -1;
  std::int32_t eos_token = -1;

  bool is_sliding(int layer) const {
    return sliding_window > 0 && layer_sliding[static_cast<std::size_t>(layer)];
  }
  const RopeParams& rope_for(int layer) const {
    return is_sliding(layer) ? rope_local : rope_global;
  }
};

// Supported values of general.architecture.
bool is_supported_architecture(const std::string& arch);

// Reads and validates the hyper-parameters; fails naming the file and the missing/bad key.
// n_vocab is taken from token_embd.weight.
ModelConfig read_model_config(const GgufReader& gguf);

}  // namespace qforge
