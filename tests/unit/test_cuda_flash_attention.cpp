// flash_prefill / flash_decode (src/runtime/cuda/flash_attention.h) vs cpu::attention over the
// same cache contents. Skips without a GPU.
//
// K and V are random; for BF16 caches they are rounded to BF16 first, so the CPU cache (F32)
// holds exactly the GPU's values. q rows sit in a qkv-like buffer (q_stride > n_head * dk).
// The reference runs one query token at a time at its position (cpu::attention with
// n_tokens = 1), for a sample of the batch's tokens (all of them in small batches).
//
// Tolerances (outputs are convex combinations of V entries ~N(0, 1)):
//   flash_decode is F32 throughout like the CPU: only summation order and expf vs std::exp
//     differ, so 1e-5 absolute (as for batch_attention in test_cuda_kernels.cpp).
//   flash_prefill rounds q and the softmax weights to BF16 (relative 2^-9) for the tensor
//     cores, and F32 caches' K/V as well: scores move by ~2^-9 * |q||k| * scale, weights by
//     2^-9, so outputs by a few 1e-3; 2e-2 absolute is the bound checked, and the test prints the
//     largest error seen per case.
#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "model/config.h"
#include "runtime/cpu/attention.h"
#include "runtime/cpu/kv_cache.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/flash_attention.h"

namespace qforge {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device"

struct Shape {
  const char* name;
  int n_head, n_head_kv, dim;
  int window;
  float softcap;
};

constexpr Shape kLlama{"llama3-8b", 32, 8, 128, 0, 0.0f};
constexpr Shape kGemma3{"gemma3-270m", 4, 1, 256, 0, 0.0f};
constexpr Shape kGemma3Swa{"gemma3-270m swa16 cap30", 4, 1, 256, 16, 30.0f};
constexpr Shape kG4Swa{"gemma4-31b swa1024", 32, 16, 256, 1024, 0.0f};
constexpr Shape kG4SwaSmall{"gemma4-26b swa100 cap50", 16, 8, 256, 100, 50.0f};
constexpr Shape kG4Global{"gemma4-31b global", 32, 4, 512, 0, 0.0f};
constexpr Shape kG4Global26{"gemma4-26b global", 16, 2, 512, 0, 0.0f};
constexpr Shape kD64{"d64 cap50", 8, 2, 64, 0, 50.0f};
constexpr Shape kGroup3{"group3 swa7", 6, 2, 128, 7, 0.0f};

struct Case {
  Shape shape;
  int n_tokens, pos0;
  bool bf16;
  int n_splits = 0;  // decode only; 0: flash_decode_splits for 132 SMs
};

std::vector<float> random_floats(std::size_t n, std::uint32_t seed, bool round_bf16) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& f : v) {
    f = dist(rng);
    if (round_bf16) f = bf16_to_f32(f32_to_bf16(f));
  }
  return v;
}

// A filled cache (CPU reference and device copy) plus a batch of queries.
struct Fixture {
  Case c;
  int n_ctx;
  std::size_t q_stride;
  std::vector<float> k, v, q;
  cpu::CpuKvCache cache;
  cuda::DeviceBuffer<std::byte> k_dev, v_dev;
  cuda::DeviceBuffer<float> q_dev;
  cuda::DeviceBuffer<int> pos_dev;

  static ModelConfig config(const Shape& s) {
    ModelConfig m;
    m.n_layer = 1;
    m.n_head = s.n_head;
    m.n_head_kv = s.n_head_kv;
    m.head_dim_k = s.dim;
    m.head_dim_v = s.dim;
    return m;
  }

  explicit Fixture(const Case& cs)
      : c(cs),
        n_ctx(cs.pos0 + cs.n_tokens),
        q_stride(static_cast<std::size_t>(cs.shape.n_head + 2 * cs.shape.n_head_kv) * cs.shape.dim),
        cache(config(cs.shape), cs.pos0 + cs.n_tokens, KvType::F32, /*ring=*/false) {
    const Shape& s = c.shape;
    const std::size_t row = static_cast<std::size_t>(s.n_head_kv) * s.dim;
    k = random_floats(row * n_ctx, 11, c.bf16);
    v = random_floats(row * n_ctx, 12, c.bf16);
    q = random_floats(q_stride * c.n_tokens, 13, false);
    for (int p = 0; p < n_ctx; ++p) {
      cache.store(0, p, std::span(k).subspan(p * row, row), std::span(v).subspan(p * row, row));
    }
    cache.set_filled(n_ctx);
    k_dev = upload_cache(k);
    v_dev = upload_cache(v);
    q_dev = cuda::DeviceBuffer<float>(std::span<const float>(q));
    const int pos[1] = {c.pos0};
    pos_dev = cuda::DeviceBuffer<int>(std::span<const int>(pos));
  }

  cuda::DeviceBuffer<std::byte> upload_cache(const std::vector<float>& x) const {
    if (!c.bf16) {
      return cuda::DeviceBuffer<std::byte>(std::as_bytes(std::span<const float>(x)));
    }
    std::vector<std::uint16_t> bits(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) bits[i] = f32_to_bf16(x[i]);
    return cuda::DeviceBuffer<std::byte>(std::as_bytes(std::span<const std::uint16_t>(bits)));
  }

  cuda::BatchAttention params() const {
    cuda::BatchAttention p;
    p.n_head = c.shape.n_head;
    p.kv = {c.shape.n_head_kv, c.shape.dim, c.shape.dim, c.bf16};
    p.scale = 1.0f / std::sqrt(static_cast<float>(c.shape.dim));
    p.softcap = c.shape.softcap;
    p.window = c.shape.window;
    p.q_stride = q_stride;
    return p;
  }

  // Largest |got - cpu::attention| over a sample of tokens (all heads and dims).
  float max_error(const std::vector<float>& got) const {
    const Shape& s = c.shape;
    std::set<int> tokens;
    if (c.n_tokens <= 8) {
      for (int t = 0; t < c.n_tokens; ++t) tokens.insert(t);
    } else {
      const int n = c.n_tokens;
      for (int t : {0, 1, n / 3, n / 2, n - 2, n - 1}) tokens.insert(t);
      if (s.window > 0 && s.window < n) tokens.insert(s.window);  // first to lose position 0
    }
    const cuda::BatchAttention gp = params();
    const cpu::AttentionParams cp{s.n_head, s.n_head_kv, s.dim,   s.dim,
                                  gp.scale, s.softcap,   s.window};
    const std::size_t out_row = static_cast<std::size_t>(s.n_head) * s.dim;
    std::vector<float> want(out_row);
    float worst = 0.0f;
    for (int t : tokens) {
      const std::span<const float> qt(q.data() + t * q_stride, out_row);
      cpu::attention(cache, 0, c.pos0 + t, 1, qt, cp, want);
      for (std::size_t i = 0; i < out_row; ++i) {
        const float e = std::fabs(got[t * out_row + i] - want[i]);
        worst = std::isnan(e) ? INFINITY : std::max(worst, e);
      }
    }
    return worst;
  }
};

std::string describe(const Case& c) {
  return testing::PrintToString(c.shape.name) + " tokens " + std::to_string(c.n_tokens) + " pos0 " +
         std::to_string(c.pos0) + (c.bf16 ? " bf16" : " f32");
}

TEST(CudaFlashAttention, PrefillMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case cases[] = {
      {kLlama, 512, 0, true},        {kLlama, 200, 700, true},      {kLlama, 5, 33, false},
      {kLlama, 1, 0, true},          {kGemma3, 1, 0, true},         {kGemma3Swa, 64, 0, true},
      {kGemma3Swa, 200, 300, false}, {kG4Swa, 512, 600, true},      {kG4SwaSmall, 200, 50, true},
      {kG4Global, 512, 0, true},     {kG4Global26, 64, 300, false}, {kG4Global, 5, 1, true},
      {kD64, 200, 17, true},         {kGroup3, 64, 10, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(describe(c));
    Fixture f(c);
    const cuda::BatchAttention p = f.params();
    ASSERT_TRUE(cuda::flash_prefill_supported(p));
    cuda::DeviceBuffer<float> out(static_cast<std::size_t>(c.n_tokens) * c.shape.n_head *
                                  c.shape.dim);
    out.fill_bytes(0xff);  // NaN: every output must be written
    cuda::flash_prefill(f.q_dev.data(), f.k_dev.data(), f.v_dev.data(), f.pos_dev.data(),
                        c.n_tokens, p, out.data(), nullptr);
    const float err = f.max_error(out.to_host());
    std::printf("prefill %-40s max abs error %.3g\n", describe(c).c_str(), err);
    EXPECT_LT(err, 2e-2f);
  }
}

TEST(CudaFlashAttention, DecodeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const Case cases[] = {
      {kLlama, 1, 4095, true},      {kLlama, 8, 1000, false, 7},  {kLlama, 2, 0, true, 5},
      {kGemma3, 1, 0, true, 4},     {kGemma3Swa, 3, 40, true},    {kG4Swa, 1, 2000, true, 16},
      {kG4SwaSmall, 4, 300, false}, {kG4Global, 5, 700, true, 9}, {kG4Global26, 2, 129, true},
      {kD64, 3, 50, true, 3},       {kGroup3, 1, 20, true},       {kGroup3, 7, 200, false, 64},
      // One split over many tiles of staged rows, the newest rows in its last tile.
      {kG4Global, 3, 100, true, 1}, {kD64, 2, 300, false, 1},     {kG4Global26, 1, 70, false, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(describe(c));
    Fixture f(c);
    const cuda::BatchAttention p = f.params();
    ASSERT_TRUE(cuda::flash_decode_supported(p));
    const int splits =
        c.n_splits > 0 ? c.n_splits : cuda::flash_decode_splits(p, c.n_tokens, 132, f.n_ctx);
    cuda::DeviceBuffer<float> scratch(cuda::flash_decode_scratch_floats(p, c.n_tokens, splits));
    cuda::DeviceBuffer<float> out(static_cast<std::size_t>(c.n_tokens) * c.shape.n_head *
                                  c.shape.dim);
    out.fill_bytes(0xff);
    cuda::flash_decode(f.q_dev.data(), f.k_dev.data(), f.v_dev.data(), f.pos_dev.data(), c.n_tokens,
                       p, splits, scratch.data(), out.data(), nullptr);
    const float err = f.max_error(out.to_host());
    std::printf("decode  %-40s splits %3d max abs error %.3g\n", describe(c).c_str(), splits, err);
    EXPECT_LT(err, 1e-5f);
  }
}

// batch_attention (the split kernel whose last CTA per (token, head) merges): same reference, for
// 1 to 1024 splits (more splits than visible positions leaves some empty), called twice on the
// same counters (each call must leave them zero for the next).
TEST(CudaBatchAttention, SplitsMergedByLastCtaMatchCpu) {
  SKIP_WITHOUT_GPU();
  struct SplitCase {
    Case c;
    int splits;
  };
  const SplitCase cases[] = {
      {{kLlama, 1, 700, true}, 1},    {{kLlama, 1, 700, true}, 37},
      {{kLlama, 3, 20, false}, 1024}, {{kG4Swa, 1, 2000, true}, 16},
      {{kG4Global, 5, 300, true}, 9}, {{kG4Global26, 2, 129, true}, 4},
      {{kGroup3, 7, 200, false}, 64}, {{kGemma3Swa, 64, 300, false}, 3},
  };
  for (const SplitCase& sc : cases) {
    const Case& c = sc.c;
    SCOPED_TRACE(describe(c) + " splits " + std::to_string(sc.splits));
    Fixture f(c);
    const cuda::BatchAttention p = f.params();
    const std::size_t pairs = static_cast<std::size_t>(c.n_tokens) * c.shape.n_head;
    cuda::DeviceBuffer<float> part(pairs * sc.splits * (c.shape.dim + 2));
    cuda::DeviceBuffer<int> counters(pairs);
    counters.fill_bytes(0);
    for (int call = 0; call < 2; ++call) {
      cuda::DeviceBuffer<float> out(pairs * c.shape.dim);
      out.fill_bytes(0xff);  // NaN: every output must be written
      cuda::batch_attention(f.q_dev.data(), f.k_dev.data(), f.v_dev.data(), f.pos_dev.data(),
                            c.n_tokens, p, sc.splits, part.data(), counters.data(), out.data(),
                            nullptr);
      EXPECT_LT(f.max_error(out.to_host()), 1e-5f) << "call " << call;
      const std::vector<int> left = counters.to_host();
      EXPECT_EQ(std::count(left.begin(), left.end(), 0), static_cast<long>(pairs));
    }
  }
}

// The grid of flash_decode must not depend on the position: one launch sequence, the position
// changed in device memory between runs, must match the reference at each position.
TEST(CudaFlashAttention, DecodeReadsPositionFromDevice) {
  SKIP_WITHOUT_GPU();
  const Case c{kLlama, 1, 900, true, 12};
  Fixture f(c);
  const cuda::BatchAttention p = f.params();
  cuda::DeviceBuffer<float> scratch(cuda::flash_decode_scratch_floats(p, 1, c.n_splits));
  cuda::DeviceBuffer<float> out(static_cast<std::size_t>(c.shape.n_head) * c.shape.dim);
  for (int pos : {0, 13, 500, 900}) {
    SCOPED_TRACE(pos);
    const int host_pos[1] = {pos};
    f.pos_dev.upload(std::span<const int>(host_pos));
    cuda::flash_decode(f.q_dev.data(), f.k_dev.data(), f.v_dev.data(), f.pos_dev.data(), 1, p,
                       c.n_splits, scratch.data(), out.data(), nullptr);
    Fixture ref_view(Case{kLlama, 1, pos, true});  // same seeds: same K/V prefix and q
    EXPECT_LT(ref_view.max_error(out.to_host()), 1e-5f);
  }
}

TEST(CudaFlashAttention, BadParametersThrow) {
  // The checks run before any CUDA call; the pointers are never dereferenced.
  alignas(16) static float dummy[16];
  const int* pos = reinterpret_cast<const int*>(dummy);
  cuda::BatchAttention good;
  good.n_head = 8;
  good.kv = {2, 128, 128, true};
  good.scale = 0.1f;
  good.q_stride = 8 * 128;
  auto prefill = [&](const cuda::BatchAttention& p, int n_tokens) {
    cuda::flash_prefill(dummy, dummy, dummy, pos, n_tokens, p, dummy, nullptr);
  };
  auto decode = [&](const cuda::BatchAttention& p, int n_tokens, int splits) {
    cuda::flash_decode(dummy, dummy, dummy, pos, n_tokens, p, splits, dummy, dummy, nullptr);
  };
  std::vector<cuda::BatchAttention> bad;
  cuda::BatchAttention p = good;
  p.n_head = 7;  // not a multiple of the KV heads
  bad.push_back(p);
  p = good;
  p.kv.head_dim_k = p.kv.head_dim_v = 8;  // tiny heads: batch_attention's job
  bad.push_back(p);
  p = good;
  p.kv.head_dim_v = 64;  // key != value size
  bad.push_back(p);
  p = good;
  p.q_stride = 100;  // shorter than a query row
  bad.push_back(p);
  p = good;
  p.window = -1;
  bad.push_back(p);
  p = good;
  p.softcap = NAN;
  bad.push_back(p);
  for (const cuda::BatchAttention& b : bad) {
    EXPECT_THROW(prefill(b, 4), Error);
    EXPECT_THROW(decode(b, 1, 4), Error);
  }
  EXPECT_FALSE(cuda::flash_prefill_supported(bad[0]));
  EXPECT_FALSE(cuda::flash_prefill_supported(bad[1]));
  EXPECT_FALSE(cuda::flash_decode_supported(bad[2]));
  EXPECT_THROW(prefill(good, 0), Error);
  EXPECT_THROW(decode(good, 0, 4), Error);
  EXPECT_THROW(decode(good, cuda::kFlashDecodeMaxTokens + 1, 4), Error);
  EXPECT_THROW(decode(good, 1, 0), Error);
  EXPECT_THROW(cuda::flash_decode(dummy, dummy, dummy, pos, 1, good, 4, nullptr, dummy, nullptr),
               Error);
  EXPECT_THROW(cuda::flash_prefill(dummy, dummy + 1, dummy, pos, 4, good, dummy, nullptr),
               Error);  // misaligned cache
}

}  // namespace
}  // namespace qforge

#else  // !QFORGE_HAVE_CUDA

TEST(CudaFlashAttention, SkippedWithoutCudaBuild) {
  GTEST_SKIP() << "built without the CUDA backend";
}

#endif
