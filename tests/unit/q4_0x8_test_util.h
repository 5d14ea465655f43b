// Helpers of the integer-plane GEMV tests (q4_0x8.h: the Q4_0x8, Q4_K, Q8_0 and Q5_K weight
// forms, and the expert down forms of Q8_0, Q5_0 and Q5_1), shared by test_cuda_kernels.cpp,
// test_cuda_gemv_q4_k.cpp, test_cuda_gemv_q8_0_q5_k.cpp and test_cuda_expert_down_forms.cpp.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "core/half.h"
#include "cuda_test_util.h"
#include "quant/blocks.h"
#include "quant/ggml_type.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/q4_0x8.h"

namespace qforge {

// Rows per task, column parts and the weight stream's copies of the integer-plane GEMV forced for
// a test, back to automatic (the copies and cluster size: to the choices before the test, which
// QFORGE_GEMV_BULK / QFORGE_GEMV_CLUSTER may have made) when the test ends, also when an assertion
// returns early.
struct Q4_0x8Choices {
  bool bulk = cuda::gemv_q4_0x8_bulk_chosen();
  int cluster = cuda::gemv_q4_0x8_cluster_chosen();
  ~Q4_0x8Choices() {
    cuda::set_gemv_q4_0x8_rows(0);
    cuda::set_gemv_q4_0x8_parts(0);
    cuda::set_gemv_q4_0x8_bulk(bulk);
    cuda::set_gemv_q4_0x8_cluster(cluster);
  }
};

// run(y) once with the weight stream by cp.async and once by bulk copies, into n_out floats each
// (NaN-filled first): the two results must be bit-identical.
template <typename Run>
void expect_bulk_equals_cp_async(Run&& run, std::size_t n_out) {
  std::vector<float> out[2];
  for (const bool bulk : {false, true}) {
    cuda::set_gemv_q4_0x8_bulk(bulk);
    cuda::DeviceBuffer<float> dy(n_out);
    dy.fill_bytes(0xff);
    run(dy.data());
    out[bulk ? 1 : 0] = dy.to_host();
  }
  ASSERT_EQ(std::memcmp(out[0].data(), out[1].data(), n_out * sizeof(float)), 0);
}

// rows x cols GGUF weights of `type` from random bytes, so that every code and high bit (and every
// packed scale) occurs in any combination, including what ggml's rounding never writes: a GGUF
// file may hold any of them. The n_scales f16 values at the start of each block or super-block
// (its scale, then its min or min scale) are set to finite values of either sign, magnitude x
// [0.25, 2), so that the weights stay of a size the bounds of the tests are made for.
inline Quantized arbitrary_gguf_weights(GgmlType type, std::size_t rows, std::size_t cols,
                                        std::uint32_t seed, int n_scales, float magnitude) {
  std::mt19937 rng(seed);
  Quantized q;
  q.bytes.resize(rows * row_bytes(type, cols));
  for (std::byte& b : q.bytes) b = static_cast<std::byte>(rng() & 0xff);
  std::uniform_real_distribution<float> factor(0.25f, 2.0f);
  for (std::size_t at = 0; at < q.bytes.size(); at += type_size(type)) {
    for (int i = 0; i < n_scales; ++i) {
      const float s = (rng() & 1 ? -magnitude : magnitude) * factor(rng);
      const std::uint16_t h = f32_to_f16(s);
      std::memcpy(q.bytes.data() + at + 2 * i, &h, sizeof h);
    }
  }
  q.dequantized.resize(rows * cols);
  dequantize_rows(type, q.bytes, cols, q.dequantized);
  return q;
}

// Largest |got - exact| / sum |w x| over rows and tokens (got: token-major, stride rows), exact
// being the float64 sum of q's weights as the CPU decoder reads them.
inline double error_vs_exact(const Quantized& q, std::size_t rows, std::size_t cols,
                             const std::vector<float>& x, const std::vector<float>& got,
                             int n_tokens) {
  double worst = 0.0;
  for (int t = 0; t < n_tokens; ++t) {
    const std::span<const float> xt(x.data() + static_cast<std::size_t>(t) * cols, cols);
    for (std::size_t r = 0; r < rows; ++r) {
      const ExactDot exact = exact_dot(q.dequantized.data() + r * cols, xt);
      const double g = got[static_cast<std::size_t>(t) * rows + r];
      if (!std::isfinite(g)) return INFINITY;
      worst = std::max(worst, std::fabs(g - exact.value) / std::max(exact.magnitude, 1e-30));
    }
  }
  return worst;
}

// gemv_q4_0x8 of n_tokens rows of x against w in `weights`, token-major (stride rows).
inline std::vector<float> run_gemv(const cuda::DeviceBuffer<std::byte>& w, std::size_t rows,
                                   std::size_t cols, const std::vector<float>& x, int n_tokens,
                                   cuda::PlaneWeights weights) {
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> dy(rows * n_tokens);
  dy.fill_bytes(0xff);  // NaN: an unwritten output fails the check
  cuda::gemv_q4_0x8(w.data(), rows, cols, dx.data(), dy.data(), rows, n_tokens, nullptr, weights);
  return dy.to_host();
}

}  // namespace qforge
