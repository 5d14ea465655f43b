// Element-wise and row-wise kernels of the forward pass on the GPU, F32 throughout, matching
// src/runtime/cpu/kernels.h (the numerical reference). All pointers are device pointers; every
// call is asynchronous on `stream` and checks its launch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model/config.h"
#include "quant/ggml_type.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight  (x and out may be the same array).
void rms_norm(const float* x, const float* weight, float* out, std::size_t n_rows, std::size_t n,
              float eps, StreamHandle stream = nullptr);

// Rotary embedding in place of x = [n_tokens x n_heads x head_dim]; token t sits at position
// pos0 + t; the first n_rot dimensions of each head rotate (pairs per `style`), the rest stay.
// Angles as cpu::rope_tables: pos * freq_scale * base^(-2i/n_rot) / freq_factors[i], in double.
// freq_factors: device array of n_rot/2 floats, or null.
void rope(float* x, std::size_t n_tokens, int n_heads, int head_dim, int n_rot, RopeStyle style,
          int pos0, const RopeParams& params, const float* freq_factors,
          StreamHandle stream = nullptr);

// gate[i] = act(gate[i]) * up[i] for i < n.
void glu(FfnActivation act, float* gate, const float* up, std::size_t n,
         StreamHandle stream = nullptr);

// Numerically stable softmax of each row of x = [n_rows x n], in place.
void softmax_rows(float* x, std::size_t n_rows, std::size_t n, StreamHandle stream = nullptr);

// x -> cap * tanh(x / cap) in place; nothing when cap <= 0.
void softcap(float* x, std::size_t n, float cap, StreamHandle stream = nullptr);

// Dequantizes rows [first_row, first_row + n_rows) of a block-format matrix with n_cols columns
// into F32 (for token-embedding lookups and scratch copies). Types: those of gemv_supported().
void dequantize_rows(GgmlType type, const void* w, std::size_t first_row, std::size_t n_rows,
                     std::size_t n_cols, float* out, StreamHandle stream = nullptr);

}  // namespace qforge::cuda
