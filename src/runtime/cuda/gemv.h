// Decode-time matrix-vector products with weights in their GGUF block format (uploaded byte for
// byte), dequantized on the fly inside the product: no activation quantization, F32 accumulation.
//
//   y[t * n_rows + r] = sum_k W[r, k] * x[t * n_cols + k]     for t < n_tokens, r < n_rows
//
// W is n_rows rows of row_bytes(type, n_cols) bytes each, contiguous. Each weight byte is read from
// memory once per launch of up to 8 tokens. x and y are device pointers.
//
// Two kernel families: the row-tiled kernel (gemv_tiled.cu; F32, F16, BF16, Q4_0, Q8_0, Q4_K),
// used by default, and the first one-warp-per-row kernel (every type), used for the other
// types and for all types when the legacy family is selected (for comparisons: set_gemv_kernel or
// the environment variable QFORGE_GEMV=legacy). In the default family, one-token Q6_K products
// of up to 7424 columns (sm_90) take their own kernel (gemv_q6_k.cu; QFORGE_Q6K_GEMV=0 turns it
// off).
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// Types with a GEMV kernel: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K.
bool gemv_supported(GgmlType type);

// Fails (qforge::Error) for an unsupported type, n_cols not a multiple of the type's block size
// (8 for the float types), a weight pointer not aligned as the format needs (16 bytes for K-quants
// and floats: device allocations are), or n_tokens outside [1, 64].
void gemv(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols, const float* x,
          float* y, int n_tokens = 1, StreamHandle stream = nullptr);

// The same with output row t at y + t * ldy (ldy >= n_rows), so that several products can write
// into one interleaved buffer (the model's Q/K/V and gate/up outputs).
void gemv_ld(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols, const float* x,
             float* y, std::size_t ldy, int n_tokens, StreamHandle stream = nullptr);

enum class GemvKernel { kTiled, kLegacy };
void set_gemv_kernel(GemvKernel kernel);  // process-wide
GemvKernel gemv_kernel();

// The same with BF16 activations (raw bf16 bits), one token.
void gemv_bf16_x(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols,
                 const std::uint16_t* x, float* y, StreamHandle stream = nullptr);

}  // namespace qforge::cuda
