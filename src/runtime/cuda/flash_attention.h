// Fast causal attention over the KV cache, same semantics as batch_attention (model_ops.h): query
// token t sits at position *pos0 + t (read on the device) and sees cached positions
// [max(0, p - window + 1), p] (all of [0, p] when window is 0); scores are q.k * scale, then
// softcap * tanh(s / softcap) when softcap > 0, softmax, weighted sum of V. Cache layout
// K [n_ctx x n_head_kv x dk], V [n_ctx x n_head_kv x dv], BF16 bits or F32 (p.kv.bf16); q rows
// q_stride floats apart with query head h at h * dk; out [n_tokens x n_head * dv] F32. Query head
// h reads KV head h / (n_head / n_head_kv).
//
// Both kernels serve all query heads of a KV group from one CTA, so K/V are read once per group
// instead of once per query head.
//   flash_prefill: tensor cores (mma.sync m16n8k16, BF16 inputs, F32 accumulation). Q and the
//     softmax weights are rounded to BF16 (8 significant bits), as are F32 caches while loading;
//     scores, softmax and the output sums stay F32. Error against the F32 reference: ~1e-3
//     absolute for values of size ~1 (see tests/unit/test_cuda_flash_attention.cpp).
//   flash_decode: CUDA cores, all F32 like cpu::attention (error ~1e-6); split-K over positions
//     with the split computed on the device (the grid depends only on n_tokens and n_splits, so
//     a captured CUDA graph serves every step), then a merge kernel.
// Bad parameters throw qforge::Error.
#pragma once

#include <cstddef>

#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// Head sizes the flash kernels take: dk == dv, one of 64, 128, 256, 512 (others, e.g. tiny test
// models, use batch_attention).
bool flash_attention_supported(int head_dim_k, int head_dim_v);
bool flash_prefill_supported(const BatchAttention& p);
bool flash_decode_supported(const BatchAttention& p);

// Prompt chunks: any n_tokens >= 1 (up to 65535 * 64 / group rows of queries).
void flash_prefill(const float* q, const void* k_cache, const void* v_cache, const int* pos0,
                   int n_tokens, const BatchAttention& p, float* out, StreamHandle stream);

// Decode: 1..kFlashDecodeMaxTokens query tokens. scratch holds
// flash_decode_scratch_floats(p, n_tokens, n_splits) floats (split partial results).
constexpr int kFlashDecodeMaxTokens = 8;
std::size_t flash_decode_scratch_floats(const BatchAttention& p, int n_tokens, int n_splits);
void flash_decode(const float* q, const void* k_cache, const void* v_cache, const int* pos0,
                  int n_tokens, const BatchAttention& p, int n_splits, float* scratch, float* out,
                  StreamHandle stream);
// A split count for flash_decode: enough CTAs (n_head_kv x n_splits x row blocks) to fill the
// device a few times, but no split shorter than 64 positions of max_positions (the cache size).
int flash_decode_splits(const BatchAttention& p, int n_tokens, int sm_count, int max_positions);

}  // namespace qforge::cuda
