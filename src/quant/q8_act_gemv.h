// Fused one-token kernels of the 8-bit activation matmul (q8_act.h): the weight blocks are read
// and turned into integer codes in registers and dotted with the quantized activation at once,
// without the decode-to-buffer step of the tiled kernel. They follow the tiled kernels' lane
// structure exactly (same int32 lane sums, same F32 operations in the same order), so their
// results are bit-identical to matmul_q8_rows / dot_row_q8 with the same instruction set.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"
#include "quant/q8_act.h"

namespace qforge::q8act {

// The activation side of one row (codes, one scale per block, two half sums per block).
struct ActRowView {
  const std::int8_t* codes;
  const float* scale;
  const float* half_sums;
};

// y[r - r0] = dot(weight row r, act) for r in [r0, r1). weights points at row 0; rows are
// row_stride bytes apart; n is the row length (a multiple of the type's block size and of 32).
using GemvFn = void (*)(const std::byte* weights, std::size_t row_stride, std::size_t r0,
                        std::size_t r1, const ActRowView& act, std::size_t n, float* y);

// Null when (isa, type) has no fused kernel (the caller then uses the decoding path).
GemvFn gemv_kernel(Q8Isa isa, GgmlType type);

}  // namespace qforge::q8act
