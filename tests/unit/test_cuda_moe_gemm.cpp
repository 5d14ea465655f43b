// Expert-grouped MoE GEMM (runtime/cuda/moe_gemm.h) vs moe_gemv (moe.h, F32) and float64
// references built from the CPU decoder (dequantize_rows). Skips without a GPU.
//
// For every slot s with expert e = ids[s] and input row x_s = x[s / x_group]:
//  - "exact": sum_c W_e[r, c] * x_s[c] in float64. moe_gemv (F32) must be within 1e-5 of
//    sum_c |w x| (as the GEMV tests), moe_gemm within 8e-3 (BF16 keeps 8 significant bits per
//    operand: see test_cuda_gemm.cpp), and moe_gemm within 8e-3 of moe_gemv.
//  - "bf16": the same sum over bf16(w) * bf16(x), i.e. the operands the tensor cores multiply;
//    moe_gemm must be within 1e-5 of sum |bf16(w) bf16(x)| plus one BF16 step of |w x| for each
//    weight within one F32 ulp of a BF16 rounding boundary (K-quant decoding rounds differently
//    on the CPU and GPU there; see test_cuda_gemm.cpp).
// Slots whose id is outside [0, n_experts) must be exactly 0 from both kernels; entries between
// w.rows and ldy stay untouched (outputs are poisoned with NaN first); a repeated call gives the
// same bits.
//
// With QFORGE_MOE_GEMM_BENCH=1, CudaMoeGemmBench times moe_gemm vs moe_gemv at the Gemma 4
// 26B-A4B expert shapes (128 experts, top 8, 512-token chunks); it is skipped otherwise.
#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include "cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/moe_gemm.h"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/stream.h"

namespace qforge {
namespace {

// n_experts quantized matrices of rows x cols, back to back, and what they decode to.
struct Stack {
  GgmlType type;
  std::size_t rows, cols;
  int n_experts;
  std::vector<std::byte> bytes;
  std::vector<float> dequantized;
  std::size_t expert_bytes() const { return rows * row_bytes(type, cols); }
};

Stack make_stack(GgmlType type, int n_experts, std::size_t rows, std::size_t cols,
                 std::uint32_t seed) {
  Quantized q = make_weights(type, rows * static_cast<std::size_t>(n_experts), cols, seed);
  return Stack{type, rows, cols, n_experts, std::move(q.bytes), std::move(q.dequantized)};
}

cuda::ExpertStack device_view(const Stack& s, const cuda::DeviceBuffer<std::byte>& d) {
  cuda::ExpertStack w;
  w.type = s.type;
  w.data = d.data();
  w.rows = s.rows;
  w.cols = s.cols;
  w.expert_bytes = s.expert_bytes();
  w.n_experts = s.n_experts;
  return w;
}

struct Errors {
  double gemv_vs_exact = 0, gemm_vs_exact = 0, gemm_vs_gemv = 0, gemm_vs_bf16 = 0;
  std::size_t non_finite = 0, nonzero_invalid = 0, padding_touched = 0;
};

bool is_poison(float v) {
  std::uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits == 0xffffffffu;
}

Errors compare(const Stack& s, const std::vector<int>& ids, int x_group,
               const std::vector<float>& x, const std::vector<float>& gemv,
               const std::vector<float>& gemm, std::size_t ldy) {
  Errors e;
  const std::size_t rows = s.rows, cols = s.cols;
  std::vector<float> xb(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) xb[i] = round_bf16(x[i]);
  std::vector<float> wb(s.dequantized.size());
  std::vector<double> w_slack(s.dequantized.size());
  for (std::size_t i = 0; i < wb.size(); ++i) {
    wb[i] = round_bf16(s.dequantized[i]);
    w_slack[i] = boundary_slack(s.dequantized[i]);
  }
  for (std::size_t slot = 0; slot < ids.size(); ++slot) {
    const int id = ids[slot];
    const bool valid = id >= 0 && id < s.n_experts;
    const std::size_t xr = slot / static_cast<std::size_t>(x_group);
    for (std::size_t r = 0; r < ldy; ++r) {
      const float a = gemv[slot * ldy + r], b = gemm[slot * ldy + r];
      if (r >= rows) {
        e.padding_touched += !is_poison(a) + !is_poison(b);
        continue;
      }
      if (!std::isfinite(a) || !std::isfinite(b)) {
        ++e.non_finite;
        continue;
      }
      if (!valid) {
        e.nonzero_invalid += (a != 0.0f) + (b != 0.0f);
        continue;
      }
      const std::size_t w0 = (static_cast<std::size_t>(id) * rows + r) * cols;
      const float* w = s.dequantized.data() + w0;
      const float* wbr = wb.data() + w0;
      const double* slack_r = w_slack.data() + w0;
      const float* xs = x.data() + xr * cols;
      const float* xbs = xb.data() + xr * cols;
      double exact = 0, mag = 0, rounded = 0, rounded_mag = 0, slack = 0;
      for (std::size_t c = 0; c < cols; ++c) {
        const double p = static_cast<double>(w[c]) * xs[c];
        exact += p;
        mag += std::fabs(p);
        const double pb = static_cast<double>(wbr[c]) * xbs[c];
        rounded += pb;
        rounded_mag += std::fabs(pb);
        slack += slack_r[c] * std::fabs(xbs[c]);
      }
      const double m = mag > 0 ? mag : 1.0, mb = rounded_mag > 0 ? rounded_mag : 1.0;
      e.gemv_vs_exact = std::max(e.gemv_vs_exact, std::fabs(a - exact) / m);
      e.gemm_vs_exact = std::max(e.gemm_vs_exact, std::fabs(b - exact) / m);
      e.gemm_vs_gemv = std::max(e.gemm_vs_gemv, std::fabs(static_cast<double>(b) - a) / m);
      // slack is in units of the 1e-5 tolerance, hence the scaling.
      e.gemm_vs_bf16 = std::max(e.gemm_vs_bf16, std::fabs(b - rounded) / (mb + slack * 1e5));
    }
  }
  return e;
}

constexpr double kGemvTolerance = 1e-5;
constexpr double kBf16Tolerance = 1e-5;
constexpr double kExactTolerance = 8e-3;

// Top-k routing of n_tokens tokens: k distinct experts per token in increasing order (as
// moe_route writes them), drawn with weights so that some experts get many slots and some none.
std::vector<int> route(int n_tokens, int k, int n_experts, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<double> weight(static_cast<std::size_t>(n_experts));
  for (int e = 0; e < n_experts; ++e) weight[static_cast<std::size_t>(e)] = 1.0 / (1 + e % 7);
  if (n_experts > 3) weight[2] = 0;  // an unused expert
  std::vector<int> ids;
  for (int t = 0; t < n_tokens; ++t) {
    std::vector<double> w = weight;
    std::vector<int> chosen;
    for (int j = 0; j < k; ++j) {
      std::discrete_distribution<int> pick(w.begin(), w.end());
      const int e = pick(rng);
      chosen.push_back(e);
      w[static_cast<std::size_t>(e)] = 0;
    }
    std::sort(chosen.begin(), chosen.end());
    ids.insert(ids.end(), chosen.begin(), chosen.end());
  }
  return ids;
}

struct Case {
  int n_experts;
  std::size_t rows, cols;
  int n_tokens, k, x_group;  // slots = n_tokens * k; x_group 1 gives every slot its own input
  bool bad_ids;              // sprinkle ids outside [0, n_experts)
};

void run_case(GgmlType type, const Case& c, std::uint32_t seed, cuda::MoeGemmScratch& scratch) {
  const Stack s = make_stack(type, c.n_experts, c.rows, c.cols, seed);
  std::vector<int> ids = route(c.n_tokens, c.k, c.n_experts, seed + 1);
  if (c.bad_ids) {
    const int bad[] = {-1, c.n_experts, 1000, std::numeric_limits<int>::min()};
    for (std::size_t i = 0; i < ids.size(); i += 5) ids[i] = bad[(i / 5) % 4];
  }
  const int n_slots = static_cast<int>(ids.size());
  const std::size_t x_rows = static_cast<std::size_t>((n_slots - 1) / c.x_group + 1);
  const std::vector<float> x = random_floats(x_rows * c.cols, seed + 2);
  const std::size_t ldy = c.rows + 3;

  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(s.bytes)};
  cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  cuda::DeviceBuffer<float> gemv(ldy * static_cast<std::size_t>(n_slots));
  cuda::DeviceBuffer<float> gemm(gemv.size());
  gemv.fill_bytes(0xff);
  gemm.fill_bytes(0xff);
  const cuda::ExpertStack w = device_view(s, dw);
  cuda::Stream stream;
  cuda::moe_gemv(w, dids.data(), n_slots, c.x_group, dx.data(), gemv.data(), ldy, stream.get());
  cuda::moe_gemm(w, dids.data(), n_slots, c.x_group, dx.data(), gemm.data(), ldy, scratch,
                 stream.get());
  stream.synchronize();
  const std::vector<float> got = gemm.to_host();
  const Errors e = compare(s, ids, c.x_group, x, gemv.to_host(), got, ldy);
  EXPECT_EQ(e.non_finite, 0u);
  EXPECT_EQ(e.nonzero_invalid, 0u);
  EXPECT_EQ(e.padding_touched, 0u);
  EXPECT_LT(e.gemv_vs_exact, kGemvTolerance);
  EXPECT_LT(e.gemm_vs_exact, kExactTolerance);
  EXPECT_LT(e.gemm_vs_gemv, kExactTolerance);
  EXPECT_LT(e.gemm_vs_bf16, kBf16Tolerance);

  // The slots' order inside an expert's tiles varies between calls (atomics); the results may not.
  gemm.fill_bytes(0xff);
  cuda::moe_gemm(w, dids.data(), n_slots, c.x_group, dx.data(), gemm.data(), ldy, scratch,
                 stream.get());
  stream.synchronize();
  const std::vector<float> again = gemm.to_host();
  EXPECT_EQ(std::memcmp(got.data(), again.data(), got.size() * sizeof(float)), 0);
}

// Restores the default split loads when a test that turns them off ends.
struct PlainLoads {
  PlainLoads() { cuda::set_moe_gemm_split_loads(false); }
  ~PlainLoads() { cuda::set_moe_gemm_split_loads(true); }
  PlainLoads(const PlainLoads&) = delete;
  PlainLoads& operator=(const PlainLoads&) = delete;
};

// Restores the automatic token tile when a test that forces one ends (also on failure).
struct ForcedTile {
  explicit ForcedTile(int bn) { cuda::set_moe_gemm_token_tile(bn); }
  ~ForcedTile() { cuda::set_moe_gemm_token_tile(0); }
  ForcedTile(const ForcedTile&) = delete;
  ForcedTile& operator=(const ForcedTile&) = delete;
};

bool is_float(GgmlType type) {
  return type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16;
}

// Columns: one 64-column step plus a tail (32-element formats: 96; floats: 104), or 512 / 256.
std::size_t odd_cols(GgmlType type) {
  if (block_size(type) == 256) return 256;
  return is_float(type) ? 104 : 96;
}

void check_type(GgmlType type, std::uint32_t seed) {
  ASSERT_TRUE(cuda::moe_gemm_supported(type));
  const std::size_t big_cols = block_size(type) == 256 ? 512 : 320;
  // Small odd shapes with bad ids (every token tile width), and one with 200 rows
  // (two 128-row tiles), shared inputs, and experts holding more slots than a 128-token tile.
  const Case cases[] = {{5, 37, odd_cols(type), 7, 3, 3, true},
                        {6, 200, big_cols, 150, 4, 4, false},
                        {9, 70, odd_cols(type), 40, 2, 1, true}};
  cuda::MoeGemmScratch scratch = cuda::make_moe_gemm_scratch(600, 512, 16);
  for (const int bn : {0, 32, 64, 128}) {
    const ForcedTile forced(bn);
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message() << type_name(type) << " " << c.n_experts << " x " << c.rows
                                      << " x " << c.cols << ", " << c.n_tokens << " tokens top "
                                      << c.k << ", group " << c.x_group << ", tile " << bn);
      run_case(type, c, ++seed, scratch);
      if (testing::Test::HasFailure()) return;  // one failing shape says enough
    }
  }
  if (type == GgmlType::Q4_0) {  // the decoder without split loads
    const PlainLoads plain;
    for (const Case& c : cases) {
      SCOPED_TRACE(testing::Message() << type_name(type) << " without split loads, " << c.n_experts
                                      << " x " << c.rows << " x " << c.cols);
      run_case(type, c, ++seed, scratch);
    }
  }
}

// Q4_0 experts regrouped to Q4_0x8 (q4_0x8.h): the GEMM decodes them bit for bit as the GGUF
// layout, with bad ids and every token tile; in place (512 columns) and widened (704 columns, the
// down experts of Gemma 4 26B-A4B: a partial last group, rows of 400 instead of 396 bytes).
TEST(CudaMoeGemm, Q4_0x8EqualsGgufLayout) {
  SKIP_WITHOUT_GPU();
  for (const std::size_t cols : {std::size_t{512}, std::size_t{704}}) {
    SCOPED_TRACE(testing::Message() << cols << " columns");
    const Stack s = make_stack(GgmlType::Q4_0, 6, 150, cols, 41);
    std::vector<int> ids = route(60, 4, s.n_experts, 42);
    for (std::size_t i = 0; i < ids.size(); i += 7) ids[i] = i % 2 == 0 ? -1 : s.n_experts;
    const int n_slots = static_cast<int>(ids.size());
    const std::vector<float> x = random_floats(60 * s.cols, 43);
    const std::size_t rows = s.rows * static_cast<std::size_t>(s.n_experts);
    cuda::DeviceBuffer<std::byte> gguf{std::span<const std::byte>(s.bytes)};
    cuda::DeviceBuffer<std::byte> regrouped(rows * cuda::q4_0x8_row_bytes(cols));
    regrouped.upload(std::span<const std::byte>(s.bytes));
    cuda::DeviceBuffer<std::uint8_t> repack_scratch;
    cuda::repack_q4_0x8_widening(regrouped.data(), rows, s.cols, repack_scratch);
    cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
    cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
    cuda::DeviceBuffer<float> a(s.rows * ids.size()), b(s.rows * ids.size());
    cuda::ExpertStack wa = device_view(s, gguf), wb = device_view(s, regrouped);
    wb.layout = cuda::WeightLayout::kQ4_0x8;
    wb.expert_bytes = s.rows * cuda::q4_0x8_row_bytes(cols);
    cuda::MoeGemmScratch scratch = cuda::make_moe_gemm_scratch(600, 768, 16);
    for (const int bn : {0, 32, 128}) {
      SCOPED_TRACE(testing::Message() << "tile " << bn);
      const ForcedTile forced(bn);
      a.fill_bytes(0xff);
      b.fill_bytes(0x7f);
      cuda::moe_gemm(wa, dids.data(), n_slots, 4, dx.data(), a.data(), s.rows, scratch, nullptr);
      cuda::moe_gemm(wb, dids.data(), n_slots, 4, dx.data(), b.data(), s.rows, scratch, nullptr);
      const std::vector<float> ha = a.to_host(), hb = b.to_host();
      EXPECT_EQ(std::memcmp(ha.data(), hb.data(), ha.size() * sizeof(float)), 0);
    }
    // moe_gemv has no Q4_0x8 decoder and says so.
    EXPECT_THROW(cuda::moe_gemv(wb, dids.data(), n_slots, 4, dx.data(), b.data(), s.rows, nullptr),
                 Error);
  }
}

TEST(CudaMoeGemm, Q4_0) {
  SKIP_WITHOUT_GPU();
  check_type(GgmlType::Q4_0, 100);
}
TEST(CudaMoeGemm, Q8_0) {
  SKIP_WITHOUT_GPU();
  check_type(GgmlType::Q8_0, 200);
}
TEST(CudaMoeGemm, Q4_K) {
  SKIP_WITHOUT_GPU();
  check_type(GgmlType::Q4_K, 300);
}
TEST(CudaMoeGemm, Q6_K) {
  SKIP_WITHOUT_GPU();
  check_type(GgmlType::Q6_K, 400);
}
TEST(CudaMoeGemm, BF16) {
  SKIP_WITHOUT_GPU();
  check_type(GgmlType::BF16, 500);
}
TEST(CudaMoeGemm, F32) {
  SKIP_WITHOUT_GPU();
  check_type(GgmlType::F32, 600);
}
TEST(CudaMoeGemm, OtherTypes) {
  SKIP_WITHOUT_GPU();
  for (const GgmlType type : {GgmlType::F16, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                              GgmlType::Q5_K, GgmlType::IQ4_NL}) {
    cuda::MoeGemmScratch scratch = cuda::make_moe_gemm_scratch(64, 256, 8);
    SCOPED_TRACE(type_name(type));
    run_case(type, {5, 37, odd_cols(type), 7, 3, 3, true}, 700 + static_cast<int>(type), scratch);
  }
}

// Every slot routed to out-of-range ids, and a single slot.
TEST(CudaMoeGemm, EdgeBatches) {
  SKIP_WITHOUT_GPU();
  const Stack s = make_stack(GgmlType::Q4_0, 3, 40, 64, 9);
  cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(s.bytes)};
  const cuda::ExpertStack w = device_view(s, dw);
  cuda::MoeGemmScratch scratch = cuda::make_moe_gemm_scratch(16, 64, 3);
  const std::vector<float> x = random_floats(16 * 64, 10);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
  for (const std::vector<int>& ids :
       {std::vector<int>{-1, 3, 7, -5, 3, 3, 99, -1}, std::vector<int>{2}}) {
    const int n = static_cast<int>(ids.size());
    cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
    cuda::DeviceBuffer<float> gemv(40 * ids.size()), gemm(40 * ids.size());
    gemv.fill_bytes(0xff);
    gemm.fill_bytes(0xff);
    cuda::moe_gemv(w, dids.data(), n, 1, dx.data(), gemv.data(), 40, nullptr);
    cuda::moe_gemm(w, dids.data(), n, 1, dx.data(), gemm.data(), 40, scratch, nullptr);
    cuda::synchronize_device();
    const Errors e = compare(s, ids, 1, x, gemv.to_host(), gemm.to_host(), 40);
    EXPECT_EQ(e.non_finite + e.nonzero_invalid, 0u);
    EXPECT_LT(e.gemm_vs_bf16, kBf16Tolerance);
  }
  // No slots: nothing to do.
  cuda::DeviceBuffer<int> one_id(1);
  cuda::DeviceBuffer<float> y(40);
  EXPECT_NO_THROW(
      cuda::moe_gemm(w, one_id.data(), 0, 1, dx.data(), y.data(), 40, scratch, nullptr));
}

TEST(CudaMoeGemm, RejectsBadArguments) {
  SKIP_WITHOUT_GPU();
  EXPECT_FALSE(cuda::moe_gemm_supported(GgmlType::Q2_K));
  for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K,
                              GgmlType::BF16, GgmlType::F32}) {
    EXPECT_TRUE(cuda::moe_gemm_supported(type)) << type_name(type);
  }
  EXPECT_THROW(cuda::make_moe_gemm_scratch(0, 64, 4), Error);
  EXPECT_THROW(cuda::make_moe_gemm_scratch(16, 60, 4), Error);
  EXPECT_THROW(cuda::make_moe_gemm_scratch(16, 64, 0), Error);
  EXPECT_THROW(cuda::make_moe_gemm_scratch(16, 64, 5000), Error);
  EXPECT_THROW(cuda::set_moe_gemm_token_tile(48), Error);

  cuda::MoeGemmScratch scratch = cuda::make_moe_gemm_scratch(16, 256, 4);
  cuda::DeviceBuffer<std::byte> bytes(1 << 16);
  cuda::DeviceBuffer<float> x(4096), y(4096);
  cuda::DeviceBuffer<int> ids(16);
  ids.fill_bytes(0);
  cuda::ExpertStack w;
  w.type = GgmlType::Q4_0;
  w.data = bytes.data();
  w.rows = 8;
  w.cols = 64;
  w.n_experts = 4;
  w.expert_bytes = 8 * row_bytes(GgmlType::Q4_0, 64);
  auto call = [&](const cuda::ExpertStack& ws, int n_slots, int x_group, const float* xp,
                  std::size_t ldy, const int* idp = nullptr) {
    cuda::moe_gemm(ws, idp != nullptr ? idp : ids.data(), n_slots, x_group, xp, y.data(), ldy,
                   scratch, nullptr);
  };
  EXPECT_NO_THROW(call(w, 4, 2, x.data(), 8));
  cuda::synchronize_device();
  cuda::ExpertStack bad = w;
  bad.type = GgmlType::Q2_K;
  EXPECT_THROW(call(bad, 4, 1, x.data(), 8), Error);
  bad = w;
  bad.cols = 48;  // not a multiple of the Q4_0 block
  EXPECT_THROW(call(bad, 4, 1, x.data(), 8), Error);
  bad = w;
  bad.cols = 512;  // above the scratch's columns
  bad.expert_bytes = 8 * row_bytes(GgmlType::Q4_0, 512);
  EXPECT_THROW(call(bad, 4, 1, x.data(), 8), Error);
  bad = w;
  bad.n_experts = 5;  // more experts than the scratch
  EXPECT_THROW(call(bad, 4, 1, x.data(), 8), Error);
  bad = w;
  bad.expert_bytes = 7 * row_bytes(GgmlType::Q4_0, 64);  // experts overlap
  EXPECT_THROW(call(bad, 4, 1, x.data(), 8), Error);
  bad = w;
  bad.data = nullptr;
  EXPECT_THROW(call(bad, 4, 1, x.data(), 8), Error);
  EXPECT_THROW(call(w, 17, 1, x.data(), 8), Error);  // more slots than the scratch
  EXPECT_THROW(call(w, -1, 1, x.data(), 8), Error);
  EXPECT_THROW(call(w, 4, 0, x.data(), 8), Error);      // x_group
  EXPECT_THROW(call(w, 4, 1, x.data(), 7), Error);      // ldy < rows
  EXPECT_THROW(call(w, 4, 1, x.data() + 1, 8), Error);  // misaligned x
  EXPECT_THROW(call(w, 4, 1, nullptr, 8), Error);
  EXPECT_THROW(cuda::moe_gemm(w, nullptr, 4, 1, x.data(), y.data(), 8, scratch, nullptr), Error);
}

// ---- timing harness (QFORGE_MOE_GEMM_BENCH=1) -----------------------------------------------

// Random bytes with every F16 scale field replaced by a small valid scale (quantizing hundreds of
// millions of weights on the CPU would dominate the run; speed does not depend on the values).
std::vector<std::byte> bench_weights(GgmlType type, std::size_t n_bytes) {
  std::vector<std::byte> bytes(n_bytes);
  std::mt19937 rng(1);
  for (std::size_t i = 0; i + 4 <= bytes.size(); i += 4) {
    const std::uint32_t v = rng();
    std::memcpy(&bytes[i], &v, 4);
  }
  const std::uint16_t scale = f32_to_f16(0.01f);
  const std::size_t block = type_size(type);
  for (std::size_t b = 0; b + block <= bytes.size(); b += block) std::memcpy(&bytes[b], &scale, 2);
  return bytes;
}

TEST(CudaMoeGemmBench, Gemma4Experts) {
  SKIP_WITHOUT_GPU();
  const char* env = std::getenv("QFORGE_MOE_GEMM_BENCH");
  if (env == nullptr || std::string(env) != "1") GTEST_SKIP() << "set QFORGE_MOE_GEMM_BENCH=1";
  const auto devs = cuda::devices();
  std::printf("device: %s (%d SMs)\n", devs.empty() ? "?" : devs[0].name.c_str(),
              devs.empty() ? 0 : devs[0].sm_count);
  const int n_experts = 128, k = 8, hidden = 2816, ffn = 704;
  cuda::MoeGemmScratch scratch = cuda::make_moe_gemm_scratch(512 * k, hidden, n_experts);
  struct Shape {
    const char* name;
    GgmlType type;
    std::size_t rows, cols;
    int x_group;
  };
  const Shape shapes[] = {{"gate_up", GgmlType::Q4_0, 2 * ffn, hidden, k},
                          {"down", GgmlType::Q4_0, hidden, ffn, 1},
                          {"gate_up", GgmlType::Q8_0, 2 * ffn, hidden, k}};
  for (const Shape& sh : shapes) {
    const std::size_t expert_bytes = sh.rows * row_bytes(sh.type, sh.cols);
    const std::vector<std::byte> bytes =
        bench_weights(sh.type, expert_bytes * static_cast<std::size_t>(n_experts));
    cuda::DeviceBuffer<std::byte> dw{std::span<const std::byte>(bytes)};
    cuda::ExpertStack w;
    w.type = sh.type;
    w.data = dw.data();
    w.rows = sh.rows;
    w.cols = sh.cols;
    w.expert_bytes = expert_bytes;
    w.n_experts = n_experts;
    for (const int n_tokens : {512, 64}) {
      for (const bool skewed : {false, true}) {
        // Uniform: k distinct experts per token at random. Skewed: expert weights 1 / (1 + e % 7).
        std::vector<int> ids;
        if (skewed) {
          ids = route(n_tokens, k, n_experts, 5);
        } else {
          std::mt19937 rng(7);
          std::vector<int> all(static_cast<std::size_t>(n_experts));
          std::iota(all.begin(), all.end(), 0);
          for (int t = 0; t < n_tokens; ++t) {
            std::shuffle(all.begin(), all.end(), rng);
            std::vector<int> chosen(all.begin(), all.begin() + k);
            std::sort(chosen.begin(), chosen.end());
            ids.insert(ids.end(), chosen.begin(), chosen.end());
          }
        }
        const int n_slots = n_tokens * k;
        cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
        const std::size_t x_rows = static_cast<std::size_t>((n_slots - 1) / sh.x_group + 1);
        const std::vector<float> x = random_floats(x_rows * sh.cols, 3);
        cuda::DeviceBuffer<float> dx{std::span<const float>(x)};
        cuda::DeviceBuffer<float> y_gemv(sh.rows * static_cast<std::size_t>(n_slots));
        cuda::DeviceBuffer<float> y_gemm(y_gemv.size());
        auto time_ms = [&](auto&& fn) {
          for (int i = 0; i < 2; ++i) fn();
          cuda::Event start, stop;
          start.record();
          const int reps = 10;
          for (int i = 0; i < reps; ++i) fn();
          stop.record();
          stop.synchronize();
          return cuda::Event::elapsed_ms(start, stop) / reps;
        };
        const float ms_gemv = time_ms([&] {
          cuda::moe_gemv(w, dids.data(), n_slots, sh.x_group, dx.data(), y_gemv.data(), sh.rows,
                         nullptr);
        });
        auto run_gemm = [&] {
          cuda::moe_gemm(w, dids.data(), n_slots, sh.x_group, dx.data(), y_gemm.data(), sh.rows,
                         scratch, nullptr);
        };
        const float ms_auto = time_ms(run_gemm);
        float ms_bn[3];
        for (int i = 0; i < 3; ++i) {
          const ForcedTile forced(32 << i);
          ms_bn[i] = time_ms(run_gemm);
        }
        float ms_plain;
        {
          const PlainLoads plain;
          ms_plain = time_ms(run_gemm);
        }
        cuda::synchronize_device();
        // Agreement at full size: max |gemm - gemv| / max |gemv|.
        const std::vector<float> a = y_gemv.to_host(), b = y_gemm.to_host();
        double diff = 0, top = 0;
        for (std::size_t i = 0; i < a.size(); ++i) {
          diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
          top = std::max(top, std::fabs(static_cast<double>(a[i])));
        }
        const double flops = 2.0 * static_cast<double>(n_slots) * sh.rows * sh.cols;
        std::printf(
            "moe %-7s %-4s %4zu x %4zu, %3d tokens x top %d of %d (%s): gemv %.3f ms = %.2f "
            "TFLOP/s; moe_gemm %.3f ms = %.1f TFLOP/s (%.1fx); tile 32/64/128: %.3f / %.3f / "
            "%.3f ms; without split loads %.3f ms; max|diff|/max|y| %.2e\n",
            sh.name, std::string(type_name(sh.type)).c_str(), sh.rows, sh.cols, n_tokens, k,
            n_experts, skewed ? "skewed" : "uniform", ms_gemv, flops / ms_gemv * 1e-9, ms_auto,
            flops / ms_auto * 1e-9, ms_gemv / ms_auto, ms_bn[0], ms_bn[1], ms_bn[2], ms_plain,
            diff / top);
      }
    }
  }
}

}  // namespace
}  // namespace qforge

#else  // !QFORGE_HAVE_CUDA

TEST(CudaMoeGemm, SkippedWithoutCudaBuild) {
  GTEST_SKIP() << "built without the CUDA backend";
}

#endif
