// Internal to the GEMV implementation (gemv.cu, moe.cu): the row-tiled kernel family.
#pragma once

#include <cstddef>

#include "quant/ggml_type.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda::detail {

// Types the row-tiled kernel decodes (F32, F16, BF16, Q4_0, Q8_0, Q4_K).
bool gemv_tiled_supported(GgmlType type);

// One launch for n_tokens in {1, 2, 4, 8}; shapes and alignment already checked by the caller.
void gemv_tiled(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols,
                const float* x, float* y, std::size_t ldy, int n_tokens, StreamHandle stream);

// Expert form (moe.h's moe_gemv, one token per slot): slot s multiplies expert ids[s] (expert e at
// w + e * expert_bytes) by x + (s / x_group) * n_cols into y + s * ldy; ids outside
// [0, n_experts) give zero rows. n_slots <= 65535; shapes and alignment checked by the caller.
void moe_gemv_tiled(GgmlType type, const void* w, std::size_t expert_bytes, int n_experts,
                    std::size_t n_rows, std::size_t n_cols, const int* ids, int n_slots,
                    int x_group, const float* x, float* y, std::size_t ldy, StreamHandle stream);

}  // namespace qforge::cuda::detail
