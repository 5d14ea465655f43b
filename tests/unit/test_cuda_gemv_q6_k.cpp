// The one-token Q6_K GEMV (gemv_q6_k.cu), through cuda::gemv and called directly, against a
// float64 sum of the CPU-dequantized weights with test_cuda_kernels.cpp's bound: error / sum_k
// |w_k x_k| < 1e-5. Rows of an odd number of blocks (256, 2816, 5376 columns) start 2 bytes into a
// word every other row; weights placed 2..14 bytes past a 16-byte boundary, and matrices that do
// not end on one, take the copies at the matrix's edges; more rows than resident warps make each
// warp loop over its rows; rows too wide for whole-row slots (7680, 14336, 21504 columns) stream
// in chunks of 8 blocks, the last one partial (7680: 8 + 8 + 8 + 6; 21504: 10 x 8 + 4). Outputs
// start as NaN so that an unwritten row fails. Skips without a GPU.
#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include "cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/device_attrs.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/gemv_q6_k.h"

namespace qforge {
namespace {

constexpr double kGemvTolerance = 1e-5;

// Largest |got[r] - exact_r| / sum_k |w_rk x_k| over the rows, with exact_r in float64; infinity
// when an output is not finite.
double gemv_error(const Quantized& q, std::size_t rows, std::size_t cols,
                  const std::vector<float>& x, std::span<const float> got) {
  double worst = 0.0;
  for (std::size_t r = 0; r < rows; ++r) {
    const ExactDot e = exact_dot(q.dequantized.data() + r * cols, std::span(x).first(cols));
    const double g = got[r];
    if (!std::isfinite(g)) return INFINITY;
    worst = std::max(worst, std::fabs(g - e.value) / (e.magnitude > 0 ? e.magnitude : 1.0));
  }
  return worst;
}

// Resets the rows-per-warp and form choices however a test ends.
struct RowsReset {
  ~RowsReset() {
    cuda::detail::set_gemv_q6_k_rows(0);
    cuda::detail::set_gemv_q6_k_form(0);
  }
};

enum class Path { kPublic, kDirect };

// One GEMV of the weights at w (device) through `path` into a NaN-filled y; returns its error.
double run_gemv(Path path, const Quantized& q, const std::byte* w, std::size_t rows,
                std::size_t cols, const std::vector<float>& x) {
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> dy(rows);
  dy.fill_bytes(0xff);
  if (path == Path::kPublic) {
    cuda::gemv(GgmlType::Q6_K, w, rows, cols, dx.data(), dy.data());
  } else {
    cuda::detail::gemv_q6_k(w, rows, cols, dx.data(), dy.data(), nullptr);
  }
  const std::vector<float> got = dy.to_host();
  return gemv_error(q, rows, cols, x, got);
}

// Every shape with one and two rows per warp task, through cuda::gemv and directly.
void expect_exact(const Quantized& q, const std::byte* w, std::size_t rows, std::size_t cols,
                  std::uint32_t seed) {
  const RowsReset reset;
  const std::vector<float> x = random_floats(cols, seed);
  for (const int form_and_rows : {11, 12, 21, 22}) {  // (F32 | integer form) x (1 | 2 rows)
    const int rows_per_task = form_and_rows % 10;
    cuda::detail::set_gemv_q6_k_form(form_and_rows / 10);
    cuda::detail::set_gemv_q6_k_rows(rows_per_task);
    for (const Path path : {Path::kPublic, Path::kDirect}) {
      SCOPED_TRACE(testing::Message()
                   << rows << "x" << cols << ", " << rows_per_task << " rows per task, "
                   << (form_and_rows / 10 == 2 ? "integer" : "F32") << " form, "
                   << (path == Path::kPublic ? "cuda::gemv" : "direct"));
      EXPECT_LT(run_gemv(path, q, w, rows, cols, x), kGemvTolerance);
    }
  }
}

TEST(CudaGemvQ6K, MatchesExactSumForOddAndEvenBlockCounts) {
  SKIP_WITHOUT_GPU();
  std::uint32_t seed = 6000;
  for (const std::size_t cols :
       {std::size_t{256}, std::size_t{2816}, std::size_t{4096}, std::size_t{5376}}) {
    ASSERT_TRUE(cuda::detail::gemv_q6_k_applies(cols)) << cols;
    for (const std::size_t rows :
         {std::size_t{1}, std::size_t{5}, std::size_t{131}, std::size_t{4099}}) {
      const Quantized q = make_weights(GgmlType::Q6_K, rows, cols, ++seed);
      cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
      expect_exact(q, dw.data(), rows, cols, ++seed);
    }
  }
}

// Rows streamed in chunks (too wide for a whole-row slot beside x): the FFN down projections of
// Llama-3-8B (14336 columns) and Gemma 4 31B (21504) in Q4_K_M files, and 7680 columns (three whole
// chunks and a partial one), odd row counts so that a two-row task is left with one row.
TEST(CudaGemvQ6K, WideRowsStreamInChunks) {
  SKIP_WITHOUT_GPU();
  std::uint32_t seed = 6200;
  for (const std::size_t cols : {std::size_t{7680}, std::size_t{14336}, std::size_t{21504}}) {
    ASSERT_TRUE(cuda::detail::gemv_q6_k_applies(cols)) << cols;
    for (const std::size_t rows : {std::size_t{3}, std::size_t{1101}}) {
      const Quantized q = make_weights(GgmlType::Q6_K, rows, cols, ++seed);
      cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
      expect_exact(q, dw.data(), rows, cols, ++seed);
    }
  }
}

// More rows than 16 warps x SMs (and than 8 x SMs for two-row tasks): every warp loops, and the
// last round leaves some warps without a row.
TEST(CudaGemvQ6K, WarpsLoopOverManyRows) {
  SKIP_WITHOUT_GPU();
  const auto resident = static_cast<std::size_t>(16 * cuda::current_sm_count());
  for (const auto& [rows, cols] : {std::pair{std::size_t{20000}, std::size_t{2816}},
                                   std::pair{3 * resident + 7, std::size_t{4096}}}) {
    const Quantized q = make_weights(GgmlType::Q6_K, rows, cols, static_cast<std::uint32_t>(rows));
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    expect_exact(q, dw.data(), rows, cols, 7);
  }
}

// Weights that start 2..14 bytes past a 16-byte boundary (the first 16-byte chunk begins before
// the matrix) and end off one (the last chunk ends after it): those chunks are copied inside the
// matrix only. The bytes around the matrix are 0xff, a NaN scale, so a block read from outside
// the rows would make the output NaN.
TEST(CudaGemvQ6K, UnalignedWeightsAndTails) {
  SKIP_WITHOUT_GPU();
  for (const auto& [rows, cols] :
       {std::pair{std::size_t{5}, std::size_t{2816}}, std::pair{std::size_t{3}, std::size_t{256}},
        std::pair{std::size_t{67}, std::size_t{5376}},
        std::pair{std::size_t{5}, std::size_t{14336}}}) {
    const Quantized q = make_weights(GgmlType::Q6_K, rows, cols, 31);
    for (const std::size_t offset : {std::size_t{2}, std::size_t{6}, std::size_t{14}}) {
      SCOPED_TRACE(testing::Message() << "weights at byte " << offset);
      cuda::DeviceBuffer<std::byte> dw(q.bytes.size() + 32);
      dw.fill_bytes(0xff);
      dw.upload(std::span<const std::byte>(q.bytes), offset);
      expect_exact(q, dw.data() + offset, rows, cols, 32);
    }
  }
}

// Three tokens through gemv_ld: a two-token launch, then the one-token kernel for the last token,
// which must write its own output row (stride ldy) and nothing past the matrix's rows.
TEST(CudaGemvQ6K, LastOfSeveralTokensWritesItsStride) {
  SKIP_WITHOUT_GPU();
  const std::size_t rows = 131, cols = 4096, ldy = rows + 5;
  const int n_tokens = 3;
  const Quantized q = make_weights(GgmlType::Q6_K, rows, cols, 41);
  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  const std::vector<float> x = random_floats(cols * n_tokens, 42);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> dy(ldy * n_tokens);
  dy.fill_bytes(0xff);
  cuda::gemv_ld(GgmlType::Q6_K, dw.data(), rows, cols, dx.data(), dy.data(), ldy, n_tokens);
  const std::vector<float> got = dy.to_host();
  for (int t = 0; t < n_tokens; ++t) {
    SCOPED_TRACE(testing::Message() << "token " << t);
    const std::vector<float> xt(x.begin() + static_cast<std::ptrdiff_t>(t * cols),
                                x.begin() + static_cast<std::ptrdiff_t>((t + 1) * cols));
    const std::span<const float> yt(got.data() + t * ldy, rows);
    EXPECT_LT(gemv_error(q, rows, cols, xt, yt), kGemvTolerance);
    for (std::size_t r = rows; r < ldy; ++r) EXPECT_TRUE(std::isnan(got[t * ldy + r])) << r;
  }
}

// The opt-in int8 x (cuda_device.h, DecodeX::kInt8) in the integer form, against its own float64
// reference: per 32-element block of x, p = rint(x * 127 / max |x|) in F32 as the quantizer rounds
// it; each weight d * scale * (code - 32) meets code * p * max|x| / 127 and -32 * x (the offset
// takes the exact x). The results must also move away from the exact product: the switch is live.
TEST(CudaGemvQ6K, Int8XMatchesRoundedReference) {
  SKIP_WITHOUT_GPU();
  const RowsReset reset;
  std::uint32_t seed = 6500;
  for (const std::size_t cols : {std::size_t{256}, std::size_t{2816}, std::size_t{5376}}) {
    const std::size_t rows = 131;
    const Quantized q = make_weights(GgmlType::Q6_K, rows, cols, ++seed);
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    const std::vector<float> x = random_floats(cols, ++seed, 2.0f);
    std::vector<double> xq(cols);  // x rounded as the int8 plane holds it
    for (std::size_t b = 0; b < cols / 32; ++b) {
      float m = 0.0f;
      for (int k = 0; k < 32; ++k) m = std::max(m, std::fabs(x[32 * b + k]));
      const float inv = m > 0.0f ? 127.0f / m : 0.0f;
      for (int k = 0; k < 32; ++k) {
        xq[32 * b + k] = std::nearbyint(x[32 * b + k] * inv) * (static_cast<double>(m) / 127.0);
      }
    }
    std::vector<double> want(rows), mag(rows), exact(rows);
    const std::size_t row_size = row_bytes(GgmlType::Q6_K, cols);
    for (std::size_t r = 0; r < rows; ++r) {
      double v = 0.0, m_abs = 0.0;
      for (std::size_t b = 0; b < cols / 256; ++b) {
        const std::byte* blk = q.bytes.data() + r * row_size + 210 * b;
        std::uint16_t d_bits;
        std::memcpy(&d_bits, blk + 208, 2);
        const double d = f16_to_f32(d_bits);
        for (int j = 0; j < 256; ++j) {
          const std::size_t k = 256 * b + static_cast<std::size_t>(j);
          const double ds = d * static_cast<double>(static_cast<signed char>(blk[192 + j / 16]));
          const double w = q.dequantized[r * cols + k];  // ds * (code - 32)
          const double code_term = (w + 32.0 * ds) * xq[k], offset = 32.0 * ds * x[k];
          v += code_term - offset;
          m_abs += std::fabs(code_term) + std::fabs(offset);
        }
      }
      want[r] = v;
      mag[r] = m_abs;
      exact[r] = exact_dot(q.dequantized.data() + r * cols, std::span(x)).value;
    }
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    for (const int rows_per_task : {1, 2}) {
      SCOPED_TRACE(testing::Message() << rows << "x" << cols << ", " << rows_per_task
                                      << " rows per task");
      cuda::detail::set_gemv_q6_k_form(2);
      cuda::detail::set_gemv_q6_k_rows(rows_per_task);
      cuda::DeviceBuffer<float> dy(rows);
      dy.fill_bytes(0xff);
      {
        const ForcedDecodeX int8(cuda::DecodeX::kInt8);
        cuda::detail::gemv_q6_k(dw.data(), rows, cols, dx.data(), dy.data(), nullptr);
      }
      const std::vector<float> got = dy.to_host();
      double moved = 0.0;
      for (std::size_t r = 0; r < rows; ++r) {
        ASSERT_TRUE(std::isfinite(got[r])) << r;
        ASSERT_NEAR(got[r], want[r], 1e-5 * mag[r]) << r;
        moved = std::max(moved, std::fabs(got[r] - exact[r]) / mag[r]);
      }
      EXPECT_GT(moved, 1e-4) << "no int8 rounding seen";
    }
  }
}

// Column counts the kernel does not take: not whole blocks, or an x too large for shared memory
// beside two stages of chunks (cuda::gemv then keeps the first kernel); bad arguments to the
// direct call.
TEST(CudaGemvQ6K, AppliesOnlyToWholeBlocksThatFit) {
  EXPECT_FALSE(cuda::detail::gemv_q6_k_applies(0));
  EXPECT_FALSE(cuda::detail::gemv_q6_k_applies(300));
  SKIP_WITHOUT_GPU();
  EXPECT_TRUE(cuda::detail::gemv_q6_k_applies(256));
  EXPECT_TRUE(cuda::detail::gemv_q6_k_applies(5376));
  EXPECT_TRUE(cuda::detail::gemv_q6_k_applies(7680));    // in chunks
  EXPECT_FALSE(cuda::detail::gemv_q6_k_applies(65536));  // 264 KiB of x

  const std::size_t rows = 3, cols = 65536;
  const Quantized q = make_weights(GgmlType::Q6_K, rows, cols, 51);
  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  const std::vector<float> x = random_floats(cols, 52);
  EXPECT_LT(run_gemv(Path::kPublic, q, dw.data(), rows, cols, x), kGemvTolerance);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, dy(rows);
  EXPECT_THROW(cuda::detail::gemv_q6_k(dw.data(), rows, cols, dx.data(), dy.data(), nullptr),
               Error);
  EXPECT_THROW(cuda::detail::gemv_q6_k(dw.data(), 0, 256, dx.data(), dy.data(), nullptr), Error);
  EXPECT_THROW(cuda::detail::gemv_q6_k(dw.data() + 1, 1, 256, dx.data(), dy.data(), nullptr),
               Error);
  EXPECT_THROW(cuda::detail::set_gemv_q6_k_rows(3), Error);
}

}  // namespace
}  // namespace qforge

#endif  // QFORGE_HAVE_CUDA
