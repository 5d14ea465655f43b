// The expert down GEMV (moe_gemv_q4_0x8, each slot its own x) on GGUF Q8_0, Q5_0 and Q5_1 stacks
// as stored, with rows at any 4-byte boundary (q4_0x8.h, PlaneWeights::kQ8_0Rows / kQ5_0Rows /
// kQ5_1Rows): llama-quantize's fallbacks for K-quant down projections whose rows are not whole
// 256-column super-blocks (Gemma 4 26B-A4B: 704 columns). Checked against float64 sums of the
// weights as the CPU decoder reads them (quant/blocks.h), on bytes of every code and high bit.
// Skips without a GPU.
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

#include "core/error.h"
#include "core/half.h"
#include "cuda_test_util.h"
#include "q4_0x8_test_util.h"
#include "quant/blocks.h"
#include "quant/ggml_type.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/q4_0x8.h"

namespace qforge {
namespace {

constexpr double kGemvTolerance = 1e-5;  // the F32 GEMV's bound, of sum |w x|

// n_experts x rows x cols weights of `type` (Q8_0, Q5_0 or Q5_1) from random bytes, so that every
// code and fifth bit occurs (Q8_0 codes of -128 too), with the f16 scales (and Q5_1's f16 min) set
// to finite values of either sign, about 4e-4 (Q8_0) or 3e-3 (Q5_0 / Q5_1) in magnitude.
Quantized arbitrary_experts(GgmlType type, std::size_t rows, std::size_t cols, std::uint32_t seed) {
  return arbitrary_gguf_weights(type, rows, cols, seed, type == GgmlType::Q5_1 ? 2 : 1,
                                type == GgmlType::Q8_0 ? 4e-4f : 3e-3f);
}

// A stack of n_experts experts of rows x cols on the device, in GGUF layout.
struct GgufExperts {
  cuda::DeviceBuffer<std::byte> bytes;
  cuda::ExpertStack stack;
};

GgufExperts upload_experts(GgmlType type, const Quantized& q, int n_experts, std::size_t rows,
                           std::size_t cols) {
  GgufExperts e{cuda::DeviceBuffer<std::byte>{std::span<const std::byte>(q.bytes)}, {}};
  e.stack.type = type;
  e.stack.data = e.bytes.data();
  e.stack.rows = rows;
  e.stack.cols = cols;
  e.stack.expert_bytes = rows * row_bytes(type, cols);
  e.stack.n_experts = n_experts;
  e.stack.layout = cuda::WeightLayout::kGguf;
  return e;
}

// The slots' outputs (stride ldy) against float64 sums: zeros for ids out of range, and the
// largest |got - exact| / sum |w x| over the others.
double expert_down_error(const Quantized& q, std::size_t rows, std::size_t cols,
                         const std::vector<int>& ids, int n_experts, const std::vector<float>& x,
                         const std::vector<float>& got, std::size_t ldy) {
  double worst = 0.0;
  for (std::size_t s = 0; s < ids.size(); ++s) {
    const int e = ids[s];
    const std::span<const float> xs(x.data() + s * cols, cols);
    for (std::size_t r = 0; r < rows; ++r) {
      const double v = got[s * ldy + r];
      if (e < 0 || e >= n_experts) {
        EXPECT_EQ(v, 0.0) << "slot " << s << " row " << r;
        continue;
      }
      if (!std::isfinite(v)) return INFINITY;
      const ExactDot want =
          exact_dot(q.dequantized.data() + (static_cast<std::size_t>(e) * rows + r) * cols, xs);
      worst = std::max(worst, std::fabs(v - want.value) / std::max(want.magnitude, 1e-30));
    }
  }
  return worst;
}

std::vector<float> run_down(const cuda::ExpertStack& w, const std::vector<int>& ids,
                            const std::vector<float>& x, std::size_t ldy) {
  cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, dy(ldy * ids.size());
  dy.fill_bytes(0xff);  // NaN: an unwritten output fails the check
  cuda::moe_gemv_q4_0x8(w, dids.data(), static_cast<int>(ids.size()), dx.data(), dy.data(), ldy,
                        nullptr);
  return dy.to_host();
}

class CudaExpertDownForms : public ::testing::TestWithParam<GgmlType> {};

// Rows of 704 columns (Gemma 4 26B-A4B: 22 blocks, row starts 4 / 8 / 12 bytes past a 16-byte
// boundary for Q8_0 and Q5_0), 96 (a partial step only), 768 and 2112 (several steps, Q8_0's
// last one partial); ids out of range give zeros; for 704 columns more slots than one launch's
// shared memory holds the planes of. Bound: the F32 GEMV's 1e-5 of sum |w x|.
TEST_P(CudaExpertDownForms, MatchesExactSum) {
  SKIP_WITHOUT_GPU();
  const GgmlType type = GetParam();
  const int n_experts = 5;
  const std::size_t rows = 96, ldy = rows + 3;
  std::uint32_t seed = 500;
  for (const std::size_t cols :
       {std::size_t{704}, std::size_t{96}, std::size_t{768}, std::size_t{2112}}) {
    SCOPED_TRACE(testing::Message() << type_name(type) << ", " << cols << " columns");
    const Quantized q = arbitrary_experts(type, rows * n_experts, cols, ++seed);
    const GgufExperts experts = upload_experts(type, q, n_experts, rows, cols);
    ASSERT_TRUE(cuda::expert_down_plane_weights(experts.stack).has_value());
    std::vector<int> ids = {4, 0, 2, -1, 3, 7, 1, 0};
    if (cols == 704) {
      std::mt19937 rng(++seed);
      while (ids.size() < 80) ids.push_back(static_cast<int>(rng() % (n_experts + 1)));
    }
    const std::vector<float> x = random_floats(cols * ids.size(), ++seed, 2.0f);
    const std::vector<float> got = run_down(experts.stack, ids, x, ldy);
    EXPECT_LT(expert_down_error(q, rows, cols, ids, n_experts, x, got, ldy), kGemvTolerance);
  }
}

// Bulk copies (one per row and step, from the 16-byte boundary below the row) and cp.async (16
// bytes per thread) feed the same arithmetic: bit-identical results.
TEST_P(CudaExpertDownForms, BulkCopiesEqualCpAsync) {
  SKIP_WITHOUT_GPU();
  const Q4_0x8Choices reset;
  const GgmlType type = GetParam();
  const int n_experts = 4;
  const std::size_t rows = 96;
  for (const std::size_t cols : {std::size_t{704}, std::size_t{2112}}) {
    SCOPED_TRACE(testing::Message() << type_name(type) << ", " << cols << " columns");
    const Quantized q = arbitrary_experts(type, rows * n_experts, cols, 600);
    const GgufExperts experts = upload_experts(type, q, n_experts, rows, cols);
    const std::vector<int> ids = {2, 0, 3, 1, 3, 2, 0, 1};
    cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
    const std::vector<float> x = random_floats(cols * ids.size(), 601);
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    expect_bulk_equals_cp_async(
        [&](float* y) {
          cuda::moe_gemv_q4_0x8(experts.stack, dids.data(), static_cast<int>(ids.size()), dx.data(),
                                y, rows, nullptr);
        },
        rows * ids.size());
  }
}

// The opt-in int8 x (plane 0 alone, DecodeX::kInt8) stays within int8 rounding of the exact sums,
// and the default takes all three planes again afterwards.
TEST_P(CudaExpertDownForms, Int8XStaysClose) {
  SKIP_WITHOUT_GPU();
  const GgmlType type = GetParam();
  const int n_experts = 3;
  const std::size_t rows = 96, cols = 704;
  const Quantized q = arbitrary_experts(type, rows * n_experts, cols, 700);
  const GgufExperts experts = upload_experts(type, q, n_experts, rows, cols);
  const std::vector<int> ids = {1, 0, 2, 2};
  const std::vector<float> x = random_floats(cols * ids.size(), 701);
  const cuda::DecodeX before = cuda::decode_x();
  cuda::set_decode_x(cuda::DecodeX::kInt8);
  const std::vector<float> int8 = run_down(experts.stack, ids, x, rows);
  cuda::set_decode_x(before);
  const double err = expert_down_error(q, rows, cols, ids, n_experts, x, int8, rows);
  EXPECT_LT(err, 1e-2);
  EXPECT_GT(err, kGemvTolerance);  // it did take plane 0 alone
  const std::vector<float> exact = run_down(experts.stack, ids, x, rows);
  EXPECT_LT(expert_down_error(q, rows, cols, ids, n_experts, x, exact, rows), kGemvTolerance);
}

// Stacks whose rows cannot be found from their index alone (an expert stride that is not a
// multiple of 16 bytes) are not taken, and the GEMV refuses them with a message.
TEST_P(CudaExpertDownForms, RefusesUnalignedExpertStrides) {
  SKIP_WITHOUT_GPU();
  const GgmlType type = GetParam();
  const std::size_t rows = 7, cols = 96;  // experts of 7 x 102 / 66 / 72 bytes
  const Quantized q = arbitrary_experts(type, rows * 2, cols, 800);
  GgufExperts experts = upload_experts(type, q, 2, rows, cols);
  ASSERT_NE(experts.stack.expert_bytes % 16, 0u);
  EXPECT_FALSE(cuda::expert_down_plane_weights(experts.stack).has_value());
  const std::vector<int> ids = {1, 0};
  cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
  cuda::DeviceBuffer<float> dx(cols * 2), dy(rows * 2);
  EXPECT_THROW(
      cuda::moe_gemv_q4_0x8(experts.stack, dids.data(), 2, dx.data(), dy.data(), rows, nullptr),
      Error);
}

INSTANTIATE_TEST_SUITE_P(Gguf, CudaExpertDownForms,
                         ::testing::Values(GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q5_1),
                         [](const ::testing::TestParamInfo<GgmlType>& param_info) {
                           return std::string(type_name(param_info.param));
                         });

// Only Q8_0, Q5_0 and Q5_1 stacks in GGUF layout, 16-byte aligned, of whole 32-column blocks take
// the form (others keep the F32 GEMVs). A host-side choice: the weights are never read, so this
// runs without a GPU too.
TEST(CudaExpertDownForms, TakesOnlyItsTypes) {
  alignas(16) static const std::byte weights[64] = {};
  auto stack = [&](GgmlType type, std::size_t cols, std::size_t offset = 0) {
    cuda::ExpertStack w;
    w.type = type;
    w.data = weights + offset;
    w.rows = 96;
    w.cols = cols;
    w.expert_bytes = w.rows * row_bytes(type, cols);
    w.n_experts = 1;
    return w;
  };
  for (const GgmlType type : {GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q5_1}) {
    SCOPED_TRACE(type_name(type));
    EXPECT_TRUE(cuda::expert_down_plane_weights(stack(type, 704)).has_value());
    EXPECT_TRUE(cuda::expert_down_plane_weights(stack(type, 32)).has_value());
    EXPECT_FALSE(cuda::expert_down_plane_weights(stack(type, 704, 4)).has_value());  // base
    EXPECT_FALSE(
        cuda::expert_down_plane_weights(stack(type, cuda::kMaxQ4_0x8Cols + 32)).has_value());
    cuda::ExpertStack regrouped = stack(type, 704);
    regrouped.layout = cuda::WeightLayout::kQ4_0x8;
    EXPECT_FALSE(cuda::expert_down_plane_weights(regrouped).has_value());
  }
  EXPECT_TRUE(*cuda::expert_down_plane_weights(stack(GgmlType::Q8_0, 704)) ==
              cuda::PlaneWeights::kQ8_0Rows);
  EXPECT_TRUE(*cuda::expert_down_plane_weights(stack(GgmlType::Q5_0, 704)) ==
              cuda::PlaneWeights::kQ5_0Rows);
  EXPECT_TRUE(*cuda::expert_down_plane_weights(stack(GgmlType::Q5_1, 704)) ==
              cuda::PlaneWeights::kQ5_1Rows);
  for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K,
                              GgmlType::F16, GgmlType::Q4_1}) {
    SCOPED_TRACE(type_name(type));
    EXPECT_FALSE(cuda::expert_down_plane_weights(stack(type, 768)).has_value());
  }
}

}  // namespace
}  // namespace qforge

#endif  // QFORGE_HAVE_CUDA
