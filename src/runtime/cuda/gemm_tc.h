// Prompt-time (prefill) matrix products on tensor cores, with weights in their GGUF block format
// (uploaded byte for byte) dequantized to BF16 inside the kernel:
//
//   y[t * ldy + r] = sum_k W[r, k] * x[t * n_cols + k]     for t < n_tokens, r < n_rows
//
// W is n_rows rows of row_bytes(type, n_cols) bytes each, contiguous; x (F32, n_tokens x n_cols)
// and y are device pointers. The activations are rounded to BF16 once, each weight is rounded to
// BF16 after its exact F32 dequantization, and products are summed in F32 (mma.sync
// m16n8k16, sm_80 and newer). The result therefore differs from the F32 GEMV (gemv.h) by the
// BF16 rounding of both operands: at most 2^-8 relative per operand, for sums of many products
// typically ~1e-4 of sum_k |W[r, k] x[k]|. Meant for batches of at least ~16 tokens; the
// GEMV kernels are faster below that.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// Types with a GEMM kernel: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K.
bool gemm_supported(GgmlType type);

// Fails (qforge::Error) for an unsupported type; n_cols not a positive multiple of the type's
// block size (8 for the float types); n_rows or n_cols of 2^31 or more (n_rows at most 4194240);
// ldy < n_rows; n_tokens < 1; a weight pointer not aligned as the format needs (16 bytes for
// K-quants and floats: device allocations are); x not 16-byte aligned.
//
// x is converted into a BF16 scratch buffer owned by this module (one per device, grown as
// needed, which synchronizes the device): calls that may overlap on different streams, or that
// are captured into a CUDA graph, should use gemm_bf16_x with their own buffer instead.
//
// layout kQ4_0x8 (type Q4_0, n_cols a multiple of 256, w 16-byte aligned) reads weights regrouped
// by repack_q4_0x8; the result is bit for bit that of the same weights in GGUF order.
void gemm(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols, const float* x,
          float* y, std::size_t ldy, int n_tokens, StreamHandle stream = nullptr,
          WeightLayout layout = WeightLayout::kGguf);

// The same with activations already in BF16 (raw bits, n_tokens x n_cols, 16-byte aligned), e.g.
// converted once with convert_to_bf16 for several products of the same input (Q/K/V, gate/up).
void gemm_bf16_x(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols,
                 const std::uint16_t* x_bf16, float* y, std::size_t ldy, int n_tokens,
                 StreamHandle stream = nullptr, WeightLayout layout = WeightLayout::kGguf);

// out[i] = bf16(x[i]) (round to nearest even) for i < n; n a multiple of 8, both pointers
// 16-byte aligned.
void convert_to_bf16(const float* x, std::uint16_t* out, std::size_t n,
                     StreamHandle stream = nullptr);

// Tile (weight rows x tokens per CTA) selection, process-wide; kAuto (the default) picks from the
// shape. The others exist for tests and measurements.
enum class GemmTile { kAuto = 0, k128x128 = 1, k64x128 = 2, k128x64 = 3, k128x32 = 4 };
void set_gemm_tile(GemmTile tile);
GemmTile gemm_tile();

}  // namespace qforge::cuda
