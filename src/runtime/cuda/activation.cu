// Gated activations (SwiGLU, GeGLU-tanh) and logit soft-capping: element-wise, grid-stride.
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/glu.cuh"
#include "runtime/cuda/ops.h"
#include "runtime/cuda/pdl.cuh"

namespace qforge::cuda {
namespace {

constexpr unsigned kThreads = 256;

unsigned grid_for(std::size_t n) {
  const std::size_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535u * 16 ? blocks : 65535u * 16);
}

template <bool kSilu>
__global__ void glu_kernel(float* gate, const float* up, std::size_t n) {
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    gate[i] = (kSilu ? silu(g) : gelu_tanh(g)) * up[i];
  }
}

__global__ void softcap_kernel(float* x, std::size_t n, float cap) {
  pdl_wait();
  pdl_trigger();
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    x[i] = cap * tanhf(x[i] / cap);
  }
}

}  // namespace

void glu(FfnActivation act, float* gate, const float* up, std::size_t n, StreamHandle stream) {
  if (n == 0) return;
  if (act == FfnActivation::kSiluGlu) {
    glu_kernel<true><<<grid_for(n), kThreads, 0, stream>>>(gate, up, n);
  } else {
    glu_kernel<false><<<grid_for(n), kThreads, 0, stream>>>(gate, up, n);
  }
  QFORGE_CUDA_CHECK_LAUNCH("glu_kernel");
}

void softcap(float* x, std::size_t n, float cap, StreamHandle stream) {
  if (n == 0 || cap <= 0.0f) return;
  launch_pdl("softcap_kernel", softcap_kernel, grid_for(n), kThreads, 0, stream, x, n, cap);
  QFORGE_CUDA_CHECK_LAUNCH("softcap_kernel");
}

}  // namespace qforge::cuda
