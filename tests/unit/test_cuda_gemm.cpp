// Tensor-core GEMM (runtime/cuda/gemm_tc.h) vs float64 references built from the CPU decoder
// (dequantize_rows). Skips without a GPU.
//
// Two references per output y[t, r]:
//  - "bf16": sum_k bf16(W[r, k]) * bf16(x[t, k]) in float64, i.e. the same rounded operands the
//    kernel multiplies (it decodes each weight exactly in F32 and rounds it to BF16 to nearest
//    even, as f32_to_bf16 does). Products of two BF16 values are exact in F32, so what remains is
//    the tensor cores' F32 summation of up to K / 16 steps: a few ulp of the running sum per step,
//    below 1e-5 of sum_k |w x| (the scale of the rounding error; a plain relative error is
//    meaningless when the dot cancels). For K-quants the GPU computes scale * q - offset with one
//    FMA and the CPU with two roundings (see CudaDequantize in test_cuda_kernels.cpp), so a weight
//    within one F32 ulp of a BF16 rounding boundary may round the other way; the tolerance adds
//    one BF16 step of |w x| for each such weight.
//  - "exact": sum_k W[r, k] * x[t, k] with the unrounded operands. BF16 keeps 8 significant bits
//    (unit roundoff 2^-8), so each product is off by at most (2^-8 + 2^-8 + 2^-16) of itself and
//    the error must stay below 8e-3 of sum_k |w x| (with a few products, as for K = 8, it gets
//    close: 4.4e-3 was seen).
//
// Outputs are poisoned with NaN first; entries between n_rows and ldy must stay untouched.
//
// With QFORGE_GEMM_BENCH=1, CudaGemmBench prints timings of Q4_0 (and a few other) 512-token
// products at Llama-3-8B shapes; it is skipped otherwise.
#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include "cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/gemm_tc.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/stream.h"

namespace qforge {
namespace {

// Rows whose outputs are checked: all of a small matrix, else the edges of the 64/128-row tiles
// at both ends and in the middle, plus a few random ones.
std::vector<std::size_t> rows_to_check(std::size_t rows, std::uint32_t seed) {
  std::vector<std::size_t> out;
  if (rows <= 300) {
    for (std::size_t r = 0; r < rows; ++r) out.push_back(r);
    return out;
  }
  for (std::size_t r = 0; r < 8; ++r) out.push_back(r);
  for (const std::size_t r : {63, 64, 65, 127, 128, 129, 255, 256}) out.push_back(r);
  for (std::size_t r = rows / 2 - 2; r < rows / 2 + 2; ++r) out.push_back(r);
  for (std::size_t r = rows - 8; r < rows; ++r) out.push_back(r);
  std::mt19937 rng(seed);
  for (int i = 0; i < 8; ++i) out.push_back(rng() % rows);
  return out;
}

struct GemmError {
  double vs_bf16 = 0.0;   // max |got - bf16 reference| / (sum |w x| + slack)
  double vs_exact = 0.0;  // max |got - exact| / sum |w x|
  std::size_t non_finite = 0;
  std::size_t padding_touched = 0;
};

// got is n_tokens x ldy as downloaded; x is F32, n_tokens x cols.
GemmError gemm_error(const Quantized& w, std::size_t rows, std::size_t cols,
                     const std::vector<float>& x, int n_tokens, const std::vector<float>& got,
                     std::size_t ldy, std::uint32_t seed) {
  GemmError e;
  for (std::size_t t = 0; t < static_cast<std::size_t>(n_tokens); ++t) {
    for (std::size_t r = 0; r < ldy; ++r) {
      const float v = got[t * ldy + r];
      if (r < rows) {
        if (!std::isfinite(v)) ++e.non_finite;
      } else {
        std::uint32_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        if (bits != 0xffffffffu) ++e.padding_touched;
      }
    }
  }
  std::vector<float> xb(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) xb[i] = round_bf16(x[i]);
  std::vector<float> wb(cols);
  std::vector<double> slack_w(cols);
  for (const std::size_t r : rows_to_check(rows, seed)) {
    const float* wr = w.dequantized.data() + r * cols;
    for (std::size_t k = 0; k < cols; ++k) {
      wb[k] = round_bf16(wr[k]);
      slack_w[k] = boundary_slack(wr[k]);
    }
    for (std::size_t t = 0; t < static_cast<std::size_t>(n_tokens); ++t) {
      const float* xt = x.data() + t * cols;
      const float* xbt = xb.data() + t * cols;
      double exact = 0.0, magnitude = 0.0, rounded = 0.0, rounded_mag = 0.0, slack = 0.0;
      for (std::size_t k = 0; k < cols; ++k) {
        const double p = static_cast<double>(wr[k]) * xt[k];
        exact += p;
        magnitude += std::fabs(p);
        const double pb = static_cast<double>(wb[k]) * xbt[k];
        rounded += pb;
        rounded_mag += std::fabs(pb);
        slack += slack_w[k] * std::fabs(xbt[k]);
      }
      const double g = got[t * ldy + r];
      if (!std::isfinite(g)) continue;  // counted above
      const double m = magnitude > 0 ? magnitude : 1.0;
      const double mb = rounded_mag > 0 ? rounded_mag : 1.0;
      // slack is measured in units of the tolerance below (1e-5), hence the scaling.
      e.vs_bf16 = std::max(e.vs_bf16, std::fabs(g - rounded) / (mb + slack * 1e5));
      e.vs_exact = std::max(e.vs_exact, std::fabs(g - exact) / m);
    }
  }
  return e;
}

constexpr double kBf16Tolerance = 1e-5;
constexpr double kExactTolerance = 8e-3;

const GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K,
                           GgmlType::BF16, GgmlType::F16,  GgmlType::F32,  GgmlType::Q4_1,
                           GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q5_K, GgmlType::IQ4_NL};

bool is_float(GgmlType type) {
  return type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16;
}

// Column counts: one block (for floats one 8-column piece), a count that ends inside a 64-column
// step (32-element formats and floats), and a larger one.
std::vector<std::size_t> cols_for(GgmlType type, bool large) {
  if (block_size(type) == 256) return {256, 768, large ? 4096u : 1024u};
  if (is_float(type)) return {8, 104, large ? 4096u : 1024u};
  return {32, 96, large ? 4096u : 1024u};
}

// The six types of the target models get K = 4096 at full size; the others K = 1024.
bool is_main_type(GgmlType type) {
  return type == GgmlType::Q4_0 || type == GgmlType::Q8_0 || type == GgmlType::Q4_K ||
         type == GgmlType::Q6_K || type == GgmlType::BF16 || type == GgmlType::F16;
}

void check_type(GgmlType type, std::uint32_t seed) {
  ASSERT_TRUE(cuda::gemm_supported(type));
  for (const std::size_t cols : cols_for(type, is_main_type(type))) {
    for (const std::size_t rows : {std::size_t{1}, std::size_t{100}, std::size_t{4096 + 64}}) {
      const Quantized w = make_weights(type, rows, cols, ++seed);
      cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(w.bytes)};
      for (const int n_tokens : {1, 17, 64, 512}) {
        SCOPED_TRACE(testing::Message() << type_name(type) << " " << rows << "x" << cols << ", "
                                        << n_tokens << " tokens");
        const std::size_t ldy = rows + 5;
        const std::vector<float> x =
            random_floats(cols * static_cast<std::size_t>(n_tokens), ++seed);
        cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> dy(ldy * static_cast<std::size_t>(n_tokens));
        dy.fill_bytes(0xff);
        cuda::gemm(type, dw.data(), rows, cols, dx.data(), dy.data(), ldy, n_tokens);
        const GemmError e = gemm_error(w, rows, cols, x, n_tokens, dy.to_host(), ldy, seed);
        EXPECT_EQ(e.non_finite, 0u);
        EXPECT_EQ(e.padding_touched, 0u);
        EXPECT_LT(e.vs_bf16, kBf16Tolerance);
        EXPECT_LT(e.vs_exact, kExactTolerance);
        if (testing::Test::HasFailure()) return;  // one failing shape says enough
      }
    }
  }
}

// One test per type, so that a failure names it.
TEST(CudaGemm, Q4_0) { SKIP_WITHOUT_GPU(); check_type(GgmlType::Q4_0, 100); }
TEST(CudaGemm, Q8_0) { SKIP_WITHOUT_GPU(); check_type(GgmlType::Q8_0, 200); }
TEST(CudaGemm, Q4_K) { SKIP_WITHOUT_GPU(); check_type(GgmlType::Q4_K, 300); }
TEST(CudaGemm, Q6_K) { SKIP_WITHOUT_GPU(); check_type(GgmlType::Q6_K, 400); }
TEST(CudaGemm, BF16) { SKIP_WITHOUT_GPU(); check_type(GgmlType::BF16, 500); }
TEST(CudaGemm, F16) { SKIP_WITHOUT_GPU(); check_type(GgmlType::F16, 600); }
TEST(CudaGemm, F32) { SKIP_WITHOUT_GPU(); check_type(GgmlType::F32, 700); }
TEST(CudaGemm, Q4_1) { SKIP_WITHOUT_GPU(); check_type(GgmlType::Q4_1, 800); }
TEST(CudaGemm, Q5_0) { SKIP_WITHOUT_GPU(); check_type(GgmlType::Q5_0, 900); }
TEST(CudaGemm, Q5_K) { SKIP_WITHOUT_GPU(); check_type(GgmlType::Q5_K, 1000); }
TEST(CudaGemm, IQ4_NL) { SKIP_WITHOUT_GPU(); check_type(GgmlType::IQ4_NL, 1100); }
TEST(CudaGemm, Q5_1) {
  SKIP_WITHOUT_GPU();
  check_type(GgmlType::Q5_1, 1200);
}

TEST(CudaGemm, SupportedTypes) {
  for (const GgmlType type : kTypes) EXPECT_TRUE(cuda::gemm_supported(type)) << type_name(type);
  EXPECT_FALSE(cuda::gemm_supported(GgmlType::Q2_K));
  EXPECT_FALSE(cuda::gemm_supported(GgmlType::Q3_K));
}

// Restores automatic tile selection when a test that forces tiles ends (also on failure).
struct ForcedTile {
  explicit ForcedTile(cuda::GemmTile tile) { cuda::set_gemm_tile(tile); }
  ~ForcedTile() { cuda::set_gemm_tile(cuda::GemmTile::kAuto); }
  ForcedTile(const ForcedTile&) = delete;
  ForcedTile& operator=(const ForcedTile&) = delete;
};

// Every tile shape (the automatic choice uses 128 x 128 only for large products), with row and
// token counts just past tile edges, for the types of the target models.
TEST(CudaGemm, EveryTileAtItsEdges) {
  SKIP_WITHOUT_GPU();
  std::uint32_t seed = 5000;
  for (const cuda::GemmTile tile : {cuda::GemmTile::k128x128, cuda::GemmTile::k64x128,
                                    cuda::GemmTile::k128x64, cuda::GemmTile::k128x32}) {
    const ForcedTile forced(tile);
    for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::BF16}) {
      const std::size_t rows = 193, cols = 512;
      const Quantized w = make_weights(type, rows, cols, ++seed);
      cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(w.bytes)};
      for (const int n_tokens : {1, 31, 33, 65, 129, 200}) {
        SCOPED_TRACE(testing::Message() << type_name(type) << ", tile " << static_cast<int>(tile)
                                        << ", " << n_tokens << " tokens");
        const std::vector<float> x =
            random_floats(cols * static_cast<std::size_t>(n_tokens), ++seed);
        cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> dy(rows * static_cast<std::size_t>(n_tokens));
        dy.fill_bytes(0xff);
        cuda::gemm(type, dw.data(), rows, cols, dx.data(), dy.data(), rows, n_tokens);
        const GemmError e = gemm_error(w, rows, cols, x, n_tokens, dy.to_host(), rows, seed);
        EXPECT_EQ(e.non_finite, 0u);
        EXPECT_LT(e.vs_bf16, kBf16Tolerance);
        EXPECT_LT(e.vs_exact, kExactTolerance);
      }
    }
  }
}

TEST(CudaGemm, ConvertToBf16RoundsToNearestEven) {
  SKIP_WITHOUT_GPU();
  std::vector<float> x = random_floats(4096, 9, 3.0f);
  // Ties, values that round up into the next binade, infinities, subnormals, zeros, large.
  const float specials[] = {1.00390625f,    1.01171875f,  -1.00390625f, 255.5f,
                            3.3961514e38f,  -0.0f,        0.0f,         1e-40f,
                            -1e-40f,        1e30f,        -65504.0f,    1.9999999f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::min(), 1.0f};
  std::copy(std::begin(specials), std::end(specials), x.begin());
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<std::uint16_t> out(x.size());
  cuda::convert_to_bf16(dx.data(), out.data(), x.size());
  const std::vector<std::uint16_t> got = out.to_host();
  for (std::size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(got[i], f32_to_bf16(x[i])) << "x[" << i << "] = " << x[i];
  }
}

// gemm_bf16_x on a caller's buffer and stream gives bit-identical results to gemm, and two
// products can fill an interleaved output (the model's Q/K/V layout).
TEST(CudaGemm, Bf16InputOnStreamMatchesGemm) {
  SKIP_WITHOUT_GPU();
  const std::size_t rows_a = 96, rows_b = 160, cols = 1024, ldy = rows_a + rows_b;
  const int n_tokens = 45;
  const Quantized wa = make_weights(GgmlType::Q4_0, rows_a, cols, 41);
  const Quantized wb = make_weights(GgmlType::Q6_K, rows_b, cols, 42);
  const std::vector<float> x = random_floats(cols * n_tokens, 43);
  cuda::DeviceBuffer<std::byte> dwa{std::span<const std::byte>(wa.bytes)};
  cuda::DeviceBuffer<std::byte> dwb{std::span<const std::byte>(wb.bytes)};
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> y_ref(ldy * n_tokens), y(ldy * n_tokens);
  y_ref.fill_bytes(0xff);
  y.fill_bytes(0xff);
  cuda::gemm(GgmlType::Q4_0, dwa.data(), rows_a, cols, dx.data(), y_ref.data(), ldy, n_tokens);
  cuda::gemm(GgmlType::Q6_K, dwb.data(), rows_b, cols, dx.data(), y_ref.data() + rows_a, ldy,
             n_tokens);

  cuda::Stream stream;
  cuda::DeviceBuffer<std::uint16_t> xb(cols * n_tokens);
  cuda::convert_to_bf16(dx.data(), xb.data(), cols * n_tokens, stream.get());
  cuda::gemm_bf16_x(GgmlType::Q4_0, dwa.data(), rows_a, cols, xb.data(), y.data(), ldy, n_tokens,
                    stream.get());
  cuda::gemm_bf16_x(GgmlType::Q6_K, dwb.data(), rows_b, cols, xb.data(), y.data() + rows_a, ldy,
                    n_tokens, stream.get());
  stream.synchronize();
  const std::vector<float> got = y.to_host(), want = y_ref.to_host();
  ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
  // And the interleaved result is right (checked per half against the references).
  std::vector<float> half_a(rows_a * n_tokens), half_b(rows_b * n_tokens);
  for (int t = 0; t < n_tokens; ++t) {
    std::copy_n(got.begin() + t * ldy, rows_a, half_a.begin() + t * rows_a);
    std::copy_n(got.begin() + t * ldy + rows_a, rows_b, half_b.begin() + t * rows_b);
  }
  const GemmError ea = gemm_error(wa, rows_a, cols, x, n_tokens, half_a, rows_a, 1);
  const GemmError eb = gemm_error(wb, rows_b, cols, x, n_tokens, half_b, rows_b, 1);
  EXPECT_EQ(ea.non_finite + eb.non_finite, 0u);
  EXPECT_LT(std::max(ea.vs_bf16, eb.vs_bf16), kBf16Tolerance);
}

TEST(CudaGemm, RejectsBadShapesAndTypes) {
  SKIP_WITHOUT_GPU();
  cuda::DeviceBuffer<std::byte> w(1 << 16);
  cuda::DeviceBuffer<float> x(4096), y(4096);
  auto* wp = w.data();
  EXPECT_THROW(cuda::gemm(GgmlType::Q2_K, wp, 4, 256, x.data(), y.data(), 4, 2), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::Q4_K, wp, 4, 640, x.data(), y.data(), 4, 2), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::Q4_0, wp, 4, 48, x.data(), y.data(), 4, 2), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::F16, wp, 4, 12, x.data(), y.data(), 4, 2), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::Q4_K, wp + 2, 4, 256, x.data(), y.data(), 4, 2), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::Q4_0, wp, 4, 64, x.data(), y.data(), 4, 0), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::Q4_0, wp, 4, 64, x.data(), y.data(), 3, 2), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::Q4_0, wp, 0, 64, x.data(), y.data(), 4, 2), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::Q4_0, wp, 4, 64, x.data() + 1, y.data(), 4, 2), Error);
  EXPECT_THROW(cuda::gemm(GgmlType::Q4_0, wp, 4, 64, nullptr, y.data(), 4, 2), Error);
  EXPECT_THROW(cuda::convert_to_bf16(x.data(), nullptr, 12), Error);
}

// ---- timing harness (QFORGE_GEMM_BENCH=1) ---------------------------------------------------

// Random bytes with every F16 scale field replaced by a small valid scale (quantizing tens of
// millions of weights on the CPU would dominate the run; speed does not depend on the values).
std::vector<std::byte> bench_weights(GgmlType type, std::size_t rows, std::size_t cols) {
  std::vector<std::byte> bytes(rows * row_bytes(type, cols));
  std::mt19937 rng(1);
  for (std::size_t i = 0; i + 4 <= bytes.size(); i += 4) {
    const std::uint32_t v = rng();
    std::memcpy(&bytes[i], &v, 4);
  }
  const std::uint16_t scale = f32_to_f16(0.01f);
  const std::size_t block = type_size(type);
  auto set = [&](std::size_t offset) {
    for (std::size_t b = 0; b + block <= bytes.size(); b += block) {
      std::memcpy(&bytes[b + offset], &scale, 2);
    }
  };
  switch (type) {
    case GgmlType::Q4_0: case GgmlType::Q8_0: set(0); break;
    case GgmlType::Q4_K: set(0); set(2); break;
    case GgmlType::Q6_K: set(208); break;
    case GgmlType::BF16: {
      const std::uint16_t one = f32_to_bf16(0.01f);
      for (std::size_t b = 0; b + 2 <= bytes.size(); b += 2) std::memcpy(&bytes[b], &one, 2);
      break;
    }
    default: break;
  }
  return bytes;
}

TEST(CudaGemmBench, PrefillShapes) {
  SKIP_WITHOUT_GPU();
  const char* env = std::getenv("QFORGE_GEMM_BENCH");
  if (env == nullptr || std::string(env) != "1") GTEST_SKIP() << "set QFORGE_GEMM_BENCH=1";
  struct Case {
    GgmlType type;
    std::size_t rows, cols;
  };
  const Case cases[] = {{GgmlType::Q4_0, 4096, 4096},  {GgmlType::Q4_0, 14336, 4096},
                        {GgmlType::Q4_0, 4096, 14336}, {GgmlType::Q8_0, 4096, 4096},
                        {GgmlType::Q4_K, 4096, 4096},  {GgmlType::Q6_K, 4096, 4096},
                        {GgmlType::BF16, 4096, 4096}};
  const int n_tokens = 512, reps = 20;
  for (const Case& c : cases) {
    const std::vector<std::byte> bytes = bench_weights(c.type, c.rows, c.cols);
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(bytes)};
    const std::vector<float> x = random_floats(c.cols * n_tokens, 3);
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    cuda::DeviceBuffer<std::uint16_t> xb(c.cols * n_tokens);
    cuda::DeviceBuffer<float> dy(c.rows * n_tokens);
    cuda::convert_to_bf16(dx.data(), xb.data(), xb.size());
    auto time_ms = [&](auto&& fn) {
      for (int i = 0; i < 3; ++i) fn();
      cuda::Event start, stop;
      start.record();
      for (int i = 0; i < reps; ++i) fn();
      stop.record();
      stop.synchronize();
      return cuda::Event::elapsed_ms(start, stop) / reps;
    };
    auto run_gemm = [&] {
      cuda::gemm_bf16_x(c.type, dw.data(), c.rows, c.cols, xb.data(), dy.data(), c.rows, n_tokens);
    };
    const float ms_gemm = time_ms(run_gemm);
    float ms_tile[2];
    {
      const ForcedTile forced(cuda::GemmTile::k128x128);
      ms_tile[0] = time_ms(run_gemm);
    }
    {
      const ForcedTile forced(cuda::GemmTile::k64x128);
      ms_tile[1] = time_ms(run_gemm);
    }
    const float ms_with_convert = time_ms([&] {
      cuda::gemm(c.type, dw.data(), c.rows, c.cols, dx.data(), dy.data(), c.rows, n_tokens);
    });
    const float ms_gemv = time_ms([&] {  // today's prefill path: 64-token GEMV batches
      for (int t = 0; t < n_tokens; t += 64) {
        cuda::gemv_ld(c.type, dw.data(), c.rows, c.cols, dx.data() + t * c.cols,
                      dy.data() + t * c.rows, c.rows, std::min(64, n_tokens - t));
      }
    });
    const double flops = 2.0 * static_cast<double>(c.rows) * c.cols * n_tokens;
    const double bytes_moved = static_cast<double>(bytes.size()) + 2.0 * c.cols * n_tokens +
                               4.0 * c.rows * n_tokens;
    std::printf(
        "gemm %-5s %5zu x %5zu x %d tokens: %.3f ms = %.1f TFLOP/s, %.0f GB/s effective "
        "(with F32->BF16: %.3f ms; 64-token GEMV: %.3f ms = %.1f TFLOP/s; forced tiles "
        "128x128: %.3f ms, 64x128: %.3f ms)\n",
        std::string(type_name(c.type)).c_str(), c.rows, c.cols, n_tokens, ms_gemm,
        flops / ms_gemm * 1e-9, bytes_moved / ms_gemm * 1e-6, ms_with_convert, ms_gemv,
        flops / ms_gemv * 1e-9, ms_tile[0], ms_tile[1]);
  }
}

}  // namespace
}  // namespace qforge

#else  // !QFORGE_HAVE_CUDA

TEST(CudaGemm, SkippedWithoutCudaBuild) { GTEST_SKIP() << "built without the CUDA backend"; }

#endif
