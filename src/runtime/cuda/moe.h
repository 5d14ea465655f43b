// Mixture-of-experts kernels of Gemma 4 on the GPU (the CPU reference is CpuModel::moe_block in
// src/runtime/cpu/cpu_model.cpp). Routing happens on the device and the chosen expert ids stay in
// device memory, so a decode step needs no host round trip and fits in one CUDA graph:
//
//   (add_and_norm)   router input and expert input from the residual stream (model_ops.h)
//   (router GEMV)    logits [n_tokens x n_expert]  (gemv.h)
//   moe_route        softmax, top k, renormalised weights times the expert scales
//                    (moe_router_route: an F32 router and moe_route in one launch)
//   moe_gemv         gate_up of each (token, chosen expert) "slot", reading the expert id from ids
//   glu_rows         (model_ops.h) on the slots' gate_up rows; Q4_0x8 stacks instead take
//                    moe_gemv_q4_0x8_glu (q4_0x8.h), which applies the activation itself
//   moe_gemv         down of each slot
//   (moe_combine)    per token: sum over its k slots of weight * output, mixed with the dense
//                    FFN (gemma4_ops.h)
//
// A slot is one (token, chosen expert) pair: slot s = t * k + j. The k slots of a token hold its
// experts in increasing expert index (the order in which the CPU reference accumulates them).
// All pointers are device pointers; every call is asynchronous on `stream`.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"
#include "runtime/cuda/stream.h"
#include "runtime/cuda/weight_layout.h"

namespace qforge::cuda {

// A stacked expert tensor in device memory: n_experts matrices of rows x cols in their stored
// type, expert e starting expert_bytes * e bytes after data. Q4_0 stacks may be regrouped
// (layout kQ4_0x8, q4_0x8.h): moe_gemm and q4_0x8.h's moe_gemv_q4_0x8_glu take those.
struct ExpertStack {
  GgmlType type = GgmlType::F32;
  const void* data = nullptr;
  std::size_t rows = 0, cols = 0;
  std::size_t expert_bytes = 0;
  int n_experts = 0;
  WeightLayout layout = WeightLayout::kGguf;
  bool empty() const { return data == nullptr; }
};

// Types moe_gemv decodes (those of gemv_supported()).
bool moe_gemv_supported(GgmlType type);

// Fails (qforge::Error) when the stack's type has no kernel, its columns are not a multiple of
// the type's block size, or its base / expert stride break the format's alignment (for the
// Q4_0x8 layout: 256 columns, 16 bytes).
void check_expert_stack(const ExpertStack& w, const char* what);

// For every slot s < n_slots:
//   y[s * ldy + r] = sum_c W_{ids[s]}[r, c] * x[(s / x_group) * w.cols + c],   r < w.rows
// x_group = k when the k slots of a token share one input row (gate_up), 1 when every slot has
// its own (down). Expert ids outside [0, n_experts) produce zeros (they cannot come from
// moe_route). x must be 16-byte aligned and w.cols a multiple of 4. GGUF layout only.
void moe_gemv(const ExpertStack& w, const int* ids, int n_slots, int x_group, const float* x,
              float* y, std::size_t ldy, StreamHandle stream);

// Per token: p = softmax(logits[t]), the k most probable experts (ties: lower index first),
// weight_j = p_j / sum of the k chosen p * expert_scale[e_j]. Writes ids[t * k + j] and
// weights[t * k + j], j in increasing expert index. k <= n_expert <= 4096.
void moe_route(const float* logits, int n_tokens, int n_expert, int k, const float* expert_scale,
               int* ids, float* weights, StreamHandle stream);

// An F32 router and moe_route in one launch (decode steps: one launch less per MoE layer):
// logits[t * n_expert + e] = sum_c w[e * n_cols + c] * x[t * n_cols + c], then moe_route of them.
// counters: n_tokens zeros in device memory, which the kernel leaves zero. n_cols a multiple of
// 4, w and x 16-byte aligned, n_tokens <= 65535.
void moe_router_route(const float* w, int n_cols, const float* x, int n_tokens, int n_expert, int k,
                      const float* expert_scale, float* logits, int* ids, float* weights,
                      unsigned* counters, StreamHandle stream);

}  // namespace qforge::cuda
