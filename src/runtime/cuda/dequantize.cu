// Block-format rows to F32: one thread per decode unit (block_decode.cuh).
#include "runtime/cuda/block_decode.cuh"
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/ops.h"

namespace qforge::cuda {
namespace {

template <typename Fmt>
__global__ void dequantize_kernel(const std::uint8_t* __restrict__ w, std::size_t n_units,
                                  float* __restrict__ out) {
  __shared__ float table[16];
  if constexpr (blocks::UsesTable<Fmt>) {
    if (threadIdx.x < 16) table[threadIdx.x] = blocks::kIq4NlLevels[threadIdx.x];
    __syncthreads();
  }
  const std::size_t u = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= n_units) return;
  const std::size_t b = u / Fmt::kUnitsPerBlock;  // blocks are contiguous across rows
  float wv[4 * Fmt::kRuns];
  int start[Fmt::kRuns];
  Fmt::decode(w + b * Fmt::kBlockBytes, static_cast<int>(u % Fmt::kUnitsPerBlock), wv, start,
              table);
  float* dst = out + b * Fmt::kBlockElems;
#pragma unroll
  for (int r = 0; r < Fmt::kRuns; ++r) {
    *reinterpret_cast<float4*>(dst + start[r]) =
        make_float4(wv[4 * r], wv[4 * r + 1], wv[4 * r + 2], wv[4 * r + 3]);
  }
}

template <typename Fmt>
void launch(const void* w, std::size_t first_row, std::size_t n_rows, std::size_t n_cols,
            float* out, StreamHandle stream) {
  if (n_cols % Fmt::kBlockElems != 0) {
    cuda_fail("CUDA dequantize: ", n_cols, " columns are not a multiple of the block size ",
              Fmt::kBlockElems);
  }
  const std::size_t blocks_per_row = n_cols / Fmt::kBlockElems;
  const auto* base =
      static_cast<const std::uint8_t*>(w) + first_row * blocks_per_row * Fmt::kBlockBytes;
  const std::size_t n_units = n_rows * blocks_per_row * Fmt::kUnitsPerBlock;
  if (n_units == 0) return;
  constexpr unsigned kThreads = 256;
  dequantize_kernel<Fmt>
      <<<static_cast<unsigned>((n_units + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          base, n_units, out);
  QFORGE_CUDA_CHECK_LAUNCH("dequantize_kernel");
}

}  // namespace

void dequantize_rows(GgmlType type, const void* w, std::size_t first_row, std::size_t n_rows,
                     std::size_t n_cols, float* out, StreamHandle stream) {
  const bool ok = blocks::with_format(
      type, [&]<typename Fmt>(Fmt) { launch<Fmt>(w, first_row, n_rows, n_cols, out, stream); });
  if (!ok) cuda_fail("CUDA dequantize: no kernel for weight type ", type_name(type));
}

}  // namespace qforge::cuda
