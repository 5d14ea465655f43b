// Internal to the GEMV implementation (gemv.cu): the row-tiled kernel family.
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

}  // namespace qforge::cuda::detail
