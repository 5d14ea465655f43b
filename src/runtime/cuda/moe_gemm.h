// Expert-grouped mixture-of-experts products for prompt chunks on tensor cores: the same result
// as moe_gemv (moe.h) for many tokens at once,
//
//   y[s * ldy + r] = sum_c W_{ids[s]}[r, c] * x[(s / x_group) * w.cols + c]   for s < n_slots,
//
// computed like gemm_tc.h (weights decoded to BF16 in shared memory, activations rounded to BF16,
// mma.sync with F32 accumulation), so it differs from moe_gemv by the BF16 rounding of both
// operands (~1e-4 of sum_c |w x| typically, at most ~8e-3). Expert ids outside [0, n_experts)
// give zeros.
//
// Everything stays on the device (no host synchronization, no host knowledge of the routing), so
// the calls can follow moe_route on a stream or inside a CUDA graph. Per call, on `stream`:
//   1. the used activation rows are converted to BF16 (scratch.x_bf16);
//   2. one CTA groups the slots by expert (counting sort + scan) into scratch.sorted_slots and
//      lists token tiles of at most BN slots of one expert (scratch.tiles, scratch.n_tiles);
//   3. the GEMM grid (worst-case tile count x row tiles; CTAs past the real tile count exit at
//      once) multiplies each tile's gathered activations with its expert's weights, so every
//      expert's weights are decoded once per (row tile, token tile) instead of once per slot.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// A token tile: `count` (<= BN) slots of one expert, sorted_slots[start .. start + count).
// expert == n_experts marks the slots with an out-of-range id (their outputs are zeroed).
struct MoeTile {
  int expert, start, count, pad;
};

// Device buffers for moe_gemm, sized once for the largest call. One scratch serves one call at a
// time (calls on one stream may share it; overlapping streams need one each).
struct MoeGemmScratch {
  int max_slots = 0, n_experts = 0;
  std::size_t max_cols = 0;
  DeviceBuffer<std::uint16_t> x_bf16;  // max_slots x max_cols BF16 activations
  DeviceBuffer<int> sorted_slots;      // max_slots slot indices grouped by expert
  DeviceBuffer<MoeTile> tiles;         // worst-case tile count
  DeviceBuffer<int> n_tiles;           // 1: tiles written by the grouping step
};

// Fails (qforge::Error) for max_slots outside [1, 65536], max_cols of 0 or not a multiple of 8,
// n_experts outside [1, 4096].
MoeGemmScratch make_moe_gemm_scratch(int max_slots, std::size_t max_cols, int n_experts);

// Types with a kernel: those of gemm_supported() (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// IQ4_NL, Q4_K, Q5_K, Q6_K).
bool moe_gemm_supported(GgmlType type);

// Fails (qforge::Error) for: an unsupported type or a stack check_expert_stack refuses; w.cols
// not a multiple of 8 or above scratch.max_cols; w.n_experts above scratch.n_experts; n_slots
// negative or above scratch.max_slots; x_group < 1; ldy < w.rows; ids, x or y null; x not 16-byte
// aligned. n_slots == 0 does nothing.
void moe_gemm(const ExpertStack& w, const int* ids, int n_slots, int x_group, const float* x,
              float* y, std::size_t ldy, MoeGemmScratch& scratch, StreamHandle stream);

// Token tile width (slots per tile): 0 (default) picks 32, 64 or 128 from the mean number of
// slots per expert; tests and measurements may force 32, 64 or 128 (process-wide).
void set_moe_gemm_token_tile(int bn);
int moe_gemm_token_tile();

// Q4_0 weights: issue the next K step's weight loads before the tensor-core work and decode
// after it (default, true; ~5% faster on an H200), or decode before it as the dense GEMM does
// (false; kept for tests and measurements). Process-wide.
void set_moe_gemm_split_loads(bool on);

}  // namespace qforge::cuda
