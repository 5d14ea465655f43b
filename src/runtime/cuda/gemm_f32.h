// F32 weights times a prompt chunk on CUDA cores, exact F32 products and sums:
//
//   y[t * ldy + r] = sum_k W[r, k] * x[t * n_cols + k]     (W: n_rows x n_cols F32, row-major)
//
// For small F32 matrices whose results must not see the BF16 rounding of the tensor-core GEMM
// (the MoE router: a rounding can change which experts are chosen). One launch for any number
// of tokens, where the batched GEMV needs one launch per 8.
#pragma once

#include <cstddef>

#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// Fails (qforge::Error) on an empty or oversized shape, ldy < n_rows or null pointers.
void gemm_f32(const float* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
              std::size_t ldy, int n_tokens, StreamHandle stream = nullptr);

}  // namespace qforge::cuda
