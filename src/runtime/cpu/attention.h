// Causal multi-head attention (with grouped KV heads) over the CPU KV cache, in F32.
#pragma once

#include <cstddef>
#include <span>

#include "runtime/cpu/kv_cache.h"

namespace qforge::cpu {

struct AttentionParams {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim_k = 0;
  int head_dim_v = 0;
  float scale = 1.0f;    // applied to q.k before the softmax
  float softcap = 0.0f;  // 0 = off
  int window = 0;        // > 0: a query at position p sees only positions > p - window
};

// q: [n_tokens x n_head*head_dim_k], out: [n_tokens x n_head*head_dim_v]. Token t sits at position
// pos0 + t and attends to cached positions [max(0, p - window + 1), p] (all of [0, p] when window
// is 0); those positions must already be stored. Query head h reads KV head h / (n_head/n_head_kv).
void attention(const CpuKvCache& cache, int layer, int pos0, std::size_t n_tokens,
               std::span<const float> q, const AttentionParams& params, std::span<float> out);

}  // namespace qforge::cpu
