// Rotary position embedding: one thread per (token, head, rotated pair). The angle is computed in
// double, as the CPU reference does, so both round the same cos/sin to float.
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/ops.h"

namespace qforge::cuda {
namespace {

__global__ void rope_kernel(float* x, std::size_t n_pairs_total, int n_heads, int head_dim,
                            int n_rot, bool adjacent, int pos0, double freq_base, double freq_scale,
                            const float* freq_factors) {
  const std::size_t idx = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n_pairs_total) return;
  const int half = n_rot / 2;
  const int i = static_cast<int>(idx % static_cast<std::size_t>(half));
  const std::size_t head = idx / static_cast<std::size_t>(half);  // token * n_heads + h
  const auto token = static_cast<int>(head / static_cast<std::size_t>(n_heads));
  float* v = x + head * static_cast<std::size_t>(head_dim);
  const double pos = static_cast<double>(pos0 + token) * freq_scale;
  double inv_freq = pow(freq_base, -2.0 * static_cast<double>(i) / static_cast<double>(n_rot));
  if (freq_factors != nullptr) inv_freq /= static_cast<double>(freq_factors[i]);
  double s, c;
  sincos(pos * inv_freq, &s, &c);
  const auto cf = static_cast<float>(c), sf = static_cast<float>(s);
  const int a = adjacent ? 2 * i : i;
  const int b = adjacent ? 2 * i + 1 : i + half;
  const float x0 = v[a], x1 = v[b];
  v[a] = x0 * cf - x1 * sf;
  v[b] = x0 * sf + x1 * cf;
}

}  // namespace

void rope(float* x, std::size_t n_tokens, int n_heads, int head_dim, int n_rot, RopeStyle style,
          int pos0, const RopeParams& params, const float* freq_factors, StreamHandle stream) {
  if (n_rot <= 0 || n_rot % 2 != 0 || n_rot > head_dim || n_heads <= 0) {
    cuda_fail("CUDA rope: n_rot ", n_rot, " must be even, > 0 and <= head_dim ", head_dim,
              " (heads ", n_heads, ")");
  }
  const std::size_t total = n_tokens * static_cast<std::size_t>(n_heads) * (n_rot / 2);
  if (total == 0) return;
  constexpr unsigned kThreads = 256;
  const auto grid = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  rope_kernel<<<grid, kThreads, 0, stream>>>(x, total, n_heads, head_dim, n_rot,
                                             style == RopeStyle::kAdjacentPairs, pos0,
                                             params.freq_base, params.freq_scale, freq_factors);
  QFORGE_CUDA_CHECK_LAUNCH("rope_kernel");
}

}  // namespace qforge::cuda
