// Block kernels: dot_row against dequantize-then-dot, quantization error bounds, importance
// weighting, exact re-quantization of lattice types, and size checks. Byte/bit compatibility
// with GGUF is tested against gguf-py in tests/python/test_quant_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"

namespace qforge {
namespace {

const GgmlType kAllTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16,   GgmlType::Q4_0,
                              GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,   GgmlType::Q8_0,
                              GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K,   GgmlType::Q5_K,
                              GgmlType::Q6_K, GgmlType::Q8_K, GgmlType::IQ4_NL, GgmlType::IQ4_XS};

std::vector<float> gaussian(std::size_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<std::byte> quantize(GgmlType t, const std::vector<float>& x,
                                std::span<const float> importance = {}) {
  std::vector<std::byte> q(row_bytes(t, x.size()));
  quantize_row(t, x, q, importance);
  return q;
}

std::vector<float> dequantize(GgmlType t, std::span<const std::byte> q, std::size_t n) {
  std::vector<float> y(n);
  dequantize_row(t, q, y);
  return y;
}

class BlockTypes : public ::testing::TestWithParam<GgmlType> {};

TEST_P(BlockTypes, DotMatchesDequantizeThenDot) {
  const GgmlType t = GetParam();
  const std::size_t n = 2048;
  for (unsigned seed = 1; seed <= 3; ++seed) {
    const auto w = gaussian(n, seed, 0.02f * static_cast<float>(seed));
    auto x = gaussian(n, 100 + seed);
    x[7] = 40.0f;  // one outlier activation
    const auto q = quantize(t, w);
    const auto wd = dequantize(t, q, n);
    double ref = 0.0, magnitude = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      ref += static_cast<double>(wd[i]) * x[i];
      magnitude += std::fabs(static_cast<double>(wd[i]) * x[i]);
    }
    const float got = dot_row(t, q, x);
    EXPECT_NEAR(got, ref, 1e-5 * magnitude + 1e-30) << type_name(t) << " seed " << seed;
  }
}

// Random bytes with every f16 scale field set to a small finite value: reaches code and scale
// combinations (negative Q6_K scales, 6-bit scales of 63, ...) that quantized data does not.
std::vector<std::byte> random_blocks(GgmlType t, std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> q(row_bytes(t, n));
  for (auto& b : q) b = static_cast<std::byte>(rng() & 0xff);
  std::vector<std::size_t> f16_fields;
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q5_0:
    case GgmlType::Q8_0:
    case GgmlType::IQ4_NL:
    case GgmlType::IQ4_XS:
      f16_fields = {0};
      break;
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      f16_fields = {0, 2};
      break;
    case GgmlType::Q2_K:
      f16_fields = {80, 82};
      break;
    case GgmlType::Q3_K:
      f16_fields = {108};
      break;
    case GgmlType::Q6_K:
      f16_fields = {208};
      break;
    default:
      return {};  // float types and Q8_K: covered by quantized data only
  }
  std::normal_distribution<float> dist(0.0f, 0.01f);
  for (std::size_t b = 0; b < q.size() / type_size(t); ++b) {
    for (std::size_t off : f16_fields) {
      const std::uint16_t h = f32_to_f16(dist(rng));
      std::memcpy(q.data() + b * type_size(t) + off, &h, 2);
    }
  }
  return q;
}

TEST_P(BlockTypes, DotMatchesDequantizeThenDotOnRandomBlocks) {
  const GgmlType t = GetParam();
  const std::size_t n = 1024;
  const auto q = random_blocks(t, n, 9);
  if (q.empty()) GTEST_SKIP() << "no random-block layout for " << type_name(t);
  const auto x = gaussian(n, 77);
  const auto wd = dequantize(t, q, n);
  double ref = 0.0, magnitude = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    ref += static_cast<double>(wd[i]) * x[i];
    magnitude += std::fabs(static_cast<double>(wd[i]) * x[i]);
  }
  EXPECT_NEAR(dot_row(t, q, x), ref, 1e-5 * magnitude + 1e-30) << type_name(t);
}

// Root-mean-square error of a quantize -> dequantize round trip.
double round_trip_rmse(GgmlType t, const std::vector<float>& x, std::span<const float> imp = {},
                       std::size_t stride = 1) {
  const auto y = dequantize(t, quantize(t, x, imp), x.size());
  double se = 0.0;
  std::size_t count = 0;
  for (std::size_t i = 0; i < x.size(); i += stride, ++count) se += (x[i] - y[i]) * (x[i] - y[i]);
  return std::sqrt(se / static_cast<double>(count));
}

// The RMSE of an ideal uniform quantizer with `levels` steps spanning each group's range
// (min..max, or -amax..amax when symmetric), with unquantized float scales: (step^2 / 12)
// averaged over the groups. This is the baseline a plain min/max ("reference style")
// quantizer of the format reaches; scale search can beat it, scale quantization costs a little.
double uniform_rmse(const std::vector<float>& x, std::size_t group, int levels, bool symmetric) {
  double sum = 0.0;
  for (std::size_t g = 0; g < x.size(); g += group) {
    float lo = x[g], hi = x[g];
    for (std::size_t i = g; i < g + group; ++i) {
      lo = std::min(lo, x[i]);
      hi = std::max(hi, x[i]);
    }
    const double range = symmetric ? 2.0 * std::max(std::fabs(lo), std::fabs(hi)) : hi - lo;
    const double step = range / (levels - 1);
    sum += step * step / 12.0;
  }
  return std::sqrt(sum / static_cast<double>(x.size() / group));
}

struct ErrorBound {
  GgmlType type;
  std::size_t group;  // elements sharing one scale
  int levels;
  bool symmetric;
  double factor;  // allowed RMSE / uniform_rmse
};

// How this was checked: with x ~ N(0, 1) the measured ratios RMSE / uniform_rmse are 0.93-1.00
// for the legacy formats and Q8_K (plain absmax/min-max quantizers, as gguf-py / ggml's
// reference do: equal to the ideal uniform quantizer up to f16 scale rounding), and 0.82-0.93
// for Q2_K..Q6_K and IQ4_* (scale search beats the min/max grid). A bound of 1.05 therefore
// fails for a wrong layout (errors of order sigma), a broken search or mis-rounded scales.
const ErrorBound kBounds[] = {
    {GgmlType::Q4_0, 32, 16, true, 1.05},   {GgmlType::Q4_1, 32, 16, false, 1.05},
    {GgmlType::Q5_0, 32, 32, true, 1.05},   {GgmlType::Q5_1, 32, 32, false, 1.05},
    {GgmlType::Q8_0, 32, 256, true, 1.05},  {GgmlType::Q2_K, 16, 4, false, 0.95},
    {GgmlType::Q3_K, 16, 8, true, 0.95},    {GgmlType::Q4_K, 32, 16, false, 0.97},
    {GgmlType::Q5_K, 32, 32, false, 1.0},   {GgmlType::Q6_K, 16, 64, true, 0.97},
    {GgmlType::Q8_K, 256, 256, true, 1.05}, {GgmlType::IQ4_NL, 32, 16, true, 0.95},
    {GgmlType::IQ4_XS, 32, 16, true, 0.95},
};

TEST(Blocks, RoundTripErrorWithinUniformQuantizerBound) {
  const auto x = gaussian(256 * 64, 42);
  for (const auto& b : kBounds) {
    const double rmse = round_trip_rmse(b.type, x);
    const double base = uniform_rmse(x, b.group, b.levels, b.symmetric);
    EXPECT_LE(rmse, b.factor * base) << type_name(b.type) << " rmse " << rmse << " base " << base;
    std::printf("%-7s rmse %.5f  uniform %.5f  ratio %.3f\n",
                std::string(type_name(b.type)).c_str(), rmse, base, rmse / base);
  }
}

TEST(Blocks, FloatTypesRoundTripWithinTheirPrecision) {
  const auto x = gaussian(1024, 5);
  EXPECT_EQ(round_trip_rmse(GgmlType::F32, x), 0.0);
  EXPECT_LE(round_trip_rmse(GgmlType::F16, x), 1.0 / 2048);
  EXPECT_LE(round_trip_rmse(GgmlType::BF16, x), 1.0 / 128);
}

TEST(Blocks, ImportanceLowersErrorOnWeightedColumns) {
  // Columns i % 8 == 0 get 100x the importance; their error must drop compared with the
  // unweighted quantization (the other columns may pay for it).
  const std::size_t n = 256 * 32;
  const auto x = gaussian(n, 7);
  std::vector<float> imp(n, 1.0f);
  for (std::size_t i = 0; i < n; i += 8) imp[i] = 100.0f;
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K,
                     GgmlType::IQ4_NL, GgmlType::IQ4_XS, GgmlType::Q4_0, GgmlType::Q5_0}) {
    const double plain = round_trip_rmse(t, x, {}, 8);
    const double weighted = round_trip_rmse(t, x, imp, 8);
    EXPECT_LT(weighted, plain) << type_name(t);
    std::printf("%-7s weighted-column rmse: plain %.5f  with importance %.5f\n",
                std::string(type_name(t)).c_str(), plain, weighted);
  }
}

// Q4_0 / Q5_0 with an importance vector search scales by weighted error; the reference rounding
// is one candidate, so in every block the weighted error is at most the reference's.
TEST(Blocks, WeightedLegacySearchNeverWorseThanReference) {
  const std::size_t n = 32 * 512;
  const auto x = gaussian(n, 13);
  const auto r = gaussian(n, 14);
  std::vector<float> imp(n);
  for (std::size_t i = 0; i < n; ++i) imp[i] = 0.05f + r[i] * r[i];
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q5_0}) {
    const auto ref = dequantize(t, quantize(t, x), n);
    const auto wq = dequantize(t, quantize(t, x, imp), n);
    double total_ref = 0, total_w = 0;
    for (std::size_t b = 0; b < n / 32; ++b) {
      double sigma2 = 0;
      for (std::size_t j = 0; j < 32; ++j) sigma2 += x[b * 32 + j] * x[b * 32 + j];
      sigma2 /= 32;
      double e_ref = 0, e_w = 0;
      for (std::size_t j = b * 32; j < b * 32 + 32; ++j) {
        const double w = imp[j] * std::sqrt(sigma2 + x[j] * x[j]);
        e_ref += w * (x[j] - ref[j]) * (x[j] - ref[j]);
        e_w += w * (x[j] - wq[j]) * (x[j] - wq[j]);
      }
      EXPECT_LE(e_w, e_ref * (1 + 1e-5) + 1e-12) << type_name(t) << " block " << b;
      total_ref += e_ref;
      total_w += e_w;
    }
    EXPECT_LT(total_w, 0.95 * total_ref) << type_name(t);
  }
}

TEST(Blocks, LatticeTypesRequantizeExactly) {
  // Dequantized values lie on the format's grid, so quantizing them again must give the same
  // bytes (the scale is recovered exactly from the extreme element).
  auto x = gaussian(32 * 256, 11);
  x[100] = 0.0f;
  for (GgmlType t : {GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0,
                     GgmlType::Q4_1, GgmlType::Q5_1}) {
    const auto q1 = quantize(t, x);
    const auto y = dequantize(t, q1, x.size());
    const auto q2 = quantize(t, y);
    std::size_t differing_blocks = 0;
    const std::size_t ts = type_size(t);
    for (std::size_t b = 0; b < q1.size() / ts; ++b)
      differing_blocks += std::memcmp(q1.data() + b * ts, q2.data() + b * ts, ts) != 0;
    EXPECT_EQ(differing_blocks, 0u) << type_name(t);
  }
}

TEST(Blocks, ZeroRowsStayZero) {
  const std::vector<float> zeros(512, 0.0f);
  for (GgmlType t : kAllTypes) {
    const auto y = dequantize(t, quantize(t, zeros), zeros.size());
    for (float v : y) ASSERT_EQ(v, 0.0f) << type_name(t);
  }
}

TEST(Blocks, QuantizeRowsMatchesRowByRow) {
  const std::size_t rows = 13, per_row = 512;
  const auto x = gaussian(rows * per_row, 3);
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::IQ4_XS}) {
    const std::size_t rb = row_bytes(t, per_row);
    std::vector<std::byte> all(rows * rb), one(rb);
    quantize_rows(t, x, per_row, all);
    for (std::size_t r = 0; r < rows; ++r) {
      quantize_row(t, std::span(x).subspan(r * per_row, per_row), one);
      ASSERT_EQ(std::memcmp(one.data(), all.data() + r * rb, rb), 0) << type_name(t) << " " << r;
    }
    std::vector<float> back(rows * per_row);
    dequantize_rows(t, all, per_row, back);
    EXPECT_EQ(back[per_row + 5], dequantize(t, std::span(all).subspan(rb, rb), per_row)[5]);
  }
}

TEST(Blocks, BadSizesThrow) {
  std::vector<float> x(100);
  std::vector<std::byte> q(1024);
  EXPECT_THROW(quantize_row(GgmlType::Q4_0, x, q), Error);               // 100 % 32
  EXPECT_THROW(dequantize_row(GgmlType::Q4_K, q, std::span(x)), Error);  // 100 % 256
  std::vector<float> y(64);
  EXPECT_THROW(dequantize_row(GgmlType::Q8_0, q, y), Error);  // wrong byte count
  EXPECT_THROW(dot_row(GgmlType::Q8_0, std::span(q).first(67), y), Error);
  EXPECT_THROW(quantize_row(GgmlType::Q4_0, y, std::span(q).first(36), std::span(x).first(3)),
               Error);  // importance size
  EXPECT_THROW(dequantize_row(GgmlType::IQ2_XXS, std::span(q).first(66), std::span(x)), Error);
  EXPECT_FALSE(can_dequantize(GgmlType::IQ2_XXS));
  EXPECT_THROW(quantize_rows(GgmlType::Q8_0, y, 48, q), Error);
  EXPECT_THROW(dequantize_rows(GgmlType::Q8_0, std::span(q).first(67), 32, y), Error);
}

INSTANTIATE_TEST_SUITE_P(All, BlockTypes, ::testing::ValuesIn(kAllTypes),
                         [](const auto& p) { return std::string(type_name(p.param)); });

}  // namespace
}  // namespace qforge
