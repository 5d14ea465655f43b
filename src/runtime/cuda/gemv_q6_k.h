// Internal to the GEMV implementation (gemv.cu): the one-token Q6_K GEMV (gemv_q6_k.cu), which
// stages each warp's weight rows in shared memory with 16-byte cp.async copies.
#pragma once

#include <cstddef>

#include "runtime/cuda/stream.h"

namespace qforge::cuda::detail {

// Largest row count gemv_q6_k takes (its row and task indices are int).
inline constexpr std::size_t kGemvQ6KMaxRows = std::size_t{1} << 30;

// True when gemv_q6_k takes rows of n_cols columns: a positive multiple of 256 whose x fits the
// device's shared memory beside two whole-row slots per warp (up to 7424 columns on sm_90) or
// two slots of 8-block chunks of the rows (wider rows: up to ~49k columns).
bool gemv_q6_k_applies(std::size_t n_cols);

// One token: y[r] = sum_k W[r, k] * x[k] for Q6_K weights W (n_rows rows of n_cols / 256 blocks
// of 210 bytes, contiguous, 2-byte aligned) and a 16-byte aligned x. Needs
// gemv_q6_k_applies(n_cols) and 1 <= n_rows <= kGemvQ6KMaxRows.
void gemv_q6_k(const void* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
               StreamHandle stream);

// For comparisons (tests, bench_cuda.cpp): rows per warp task, 1 (16 warps per CTA) or 2 (8
// warps per CTA, each x load from shared memory serves both rows); 0 = the default, which is
// QFORGE_Q6K_GEMV_ROWS=1 from the environment, else 2. Process-wide.
void set_gemv_q6_k_rows(int rows);

// For comparisons: 1 = the F32 form (x as floats in shared memory, F32 FMA), 2 = the integer form
// (x as three int8 planes, dp4a; gemv_q6_k.cu), 0 = the default (the integer form unless
// QFORGE_Q6K_DP4A=0). Process-wide.
void set_gemv_q6_k_form(int form);

}  // namespace qforge::cuda::detail
