// Kernels of the CUDA forward pass (cuda_model.cpp) that go beyond the generic ops in ops.h:
// they read the batch's start position from device memory (so that one captured CUDA graph
// serves every decode step) and work on the model's interleaved activation buffers:
//   qkv: per token [q (n_head * dk) | k (n_head_kv * dk) | v (n_head_kv * dv)]
//   gate_up: per token [gate (n_ff) | up (n_ff)]
// All math is F32, in the order of the CPU reference (src/runtime/cpu/cpu_model.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "model/config.h"
#include "quant/ggml_type.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// out[t, :] = dequantized row tokens[t] of `w` (n_cols columns) times `scale`. Token ids must
// already be valid (checked on the host).
void embed_tokens(GgmlType type, const void* w, std::size_t n_cols, const std::int32_t* tokens,
                  int n_tokens, float scale, float* out, StreamHandle stream);

// Rotary tables [n_tokens x n_rot/2] for positions *pos0 + t, computed as cpu::rope_tables (in
// double, then rounded). freq_factors: n_rot/2 floats or null.
void rope_tables(const int* pos0, int n_tokens, int n_rot, const RopeParams& params,
                 const float* freq_factors, float* cos, float* sin, StreamHandle stream);

struct QkPrepare {
  int n_head = 0, n_head_kv = 0, head_dim = 0, n_rot = 0;
  std::size_t token_stride = 0;   // floats between tokens of the qkv buffer
  std::size_t k_offset = 0;       // floats from a token's q to its k
  const float* q_norm = nullptr;  // head_dim floats, or null: no QK-norm
  const float* k_norm = nullptr;
  float eps = 0.0f;
  RopeStyle style = RopeStyle::kAdjacentPairs;
  // V heads (head_dim_v floats each, at v_offset of a token): v_from_k takes head h's V from K
  // head h before K's norm (the V rows of qkv are then not read; head_dim_v must equal
  // head_dim); v_norm divides each V head by its RMS (no weight), Gemma 4's value norm.
  std::size_t v_offset = 0;
  int head_dim_v = 0;
  bool v_from_k = false;
  bool v_norm = false;
  // Optional (k_cache non-null): store the prepared K and V into one layer's cache
  // (K: [n_ctx x n_head_kv x dk], V: [n_ctx x n_head_kv x dv]) at positions *pos0 + t, converted
  // to the cache type (BF16 rounds to nearest even), instead of writing V back to qkv.
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  const int* pos0 = nullptr;
  bool cache_bf16 = true;  // else F32
};
inline constexpr int kMaxQkHeadDim = 1024;
// Per token and head of Q and K in place: optional RMSNorm with the head weights, then rotary
// embedding with the tables of rope_tables; then the optional cache store. V heads (when stored,
// taken from K or normalized): from K or qkv, normalized if v_norm, into the cache when storing,
// else back into qkv's V rows.
void qk_prepare(float* qkv, int n_tokens, const QkPrepare& p, const float* cos, const float* sin,
                StreamHandle stream);

// The inputs of a Gemma 4 MoE block (moe.h), made from the same normalized row as h:
//   router_in = x * inv * router_scale * (1 / sqrt(n)),   expert_in = x * inv * pre_norm,
// inv = 1 / sqrt(mean(x^2) + eps). All null: none.
struct MoeInputs {
  const float* router_scale = nullptr;
  const float* pre_norm = nullptr;
  float* router_in = nullptr;
  float* expert_in = nullptr;
};

// x[r, :] += (o_norm ? rms_norm(o[r, :]) * o_norm : o[r, :]) when o is not null; then
// h[r, :] = rms_norm(x[r, :]) * next_norm, and the MoE inputs of x[r, :] when moe has them. Rows
// of n floats; one CTA per row.
void add_and_norm(float* x, const float* o, const float* o_norm, const float* next_norm, float* h,
                  int n_rows, std::size_t n, float eps, StreamHandle stream,
                  const MoeInputs& moe = {});

// gate_up rows [gate | up] of 2 * n_ff floats -> out rows act(gate) * up of n_ff floats.
void glu_rows(FfnActivation act, const float* gate_up, float* out, int n_tokens, std::size_t n_ff,
              StreamHandle stream);

struct KvLayout {
  int n_head_kv = 0, head_dim_k = 0, head_dim_v = 0;
  bool bf16 = true;  // else F32
};

struct BatchAttention {
  int n_head = 0;
  KvLayout kv;
  float scale = 1.0f;
  float softcap = 0.0f;
  int window = 0;            // > 0: position p sees positions > p - window
  std::size_t q_stride = 0;  // floats between the q rows of consecutive tokens
};
// Causal attention of n_tokens queries at positions *pos0 + t over the cache (the batch's own
// K/V already stored). Head dims up to 512; key and value dims must need the same lanes per warp
// (both <= 32, <= 64, <= 128, <= 256 or <= 512). n_splits (<= 1024) CTAs share each (token,
// head); `part` holds n_tokens * n_head * n_splits * (head_dim_v + 2) floats; `counters` holds
// n_tokens * n_head ints that are zero before the first call (every call leaves them zero; calls
// sharing them must not overlap). out: [n_tokens x n_head * dv].
void batch_attention(const float* q, const void* k_cache, const void* v_cache, const int* pos0,
                     int n_tokens, const BatchAttention& p, int n_splits, float* part,
                     int* counters, float* out, StreamHandle stream);
bool batch_attention_supported(int head_dim_k, int head_dim_v);

}  // namespace qforge::cuda
