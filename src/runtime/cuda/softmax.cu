// Row-wise softmax: one CTA per row, max and sum by CTA reductions.
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/ops.h"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {
namespace {

__global__ void softmax_kernel(float* x, std::size_t n) {
  __shared__ float scratch[32];
  float* row = x + blockIdx.x * n;
  float max = -INFINITY;
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) max = fmaxf(max, row[i]);
  max = block_reduce<true>(max, scratch);
  float sum = 0.0f;
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float e = expf(row[i] - max);
    row[i] = e;
    sum += e;
  }
  sum = block_reduce<false>(sum, scratch);
  const float inv = 1.0f / sum;
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) row[i] *= inv;
}

}  // namespace

void softmax_rows(float* x, std::size_t n_rows, std::size_t n, StreamHandle stream) {
  if (n_rows == 0 || n == 0) return;
  if (n_rows > 0x7fffffffu) cuda_fail("CUDA softmax: too many rows (", n_rows, ")");
  softmax_kernel<<<static_cast<unsigned>(n_rows), 512, 0, stream>>>(x, n);
  QFORGE_CUDA_CHECK_LAUNCH("softmax_kernel");
}

}  // namespace qforge::cuda
