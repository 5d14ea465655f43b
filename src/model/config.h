// Hyper-parameters of a decoder-only transformer, read from GGUF metadata (`<arch>.*` keys as
// llama.cpp writes them). Architecture differences (Llama, Gemma 3, Gemma 4) are expressed as data
// here, so one forward pass (and later one CUDA implementation) serves every supported
// architecture. Gemma 4 mixes layer shapes (sliding and full layers differ in head size, KV heads
// and RoPE; E models widen the FFN of some layers): use the per-layer accessors at the bottom,
// which fall back to the scalar fields for uniform models.
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
  int n_ff = 0;  // layer_n_ff overrides it per layer when not empty
  int n_head = 0;
  int n_head_kv = 0;   // layer_n_head_kv overrides it per layer when not empty
  int head_dim_k = 0;  // key/query length per head (full-attention layers)
  int head_dim_v = 0;
  int n_rot = 0;  // rotated dimensions per head (<= head_dim_k)
  // Sliding-window layers of Gemma 4 have their own head geometry; 0 = same as above.
  int head_dim_k_swa = 0;
  int head_dim_v_swa = 0;
  int n_rot_swa = 0;
  std::vector<int> layer_n_head_kv;  // per layer, or empty
  std::vector<int> layer_n_ff;       // per layer, or empty
  int n_ctx_train = 0;
  float norm_eps = 1e-5f;

  RopeStyle rope_style = RopeStyle::kAdjacentPairs;
  RopeParams rope_global;  // layers with full attention
  RopeParams rope_local;   // sliding-window layers
  // rope_freqs.weight divides the frequencies of full-attention layers only (Gemma 4's
  // "proportional" RoPE) instead of every layer (Llama 3).
  bool rope_freqs_full_only = false;

  FfnActivation ffn_act = FfnActivation::kSiluGlu;
  float embed_scale = 1.0f;    // token embeddings are multiplied by this (gemma: sqrt(n_embd))
  float attn_scale = 0.0f;     // query scale before the softmax
  float attn_softcap = 0.0f;   // 0 = off; else scores -> cap * tanh(scores / cap)
  float final_softcap = 0.0f;  // same for the output logits
  bool qk_norm = false;        // per-head RMSNorm of Q and K (attn_q_norm / attn_k_norm)
  bool post_norms = false;     // RMSNorm of the attention and FFN outputs before the residual add
  bool value_norm = false;     // RMSNorm (no weight) of each value head (Gemma 4)

  // Gemma 4 extras (0 = absent).
  int n_layer_kv = 0;        // layers >= n_layer_kv reuse the KV of an earlier layer of their type
  int n_embd_per_layer = 0;  // per-layer embedding width (E models)
  int n_expert = 0;          // MoE block beside the dense FFN in every layer
  int n_expert_used = 0;
  int n_ff_exp = 0;

  int sliding_window = 0;           // tokens a sliding layer sees, itself included; 0 = none
  std::vector<bool> layer_sliding;  // per layer: true when the layer uses the sliding window

  std::int32_t bos_token = -1;
  std::int32_t eos_token = -1;

  // The layer's type: a sliding-window layer (its geometry and RoPE) or a full-attention one.
  bool is_swa_layer(int layer) const {
    const auto i = static_cast<std::size_t>(layer);
    return i < layer_sliding.size() && layer_sliding[i];
  }
  // Whether the window actually limits the layer's attention.
  bool is_sliding(int layer) const { return sliding_window > 0 && is_swa_layer(layer); }
  const RopeParams& rope_for(int layer) const {
    return is_swa_layer(layer) ? rope_local : rope_global;
  }
  int head_dim_k_of(int layer) const {
    return is_swa_layer(layer) && head_dim_k_swa > 0 ? head_dim_k_swa : head_dim_k;
  }
  int head_dim_v_of(int layer) const {
    return is_swa_layer(layer) && head_dim_v_swa > 0 ? head_dim_v_swa : head_dim_v;
  }
  int n_rot_of(int layer) const { return is_swa_layer(layer) && n_rot_swa > 0 ? n_rot_swa : n_rot; }
  int n_head_kv_of(int layer) const {
    return layer_n_head_kv.empty() ? n_head_kv : layer_n_head_kv[static_cast<std::size_t>(layer)];
  }
  int n_ff_of(int layer) const {
    return layer_n_ff.empty() ? n_ff : layer_n_ff[static_cast<std::size_t>(layer)];
  }
  // Whether the layer computes and caches its own K/V.
  bool has_kv(int layer) const { return n_layer_kv <= 0 || layer < n_layer_kv; }
  // The layer whose cached K/V this layer attends to: itself, or for a KV-sharing layer the last
  // layer of the same type that has its own (transformers' Gemma 4 shared_kv_states). -1 if none.
  int kv_source(int layer) const {
    if (has_kv(layer)) return layer;
    for (int il = n_layer_kv - 1; il >= 0; --il) {
      if (is_swa_layer(il) == is_swa_layer(layer)) return il;
    }
    return -1;
  }
  bool rope_uses_freqs(int layer) const { return !rope_freqs_full_only || !is_swa_layer(layer); }
};

// Checks the per-layer fields against n_layer and each other (after adjust_config, too);
// `where` names the file for the message.
void validate_model_config(const ModelConfig& config, const std::string& where);

// Supported values of general.architecture.
bool is_supported_architecture(const std::string& arch);

// Reads and validates the hyper-parameters; fails naming the file and the missing/bad key.
// n_vocab is taken from token_embd.weight.
ModelConfig read_model_config(const GgufReader& gguf);

}  // namespace qforge
