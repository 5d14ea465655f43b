// Internal to the expert-grouped MoE GEMM (moe_gemm.h): the launch arguments and the per-family
// entry points, each compiled in its own .cu file (moe_gemm_legacy.cu, moe_gemm_kquant.cu,
// moe_gemm_float.cu) so that the kernel instantiations build in parallel.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"
#include "runtime/cuda/moe_gemm.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda::moe_gemm_tc {

struct Args {
  const std::uint8_t* w;  // expert e at w + e * expert_bytes, rows of row_bytes bytes
  std::size_t expert_bytes, row_bytes;
  int n_rows, n_cols, n_experts;
  const int* sorted_slots;  // grouping step outputs (device)
  const MoeTile* tiles;
  const int* n_tiles;
  int max_tiles;  // grid width: an upper bound of *n_tiles
  int x_group;
  const std::uint16_t* x;  // BF16 activations, row s / x_group for slot s
  float* y;                // y[s * ldy + r]
  std::size_t ldy;
  int bn;            // token tile: 32, 64 or 128
  bool split_loads;  // Q4_0: loads of the next step issued before the MMAs
  bool q4_0x8;       // Q4_0 experts in the Q4_0x8 layout (q4_0x8.h)
  StreamHandle stream;
};

// Arguments already checked; each returns false for a type outside its family.
bool run_legacy(GgmlType type, const Args& args);  // Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL
bool run_kquant(GgmlType type, const Args& args);  // Q4_K, Q5_K, Q6_K
bool run_float(GgmlType type, const Args& args);   // F32, F16, BF16

}  // namespace qforge::cuda::moe_gemm_tc
