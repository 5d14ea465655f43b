// Internal to the tensor-core GEMM (gemm_tc.cu): the launch arguments and the per-family entry
// points, each compiled in its own .cu file (gemm_tc_legacy.cu, gemm_tc_kquant.cu,
// gemm_tc_float.cu) so that the kernel instantiations build in parallel.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda::gemm_tc {

struct Args {
  const std::uint8_t* w;  // n_rows rows of row_bytes bytes
  std::size_t row_bytes;
  int n_rows, n_cols, n_tokens;
  const std::uint16_t* x;  // BF16 bits, n_tokens x n_cols, 16-byte aligned
  float* y;                // y[t * ldy + r]
  std::size_t ldy;
  StreamHandle stream;
  int sm_count;  // picks the tile size
  int tile;      // GemmTile (gemm_tc.h) as int; 0 picks from the shape
  bool q4_0x8;   // Q4_0 weights in the Q4_0x8 layout (q4_0x8.h)
};

// Shapes, alignment and type already checked by the caller; each returns false for a type that
// is not in its family.
bool run_legacy(GgmlType type, const Args& args);  // Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL
bool run_kquant(GgmlType type, const Args& args);  // Q4_K, Q5_K, Q6_K
bool run_float(GgmlType type, const Args& args);   // F32, F16, BF16

}  // namespace qforge::cuda::gemm_tc
