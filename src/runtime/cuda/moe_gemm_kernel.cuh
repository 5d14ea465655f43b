// The expert-grouped MoE GEMM kernel (moe_gemm.h): one CTA per (token tile, row tile). A token
// tile holds up to BN slots routed to one expert (listed by the grouping step in moe_gemm.cu);
// the CTA gathers their BF16 activation rows and runs the dense tensor-core CTA body
// (gemm_tc_kernel.cuh) on that expert's weights, scattering outputs to the slots' rows of y.
// The grid is sized for the worst case; CTAs past the real tile count exit at once.
#pragma once

#include "runtime/cuda/gemm_tc_kernel.cuh"
#include "runtime/cuda/moe_gemm_internal.h"

namespace qforge::cuda::moe_gemm_tc {

using gemm_tc::kThreads;

// Tile token n is slot slots[n] (-1: none) reading activation row x_rows[n]; both in shared memory.
struct GatheredTokens {
  const std::uint16_t* x;
  float* y;
  std::size_t ldy;
  int n_cols;
  const int* slots;
  const int* x_rows;
  __device__ __forceinline__ const std::uint16_t* x_row(int n) const {
    const int r = x_rows[n];
    return r < 0 ? nullptr : x + static_cast<std::size_t>(r) * static_cast<std::size_t>(n_cols);
  }
  __device__ __forceinline__ float* y_row(int n) const {
    const int s = slots[n];
    return s < 0 ? nullptr : y + static_cast<std::size_t>(s) * ldy;
  }
};

template <typename D, typename T>
__global__ void __launch_bounds__(kThreads, 2) moe_gemm_kernel(const Args a) {
  __shared__ float table[16];
  __shared__ int slots[T::kBN], x_rows[T::kBN];
  const int tile_index = static_cast<int>(blockIdx.x);
  if (tile_index >= *a.n_tiles) return;  // the same for the whole CTA
  const MoeTile tile = a.tiles[tile_index];
  const int row0 = static_cast<int>(blockIdx.y) * T::kBM;
  for (int n = static_cast<int>(threadIdx.x); n < T::kBN; n += kThreads) {
    const int slot = n < tile.count ? a.sorted_slots[tile.start + n] : -1;
    slots[n] = slot;
    x_rows[n] = slot < 0 ? -1 : slot / a.x_group;
  }
  if constexpr (D::kUsesTable) {
    if (threadIdx.x < 16) table[threadIdx.x] = blocks::kIq4NlLevels[threadIdx.x];
  }
  __syncthreads();

  if (tile.expert < 0 || tile.expert >= a.n_experts) {  // out-of-range ids: zero outputs
    for (int i = static_cast<int>(threadIdx.x); i < tile.count * T::kBM; i += kThreads) {
      const int n = i / T::kBM, row = row0 + i % T::kBM;
      if (row < a.n_rows) a.y[static_cast<std::size_t>(slots[n]) * a.ldy + row] = 0.0f;
    }
    return;
  }
  const gemm_tc::WeightView weights{a.w + static_cast<std::size_t>(tile.expert) * a.expert_bytes,
                                    a.row_bytes, a.n_rows, a.n_cols};
  const GatheredTokens tokens{a.x, a.y, a.ldy, a.n_cols, slots, x_rows};
  gemm_tc::gemm_cta<D, T>(weights, row0, tokens, table);
}

template <typename D, typename T>
void launch(const Args& a) {
  const dim3 grid(static_cast<unsigned>(a.max_tiles),
                  static_cast<unsigned>((a.n_rows + T::kBM - 1) / T::kBM));
  QFORGE_CUDA_CHECK(cudaFuncSetAttribute(
      moe_gemm_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes));
  moe_gemm_kernel<D, T><<<grid, kThreads, T::kSmemBytes, a.stream>>>(a);
  QFORGE_CUDA_CHECK_LAUNCH("moe_gemm kernel");
}

template <typename D>
void run(const Args& a) {
  using gemm_tc::Tile;
  switch (a.bn) {
    case 32:
      return launch<D, Tile<128, 32, 8>>(a);
    case 64:
      return launch<D, Tile<128, 64, 4>>(a);
    default:
      return launch<D, Tile<128, 128, 2>>(a);
  }
}

}  // namespace qforge::cuda::moe_gemm_tc
