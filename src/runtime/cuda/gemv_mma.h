// Internal to the GEMV implementation (gemv.cu, moe.cu): the tensor-core Q4_0 GEMV (gemv_mma.cu).
#pragma once

#include <cstddef>

#include "quant/ggml_type.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda::detail {

// True when the tensor-core kernel takes this product: Q4_0, n_cols a multiple of 256 (rows are
// then 16-byte multiples), weights 16-byte aligned, 1, 2 or 4 tokens, and the kernel enabled.
bool gemv_mma_applies(GgmlType type, const void* w, std::size_t n_cols, int n_tokens);

// The measured policy for plain products (NVIDIA H200, bench_cuda.cpp): the tensor-core kernel
// wins for 1-2 tokens on matrices of >= min_rows rows (default 8192: 14336 x 4096 19.6 vs 22.3 us,
// the 262144-row LM head 186 vs 236 us) and loses on 4096-row matrices and at 4 tokens.
bool gemv_mma_preferred(std::size_t n_rows, int n_tokens);
void set_gemv_mma_min_rows(std::size_t min_rows);  // tests: 0 sends every shape to the kernel

// One launch; gemv_mma_applies() must hold and the shapes have been checked by the caller.
void gemv_mma(const void* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
              std::size_t ldy, int n_tokens, StreamHandle stream);

// Expert form (moe.h's moe_gemv, one token per slot): slot s multiplies expert ids[s] (expert e at
// w + e * expert_bytes) by x + (s / x_group) * n_cols into y + s * ldy. Needs
// gemv_mma_applies(type, w, n_cols, 1) and expert_bytes a multiple of 16.
void moe_gemv_mma(const void* w, std::size_t expert_bytes, int n_experts, std::size_t n_rows,
                  std::size_t n_cols, const int* ids, int n_slots, int x_group, const float* x,
                  float* y, std::size_t ldy, StreamHandle stream);

// For comparisons (bench/bench_cuda.cpp): 0 = off (the row-tiled CUDA-core kernel takes Q4_0),
// otherwise 2..4 stages of 512-column chunks, or 12..14 for 2..4 stages of 256-column chunks
// (default 12, the fastest measured). Process-wide.
void set_gemv_mma_stages(int stages);
int gemv_mma_stages();

}  // namespace qforge::cuda::detail
