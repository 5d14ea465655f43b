// Decode attention over a BF16 KV cache on the GPU (split-K "flash decoding"): one query token,
// grouped KV heads, optional sliding window and logit soft-cap; F32 math, as cpu::attention.
//
// KV cache layout, per layer: K = [n_ctx x n_head_kv x head_dim_k] and V = [n_ctx x n_head_kv x
// head_dim_v] BF16 (raw bits), the same row order as the CPU cache.
#pragma once

#include <cstddef>
#include <cstdint>

#include "runtime/cuda/buffer.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

struct AttentionParams {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim_k = 0;  // 64, 128, 256 or 512
  int head_dim_v = 0;  // 64, 128, 256 or 512
  float scale = 1.0f;    // applied to q.k before the softmax
  float softcap = 0.0f;  // 0 = off; else s -> cap * tanh(s / cap)
  int window = 0;        // > 0: the query at position p sees positions > p - window
};

// Rounds n_tokens rows of K and V (F32, [n_tokens x n_head_kv * head_dim]) to BF16 and stores
// them at positions pos0 .. pos0 + n_tokens - 1 of one layer's cache.
void store_kv_bf16(const float* k, const float* v, std::size_t n_tokens, int pos0,
                   const AttentionParams& params, std::uint16_t* k_cache, std::uint16_t* v_cache,
                   StreamHandle stream = nullptr);

// out[h * head_dim_v ..] = softmax_j(scale * q_h . K[j, h / group]) . V[j, h / group] over the
// visible positions j <= pos (q: n_head * head_dim_k floats). `scratch` is grown as needed and
// reused between calls (it holds the per-split partial results).
void attention_decode(const float* q, const std::uint16_t* k_cache, const std::uint16_t* v_cache,
                      int pos, const AttentionParams& params, float* out,
                      DeviceBuffer<float>& scratch, StreamHandle stream = nullptr);

}  // namespace qforge::cuda
