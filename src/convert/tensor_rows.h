// A GGUF tensor read as a matrix of F32 rows (ggml order: ne0 = columns, every further dimension
// stacks rows), dequantized on read. Shared by quantize and the dynamic recipe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "formats/gguf.h"
#include "quant/blocks.h"

namespace qforge {

struct TensorRows {
  const GgufReader& g;
  const GgufTensorInfo& t;
  std::uint64_t cols() const { return t.shape.empty() ? 1 : t.shape[0]; }
  std::uint64_t rows() const { return cols() ? t.n_elements() / cols() : 0; }
  // Rows of one matrix: a 3-D tensor stacks shape[2] matrices (MoE experts).
  std::uint64_t rows_per_matrix() const { return t.shape.size() >= 2 ? t.shape[1] : 1; }
  void read(std::uint64_t r, std::span<float> out) const {
    const std::uint64_t rb = row_bytes(t.type, cols());
    dequantize_row(t.type, g.tensor_data(t).subspan(r * rb, rb), out);
  }
  // The imatrix values for row r (one vector of cols() per matrix), or empty without an imatrix.
  std::span<const float> importance_of_row(const std::vector<float>* importance,
                                           std::uint64_t r) const {
    if (importance == nullptr) return {};
    return std::span<const float>(*importance).subspan((r / rows_per_matrix()) * cols(), cols());
  }
};

}  // namespace qforge
