// CUDA kernels vs the CPU reference (src/quant/blocks.h, src/runtime/cpu/*). Skips without a GPU.
//
// GEMV tolerance: the CPU and GPU add the K products of a row in different orders in F32, so
// neither equals the exact sum. Both are compared with a float64 sum of the dequantized weights
// (dequantize_rows, exact in F32 for the legacy formats, within an ulp for K-quants) times x. The
// error is measured against sum_k |w_k x_k| (the scale of the rounding error; a plain relative
// error is meaningless when the dot cancels to near zero) and must stay below 1e-5: each lane adds
// K/32 (<= 168 here) products and the warp 5 partial sums, a worst-case bound of about
// 173 * 2^-24 ~ 1e-5, typically 10-100x less.
#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include "cuda_test_util.h"
#include "q4_0x8_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "model/config.h"
#include "quant/blocks.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/kv_cache.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/gemm_tc.h"
#include "runtime/cuda/gemma4_ops.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/gemv_mma.h"
#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/ops.h"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/stream.h"
#include "runtime/cuda_trace.h"

namespace qforge {
namespace {

// Largest |got - exact| / sum|w x| over rows and tokens, with `exact` in float64.
struct GemvError {
  double vs_exact = 0.0;
  double cpu_vs_exact = 0.0;
};

GemvError gemv_error(GgmlType type, const Quantized& q, std::size_t rows, std::size_t cols,
                     const std::vector<float>& x, const std::vector<float>& got, int n_tokens) {
  GemvError e;
  const std::size_t stride = row_bytes(type, cols);
  for (int t = 0; t < n_tokens; ++t) {
    const std::span<const float> xt(x.data() + t * cols, cols);
    for (std::size_t r = 0; r < rows; ++r) {
      const ExactDot exact = exact_dot(q.dequantized.data() + r * cols, xt);
      const float cpu = dot_row(type, std::span(q.bytes).subspan(r * stride, stride), xt);
      const double g = got[t * rows + r];
      if (!std::isfinite(g)) return {INFINITY, INFINITY};
      const double denom = exact.magnitude > 0 ? exact.magnitude : 1.0;
      e.vs_exact = std::max(e.vs_exact, std::fabs(g - exact.value) / denom);
      e.cpu_vs_exact = std::max(e.cpu_vs_exact, std::fabs(cpu - exact.value) / denom);
    }
  }
  return e;
}

constexpr double kGemvTolerance = 1e-5;

const GgmlType kGemvTypes[] = {GgmlType::F32,    GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                               GgmlType::Q4_1,   GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                               GgmlType::IQ4_NL, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

TEST(CudaGemv, MatchesCpuReferenceForEveryTypeAndShape) {
  SKIP_WITHOUT_GPU();
  std::uint32_t seed = 1;
  for (const GgmlType type : kGemvTypes) {
    ASSERT_TRUE(cuda::gemv_supported(type));
    const bool k_quant = block_size(type) == 256;
    // K = 640 (Gemma 3 270M's width) is not a multiple of 256: K-quants use 768 there.
    for (const std::size_t cols :
         {k_quant ? std::size_t{768} : std::size_t{640}, std::size_t{2048}, std::size_t{5376}}) {
      for (const std::size_t rows : {std::size_t{37}, std::size_t{130}}) {
        SCOPED_TRACE(testing::Message() << type_name(type) << " " << rows << "x" << cols);
        const Quantized q = make_weights(type, rows, cols, ++seed);
        const std::vector<float> x = random_floats(cols, ++seed);
        cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
        cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> dy(rows);
        dy.fill_bytes(0xff);  // NaN: an unwritten output fails the check
        cuda::gemv(type, dw.data(), rows, cols, dx.data(), dy.data());
        const GemvError e = gemv_error(type, q, rows, cols, x, dy.to_host(), 1);
        EXPECT_LT(e.vs_exact, kGemvTolerance) << "cpu error " << e.cpu_vs_exact;
        EXPECT_LT(e.cpu_vs_exact, kGemvTolerance);
      }
    }
  }
}

TEST(CudaGemv, SmallBatchesShareTheWeightRead) {
  SKIP_WITHOUT_GPU();
  const std::size_t rows = 67, cols = 2048;
  for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::BF16}) {
    const Quantized q = make_weights(type, rows, cols, 77);
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    for (const int n_tokens : {2, 3, 5, 8, 11}) {
      SCOPED_TRACE(testing::Message() << type_name(type) << " tokens " << n_tokens);
      const std::vector<float> x = random_floats(cols * n_tokens, 100 + n_tokens);
      cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
      cuda::DeviceBuffer<float> dy(rows * n_tokens);
      dy.fill_bytes(0xff);
      cuda::gemv(type, dw.data(), rows, cols, dx.data(), dy.data(), n_tokens);
      const GemvError e = gemv_error(type, q, rows, cols, x, dy.to_host(), n_tokens);
      EXPECT_LT(e.vs_exact, kGemvTolerance);
    }
  }
}

// The tensor-core Q4_0 path (gemv_mma.cu) takes n_cols multiples of 256 and 1, 2 or 4 tokens:
// full 512-column chunks, a 256-column tail, fewer chunks than warps, rows not a multiple of 16.
TEST(CudaGemv, Q4_0TensorCorePath) {
  SKIP_WITHOUT_GPU();
  cuda::detail::set_gemv_mma_min_rows(0);  // every row count (the default policy needs >= 8192)
  std::uint32_t seed = 900;
  for (const std::size_t cols :
       {std::size_t{256}, std::size_t{768}, std::size_t{2816}, std::size_t{4608}}) {
    for (const std::size_t rows : {std::size_t{1}, std::size_t{16}, std::size_t{45}}) {
      const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, ++seed);
      cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
      for (const int n_tokens : {1, 2, 4, 7}) {
        SCOPED_TRACE(testing::Message() << rows << "x" << cols << " tokens " << n_tokens);
        const std::vector<float> x = random_floats(cols * n_tokens, ++seed);
        cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> dy(rows * n_tokens);
        dy.fill_bytes(0xff);
        cuda::gemv(GgmlType::Q4_0, dw.data(), rows, cols, dx.data(), dy.data(), n_tokens);
        EXPECT_LT(gemv_error(GgmlType::Q4_0, q, rows, cols, x, dy.to_host(), n_tokens).vs_exact,
                  kGemvTolerance);
      }
    }
  }
  cuda::detail::set_gemv_mma_min_rows(8192);
}

// moe_gemv against float64: per slot the chosen expert's product, zeros for bad ids, shared
// inputs (x_group 3) and one input per slot (x_group 1), 42 rows (a partial row tile).
void check_expert_gemv(GgmlType type, std::size_t cols) {
  const int n_experts = 5;
  const std::size_t rows = 42;
  const Quantized q = make_weights(type, rows * n_experts, cols, 31);
  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  cuda::ExpertStack w;
  w.type = type;
  w.data = dw.data();
  w.rows = rows;
  w.cols = cols;
  w.expert_bytes = rows * row_bytes(type, cols);
  w.n_experts = n_experts;
  const std::vector<int> ids = {4, 0, 2, -1, 3, 7};
  const int n_slots = static_cast<int>(ids.size());
  cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
  for (const int x_group : {1, 3}) {
    SCOPED_TRACE(testing::Message()
                 << type_name(type) << ", " << cols << " cols, group " << x_group);
    const std::size_t x_rows = static_cast<std::size_t>((n_slots - 1) / x_group + 1);
    const std::vector<float> x = random_floats(x_rows * cols, 40 + x_group);
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    const std::size_t ldy = rows + 3;
    cuda::DeviceBuffer<float> dy(ldy * n_slots);
    dy.fill_bytes(0xff);
    cuda::moe_gemv(w, dids.data(), n_slots, x_group, dx.data(), dy.data(), ldy, nullptr);
    const std::vector<float> got = dy.to_host();
    for (int s = 0; s < n_slots; ++s) {
      const int e = ids[static_cast<std::size_t>(s)];
      const float* xs = x.data() + static_cast<std::size_t>(s / x_group) * cols;
      for (std::size_t r = 0; r < rows; ++r) {
        const double g = got[static_cast<std::size_t>(s) * ldy + r];
        if (e < 0 || e >= n_experts) {
          EXPECT_EQ(g, 0.0) << "slot " << s;
          continue;
        }
        const ExactDot exact =
            exact_dot(q.dequantized.data() + (static_cast<std::size_t>(e) * rows + r) * cols,
                      std::span(xs, cols));
        ASSERT_TRUE(std::isfinite(g)) << "slot " << s << " row " << r;
        EXPECT_LT(std::fabs(g - exact.value) / exact.magnitude, kGemvTolerance)
            << "slot " << s << " row " << r;
      }
    }
  }
}

// The tensor-core form (Q4_0, widths that are multiples of 256).
TEST(CudaGemv, Q4_0ExpertTensorCorePath) {
  SKIP_WITHOUT_GPU();
  for (const std::size_t cols : {std::size_t{768}, std::size_t{2816}}) {
    check_expert_gemv(GgmlType::Q4_0, cols);
  }
}

// The row-tiled form (tensor cores off, or widths such as Gemma 4 26B-A4B's 704-column down
// experts that end in a partial 256-column step) and the one-warp-per-row form (legacy family).
TEST(CudaGemv, ExpertRowTiledAndWarpPaths) {
  SKIP_WITHOUT_GPU();
  for (const cuda::GemvKernel kernel : {cuda::GemvKernel::kTiled, cuda::GemvKernel::kLegacy}) {
    cuda::set_gemv_kernel(kernel);
    cuda::detail::set_gemv_mma_stages(0);
    check_expert_gemv(GgmlType::Q4_0, 2816);
    cuda::detail::set_gemv_mma_stages(12);
    check_expert_gemv(GgmlType::Q4_0, 704);
    check_expert_gemv(GgmlType::Q8_0, 704);
    check_expert_gemv(GgmlType::Q4_K, 768);
    check_expert_gemv(GgmlType::BF16, 704);
    check_expert_gemv(GgmlType::Q6_K, 768);  // no row-tiled kernel: one warp per row
  }
  cuda::set_gemv_kernel(cuda::GemvKernel::kTiled);
}

// A stack of n_experts Q4_0 experts of rows x cols (the rows of q), regrouped to Q4_0x8 on the
// device and widened where cols is not a multiple of 256 (q4_0x8.h), as the model loads them.
struct WidenedExperts {
  cuda::DeviceBuffer<std::byte> bytes;
  cuda::ExpertStack stack;
};

WidenedExperts widened_q4_0x8_experts(const Quantized& q, int n_experts, std::size_t rows,
                                      std::size_t cols) {
  const std::size_t stored = cuda::q4_0x8_row_bytes(cols);
  WidenedExperts e{cuda::DeviceBuffer<std::byte>(rows * n_experts * stored), {}};
  e.bytes.upload(std::span<const std::byte>(q.bytes));
  cuda::DeviceBuffer<std::uint8_t> scratch;
  cuda::repack_q4_0x8_widening(e.bytes.data(), rows * n_experts, cols, scratch);
  e.stack.type = GgmlType::Q4_0;
  e.stack.layout = cuda::WeightLayout::kQ4_0x8;
  e.stack.data = e.bytes.data();
  e.stack.rows = rows;
  e.stack.cols = cols;
  e.stack.expert_bytes = rows * stored;
  e.stack.n_experts = n_experts;
  return e;
}

// The weight stream by bulk copies (one per row and step, completion counted on a barrier) and by
// cp.async (16 bytes per thread) feeds the same arithmetic: the results must be bit-identical,
// for every task shape, partial 32-block steps (2816 columns), 1-3 tokens, the gated form and
// the expert down form with its 400-byte rows (704 columns, widened).
TEST(CudaGemv, Q4_0x8BulkCopiesEqualCpAsync) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  std::uint32_t seed = 7000;
  for (const std::size_t cols : {std::size_t{2816}, std::size_t{5376}}) {
    const std::size_t rows = 130;
    const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, ++seed);
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    cuda::repack_q4_0x8(dw.data(), rows, cols);
    const std::vector<float> x = random_floats(cols * 3, ++seed);
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    for (const int task_rows : {0, 1, 2, 4}) {
      cuda::set_gemv_q4_0x8_rows(task_rows);
      for (const int parts : {0, 2, 4}) {
        cuda::set_gemv_q4_0x8_parts(parts);
        for (const int n_tokens : {1, 2, 3}) {
          SCOPED_TRACE(testing::Message() << cols << " columns, rows " << task_rows << ", parts "
                                          << parts << ", tokens " << n_tokens);
          expect_bulk_equals_cp_async(
              [&](float* y) {
                cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), y, rows, n_tokens);
              },
              rows * n_tokens);
          expect_bulk_equals_cp_async(
              [&](float* y) {
                cuda::gemv_q4_0x8_glu(FfnActivation::kSiluGlu, dw.data(), rows, cols, dx.data(), y,
                                      rows / 2, n_tokens);
              },
              rows / 2 * n_tokens);
        }
      }
    }
  }
  cuda::set_gemv_q4_0x8_rows(0);
  cuda::set_gemv_q4_0x8_parts(0);
  // Expert down form: 4 experts of 96 rows x 704 columns (rows widened to 400 bytes), 3 slots.
  const int n_exp = 4;
  const std::size_t rows = 96, cols = 704;
  const Quantized q = make_weights(GgmlType::Q4_0, n_exp * rows, cols, ++seed);
  const WidenedExperts experts = widened_q4_0x8_experts(q, n_exp, rows, cols);
  const cuda::ExpertStack& w = experts.stack;
  const std::vector<int> ids = {2, 0, 3};
  cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
  const std::vector<float> x = random_floats(cols * ids.size(), ++seed);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  expect_bulk_equals_cp_async(
      [&](float* y) { cuda::moe_gemv_q4_0x8(w, dids.data(), 3, dx.data(), y, rows, nullptr); },
      rows * ids.size());
}

// The planes of x built by one CTA per SM, or shared out among the CTAs of clusters of 2 or 4
// (each quantizing its share into every CTA's shared memory): the same planes, so bit-identical
// results, for grids below and at one CTA per SM, 1-3 tokens, the gated form, and the expert forms
// (shared x built before or after the wait, one x per slot).
TEST(CudaGemv, Q4_0x8ClusterPlanesEqualOneCta) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  auto compare = [](auto&& run, std::size_t n_out) {
    std::vector<float> want;
    for (const int size : {1, 2, 4}) {
      SCOPED_TRACE(testing::Message() << "cluster " << size);
      cuda::set_gemv_q4_0x8_cluster(size);
      cuda::DeviceBuffer<float> dy(n_out);
      dy.fill_bytes(0xff);
      run(dy.data());
      const std::vector<float> got = dy.to_host();
      if (size == 1) {
        want = got;
      } else {
        ASSERT_EQ(std::memcmp(want.data(), got.data(), n_out * sizeof(float)), 0);
      }
    }
  };
  std::uint32_t seed = 9000;
  const std::pair<std::size_t, std::size_t> shapes[] = {{100, 2816}, {4096, 4096}, {300, 14336}};
  for (const auto& [rows, cols] : shapes) {
    const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, ++seed);
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    cuda::repack_q4_0x8(dw.data(), rows, cols);
    const std::vector<float> x = random_floats(cols * 3, ++seed);
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    for (const int n_tokens : {1, 2, 3}) {
      SCOPED_TRACE(testing::Message() << rows << " x " << cols << ", tokens " << n_tokens);
      compare(
          [&](float* y) { cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), y, rows, n_tokens); },
          rows * n_tokens);
      compare(
          [&](float* y) {
            cuda::gemv_q4_0x8_glu(FfnActivation::kGeluTanhGlu, dw.data(), rows, cols, dx.data(), y,
                                  rows / 2, n_tokens);
          },
          rows / 2 * n_tokens);
    }
  }
  // Expert gate/up form: 6 experts of 2 x 64 rows x 2816 columns, 8 slots sharing x.
  const int n_experts = 6;
  const std::size_t ff = 64, cols = 2816;
  const Quantized q = make_weights(GgmlType::Q4_0, 2 * ff * n_experts, cols, ++seed);
  const WidenedExperts experts_up = widened_q4_0x8_experts(q, n_experts, 2 * ff, cols);
  const cuda::ExpertStack& w = experts_up.stack;
  const std::vector<int> ids = {5, 0, 2, -1, 3, 1, 4, 0};
  cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
  const std::vector<float> x = random_floats(cols, ++seed);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  for (const bool settled : {false, true}) {
    SCOPED_TRACE(testing::Message() << "expert gate/up, x settled " << settled);
    compare(
        [&](float* y) {
          cuda::moe_gemv_q4_0x8_glu(FfnActivation::kSiluGlu, w, dids.data(), 8, dx.data(), y, ff,
                                    nullptr, settled);
        },
        ff * ids.size());
  }
  // Expert down form: 4 experts of 96 rows x 704 columns (widened), 3 slots with their own x.
  const std::size_t down_rows = 96, down_cols = 704;
  const Quantized qd = make_weights(GgmlType::Q4_0, 4 * down_rows, down_cols, ++seed);
  const WidenedExperts experts = widened_q4_0x8_experts(qd, 4, down_rows, down_cols);
  const std::vector<int> down_ids = {2, 0, 3};
  cuda::DeviceBuffer<int> ddown_ids{std::span<const int>(down_ids)};
  const std::vector<float> xd = random_floats(down_cols * down_ids.size(), ++seed);
  cuda::DeviceBuffer<float> dxd{std::span<const float>(xd)};
  SCOPED_TRACE("expert down");
  compare(
      [&](float* y) {
        cuda::moe_gemv_q4_0x8(experts.stack, ddown_ids.data(), 3, dxd.data(), y, down_rows,
                              nullptr);
      },
      down_rows * down_ids.size());
}

// One Q4_0x8 GEMV (weights regrouped at w) of n_tokens random activation rows against the float64
// product of the dequantized weights: the GEMV's 1e-5 bound.
void expect_q4_0x8_gemv_exact(const Quantized& q, const void* w, std::size_t rows, std::size_t cols,
                              int n_tokens, std::uint32_t seed) {
  const std::vector<float> x = random_floats(cols * n_tokens, seed);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> dy(rows * n_tokens);
  dy.fill_bytes(0xff);
  cuda::gemv_q4_0x8(w, rows, cols, dx.data(), dy.data(), rows, n_tokens);
  EXPECT_LT(gemv_error(GgmlType::Q4_0, q, rows, cols, x, dy.to_host(), n_tokens).vs_exact,
            kGemvTolerance);
}

// Q4_0 regrouped at load (q4_0x8.h) and multiplied with integer plane products: the same 1e-5
// bound as the F32 GEMV for every warp-task size and column split (parts of 1-2 steps, uneven
// for 2816 and 5376 columns), partial 32-block steps, row counts that leave tasks partly empty,
// and token counts handled in pairs plus one.
TEST(CudaGemv, Q4_0x8MatchesExactSum) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  std::uint32_t seed = 4000;
  for (const std::size_t cols :
       {std::size_t{256}, std::size_t{2816}, std::size_t{4096}, std::size_t{5376}}) {
    for (const std::size_t rows : {std::size_t{1}, std::size_t{7}, std::size_t{130}}) {
      const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, ++seed);
      cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
      cuda::repack_q4_0x8(dw.data(), rows, cols);
      for (const int task_rows : {0, 1, 2, 4}) {
        cuda::set_gemv_q4_0x8_rows(task_rows);
        for (const int parts : {1, 2, 4}) {
          cuda::set_gemv_q4_0x8_parts(parts);
          for (const int n_tokens : {1, 2, 3}) {
            SCOPED_TRACE(testing::Message() << rows << "x" << cols << " task rows " << task_rows
                                            << " parts " << parts << " tokens " << n_tokens);
            expect_q4_0x8_gemv_exact(q, dw.data(), rows, cols, n_tokens, ++seed);
          }
        }
      }
    }
  }
}

// The opt-in int8 x (cuda_device.h, DecodeX::kInt8) against its own float64 reference: per
// 32-block, codes times x rounded to int8 (p = rint(x * 127 / max |x|), in F32 as the quantizer
// rounds it) times max |x| / 127, minus 8 times the exact sum of x, times the block's scale. Every
// task shape, column parts, 1-3 tokens. The results must also differ from the exact product by
// more than the F32 tolerance: the switch is live.
TEST(CudaGemv, Q4_0x8Int8XMatchesRoundedReference) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  std::uint32_t seed = 9700;
  for (const std::size_t cols : {std::size_t{256}, std::size_t{2816}, std::size_t{5376}}) {
    const std::size_t rows = 130;
    const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, ++seed);
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    cuda::repack_q4_0x8(dw.data(), rows, cols);
    for (const int n_tokens : {1, 2, 3}) {
      const std::vector<float> x = random_floats(cols * n_tokens, ++seed, 2.0f);
      // The reference, per (row, token): value and magnitude (sum of the terms' absolute values).
      std::vector<double> want(rows * n_tokens), mag(rows * n_tokens), exact(rows * n_tokens);
      const std::size_t n_blocks = cols / 32;
      for (int t = 0; t < n_tokens; ++t) {
        const float* xt = x.data() + static_cast<std::size_t>(t) * cols;
        for (std::size_t r = 0; r < rows; ++r) {
          const std::byte* row = q.bytes.data() + r * row_bytes(GgmlType::Q4_0, cols);
          double v = 0.0, m_abs = 0.0;
          for (std::size_t b = 0; b < n_blocks; ++b) {
            const std::byte* blk = row + 18 * b;
            std::uint16_t d_bits;
            std::memcpy(&d_bits, blk, 2);
            const double d = f16_to_f32(d_bits);
            const float* xb = xt + 32 * b;
            float m = 0.0f;
            for (int k = 0; k < 32; ++k) m = std::max(m, std::fabs(xb[k]));
            const float inv = m > 0.0f ? 127.0f / m : 0.0f;
            double codes_x = 0.0, sum_x = 0.0, terms = 0.0;
            for (int k = 0; k < 32; ++k) {
              const auto byte = static_cast<unsigned>(blk[2 + (k % 16)]);
              const unsigned code = k < 16 ? (byte & 0xfu) : (byte >> 4);
              const double p = std::nearbyint(xb[k] * inv);
              codes_x += code * p * (static_cast<double>(m) / 127.0);
              sum_x += xb[k];
              terms += code * std::fabs(p) * (static_cast<double>(m) / 127.0) + 8 * std::fabs(xb[k]);
            }
            v += d * (codes_x - 8.0 * sum_x);
            m_abs += std::fabs(d) * terms;
          }
          want[t * rows + r] = v;
          mag[t * rows + r] = m_abs;
          exact[t * rows + r] = exact_dot(q.dequantized.data() + r * cols, {xt, cols}).value;
        }
      }
      cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
      double int8_vs_exact = 0.0;
      for (const int task_rows : {0, 1, 2}) {
        cuda::set_gemv_q4_0x8_rows(task_rows);
        for (const int parts : {0, 2, 4}) {
          cuda::set_gemv_q4_0x8_parts(parts);
          SCOPED_TRACE(testing::Message() << rows << "x" << cols << " tokens " << n_tokens
                                          << " task rows " << task_rows << " parts " << parts);
          cuda::DeviceBuffer<float> dy(rows * n_tokens);
          dy.fill_bytes(0xff);
          {
            const ForcedDecodeX int8(cuda::DecodeX::kInt8);
            cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), dy.data(), rows, n_tokens);
          }
          const std::vector<float> got = dy.to_host();
          for (std::size_t i = 0; i < got.size(); ++i) {
            ASSERT_TRUE(std::isfinite(got[i])) << i;
            ASSERT_NEAR(got[i], want[i], 1e-5 * mag[i]) << i;
            int8_vs_exact = std::max(int8_vs_exact, std::fabs(got[i] - exact[i]) / mag[i]);
          }
        }
      }
      EXPECT_GT(int8_vs_exact, 1e-4) << cols << " columns: no int8 rounding seen";
    }
  }
}

// Column parts over many rounds of warp tasks (each part's partial sums are kept per round
// parity until the group's first warp has added them): 4999 rows of 5376 columns, one or two
// rows per task, 2 or 4 parts or the automatic choice, one or two tokens.
TEST(CudaGemv, Q4_0x8ColumnPartsOverManyRounds) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  const std::size_t rows = 4999, cols = 5376;
  const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, 91);
  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  cuda::repack_q4_0x8(dw.data(), rows, cols);
  for (const int task_rows : {1, 2}) {
    cuda::set_gemv_q4_0x8_rows(task_rows);
    for (const int parts : {0, 2, 4}) {
      cuda::set_gemv_q4_0x8_parts(parts);
      for (const int n_tokens : {1, 2}) {
        SCOPED_TRACE(testing::Message()
                     << "task rows " << task_rows << " parts " << parts << " tokens " << n_tokens);
        expect_q4_0x8_gemv_exact(q, dw.data(), rows, cols, n_tokens, 92 + n_tokens);
      }
    }
  }
}

// The GEMV timeline (cuda_trace.h): in a trace build, one record per CTA of the launch with its
// four stamps in order; in any other build a clear error, and no record ever.
TEST(CudaGemvTrace, RecordsEachCtaOfALaunchInOrder) {
  SKIP_WITHOUT_GPU();
  if (!cuda::gemv_trace_built()) {
    try {
      cuda::gemv_trace_start(64);
      ADD_FAILURE() << "gemv_trace_start must fail without -DQFORGE_KERNEL_TRACE=ON";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("QFORGE_KERNEL_TRACE"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(cuda::gemv_trace_stop().empty());
    return;
  }
  const std::size_t rows = 8192, cols = 2048;
  const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, 11);
  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  cuda::repack_q4_0x8(dw.data(), rows, cols);
  const std::vector<float> x = random_floats(cols, 12);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> dy(rows);
  cuda::gemv_trace_start(4096);
  cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), dy.data(), rows, 1);
  const std::vector<cuda::TraceRecord> records = cuda::gemv_trace_stop();
  // 4096 two-row tasks over CTAs of 16 warps: one CTA per SM.
  const auto ctas = static_cast<std::size_t>(cuda::devices().front().sm_count);
  ASSERT_EQ(records.size(), std::min<std::size_t>(ctas, 256));
  std::vector<bool> seen(records.size(), false);
  for (const cuda::TraceRecord& r : records) {
    EXPECT_LE(r.t[0], r.t[1]);
    EXPECT_LE(r.t[1], r.t[2]);
    EXPECT_LE(r.t[2], r.t[3]);
    EXPECT_EQ(r.tag, reinterpret_cast<std::uintptr_t>(dw.data()));
    EXPECT_EQ(r.rows, rows);
    EXPECT_EQ(r.cols, cols);
    ASSERT_LT(r.block, records.size());
    EXPECT_FALSE(seen[r.block]) << "block " << r.block << " recorded twice";
    seen[r.block] = true;
  }
  // Stopped: later launches record nothing.
  cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), dy.data(), rows, 1);
  EXPECT_TRUE(cuda::gemv_trace_stop().empty());
}

// Activations with outliers (a few values ~1e4 beside ~1e-3) and whole blocks of zeros. The
// plane representation is exact to max|x| * 2^-24 per 32-column block, not per element, so a
// small x next to an outlier in its block keeps only that absolute accuracy: the error is
// measured against sum_k |w_k| * max|x of k's block| (1e-5 as everywhere), and the plain
// sum |w x| bound still holds for rows whose outlier weights are not zero.
TEST(CudaGemv, Q4_0x8LargeAndZeroActivations) {
  SKIP_WITHOUT_GPU();
  const std::size_t rows = 40, cols = 2048;
  const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, 7);
  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  cuda::repack_q4_0x8(dw.data(), rows, cols);
  std::vector<float> x = random_floats(cols, 8, 1e-3f);
  x[5] = 3.0e4f;
  x[700] = -1.7e4f;
  for (std::size_t k = 64; k < 96; ++k) x[k] = 0.0f;
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> dy(rows);
  dy.fill_bytes(0xff);
  cuda::gemv_q4_0x8(dw.data(), rows, cols, dx.data(), dy.data(), rows, 1);
  const std::vector<float> got = dy.to_host();
  for (std::size_t r = 0; r < rows; ++r) {
    const float* w = q.dequantized.data() + r * cols;
    double exact = 0.0, magnitude = 0.0, block_magnitude = 0.0;
    for (std::size_t b = 0; b < cols / 32; ++b) {
      double block_max = 0.0;
      for (std::size_t k = 32 * b; k < 32 * b + 32; ++k) {
        block_max = std::max(block_max, std::fabs(static_cast<double>(x[k])));
      }
      for (std::size_t k = 32 * b; k < 32 * b + 32; ++k) {
        exact += static_cast<double>(w[k]) * x[k];
        magnitude += std::fabs(static_cast<double>(w[k]) * x[k]);
        block_magnitude += std::fabs(static_cast<double>(w[k])) * block_max;
      }
    }
    ASSERT_TRUE(std::isfinite(got[r])) << "row " << r;
    EXPECT_LT(std::fabs(got[r] - exact) / block_magnitude, kGemvTolerance) << "row " << r;
    if (w[5] != 0.0f && w[700] != 0.0f) {
      EXPECT_LT(std::fabs(got[r] - exact) / magnitude, kGemvTolerance) << "row " << r;
    }
  }
  x[1000] = INFINITY;
  cuda::DeviceBuffer<float> dinf{std::span<const float>(x)};
  cuda::gemv_q4_0x8(dw.data(), rows, cols, dinf.data(), dy.data(), rows, 1);
  for (const float v : dy.to_host()) EXPECT_FALSE(std::isfinite(v));
}

// The gate/up product with the activation applied in the GEMV (gate row j and up row j summed by
// one warp) equals the plain Q4_0x8 GEMV into a [gate | up] buffer followed by glu_rows, for both
// activations, 1 to 3 tokens, every task size and an output stride wider than n_ff.
TEST(CudaGemv, Q4_0x8GluOutputEqualsSeparateActivation) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  const std::size_t ff = 70, cols = 1536, ldy = ff + 5;
  const Quantized q = make_weights(GgmlType::Q4_0, 2 * ff, cols, 21);
  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
  cuda::repack_q4_0x8(dw.data(), 2 * ff, cols);
  for (const FfnActivation act : {FfnActivation::kSiluGlu, FfnActivation::kGeluTanhGlu}) {
    for (const int task_rows : {0, 1, 2, 4}) {
      cuda::set_gemv_q4_0x8_rows(task_rows);
      cuda::set_gemv_q4_0x8_parts(task_rows == 2 ? 2 : 0);  // 1536 columns: at most 2 parts
      for (const int n_tokens : {1, 2, 3}) {
        SCOPED_TRACE(testing::Message() << static_cast<int>(act) << " task rows " << task_rows
                                        << " tokens " << n_tokens);
        const std::vector<float> x = random_floats(cols * n_tokens, 22 + n_tokens, 2.0f);
        cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> gate_up(2 * ff * n_tokens), want(ff * n_tokens),
            got(ldy * n_tokens);
        cuda::gemv_q4_0x8(dw.data(), 2 * ff, cols, dx.data(), gate_up.data(), 2 * ff, n_tokens);
        cuda::glu_rows(act, gate_up.data(), want.data(), n_tokens, ff, nullptr);
        got.fill_bytes(0xff);
        cuda::gemv_q4_0x8_glu(act, dw.data(), 2 * ff, cols, dx.data(), got.data(), ldy, n_tokens);
        const std::vector<float> a = want.to_host(), b = got.to_host();
        for (int t = 0; t < n_tokens; ++t) {
          for (std::size_t j = 0; j < ff; ++j) {
            const float e = a[t * ff + j], g = b[t * ldy + j];
            ASSERT_TRUE(std::isfinite(g)) << t << " " << j;
            EXPECT_NEAR(g, e, 1e-6 * (1.0 + std::fabs(e))) << t << " " << j;
          }
        }
      }
    }
  }
}

// The expert form of the gated Q4_0x8 GEMV: per slot, exactly the single-matrix gated GEMV of its
// expert (same arithmetic per output), zeros for ids out of range; output stride above the width.
TEST(CudaGemv, Q4_0x8ExpertGluEqualsPerExpertProduct) {
  SKIP_WITHOUT_GPU();
  const int n_experts = 5;
  const std::size_t ff = 90, cols = 768, ldy = ff + 6;
  const Quantized q = make_weights(GgmlType::Q4_0, 2 * ff * n_experts, cols, 51);
  const WidenedExperts experts = widened_q4_0x8_experts(q, n_experts, 2 * ff, cols);
  cuda::ExpertStack w = experts.stack;
  const std::vector<int> ids = {4, 0, 2, -1, 3, 7, 1, 0};
  const int n_slots = static_cast<int>(ids.size());
  cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
  const std::vector<float> x = random_floats(cols, 52, 2.0f);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  for (const FfnActivation act : {FfnActivation::kSiluGlu, FfnActivation::kGeluTanhGlu}) {
    SCOPED_TRACE(testing::Message() << "activation " << static_cast<int>(act));
    cuda::DeviceBuffer<float> got(ldy * n_slots), one(ff);
    got.fill_bytes(0xff);
    cuda::moe_gemv_q4_0x8_glu(act, w, dids.data(), n_slots, dx.data(), got.data(), ldy, nullptr);
    const std::vector<float> g = got.to_host();
    for (int s = 0; s < n_slots; ++s) {
      const int e = ids[static_cast<std::size_t>(s)];
      std::vector<float> want(ff, 0.0f);
      if (e >= 0 && e < n_experts) {
        cuda::gemv_q4_0x8_glu(act,
                              experts.bytes.data() + static_cast<std::size_t>(e) * w.expert_bytes,
                              2 * ff, cols, dx.data(), one.data(), ff, 1);
        want = one.to_host();
      }
      for (std::size_t j = 0; j < ff; ++j) {
        ASSERT_EQ(g[static_cast<std::size_t>(s) * ldy + j], want[j]) << "slot " << s << " " << j;
      }
    }
  }
  w.layout = cuda::WeightLayout::kGguf;  // the kernel reads Q4_0x8 only
  cuda::DeviceBuffer<float> sink(ldy * n_slots);
  EXPECT_THROW(cuda::moe_gemv_q4_0x8_glu(FfnActivation::kSiluGlu, w, dids.data(), n_slots,
                                         dx.data(), sink.data(), ldy, nullptr),
               Error);
}

// The expert down form of the Q4_0x8 GEMV (each slot its own x) against float64 sums, on widened
// rows (704 columns: two groups and a partial one; 96: a partial group only) and on whole groups
// (768), with ids out of range (zeros) and, for 704 columns, more slots than one launch's shared
// memory holds the planes of.
TEST(CudaGemv, Q4_0x8ExpertDownMatchesExactSum) {
  SKIP_WITHOUT_GPU();
  const int n_experts = 5;
  const std::size_t rows = 90, ldy = rows + 3;
  for (const std::size_t cols : {std::size_t{704}, std::size_t{96}, std::size_t{768}}) {
    SCOPED_TRACE(testing::Message() << cols << " columns");
    const Quantized q = make_weights(GgmlType::Q4_0, rows * n_experts, cols, 61);
    const WidenedExperts experts = widened_q4_0x8_experts(q, n_experts, rows, cols);
    const cuda::ExpertStack& w = experts.stack;
    std::vector<int> ids = {4, 0, 2, -1, 3, 7, 1, 0};
    if (cols == 704) {
      std::mt19937 rng(62);
      while (ids.size() < 80) ids.push_back(static_cast<int>(rng() % (n_experts + 1)));
    }
    const int n_slots = static_cast<int>(ids.size());
    const std::vector<float> x = random_floats(cols * ids.size(), 63, 2.0f);
    cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, got(ldy * ids.size());
    got.fill_bytes(0xff);
    cuda::moe_gemv_q4_0x8(w, dids.data(), n_slots, dx.data(), got.data(), ldy, nullptr);
    const std::vector<float> g = got.to_host();
    double worst = 0.0;
    for (int s = 0; s < n_slots; ++s) {
      const int e = ids[static_cast<std::size_t>(s)];
      const std::span<const float> xs(x.data() + static_cast<std::size_t>(s) * cols, cols);
      for (std::size_t r = 0; r < rows; ++r) {
        const double v = g[static_cast<std::size_t>(s) * ldy + r];
        if (e < 0 || e >= n_experts) {
          ASSERT_EQ(v, 0.0) << "slot " << s << " row " << r;
          continue;
        }
        const ExactDot want =
            exact_dot(q.dequantized.data() + (static_cast<std::size_t>(e) * rows + r) * cols, xs);
        ASSERT_TRUE(std::isfinite(v)) << "slot " << s << " row " << r;
        worst = std::max(worst, std::fabs(v - want.value) / want.magnitude);
      }
    }
    EXPECT_LT(worst, kGemvTolerance);
  }
}

// The prompt GEMM reads Q4_0x8 weights with its own decoder: bit for bit the GGUF-layout result.
TEST(CudaGemm, Q4_0x8EqualsGgufLayout) {
  SKIP_WITHOUT_GPU();
  const std::size_t rows = 150, cols = 2816;
  const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, 11);
  cuda::DeviceBuffer<std::byte> gguf{std::span<const std::byte>(q.bytes)};
  cuda::DeviceBuffer<std::byte> regrouped{std::span<const std::byte>(q.bytes)};
  cuda::repack_q4_0x8(regrouped.data(), rows, cols);
  for (const int n_tokens : {16, 45, 130}) {
    SCOPED_TRACE(testing::Message() << n_tokens << " tokens");
    const std::vector<float> x = random_floats(cols * n_tokens, 12 + n_tokens);
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    cuda::DeviceBuffer<float> want(rows * n_tokens), got(rows * n_tokens);
    cuda::gemm(GgmlType::Q4_0, gguf.data(), rows, cols, dx.data(), want.data(), rows, n_tokens);
    cuda::gemm(GgmlType::Q4_0, regrouped.data(), rows, cols, dx.data(), got.data(), rows, n_tokens,
               nullptr, cuda::WeightLayout::kQ4_0x8);
    EXPECT_EQ(got.to_host(), want.to_host());
  }
}

// The normed GEMVs (q4_0x8.h, ResidualNormInput) against the kernels they stand in for: the
// residual update and norm (add_and_norm, residual_scale_norm) and then the plain product of
// their h. Three forms of the update (Llama: x + o; Gemma: x + norm(o) * w, times a scale; the
// first layer: norm(x) only), every task shape on one width, the widths of the real models and
// the largest taken; the gated form; x' as CTA 0 stores it.
TEST(CudaGemv, Q4_0x8NormedInputEqualsNormThenProduct) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  const float eps = 1e-6f;
  std::uint32_t seed = 9100;
  struct Form {
    const char* name;
    bool o, o_norm;
    float scale;
  };
  const Form forms[] = {{"x + o", true, false, 1.0f},
                        {"(x + norm(o) w) s", true, true, 0.75f},
                        {"x alone", false, false, 1.0f}};
  for (const std::size_t cols :
       {std::size_t{256}, std::size_t{4096}, std::size_t{5376}, std::size_t{8192}}) {
    const std::size_t rows = 300;  // 10 CTAs of two-row tasks: CTA 0 is not the only one
    const Quantized q = make_weights(GgmlType::Q4_0, rows, cols, ++seed);
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    cuda::repack_q4_0x8(dw.data(), rows, cols);
    const std::vector<float> x = random_floats(cols, ++seed, 3.0f);
    const std::vector<float> o = random_floats(cols, ++seed, 20.0f);
    std::vector<float> o_w = random_floats(cols, ++seed), n_w = random_floats(cols, ++seed);
    for (float& v : o_w) v += 1.0f;
    for (float& v : n_w) v += 1.0f;
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, d_o{std::span<const float>(o)},
        d_ow{std::span<const float>(o_w)}, d_nw{std::span<const float>(n_w)};
    for (const Form& f : forms) {
      for (const int task_rows :
           cols == 5376 ? std::vector<int>{0, 1, 2, 4} : std::vector<int>{0}) {
        cuda::set_gemv_q4_0x8_rows(task_rows);
        SCOPED_TRACE(testing::Message()
                     << cols << " columns, " << f.name << ", rows " << task_rows);
        // The reference: the norm kernel on a copy of x, then the product of its h.
        cuda::DeviceBuffer<float> x_ref{std::span<const float>(x)}, h(cols), want(rows),
            want_glu(rows / 2);
        const float* op = f.o ? d_o.data() : nullptr;
        const float* owp = f.o_norm ? d_ow.data() : nullptr;
        if (f.scale != 1.0f) {
          cuda::residual_scale_norm(x_ref.data(), op, owp, f.scale, d_nw.data(), h.data(), 1, cols,
                                    eps, nullptr);
        } else {
          cuda::add_and_norm(x_ref.data(), op, owp, d_nw.data(), h.data(), 1, cols, eps, nullptr);
        }
        cuda::gemv_q4_0x8(dw.data(), rows, cols, h.data(), want.data(), rows, 1);
        cuda::gemv_q4_0x8_glu(FfnActivation::kGeluTanhGlu, dw.data(), rows, cols, h.data(),
                              want_glu.data(), rows / 2, 1);

        cuda::DeviceBuffer<float> x_out(cols), got(rows), got_glu(rows / 2);
        x_out.fill_bytes(0xff);
        got.fill_bytes(0xff);
        got_glu.fill_bytes(0xff);
        cuda::ResidualNormInput in{
            dx.data(), op, owp, f.scale, d_nw.data(), f.o ? x_out.data() : nullptr, eps};
        cuda::gemv_q4_0x8_normed(dw.data(), rows, cols, in, got.data());
        cuda::gemv_q4_0x8_glu_normed(FfnActivation::kGeluTanhGlu, dw.data(), rows, cols, in,
                                     got_glu.data());
        auto expect_close = [](const std::vector<float>& a, const std::vector<float>& b,
                               const char* what) {
          double scale = 0.0;
          for (const float v : b) scale = std::max(scale, std::fabs(static_cast<double>(v)));
          ASSERT_GT(scale, 0.0) << what;
          for (std::size_t i = 0; i < a.size(); ++i) {
            ASSERT_TRUE(std::isfinite(a[i])) << what << " " << i;
            ASSERT_NEAR(a[i], b[i], 1e-5 * scale) << what << " " << i;
          }
        };
        expect_close(got.to_host(), want.to_host(), "product");
        expect_close(got_glu.to_host(), want_glu.to_host(), "gated product");
        EXPECT_EQ(dx.to_host(), x) << "x itself is only read";
        if (f.o) {  // x' as the norm kernel leaves it (exactly, where o takes no norm)
          const std::vector<float> a = x_out.to_host(), b = x_ref.to_host();
          for (std::size_t i = 0; i < cols; ++i) {
            if (f.o_norm) {
              ASSERT_NEAR(a[i], b[i], 1e-6 * (1.0 + std::fabs(b[i]))) << i;
            } else {
              ASSERT_EQ(a[i], b[i]) << i;
            }
          }
        }
      }
    }
  }
  // Inputs it does not take: too wide, x' over x, no norm weights, misaligned.
  cuda::DeviceBuffer<std::byte> w(600 * 1024);
  cuda::DeviceBuffer<float> x(8448), y(64);
  w.fill_bytes(0);
  x.fill_bytes(0);
  const cuda::ResidualNormInput ok{x.data(), nullptr, nullptr, 1.0f, x.data(), nullptr, eps};
  EXPECT_NO_THROW(cuda::gemv_q4_0x8_normed(w.data(), 4, 256, ok, y.data()));
  EXPECT_THROW(cuda::gemv_q4_0x8_normed(w.data(), 4, 8448, ok, y.data()), Error);
  EXPECT_FALSE(cuda::gemv_q4_0x8_normed_applies(8448));
  EXPECT_FALSE(cuda::gemv_q4_0x8_normed_applies(640));
  auto bad = ok;
  bad.x_out = x.data();
  EXPECT_THROW(cuda::gemv_q4_0x8_normed(w.data(), 4, 256, bad, y.data()), Error);
  bad = ok;
  bad.norm = nullptr;
  EXPECT_THROW(cuda::gemv_q4_0x8_normed(w.data(), 4, 256, bad, y.data()), Error);
  bad = ok;
  bad.o = x.data() + 1;
  EXPECT_THROW(
      cuda::gemv_q4_0x8_glu_normed(FfnActivation::kSiluGlu, w.data(), 4, 256, bad, y.data()),
      Error);
  cuda::synchronize_device();
}

TEST(CudaGemv, Q4_0x8RejectsBadShapes) {
  SKIP_WITHOUT_GPU();
  cuda::DeviceBuffer<std::byte> w(4096);
  cuda::DeviceBuffer<float> x(1024), y(16);
  EXPECT_THROW(cuda::repack_q4_0x8(w.data(), 4, 640), Error);
  EXPECT_THROW(cuda::gemv_q4_0x8(w.data(), 4, 640, x.data(), y.data(), 4, 1), Error);
  EXPECT_THROW(cuda::gemv_q4_0x8(w.data(), 4, 256, x.data(), y.data(), 3, 1), Error);
  EXPECT_THROW(cuda::gemv_q4_0x8(w.data() + 2, 4, 256, x.data(), y.data(), 4, 1), Error);
  EXPECT_THROW(cuda::gemv_q4_0x8(w.data(), 4, 256, x.data(), y.data(), 4, 0), Error);
  EXPECT_FALSE(cuda::q4_0x8_applies(GgmlType::Q4_0, 640));
  EXPECT_FALSE(cuda::q4_0x8_applies(GgmlType::Q8_0, 4096));
  // Widened rows: any multiple of 32 columns.
  cuda::DeviceBuffer<std::uint8_t> scratch;
  EXPECT_THROW(cuda::repack_q4_0x8_widening(w.data(), 4, 100, scratch), Error);
  EXPECT_TRUE(cuda::q4_0x8_widened_applies(GgmlType::Q4_0, 640));
  EXPECT_FALSE(cuda::q4_0x8_widened_applies(GgmlType::Q4_0, 100));
}

TEST(CudaGemv, Bf16Activations) {
  SKIP_WITHOUT_GPU();
  const std::size_t rows = 33, cols = 5376;
  for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K}) {
    const Quantized q = make_weights(type, rows, cols, 5);
    std::vector<float> x = random_floats(cols, 6);
    std::vector<std::uint16_t> xb(cols);
    for (std::size_t i = 0; i < cols; ++i) {
      xb[i] = f32_to_bf16(x[i]);
      x[i] = bf16_to_f32(xb[i]);  // the reference sees the rounded activations
    }
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    cuda::DeviceBuffer<std::uint16_t> dx{std::span<const std::uint16_t>(xb)};
    cuda::DeviceBuffer<float> dy(rows);
    dy.fill_bytes(0xff);
    cuda::gemv_bf16_x(type, dw.data(), rows, cols, dx.data(), dy.data());
    EXPECT_LT(gemv_error(type, q, rows, cols, x, dy.to_host(), 1).vs_exact, kGemvTolerance)
        << type_name(type);
  }
}

TEST(CudaGemv, RejectsBadShapesAndTypes) {
  SKIP_WITHOUT_GPU();
  cuda::DeviceBuffer<std::byte> w(4096);
  cuda::DeviceBuffer<float> x(1024), y(16);
  EXPECT_THROW(cuda::gemv(GgmlType::Q4_K, w.data(), 4, 640, x.data(), y.data()), Error);
  EXPECT_THROW(cuda::gemv(GgmlType::Q4_0, w.data(), 4, 48, x.data(), y.data()), Error);
  EXPECT_THROW(cuda::gemv(GgmlType::Q2_K, w.data(), 4, 256, x.data(), y.data()), Error);
  EXPECT_THROW(cuda::gemv(GgmlType::Q4_K, w.data() + 2, 4, 256, x.data(), y.data()), Error);
  EXPECT_THROW(cuda::gemv(GgmlType::Q4_0, w.data(), 4, 64, x.data(), y.data(), 0), Error);
  EXPECT_FALSE(cuda::gemv_supported(GgmlType::Q2_K));
}

TEST(CudaDequantize, MatchesCpuDecoder) {
  SKIP_WITHOUT_GPU();
  for (const GgmlType type : kGemvTypes) {
    const std::size_t rows = 9, cols = 1024;
    const Quantized q = make_weights(type, rows, cols, 11);
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(q.bytes)};
    cuda::DeviceBuffer<float> out(4 * cols);
    out.fill_bytes(0xff);
    cuda::dequantize_rows(type, dw.data(), 3, 4, cols, out.data());
    const std::vector<float> got = out.to_host();
    float max_abs = 0.0f, max_err = 0.0f;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const float want = q.dequantized[3 * cols + i];
      max_abs = std::max(max_abs, std::fabs(want));
      max_err = std::max(max_err, std::isfinite(got[i]) ? std::fabs(got[i] - want) : INFINITY);
    }
    // K-quants: the GPU fuses scale * q - offset into one FMA, the CPU rounds twice.
    EXPECT_LE(max_err, 1e-6f * max_abs) << type_name(type);
  }
}

// ---- element-wise / row-wise ops ------------------------------------------------------------

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::isfinite(a[i]) ? std::fabs(a[i] - b[i]) : INFINITY);
  }
  return m;
}

TEST(CudaOps, RmsNormMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const std::size_t rows = 3, n = 2304;
  std::vector<float> x = random_floats(rows * n, 21, 3.0f);
  const std::vector<float> w = random_floats(n, 22);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, dw{std::span<const float>(w)};
  cuda::rms_norm(dx.data(), dw.data(), dx.data(), rows, n, 1e-6f);  // in place
  cpu::rms_norm_rows(x, w, 1e-6f);
  EXPECT_LT(max_abs_diff(dx.to_host(), x), 1e-5f);
}

TEST(CudaOps, RopeMatchesCpuBothStyles) {
  SKIP_WITHOUT_GPU();
  const std::size_t n_tokens = 5;
  const int n_heads = 3, head_dim = 128, pos0 = 1000;
  for (const RopeStyle style : {RopeStyle::kAdjacentPairs, RopeStyle::kHalves}) {
    for (const int n_rot : {128, 64}) {
      for (const bool factors : {false, true}) {
        RopeParams params;
        params.freq_base = 500000.0;
        params.freq_scale = 0.25;
        std::vector<float> ff;
        if (factors) {  // llama-3 style divisors: most 1, some larger
          ff.assign(static_cast<std::size_t>(n_rot / 2), 1.0f);
          ff[1] = 4.0f;
          ff[7] = 8.0f;
        }
        std::vector<float> x = random_floats(n_tokens * n_heads * head_dim, 31);
        cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> dff(ff.size());
        if (factors) dff.upload(ff);
        cuda::rope(dx.data(), n_tokens, n_heads, head_dim, n_rot, style, pos0, params,
                   factors ? dff.data() : nullptr);
        std::vector<float> cos(n_tokens * n_rot / 2), sin(cos.size());
        cpu::rope_tables(pos0, n_tokens, n_rot, params, ff, cos, sin);
        for (std::size_t t = 0; t < n_tokens; ++t) {
          for (int h = 0; h < n_heads; ++h) {
            cpu::apply_rope(std::span(x).subspan((t * n_heads + h) * head_dim, head_dim), n_rot,
                            style, std::span(cos).subspan(t * n_rot / 2, n_rot / 2),
                            std::span(sin).subspan(t * n_rot / 2, n_rot / 2));
          }
        }
        EXPECT_LT(max_abs_diff(dx.to_host(), x), 1e-5f)
            << "style " << static_cast<int>(style) << " n_rot " << n_rot << " factors " << factors;
      }
    }
  }
}

TEST(CudaOps, GatedActivationsSoftmaxSoftcapMatchCpu) {
  SKIP_WITHOUT_GPU();
  const std::size_t n = 10007;
  for (const FfnActivation act : {FfnActivation::kSiluGlu, FfnActivation::kGeluTanhGlu}) {
    std::vector<float> gate = random_floats(n, 41, 3.0f);
    const std::vector<float> up = random_floats(n, 42);
    cuda::DeviceBuffer<float> dg{std::span<const float>(gate)}, du{std::span<const float>(up)};
    cuda::glu(act, dg.data(), du.data(), n);
    cpu::glu(act, gate, up);
    EXPECT_LT(max_abs_diff(dg.to_host(), gate), 1e-5f) << static_cast<int>(act);
  }
  // Softmax after soft-capping, on vocabulary-sized rows, against a float64 reference. (Not
  // against cpu::softmax: its sequential F32 sum of 262144 positive terms drops the small ones,
  // about 1e-4 relative on the device run, larger than the GPU's tree-sum error.)
  const std::size_t rows = 4, cols = 262144;
  const float cap = 30.0f;
  const std::vector<float> logits = random_floats(rows * cols, 43, 8.0f);
  cuda::DeviceBuffer<float> dl{std::span<const float>(logits)};
  cuda::softcap(dl.data(), logits.size(), cap);
  cuda::softmax_rows(dl.data(), rows, cols);
  const std::vector<float> got = dl.to_host();
  double max_rel = 0.0;
  for (std::size_t r = 0; r < rows; ++r) {
    std::vector<double> p(cols);
    double max = -INFINITY, sum = 0.0;
    for (std::size_t i = 0; i < cols; ++i) {
      p[i] = cap * std::tanh(static_cast<double>(logits[r * cols + i]) / cap);
      max = std::max(max, p[i]);
    }
    for (double& v : p) sum += (v = std::exp(v - max));
    for (std::size_t i = 0; i < cols; ++i) {
      const double want = p[i] / sum, g = got[r * cols + i];
      max_rel = std::max(max_rel, std::isfinite(g) ? std::fabs(g - want) / want : INFINITY);
    }
  }
  // tanhf (2 ulp) on capped logits up to 30 moves exp's argument by ~4e-6; expf adds 2 ulp; the
  // per-thread sums of 512 terms and the tree add less than 1e-5.
  EXPECT_LT(max_rel, 1e-4);
}

// Checks ids and weights of a routing (moe_route's contract) against float64 logits: the k most
// probable experts (ties: lower index), listed in increasing expert index, weights p / sum(chosen
// p) * expert_scale, within rel (relative) + 1e-7.
void expect_routing(const std::vector<double>& logits, int n_tokens, int n_expert, int k,
                    const std::vector<float>& scale, const std::vector<int>& ids,
                    const std::vector<float>& weights, double rel) {
  for (int t = 0; t < n_tokens; ++t) {
    const double* l = logits.data() + static_cast<std::size_t>(t) * n_expert;
    std::vector<int> order;
    double max = -INFINITY;
    for (int e = 0; e < n_expert; ++e) {
      order.push_back(e);
      max = std::max(max, l[e]);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
    order.resize(static_cast<std::size_t>(k));
    double chosen_sum = 0.0;
    for (const int e : order) chosen_sum += std::exp(l[e] - max);
    std::sort(order.begin(), order.end());
    for (int j = 0; j < k; ++j) {
      const std::size_t slot = static_cast<std::size_t>(t) * k + j;
      const int e = order[static_cast<std::size_t>(j)];
      ASSERT_EQ(ids[slot], e) << "token " << t << " slot " << j;
      const double want = std::exp(l[e] - max) / chosen_sum * scale[e];
      EXPECT_NEAR(weights[slot], want, rel * std::fabs(want) + 1e-7) << "token " << t;
    }
  }
}

// moe_route against a float64 reference. Cases: 128 experts top 8 (Gemma 4 26B-A4B), more slots
// than a warp has lanes (64 of 96), 4096 experts, all experts chosen; each with a three-way tie
// for the top.
TEST(CudaMoe, RouteMatchesReference) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int n_tokens, n_expert, k;
  };
  for (const Case cs : {Case{3, 128, 8}, Case{2, 96, 64}, Case{2, 4096, 8}, Case{1, 7, 7}}) {
    SCOPED_TRACE(testing::Message() << cs.n_expert << " experts, top " << cs.k);
    std::vector<float> logits = random_floats(static_cast<std::size_t>(cs.n_tokens) * cs.n_expert,
                                              static_cast<std::uint32_t>(cs.n_expert + cs.k), 3.0f);
    logits[1] = logits[5] = logits[static_cast<std::size_t>(cs.n_expert) - 1] = 10.0f;
    const std::vector<float> scale = random_floats(static_cast<std::size_t>(cs.n_expert), 5, 1.0f);
    cuda::DeviceBuffer<float> dl{std::span<const float>(logits)}, ds{std::span<const float>(scale)};
    const std::size_t slots = static_cast<std::size_t>(cs.n_tokens) * cs.k;
    cuda::DeviceBuffer<int> dids(slots);
    cuda::DeviceBuffer<float> dw(slots);
    cuda::moe_route(dl.data(), cs.n_tokens, cs.n_expert, cs.k, ds.data(), dids.data(), dw.data(),
                    nullptr);
    expect_routing(std::vector<double>(logits.begin(), logits.end()), cs.n_tokens, cs.n_expert,
                   cs.k, scale, dids.to_host(), dw.to_host(), 1e-5);
  }
}

// moe_router_route (F32 router GEMV + routing in one launch) against float64 logits, twice in a
// row (the per-token counters must come back to zero), on the Gemma 4 26B-A4B router shape
// (128 x 2816), on shapes whose experts do not fill the last CTA, with every expert chosen, and
// with more experts than the CTA has threads (130: the warp routing instead of the ranked one).
TEST(CudaMoe, RouterAndRouteInOneLaunchMatchReference) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int n_tokens, n_expert, k, cols;
  };
  for (const Case cs : {Case{1, 128, 8, 2816}, Case{5, 130, 8, 2816}, Case{3, 7, 2, 36},
                        Case{2, 16, 16, 64}, Case{4, 32, 8, 128}}) {
    SCOPED_TRACE(testing::Message()
                 << cs.n_expert << " experts, top " << cs.k << ", " << cs.n_tokens << " tokens");
    const auto cols = static_cast<std::size_t>(cs.cols);
    std::vector<float> w = random_floats(static_cast<std::size_t>(cs.n_expert) * cols, 11, 0.05f);
    // Experts 2 and n_expert - 1 copy expert 0's row: equal logits, which both the reference
    // and the kernels order by index.
    for (const std::size_t e : {std::size_t{2}, static_cast<std::size_t>(cs.n_expert - 1)}) {
      std::copy_n(w.begin(), cols, w.begin() + static_cast<std::ptrdiff_t>(e * cols));
    }
    const std::vector<float> x =
        random_floats(static_cast<std::size_t>(cs.n_tokens) * cols, 12, 1.0f);
    const std::vector<float> scale = random_floats(static_cast<std::size_t>(cs.n_expert), 13, 1.0f);
    std::vector<double> logits(static_cast<std::size_t>(cs.n_tokens) * cs.n_expert);
    for (int t = 0; t < cs.n_tokens; ++t) {
      for (int e = 0; e < cs.n_expert; ++e) {
        double acc = 0.0;
        for (std::size_t c = 0; c < cols; ++c) {
          acc += static_cast<double>(w[static_cast<std::size_t>(e) * cols + c]) *
                 x[static_cast<std::size_t>(t) * cols + c];
        }
        logits[static_cast<std::size_t>(t) * cs.n_expert + e] = acc;
      }
    }
    cuda::DeviceBuffer<float> dwt{std::span<const float>(w)}, dx{std::span<const float>(x)};
    cuda::DeviceBuffer<float> ds{std::span<const float>(scale)};
    cuda::DeviceBuffer<float> dl(logits.size());
    const std::size_t slots = static_cast<std::size_t>(cs.n_tokens) * cs.k;
    cuda::DeviceBuffer<int> dids(slots);
    cuda::DeviceBuffer<float> dw(slots);
    cuda::DeviceBuffer<unsigned> counters(static_cast<std::size_t>(cs.n_tokens));
    counters.fill_bytes(0);
    for (int call = 0; call < 2; ++call) {
      dids.fill_bytes(0xff);
      cuda::moe_router_route(dwt.data(), cs.cols, dx.data(), cs.n_tokens, cs.n_expert, cs.k,
                             ds.data(), dl.data(), dids.data(), dw.data(), counters.data(),
                             nullptr);
      // Logits: F32 dot products of <= 2816 terms, checked against the float64 ones.
      const std::vector<float> got = dl.to_host();
      for (std::size_t i = 0; i < logits.size(); ++i) {
        ASSERT_NEAR(got[i], logits[i], 1e-5 * (std::fabs(logits[i]) + 1.0)) << "logit " << i;
      }
      expect_routing(logits, cs.n_tokens, cs.n_expert, cs.k, scale, dids.to_host(), dw.to_host(),
                     5e-5);
      for (const unsigned c : counters.to_host()) EXPECT_EQ(c, 0u) << "call " << call;
    }
  }
}

// A token whose logits are not all finite (a NaN in its router input) gets no experts: every
// slot id -1 with weight 0, as route_token leaves it (the ranked routing hands such tokens to
// it). The other token of the same launch routes by rank as usual.
TEST(CudaMoe, RouterAndRouteGiveNoExpertsForNonFiniteLogits) {
  SKIP_WITHOUT_GPU();
  constexpr int kTokens = 2, kExperts = 128, kTop = 8;
  constexpr std::size_t kCols = 2816;
  const std::vector<float> w = random_floats(kExperts * kCols, 31, 0.05f);
  std::vector<float> x = random_floats(kTokens * kCols, 32, 1.0f);
  x[kCols + 100] = std::numeric_limits<float>::quiet_NaN();  // token 1
  const std::vector<float> scale = random_floats(kExperts, 33, 1.0f);
  std::vector<double> logits(kExperts);  // token 0's
  for (std::size_t e = 0; e < kExperts; ++e) {
    double acc = 0.0;
    for (std::size_t c = 0; c < kCols; ++c) {
      acc += static_cast<double>(w[e * kCols + c]) * x[c];
    }
    logits[e] = acc;
  }
  cuda::DeviceBuffer<float> dwt{std::span<const float>(w)}, dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> ds{std::span<const float>(scale)};
  cuda::DeviceBuffer<float> dl(kTokens * kExperts), dw(kTokens * kTop);
  cuda::DeviceBuffer<int> dids(kTokens * kTop);
  cuda::DeviceBuffer<unsigned> counters(kTokens);
  counters.fill_bytes(0);
  dids.fill_bytes(0x7f);
  cuda::moe_router_route(dwt.data(), static_cast<int>(kCols), dx.data(), kTokens, kExperts, kTop,
                         ds.data(), dl.data(), dids.data(), dw.data(), counters.data(), nullptr);
  const std::vector<int> ids = dids.to_host();
  const std::vector<float> weights = dw.to_host();
  expect_routing(logits, 1, kExperts, kTop, scale,
                 std::vector<int>(ids.begin(), ids.begin() + kTop),
                 std::vector<float>(weights.begin(), weights.begin() + kTop), 5e-5);
  for (int j = kTop; j < 2 * kTop; ++j) {
    EXPECT_EQ(ids[static_cast<std::size_t>(j)], -1) << "slot " << j;
    EXPECT_EQ(weights[static_cast<std::size_t>(j)], 0.0f) << "slot " << j;
  }
  for (const unsigned c : counters.to_host()) EXPECT_EQ(c, 0u);
}

// moe_combine with the residual update (one kernel) against a float64 reference of
// moe_combine then residual_scale_norm: the Gemma 4 26B-A4B row (2816, k = 8), two tokens, with
// and without the output norm and the next norm.
TEST(CudaMoe, CombineWithResidualUpdateMatchesReference) {
  SKIP_WITHOUT_GPU();
  constexpr int kRows = 2, kSlots = 8;
  constexpr std::size_t kN = 2816;
  constexpr float kEps = 1e-6f, kScale = 0.75f;
  const std::vector<float> o = random_floats(kRows * kN, 21, 2.0f);
  const std::vector<float> y = random_floats(kRows * kSlots * kN, 22, 3.0f);
  const std::vector<float> slot_w = random_floats(kRows * kSlots, 23, 1.0f);
  const std::vector<float> wd = random_floats(kN, 24, 1.0f), we = random_floats(kN, 25, 1.0f);
  const std::vector<float> wo = random_floats(kN, 26, 1.0f), wn = random_floats(kN, 27, 1.0f);
  const std::vector<float> x = random_floats(kRows * kN, 28, 10.0f);
  const auto rms_scaled = [](std::vector<double> v, const std::vector<float>* w) {
    double ss = 0.0;
    for (const double a : v) ss += a * a;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(v.size()) + kEps);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] *= inv * (w != nullptr ? (*w)[i] : 1.0);
    return v;
  };
  for (const bool norms : {true, false}) {
    SCOPED_TRACE(norms ? "with norms" : "without the output and next norms");
    cuda::DeviceBuffer<float> d_o{std::span<const float>(o)}, d_y{std::span<const float>(y)};
    cuda::DeviceBuffer<float> d_sw{std::span<const float>(slot_w)};
    cuda::DeviceBuffer<float> d_wd{std::span<const float>(wd)}, d_we{std::span<const float>(we)};
    cuda::DeviceBuffer<float> d_wo{std::span<const float>(wo)}, d_wn{std::span<const float>(wn)};
    cuda::DeviceBuffer<float> d_x{std::span<const float>(x)}, d_h(kRows * kN);
    d_h.fill_bytes(0);
    const cuda::ResidualNorm r{d_x.data(), norms ? d_wo.data() : nullptr, kScale,
                               norms ? d_wn.data() : nullptr, d_h.data()};
    cuda::moe_combine(d_o.data(), d_y.data(), d_sw.data(), kSlots, d_wd.data(), d_we.data(), kRows,
                      kN, kEps, nullptr, &r);
    const std::vector<float> got_x = d_x.to_host(), got_h = d_h.to_host();
    EXPECT_EQ(d_o.to_host(), o) << "o must be left as it was";
    for (int t = 0; t < kRows; ++t) {
      std::vector<double> dense(kN), experts(kN, 0.0), xr(kN);
      for (std::size_t i = 0; i < kN; ++i) {
        dense[i] = o[t * kN + i];
        for (int s = 0; s < kSlots; ++s) {
          experts[i] += static_cast<double>(slot_w[t * kSlots + s]) * y[(t * kSlots + s) * kN + i];
        }
      }
      dense = rms_scaled(dense, &wd);
      experts = rms_scaled(experts, &we);
      std::vector<double> mix(kN);
      for (std::size_t i = 0; i < kN; ++i) mix[i] = dense[i] + experts[i];
      if (norms) mix = rms_scaled(mix, &wo);
      for (std::size_t i = 0; i < kN; ++i) xr[i] = (x[t * kN + i] + mix[i]) * kScale;
      const std::vector<double> hr = rms_scaled(xr, &wn);
      // F32 rounding of sums over a 2816-wide row: relative errors of a few 1e-7 per step.
      for (std::size_t i = 0; i < kN; ++i) {
        ASSERT_NEAR(got_x[t * kN + i], xr[i], 1e-5 * (std::fabs(xr[i]) + 1.0)) << t << "," << i;
        if (norms) {
          ASSERT_NEAR(got_h[t * kN + i], hr[i], 1e-5 * (std::fabs(hr[i]) + 1.0)) << t << "," << i;
        } else {
          ASSERT_EQ(got_h[t * kN + i], 0.0f) << "h must not be written without a next norm";
        }
      }
    }
  }
}

}  // namespace
}  // namespace qforge

#else  // !QFORGE_HAVE_CUDA

TEST(CudaKernels, SkippedWithoutCudaBuild) {
  GTEST_SKIP() << "built without the CUDA backend";
}

#endif
