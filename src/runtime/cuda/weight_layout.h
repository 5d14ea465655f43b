// How a weight matrix's bytes are arranged on the device: as in the GGUF file, or Q4_0 regrouped
// per 256 columns (q4_0x8.h).
#pragma once

#include <cstddef>

#include "quant/ggml_type.h"

namespace qforge::cuda {

enum class WeightLayout { kGguf, kQ4_0x8 };

// Bytes of one Q4_0x8 row of n_cols columns (a multiple of 32): GGUF's 18 bytes per 32 columns
// rounded up to 16. Rows of whole 256-column groups keep GGUF's size; a last group of m < 8
// blocks takes a 16-byte header (m scales, then zeros) and m code arrays, 16 (m + 1) bytes, the
// GGUF size rounded up.
constexpr std::size_t q4_0x8_row_bytes(std::size_t n_cols) {
  return (n_cols / 32 * 18 + 15) / 16 * 16;
}

// Bytes of one stored row of a matrix in `layout`.
inline std::size_t stored_row_bytes(GgmlType type, std::size_t n_cols, WeightLayout layout) {
  return layout == WeightLayout::kQ4_0x8 ? q4_0x8_row_bytes(n_cols) : row_bytes(type, n_cols);
}

}  // namespace qforge::cuda
