// The integer-plane decode GEMVs on GGUF Q4_K weights (q4_0x8.h, PlaneWeights::kQ4_K) against
// float64 sums of the weights as the CPU decoder reads them (quant/blocks.h), and against the
// kernels their fused forms stand in for. Skips without a GPU.
#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda_test_util.h"
#include "model/config.h"
#include "q4_0x8_test_util.h"
#include "quant/blocks.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/gemma4_ops.h"
#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/q4_0x8.h"

namespace qforge {
namespace {

constexpr auto kQ4K = cuda::PlaneWeights::kQ4_K;

TEST(CudaGemvQ4K, AppliesToWholeSuperBlocks) {
  EXPECT_TRUE(cuda::q4_k_planes_applies(GgmlType::Q4_K, 256));
  EXPECT_TRUE(cuda::q4_k_planes_applies(GgmlType::Q4_K, 5376));
  EXPECT_FALSE(cuda::q4_k_planes_applies(GgmlType::Q4_K, 0));
  EXPECT_FALSE(cuda::q4_k_planes_applies(GgmlType::Q4_K, 640));  // not whole super-blocks
  EXPECT_FALSE(cuda::q4_k_planes_applies(GgmlType::Q4_K, cuda::kMaxQ4_0x8Cols + 256));
  EXPECT_FALSE(cuda::q4_k_planes_applies(GgmlType::Q4_0, 4096));
  EXPECT_FALSE(cuda::q4_k_planes_applies(GgmlType::Q5_K, 4096));
}

// The F32 GEMV's bound (1e-5 of sum |w x|) for every warp-task size and column split (uneven
// parts for 2816 and 5376 columns), a last 1024-column step of 1-3 super-blocks, row counts that
// leave tasks partly empty, and 1-3 tokens (pairs plus one).
TEST(CudaGemvQ4K, MatchesExactSum) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  std::uint32_t seed = 12000;
  for (const std::size_t cols :
       {std::size_t{256}, std::size_t{2816}, std::size_t{4096}, std::size_t{5376}}) {
    for (const std::size_t rows : {std::size_t{1}, std::size_t{7}, std::size_t{130}}) {
      const Quantized q = make_weights(GgmlType::Q4_K, rows, cols, ++seed);
      const cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
      for (const int task_rows : {0, 1, 2, 4}) {
        cuda::set_gemv_q4_0x8_rows(task_rows);
        for (const int parts : {1, 2, 4}) {
          cuda::set_gemv_q4_0x8_parts(parts);
          for (const int n_tokens : {1, 2, 3}) {
            SCOPED_TRACE(testing::Message() << rows << "x" << cols << " task rows " << task_rows
                                            << " parts " << parts << " tokens " << n_tokens);
            const std::vector<float> x = random_floats(cols * n_tokens, ++seed, 2.0f);
            EXPECT_LT(error_vs_exact(q, rows, cols, x, run_gemv(dw, rows, cols, x, n_tokens, kQ4K),
                                     n_tokens),
                      1e-5);
          }
        }
      }
    }
  }
}

// Both weight streams (bulk copies on sm_90, 16-byte cp.async elsewhere) hold the row's bytes as
// they are: bit-identical results for the plain, gated and normed forms, partial last steps.
TEST(CudaGemvQ4K, BulkCopiesEqualCpAsync) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  std::uint32_t seed = 12500;
  for (const std::size_t cols : {std::size_t{2816}, std::size_t{5376}}) {
    const std::size_t rows = 130;
    const Quantized q = make_weights(GgmlType::Q4_K, rows, cols, ++seed);
    const cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    const std::vector<float> x = random_floats(cols * 3, ++seed);
    const std::vector<float> norm = random_floats(cols, ++seed);
    const cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    const cuda::DeviceBuffer<float> dnorm{std::span<const float>(norm)};
    const cuda::ResidualNormInput in{dx.data(),    nullptr, nullptr, 1.0f,
                                     dnorm.data(), nullptr, 1e-6f};
    for (const int task_rows : {0, 1, 2, 4}) {
      cuda::set_gemv_q4_0x8_rows(task_rows);
      for (const int parts : {0, 2, 4}) {
        cuda::set_gemv_q4_0x8_parts(parts);
        for (const int n_tokens : {1, 2, 3}) {
          SCOPED_TRACE(testing::Message() << cols << " columns, rows " << task_rows << ", parts "
                                          << parts << ", tokens " << n_tokens);
          expect_bulk_equals_cp_async(
              [&](float* y) {
                cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), y, rows, n_tokens, nullptr,
                                  kQ4K);
              },
              rows * n_tokens);
          expect_bulk_equals_cp_async(
              [&](float* y) {
                cuda::gemv_q4_0x8_glu(FfnActivation::kSiluGlu, dw.data(), rows, cols, dx.data(), y,
                                      rows / 2, n_tokens, nullptr, kQ4K);
              },
              rows / 2 * n_tokens);
        }
        expect_bulk_equals_cp_async(
            [&](float* y) {
              cuda::gemv_q4_0x8_normed(dw.data(), rows, cols, in, y, nullptr, kQ4K);
            },
            rows);
      }
    }
  }
}

// The gated form (gate row j and up row j summed by one warp, the activation applied there)
// equals the plain Q4_K GEMV into [gate | up] followed by glu_rows; the normed forms equal the
// norm kernel followed by the plain and gated products of its output. CTA pairs (the planes
// shared through distributed shared memory) change nothing.
TEST(CudaGemvQ4K, FusedFormsEqualTheKernelsTheyReplace) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  const std::size_t ff = 70, cols = 4096, ldy = ff + 5, rows = 2 * ff;
  const Quantized q = make_weights(GgmlType::Q4_K, rows, cols, 12900);
  const cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  auto expect_close = [](const std::vector<float>& got, const std::vector<float>& want,
                         std::size_t n, std::size_t ld_got) {
    for (std::size_t i = 0; i < want.size(); ++i) {
      const float g = got[i / n * ld_got + i % n];
      ASSERT_TRUE(std::isfinite(g)) << i;
      ASSERT_NEAR(g, want[i], 1e-6 * (1.0 + std::fabs(want[i]))) << i;
    }
  };
  for (const int cluster : {1, 2}) {
    cuda::set_gemv_q4_0x8_cluster(cluster);
    for (const FfnActivation act : {FfnActivation::kSiluGlu, FfnActivation::kGeluTanhGlu}) {
      for (const int n_tokens : {1, 2, 3}) {
        SCOPED_TRACE(testing::Message() << "cluster " << cluster << " act " << static_cast<int>(act)
                                        << " tokens " << n_tokens);
        const std::vector<float> x = random_floats(cols * n_tokens, 13000 + n_tokens, 2.0f);
        const cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> gate_up(rows * n_tokens), want(ff * n_tokens),
            got(ldy * n_tokens);
        cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), gate_up.data(), rows, n_tokens, nullptr,
                          kQ4K);
        cuda::glu_rows(act, gate_up.data(), want.data(), n_tokens, ff, nullptr);
        got.fill_bytes(0xff);
        cuda::gemv_q4_0x8_glu(act, dw.data(), rows, cols, dx.data(), got.data(), ldy, n_tokens,
                              nullptr, kQ4K);
        expect_close(got.to_host(), want.to_host(), ff, ldy);
      }
    }
  }
  // Normed input (Gemma's form: x + norm(o) * o_norm, times a scale, then the input norm).
  const float eps = 1e-6f;
  const std::vector<float> x = random_floats(cols, 13100, 3.0f),
                           o = random_floats(cols, 13101, 20.0f);
  std::vector<float> o_w = random_floats(cols, 13102), n_w = random_floats(cols, 13103);
  for (float& v : o_w) v += 1.0f;
  for (float& v : n_w) v += 1.0f;
  const cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, d_o{std::span<const float>(o)},
      d_ow{std::span<const float>(o_w)}, d_nw{std::span<const float>(n_w)};
  cuda::DeviceBuffer<float> x_ref{std::span<const float>(x)}, h(cols), want(rows), want_glu(ff);
  cuda::residual_scale_norm(x_ref.data(), d_o.data(), d_ow.data(), 0.75f, d_nw.data(), h.data(), 1,
                            cols, eps, nullptr);
  cuda::gemv_q4_0x8(dw.data(), rows, cols, h.data(), want.data(), rows, 1, nullptr, kQ4K);
  cuda::gemv_q4_0x8_glu(FfnActivation::kGeluTanhGlu, dw.data(), rows, cols, h.data(),
                        want_glu.data(), ff, 1, nullptr, kQ4K);
  cuda::DeviceBuffer<float> x_out(cols), got(rows), got_glu(ff);
  got.fill_bytes(0xff);
  got_glu.fill_bytes(0xff);
  const cuda::ResidualNormInput in{dx.data(),   d_o.data(),   d_ow.data(), 0.75f,
                                   d_nw.data(), x_out.data(), eps};
  cuda::gemv_q4_0x8_normed(dw.data(), rows, cols, in, got.data(), nullptr, kQ4K);
  cuda::gemv_q4_0x8_glu_normed(FfnActivation::kGeluTanhGlu, dw.data(), rows, cols, in,
                               got_glu.data(), nullptr, kQ4K);
  double scale = 0.0;
  for (const float v : want.to_host()) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  const std::vector<float> a = got.to_host(), b = want.to_host();
  for (std::size_t i = 0; i < rows; ++i) ASSERT_NEAR(a[i], b[i], 1e-5 * scale) << i;
  const std::vector<float> ag = got_glu.to_host(), bg = want_glu.to_host();
  for (std::size_t i = 0; i < ff; ++i) ASSERT_NEAR(ag[i], bg[i], 1e-5 * (1.0 + std::fabs(bg[i])));
}

// The opt-in int8 x (DecodeX::kInt8): where every 32-block of x is already s * p with int8 p and
// max |p| = 127 (s a power of two), rounding to int8 loses nothing and the result must meet the
// exact bound; on ordinary x it must move away from the exact product (the switch is live) by
// no more than int8 rounding costs.
TEST(CudaGemvQ4K, Int8XExactOnInt8Inputs) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  const std::size_t rows = 130, cols = 2816;
  const Quantized q = make_weights(GgmlType::Q4_K, rows, cols, 13500);
  const cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  for (const int n_tokens : {1, 2, 3}) {
    SCOPED_TRACE(testing::Message() << "tokens " << n_tokens);
    std::vector<float> x = random_floats(cols * n_tokens, 13600 + n_tokens, 40.0f);
    for (std::size_t b = 0; b < x.size() / 32; ++b) {
      const float s = std::ldexp(1.0f, static_cast<int>(b % 7) - 3);
      for (std::size_t k = 0; k < 32; ++k) {
        const float p = std::clamp(std::nearbyint(x[32 * b + k]), -127.0f, 127.0f);
        x[32 * b + k] = s * (k == b % 32 ? 127.0f : p);
      }
    }
    const std::vector<float> ordinary = random_floats(cols * n_tokens, 13700 + n_tokens, 2.0f);
    const ForcedDecodeX int8(cuda::DecodeX::kInt8);
    EXPECT_LT(
        error_vs_exact(q, rows, cols, x, run_gemv(dw, rows, cols, x, n_tokens, kQ4K), n_tokens),
        1e-5);
    const double rounded = error_vs_exact(
        q, rows, cols, ordinary, run_gemv(dw, rows, cols, ordinary, n_tokens, kQ4K), n_tokens);
    EXPECT_GT(rounded, 1e-4);
    EXPECT_LT(rounded, 5e-2);
  }
}

}  // namespace
}  // namespace qforge

#endif  // QFORGE_HAVE_CUDA
