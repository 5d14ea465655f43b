// 8-bit activation kernels (src/quant/q8_act.h) against references built from qforge's own
// block decoders: the integer dot must equal the exact dot of the dequantized weights with the
// dequantized 8-bit activations; against the F32 dot it may differ only by the activation
// rounding (at most half an activation step per element); the AVX2 and scalar kernels must agree
// bit for bit; and matmul's 8-bit path must match its F32 path within the same bound.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/weights.h"
#include "quant/blocks.h"
#include "quant/q8_act.h"
#include "runtime/cpu/kernels.h"

namespace qforge {
namespace {

const GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1,   GgmlType::Q5_0, GgmlType::Q5_1,
                           GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K,
                           GgmlType::Q4_K, GgmlType::Q5_K,   GgmlType::Q6_K, GgmlType::IQ4_XS};

constexpr std::size_t kCols = 512;  // two K-quant super-blocks, 16 blocks of 32

std::vector<float> normal(std::size_t n, float sigma, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Activation rows: ordinary, Gemma-like large magnitudes with outliers up to |x| = 1000, tiny,
// and one with all-zero blocks; [kRows x kCols].
constexpr std::size_t kActRows = 4;
std::vector<float> activation_rows(std::mt19937& rng) {
  std::vector<float> x;
  const std::vector<float> plain = normal(kCols, 1.0f, rng);
  x.insert(x.end(), plain.begin(), plain.end());
  std::vector<float> large = normal(kCols, 30.0f, rng);
  large[3] = 1000.0f;
  large[77] = -987.5f;
  large[300] = 640.0f;
  x.insert(x.end(), large.begin(), large.end());
  const std::vector<float> tiny = normal(kCols, 1e-3f, rng);
  x.insert(x.end(), tiny.begin(), tiny.end());
  std::vector<float> holes = normal(kCols, 2.0f, rng);
  for (std::size_t i = 32; i < 64; ++i) holes[i] = 0.0f;    // block 1
  for (std::size_t i = 256; i < 288; ++i) holes[i] = 0.0f;  // first block of super-block 1
  x.insert(x.end(), holes.begin(), holes.end());
  return x;
}

std::vector<std::byte> quantized_rows(GgmlType type, std::span<const float> w, std::size_t rows) {
  std::vector<std::byte> q(rows * row_bytes(type, kCols));
  quantize_rows(type, w, kCols, q);
  return q;
}

struct Case {
  GgmlType type;
  std::vector<float> w_deq;    // dequantized weight row
  std::vector<std::byte> w_q;  // the row in its block format
  std::vector<float> x;        // activation rows
  Q8Activations a;
};

Case make_case(GgmlType type, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Case c{type, std::vector<float>(kCols), {}, activation_rows(rng), {}};
  const std::vector<float> w = normal(kCols, 0.05f, rng);
  c.w_q = quantized_rows(type, w, 1);
  dequantize_row(type, c.w_q, c.w_deq);
  c.a.quantize(c.x, kActRows, kCols);
  return c;
}

std::string label(GgmlType type, std::size_t row) {
  return std::string(type_name(type)) + " activation row " + std::to_string(row);
}

TEST(Q8Act, QuantizedActivationsRepresentTheInput) {
  std::mt19937 rng(7);
  const std::vector<float> x = activation_rows(rng);
  Q8Activations a;
  a.quantize(x, kActRows, kCols);
  std::vector<float> back(kCols);
  for (std::size_t t = 0; t < kActRows; ++t) {
    a.dequantize_row(t, back);
    for (std::size_t b = 0; b < kCols / 32; ++b) {
      float amax = 0.0f;
      for (std::size_t j = 0; j < 32; ++j)
        amax = std::max(amax, std::fabs(x[t * kCols + 32 * b + j]));
      EXPECT_FLOAT_EQ(a.scales(t)[b], amax / 127.0f);
      int sums[2] = {0, 0};
      for (std::size_t j = 0; j < 32; ++j) {
        const std::size_t i = 32 * b + j;
        // Round to nearest: error at most half a step (plus F32 rounding of the step itself).
        EXPECT_LE(std::fabs(back[i] - x[t * kCols + i]), 0.5f * a.scales(t)[b] * 1.0001f + 1e-30f)
            << "row " << t << " element " << i;
        sums[j / 16] += a.codes(t)[i];
      }
      EXPECT_FLOAT_EQ(a.half_sums(t)[2 * b], a.scales(t)[b] * static_cast<float>(sums[0]));
      EXPECT_FLOAT_EQ(a.half_sums(t)[2 * b + 1], a.scales(t)[b] * static_cast<float>(sums[1]));
    }
  }
  // All-zero blocks get a zero scale and zero codes.
  EXPECT_EQ(a.scales(3)[1], 0.0f);
  EXPECT_EQ(a.codes(3)[40], 0);
}

TEST(Q8Act, ScalarQuantizerMatchesDispatched) {
  std::mt19937 rng(11);
  const std::vector<float> x = activation_rows(rng);
  Q8Activations a;
  a.quantize(x, kActRows, kCols);
  std::vector<std::int8_t> codes(kCols);
  std::vector<float> scales(kCols / 32), sums(kCols / 16);
  for (std::size_t t = 0; t < kActRows; ++t) {
    quantize_activation_row_scalar(std::span(x).subspan(t * kCols, kCols), codes, scales, sums);
    for (std::size_t i = 0; i < kCols; ++i) ASSERT_EQ(codes[i], a.codes(t)[i]) << t << " " << i;
    for (std::size_t b = 0; b < kCols / 32; ++b) {
      ASSERT_EQ(scales[b], a.scales(t)[b]);
      ASSERT_EQ(sums[2 * b], a.half_sums(t)[2 * b]);
      ASSERT_EQ(sums[2 * b + 1], a.half_sums(t)[2 * b + 1]);
    }
  }
}

// (i) the kernel is exact up to F32 accumulation: compare with the double-precision dot of the
// dequantized weights and the dequantized 8-bit activations.
TEST(Q8Act, IntegerDotMatchesDequantizedReference) {
  for (const GgmlType type : kTypes) {
    ASSERT_TRUE(q8_act_supported(type)) << type_name(type);
    const Case c = make_case(type, 100 + static_cast<std::uint32_t>(type));
    for (std::size_t t = 0; t < kActRows; ++t) {
      double ref = 0.0, mag = 0.0;
      for (std::size_t i = 0; i < kCols; ++i) {
        const double a = static_cast<double>(c.a.scales(t)[i / 32]) * c.a.codes(t)[i];
        ref += static_cast<double>(c.w_deq[i]) * a;
        mag += std::fabs(static_cast<double>(c.w_deq[i]) * a);
      }
      const float got = dot_row_q8(type, c.w_q, c.a, t);
      EXPECT_NEAR(got, ref, 2e-6 * mag + 1e-30) << label(type, t);
    }
  }
}

// (ii) against the F32 dot of the original activations: the 8-bit rounding moves each activation
// by at most half its block's step d_a / 2, so the dots differ by at most sum |w| * d_a / 2
// (plus F32 rounding of both dots).
TEST(Q8Act, IntegerDotWithinActivationRoundingOfF32Dot) {
  for (const GgmlType type : kTypes) {
    const Case c = make_case(type, 200 + static_cast<std::uint32_t>(type));
    for (std::size_t t = 0; t < kActRows; ++t) {
      const std::span<const float> xt = std::span(c.x).subspan(t * kCols, kCols);
      double bound = 0.0, mag = 0.0;
      for (std::size_t i = 0; i < kCols; ++i) {
        bound += std::fabs(static_cast<double>(c.w_deq[i])) * 0.5 * c.a.scales(t)[i / 32];
        mag += std::fabs(static_cast<double>(c.w_deq[i]) * xt[i]);
      }
      const float f32 = dot_row(type, c.w_q, xt);
      const float q8 = dot_row_q8(type, c.w_q, c.a, t);
      EXPECT_NEAR(q8, f32, bound + 1e-5 * mag + 1e-30) << label(type, t);
      // The bound is not vacuous: a typical error is far below it, but it is below |f32| too.
      if (t == 0) {
        EXPECT_LT(bound, 0.5 * mag) << label(type, t);
      }
    }
  }
}

// (iii) AVX2 / AVX512-VNNI decoders + kernels against the portable scalar ones: identical bits.
TEST(Q8Act, ScalarKernelMatchesDispatchedBitForBit) {
  int checked_isas = 0;
  for (const Q8Isa isa : {Q8Isa::kAvx2, Q8Isa::kAvx512Vnni}) {
    if (!q8_act_isa_available(isa)) continue;
    ++checked_isas;
    for (const GgmlType type : kTypes) {
      const Case c = make_case(type, 300 + static_cast<std::uint32_t>(type));
      for (std::size_t t = 0; t < kActRows; ++t) {
        const float fast = dot_row_q8_isa(isa, type, c.w_q, c.a, t);
        const float scalar = dot_row_q8_isa(Q8Isa::kScalar, type, c.w_q, c.a, t);
        EXPECT_EQ(fast, scalar) << label(type, t) << " isa " << static_cast<int>(isa);
      }
    }
  }
  if (checked_isas == 0) GTEST_SKIP() << "no SIMD kernels in this build";
}

// (iv) the fused one-token kernels (no decode-to-buffer step) against the decoding kernels of the
// same instruction set and the portable scalar ones: identical bits, over a row range that does
// not start at 0 and is not a multiple of the 4-row group.
TEST(Q8Act, FusedOneTokenKernelsMatchDecodingKernelsBitForBit) {
  constexpr std::size_t kRows = 11, kR0 = 2;
  int checked_isas = 0;
  for (const Q8Isa isa : {Q8Isa::kAvx2, Q8Isa::kAvx512Vnni}) {
    if (!q8_act_isa_available(isa)) continue;
    ++checked_isas;
    for (const GgmlType type :
         {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K}) {
      ASSERT_TRUE(q8_gemv_available(isa, type)) << type_name(type);
      std::mt19937 rng(500 + static_cast<std::uint32_t>(type));
      std::vector<float> wf = normal(kRows * kCols, 0.05f, rng);
      wf[5] = 0.9f;  // one large weight: extreme codes in its block
      const std::vector<std::byte> wq = quantized_rows(type, wf, kRows);
      const std::size_t stride = row_bytes(type, kCols);
      const std::vector<float> x = activation_rows(rng);
      Q8Activations a;
      a.quantize(x, kActRows, kCols);
      for (std::size_t t = 0; t < kActRows; ++t) {
        std::vector<float> fused(kRows - kR0);
        matmul_q8_gemv_isa(isa, type, wq.data(), stride, kR0, kRows, a, t, fused.data());
        for (std::size_t r = kR0; r < kRows; ++r) {
          const std::span<const std::byte> row = std::span(wq).subspan(r * stride, stride);
          EXPECT_EQ(fused[r - kR0], dot_row_q8_isa(isa, type, row, a, t))
              << label(type, t) << " row " << r << " isa " << static_cast<int>(isa);
          EXPECT_EQ(fused[r - kR0], dot_row_q8_isa(Q8Isa::kScalar, type, row, a, t))
              << label(type, t) << " row " << r << " isa " << static_cast<int>(isa);
        }
      }
    }
  }
  if (checked_isas == 0) GTEST_SKIP() << "no SIMD kernels in this build";
}

// The multi-token path (register tiles of weight rows x tokens, and for one-scale types on
// AVX512-VNNI the 4 x 4 tile with precomputed scale products) against the portable scalar
// kernel, bit for bit, for every type and instruction set: 9 tokens (two full groups of 4 and a
// tail of 1) with outliers, tiny values and all-zero blocks, over a row range that does not start
// at 0 and ends in a partial group of rows.
TEST(Q8Act, TiledMatmulMatchesScalarKernelBitForBit) {
  constexpr std::size_t kRows = 11, kR0 = 2, kTokens = 9;
  for (const Q8Isa isa : {Q8Isa::kScalar, Q8Isa::kAvx2, Q8Isa::kAvx512Vnni}) {
    if (!q8_act_isa_available(isa)) continue;
    for (const GgmlType type : kTypes) {
      std::mt19937 rng(700 + static_cast<std::uint32_t>(type));
      std::vector<float> wf = normal(kRows * kCols, 0.05f, rng);
      wf[kCols * 3 + 5] = 0.9f;  // one large weight: extreme codes in its block
      const std::vector<std::byte> wq = quantized_rows(type, wf, kRows);
      const std::size_t stride = row_bytes(type, kCols);
      std::vector<float> x = activation_rows(rng);
      const std::vector<float> more = activation_rows(rng);
      x.insert(x.end(), more.begin(), more.end());
      const std::vector<float> last = normal(kCols, 3.0f, rng);
      x.insert(x.end(), last.begin(), last.end());
      Q8Activations a;
      a.quantize(x, kTokens, kCols);
      std::vector<float> y(kTokens * kRows, -1.0f);
      matmul_q8_rows_isa(isa, type, wq.data(), stride, kR0, kRows, a, y.data(), kRows);
      for (std::size_t t = 0; t < kTokens; ++t) {
        for (std::size_t r = 0; r < kRows; ++r) {
          if (r < kR0) {
            EXPECT_EQ(y[t * kRows + r], -1.0f) << "row outside the range was written";
            continue;
          }
          const std::span<const std::byte> row = std::span(wq).subspan(r * stride, stride);
          EXPECT_EQ(y[t * kRows + r], dot_row_q8_isa(Q8Isa::kScalar, type, row, a, t))
              << label(type, t) << " weight row " << r << " isa " << static_cast<int>(isa);
        }
      }
    }
  }
}

// Quantizing fewer rows after more (and a different row length) must not leave stale group data
// behind: the 4-token tiles read the biased codes and group scales written by quantize.
TEST(Q8Act, ReusedActivationsGiveTheSameTiledResults) {
  constexpr std::size_t kRows = 8, kTokens = 8;
  const GgmlType type = GgmlType::Q4_0;
  std::mt19937 rng(801);
  const std::vector<std::byte> wq = quantized_rows(type, normal(kRows * kCols, 0.05f, rng), kRows);
  const std::vector<float> x = normal(kTokens * kCols, 2.0f, rng);
  const std::vector<float> other = normal(16 * 2 * kCols, 7.0f, rng);
  Q8Activations fresh, reused;
  fresh.quantize(x, kTokens, kCols);
  reused.quantize(other, 16, 2 * kCols);
  reused.quantize(x, kTokens, kCols);
  std::vector<float> y1(kTokens * kRows), y2(kTokens * kRows);
  const std::size_t stride = row_bytes(type, kCols);
  matmul_q8_rows(type, wq.data(), stride, 0, kRows, fresh, y1.data(), kRows);
  matmul_q8_rows(type, wq.data(), stride, 0, kRows, reused, y2.data(), kRows);
  EXPECT_EQ(y1, y2);
  for (std::size_t t = 0; t < kTokens; ++t) {
    const std::span<const std::byte> row = std::span(wq).subspan(5 * stride, stride);
    EXPECT_EQ(y2[t * kRows + 5], dot_row_q8_isa(Q8Isa::kScalar, type, row, fresh, t));
  }
}

TEST(Q8Act, RejectsUnsupportedTypeAndShortRow) {
  std::mt19937 rng(3);
  const std::vector<float> x = normal(kCols, 1.0f, rng);
  Q8Activations a;
  a.quantize(x, 1, kCols);
  EXPECT_FALSE(q8_act_supported(GgmlType::F32));
  std::vector<std::byte> row(4 * kCols);
  EXPECT_THROW(dot_row_q8(GgmlType::F32, row, a, 0), Error);
  std::vector<std::byte> short_row(10);
  EXPECT_THROW(dot_row_q8(GgmlType::Q8_0, short_row, a, 0), Error);
  EXPECT_THROW(a.quantize(std::span(x).first(100), 1, 100), Error);
}

class ActivationModeGuard {
 public:
  ActivationModeGuard() : saved_(cpu::cpu_activations()) {}
  ~ActivationModeGuard() { cpu::set_cpu_activations(saved_); }
  ActivationModeGuard(const ActivationModeGuard&) = delete;
  ActivationModeGuard& operator=(const ActivationModeGuard&) = delete;

 private:
  cpu::CpuActivations saved_;
};

// matmul: the 8-bit path against the F32 path on several token counts, with a row count that is
// not a multiple of the register tile; each token's outputs also equal a 1-token matmul exactly.
TEST(Q8Act, MatmulQ8PathMatchesF32Path) {
  const ActivationModeGuard guard;
  constexpr std::size_t kRows = 37;
  for (const GgmlType type :
       {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_0}) {
    std::mt19937 rng(400 + static_cast<std::uint32_t>(type));
    const std::vector<float> wf = normal(kRows * kCols, 0.05f, rng);
    const std::vector<std::byte> wq = quantized_rows(type, wf, kRows);
    std::vector<float> w_deq(kRows * kCols);
    dequantize_rows(type, wq, kCols, w_deq);
    WeightMatrix w;
    w.name = "test.weight";
    w.type = type;
    w.rows = kRows;
    w.cols = kCols;
    w.row_stride = row_bytes(type, kCols);
    w.data = wq;
    for (const std::size_t n_tok : {1, 3, 7, 64}) {
      std::vector<float> x = normal(n_tok * kCols, 5.0f, rng);
      x[0] = 900.0f;  // an outlier in token 0
      std::vector<float> y8(n_tok * kRows), yf(n_tok * kRows), y1(kRows);
      cpu::set_cpu_activations(cpu::CpuActivations::kQ8);
      cpu::matmul(w, x, n_tok, y8);
      cpu::set_cpu_activations(cpu::CpuActivations::kF32);
      cpu::matmul(w, x, n_tok, yf);
      Q8Activations a;
      a.quantize(x, n_tok, kCols);
      cpu::set_cpu_activations(cpu::CpuActivations::kQ8);
      for (std::size_t t = 0; t < n_tok; ++t) {
        cpu::matmul(w, std::span(x).subspan(t * kCols, kCols), 1, y1);
        for (std::size_t r = 0; r < kRows; ++r) {
          double bound = 0.0, mag = 0.0;
          for (std::size_t i = 0; i < kCols; ++i) {
            const double wv = w_deq[r * kCols + i];
            bound += std::fabs(wv) * 0.5 * a.scales(t)[i / 32];
            mag += std::fabs(wv * x[t * kCols + i]);
          }
          const std::size_t o = t * kRows + r;
          ASSERT_NEAR(y8[o], yf[o], bound + 1e-5 * mag)
              << type_name(type) << " tokens " << n_tok << " t " << t << " row " << r;
          ASSERT_EQ(y8[o], y1[r]) << type_name(type) << " tokens " << n_tok << " t " << t;
        }
      }
    }
  }
}

}  // namespace
}  // namespace qforge
