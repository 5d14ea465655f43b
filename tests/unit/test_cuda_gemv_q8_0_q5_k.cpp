// The integer-plane decode GEMVs on GGUF Q8_0 and Q5_K weights as stored (q4_0x8.h,
// PlaneWeights::kQ8_0 / kQ5_K) against float64 sums of the weights as the CPU decoder reads them
// (quant/blocks.h), and against the kernels their fused forms stand in for: the checks of
// test_cuda_gemv_q4_k.cpp, once per form (suite CudaGemvPlaneForms, instances Q8_0 and Q5_K),
// plus one on bytes no quantizer of ours writes. Skips without a GPU.
#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/half.h"
#include "cuda_test_util.h"
#include "model/config.h"
#include "q4_0x8_test_util.h"
#include "quant/blocks.h"
#include "quant/ggml_type.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/device_attrs.h"
#include "runtime/cuda/gemma4_ops.h"
#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/q4_0x8.h"

namespace qforge {
namespace {

// A GGUF type and the form in which the integer-plane GEMVs take its bytes.
struct Form {
  GgmlType type;
  cuda::PlaneWeights weights;
};

// rows x cols weights of `type` (Q8_0 or Q5_K) from random bytes, so that every code, high bit
// and packed 6-bit scale and min occurs in any combination, including what ggml's rounding never
// writes (Q8_0 codes of -128, Q5_K sub-blocks of scale 0 or of large mins): a GGUF file may hold
// any of them. The f16 block scales (Q8_0's d, Q5_K's d and dmin) are set to finite values of
// either sign, about 4e-4 (Q8_0) and 5e-5 (Q5_K, where about half are f16 subnormals) in
// magnitude, for weights of a few hundredths as make_weights gives.
Quantized arbitrary_weights(GgmlType type, std::size_t rows, std::size_t cols, std::uint32_t seed) {
  const bool q5_k = type == GgmlType::Q5_K;
  return arbitrary_gguf_weights(type, rows, cols, seed, q5_k ? 2 : 1, q5_k ? 5e-5f : 4e-4f);
}

// Whether the normed forms take rows of `cols` columns in `weights` on this device (their shared
// memory grows with the form's pipeline stages); on sm_90 and newer every width of these tests
// must fit (the limit there is kMaxNormedCols).
bool normed_applies(std::size_t cols, cuda::PlaneWeights weights) {
  const bool applies = cuda::gemv_q4_0x8_normed_applies(cols, weights);
  if (cuda::current_cc_major() >= 9) {
    EXPECT_TRUE(applies) << cols << " columns";
  }
  return applies;
}

class CudaGemvPlaneForms : public testing::TestWithParam<Form> {};

// Whole 256-column groups up to the widest rows the GEMV takes, in the form of the type; nothing
// else (Q8_0 rows of whole 32-column blocks but not of whole groups included).
TEST_P(CudaGemvPlaneForms, AppliesToWholeSuperBlocks) {
  const auto [type, weights] = GetParam();
  for (const std::size_t cols :
       {std::size_t{256}, std::size_t{5376}, std::size_t{14336}, cuda::kMaxQ4_0x8Cols}) {
    SCOPED_TRACE(cols);
    const std::optional<cuda::PlaneWeights> form = cuda::gguf_plane_weights(type, cols);
    ASSERT_TRUE(form.has_value());
    EXPECT_TRUE(*form == weights);
  }
  for (const std::size_t cols :
       {std::size_t{0}, std::size_t{32}, std::size_t{640}, cuda::kMaxQ4_0x8Cols + 256}) {
    SCOPED_TRACE(cols);
    EXPECT_FALSE(cuda::gguf_plane_weights(type, cols).has_value());
  }
}

// The F32 GEMV's bound (1e-5 of sum |w x|) for every warp-task size and column split (uneven
// parts for 2816, 5376 and 14336 columns), a last step of the row partly filled (256, 2816 and
// 5376 columns: an odd number of 256-column groups leaves part of a step in either form), rows
// that leave tasks partly empty, wide rows (14336 columns, few of them: the float64 sums run on
// the CPU), and 1-3 tokens (pairs plus one).
TEST_P(CudaGemvPlaneForms, MatchesExactSum) {
  SKIP_WITHOUT_GPU();
  const auto [type, weights] = GetParam();
  const Q4_0x8Choices reset;
  struct Shape {
    std::size_t cols;
    std::vector<std::size_t> rows;
  };
  const Shape shapes[] = {{256, {1, 7, 130}},
                          {2816, {1, 7, 130}},
                          {4096, {1, 7, 130}},
                          {5376, {1, 7, 130}},
                          {14336, {1, 7}}};
  std::uint32_t seed = 22000;
  for (const Shape& shape : shapes) {
    const std::size_t cols = shape.cols;
    for (const std::size_t rows : shape.rows) {
      const Quantized q = make_weights(type, rows, cols, ++seed);
      const cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
      for (const int task_rows : {0, 1, 2, 4}) {
        cuda::set_gemv_q4_0x8_rows(task_rows);
        for (const int parts : {1, 2, 4}) {
          cuda::set_gemv_q4_0x8_parts(parts);
          for (const int n_tokens : {1, 2, 3}) {
            SCOPED_TRACE(testing::Message() << rows << "x" << cols << " task rows " << task_rows
                                            << " parts " << parts << " tokens " << n_tokens);
            const std::vector<float> x = random_floats(cols * n_tokens, ++seed, 2.0f);
            EXPECT_LT(error_vs_exact(q, rows, cols, x,
                                     run_gemv(dw, rows, cols, x, n_tokens, weights), n_tokens),
                      1e-5);
          }
        }
      }
    }
  }
}

// The same bound on weights from random bytes (arbitrary_weights): the kernels decode whatever a
// file stores as the CPU does, not only what our quantizers write.
TEST_P(CudaGemvPlaneForms, MatchesExactSumOnAnyStoredBytes) {
  SKIP_WITHOUT_GPU();
  const auto [type, weights] = GetParam();
  const Q4_0x8Choices reset;
  const std::size_t rows = 130, cols = 2816;
  const Quantized q = arbitrary_weights(type, rows, cols, 22500);
  const cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  for (const int task_rows : {0, 1, 2, 4}) {
    cuda::set_gemv_q4_0x8_rows(task_rows);
    for (const int n_tokens : {1, 2, 3}) {
      SCOPED_TRACE(testing::Message() << "task rows " << task_rows << " tokens " << n_tokens);
      const std::vector<float> x = random_floats(cols * n_tokens, 22600 + n_tokens, 2.0f);
      EXPECT_LT(error_vs_exact(q, rows, cols, x, run_gemv(dw, rows, cols, x, n_tokens, weights),
                               n_tokens),
                1e-5);
    }
  }
}

// Both weight streams (bulk copies on sm_90, 16-byte cp.async elsewhere) hold the row's bytes as
// they are: bit-identical results for the plain, gated and normed forms, partial last steps.
TEST_P(CudaGemvPlaneForms, BulkCopiesEqualCpAsync) {
  SKIP_WITHOUT_GPU();
  const auto [type, weights] = GetParam();
  const Q4_0x8Choices reset;
  std::uint32_t seed = 23000;
  for (const std::size_t cols : {std::size_t{2816}, std::size_t{5376}}) {
    const std::size_t rows = 130;
    const Quantized q = make_weights(type, rows, cols, ++seed);
    const cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    const std::vector<float> x = random_floats(cols * 3, ++seed);
    const std::vector<float> norm = random_floats(cols, ++seed);
    const cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    const cuda::DeviceBuffer<float> dnorm{std::span<const float>(norm)};
    const cuda::ResidualNormInput in{dx.data(),    nullptr, nullptr, 1.0f,
                                     dnorm.data(), nullptr, 1e-6f};
    const bool normed = normed_applies(cols, weights);
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
                                  weights);
              },
              rows * n_tokens);
          expect_bulk_equals_cp_async(
              [&](float* y) {
                cuda::gemv_q4_0x8_glu(FfnActivation::kSiluGlu, dw.data(), rows, cols, dx.data(), y,
                                      rows / 2, n_tokens, nullptr, weights);
              },
              rows / 2 * n_tokens);
        }
        if (normed) {
          expect_bulk_equals_cp_async(
              [&](float* y) {
                cuda::gemv_q4_0x8_normed(dw.data(), rows, cols, in, y, nullptr, weights);
              },
              rows);
        }
      }
    }
  }
}

// The gated form (gate row j and up row j summed by one warp, the activation applied there)
// equals the plain GEMV of the same form into [gate | up] followed by glu_rows; the normed forms
// equal the norm kernel followed by the plain and gated products of its output. CTA pairs (the
// planes shared through distributed shared memory) change nothing.
TEST_P(CudaGemvPlaneForms, FusedFormsEqualTheKernelsTheyReplace) {
  SKIP_WITHOUT_GPU();
  const auto [type, weights] = GetParam();
  const Q4_0x8Choices reset;
  const std::size_t ff = 70, cols = 4096, ldy = ff + 5, rows = 2 * ff;
  const Quantized q = make_weights(type, rows, cols, 23900);
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
        const std::vector<float> x = random_floats(cols * n_tokens, 24000 + n_tokens, 2.0f);
        const cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> gate_up(rows * n_tokens), want(ff * n_tokens),
            got(ldy * n_tokens);
        cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), gate_up.data(), rows, n_tokens, nullptr,
                          weights);
        cuda::glu_rows(act, gate_up.data(), want.data(), n_tokens, ff, nullptr);
        got.fill_bytes(0xff);
        cuda::gemv_q4_0x8_glu(act, dw.data(), rows, cols, dx.data(), got.data(), ldy, n_tokens,
                              nullptr, weights);
        expect_close(got.to_host(), want.to_host(), ff, ldy);
      }
    }
  }
  // Normed input (Gemma's form: x + norm(o) * o_norm, times a scale, then the input norm).
  if (!normed_applies(cols, weights)) return;
  const float eps = 1e-6f;
  const std::vector<float> x = random_floats(cols, 24100, 3.0f),
                           o = random_floats(cols, 24101, 20.0f);
  std::vector<float> o_w = random_floats(cols, 24102), n_w = random_floats(cols, 24103);
  for (float& v : o_w) v += 1.0f;
  for (float& v : n_w) v += 1.0f;
  const cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, d_o{std::span<const float>(o)},
      d_ow{std::span<const float>(o_w)}, d_nw{std::span<const float>(n_w)};
  cuda::DeviceBuffer<float> x_ref{std::span<const float>(x)}, h(cols), want(rows), want_glu(ff);
  cuda::residual_scale_norm(x_ref.data(), d_o.data(), d_ow.data(), 0.75f, d_nw.data(), h.data(), 1,
                            cols, eps, nullptr);
  cuda::gemv_q4_0x8(dw.data(), rows, cols, h.data(), want.data(), rows, 1, nullptr, weights);
  cuda::gemv_q4_0x8_glu(FfnActivation::kGeluTanhGlu, dw.data(), rows, cols, h.data(),
                        want_glu.data(), ff, 1, nullptr, weights);
  cuda::DeviceBuffer<float> x_out(cols), got(rows), got_glu(ff);
  got.fill_bytes(0xff);
  got_glu.fill_bytes(0xff);
  const cuda::ResidualNormInput in{dx.data(),   d_o.data(),   d_ow.data(), 0.75f,
                                   d_nw.data(), x_out.data(), eps};
  cuda::gemv_q4_0x8_normed(dw.data(), rows, cols, in, got.data(), nullptr, weights);
  cuda::gemv_q4_0x8_glu_normed(FfnActivation::kGeluTanhGlu, dw.data(), rows, cols, in,
                               got_glu.data(), nullptr, weights);
  double scale = 0.0;
  for (const float v : want.to_host()) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  const std::vector<float> a = got.to_host(), b = want.to_host();
  for (std::size_t i = 0; i < rows; ++i) ASSERT_NEAR(a[i], b[i], 1e-5 * scale) << i;
  // The gated outputs against their largest, as the plain ones: x here is the norm kernel's to
  // rounding, which a gate or up sum that cancels (Q5_K's mins) turns into more than 1e-5 of it.
  const std::vector<float> ag = got_glu.to_host(), bg = want_glu.to_host();
  double glu_scale = 0.0;
  for (const float v : bg) glu_scale = std::max(glu_scale, std::fabs(static_cast<double>(v)));
  for (std::size_t i = 0; i < ff; ++i) ASSERT_NEAR(ag[i], bg[i], 1e-5 * (1.0 + glu_scale)) << i;
  // x' stored by CTA 0 as the norm kernel leaves it in x_ref (to rounding: o takes a norm here).
  const std::vector<float> xo = x_out.to_host(), xr = x_ref.to_host();
  for (std::size_t i = 0; i < cols; ++i) ASSERT_NEAR(xo[i], xr[i], 1e-6 * (1.0 + std::fabs(xr[i])));
}

// The opt-in int8 x (DecodeX::kInt8): where every 32-block of x is already s * p with int8 p and
// max |p| = 127 (s a power of two), rounding to int8 loses nothing and the result must meet the
// exact bound; on ordinary x it must move away from the exact product (the switch is live) by
// no more than int8 rounding costs.
TEST_P(CudaGemvPlaneForms, Int8XExactOnInt8Inputs) {
  SKIP_WITHOUT_GPU();
  const auto [type, weights] = GetParam();
  const Q4_0x8Choices reset;
  const std::size_t rows = 130, cols = 2816;
  const Quantized q = make_weights(type, rows, cols, 24500);
  const cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  for (const int n_tokens : {1, 2, 3}) {
    SCOPED_TRACE(testing::Message() << "tokens " << n_tokens);
    std::vector<float> x = random_floats(cols * n_tokens, 24600 + n_tokens, 40.0f);
    for (std::size_t b = 0; b < x.size() / 32; ++b) {
      const float s = std::ldexp(1.0f, static_cast<int>(b % 7) - 3);
      for (std::size_t k = 0; k < 32; ++k) {
        const float p = std::clamp(std::nearbyint(x[32 * b + k]), -127.0f, 127.0f);
        x[32 * b + k] = s * (k == b % 32 ? 127.0f : p);
      }
    }
    const std::vector<float> ordinary = random_floats(cols * n_tokens, 24700 + n_tokens, 2.0f);
    const ForcedDecodeX int8(cuda::DecodeX::kInt8);
    EXPECT_LT(
        error_vs_exact(q, rows, cols, x, run_gemv(dw, rows, cols, x, n_tokens, weights), n_tokens),
        1e-5);
    const double rounded = error_vs_exact(
        q, rows, cols, ordinary, run_gemv(dw, rows, cols, ordinary, n_tokens, weights), n_tokens);
    EXPECT_GT(rounded, 1e-4);
    EXPECT_LT(rounded, 5e-2);
  }
}

INSTANTIATE_TEST_SUITE_P(Gguf, CudaGemvPlaneForms,
                         testing::Values(Form{GgmlType::Q8_0, cuda::PlaneWeights::kQ8_0},
                                         Form{GgmlType::Q5_K, cuda::PlaneWeights::kQ5_K}),
                         [](const testing::TestParamInfo<Form>& param_info) {
                           return std::string(type_name(param_info.param.type));
                         });

// The other types: Q4_K in its own form where q4_k_planes_applies; none for the rest (Q4_0 is
// regrouped at load instead, q4_0x8_applies; Q6_K has its own GEMV, gemv_q6_k.h).
TEST(CudaGemvPlaneFormsOtherTypes, OnlyQ4KTakesAForm) {
  for (const std::size_t cols : {std::size_t{256}, std::size_t{4096}}) {
    SCOPED_TRACE(cols);
    const std::optional<cuda::PlaneWeights> q4_k = cuda::gguf_plane_weights(GgmlType::Q4_K, cols);
    EXPECT_EQ(q4_k.has_value(), cuda::q4_k_planes_applies(GgmlType::Q4_K, cols));
    if (q4_k.has_value()) {
      EXPECT_TRUE(*q4_k == cuda::PlaneWeights::kQ4_K);
    }
    for (const GgmlType type :
         {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
          GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q6_K, GgmlType::IQ4_NL}) {
      EXPECT_FALSE(cuda::gguf_plane_weights(type, cols).has_value()) << type_name(type);
    }
  }
}

}  // namespace
}  // namespace qforge

#endif  // QFORGE_HAVE_CUDA
