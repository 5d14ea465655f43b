// CPU kernels against direct (double precision) evaluations of their definitions: attention with
// GQA / sliding window / softcap over every KV cache type, rope layouts, matmul on quantized
// weights, and the thread pool.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "quant/blocks.h"
#include "runtime/cpu/attention.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/kv_cache.h"

namespace qforge::cpu {
namespace {

std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Naive attention for one query head, in double.
std::vector<double> naive_head(const std::vector<float>& qh,
                               const std::vector<std::vector<float>>& keys,
                               const std::vector<std::vector<float>>& values, int first, int last,
                               double scale, double cap) {
  std::vector<double> w;
  double max = -1e300;
  for (int j = first; j <= last; ++j) {
    double s = 0;
    for (std::size_t i = 0; i < qh.size(); ++i) s += double(qh[i]) * keys[j][i];
    s *= scale;
    if (cap > 0) s = cap * std::tanh(s / cap);
    w.push_back(s);
    max = std::max(max, s);
  }
  double sum = 0;
  for (double& x : w) sum += (x = std::exp(x - max));
  std::vector<double> out(values[0].size(), 0.0);
  for (int j = first; j <= last; ++j)
    for (std::size_t i = 0; i < out.size(); ++i) out[i] += w[j - first] / sum * values[j][i];
  return out;
}

TEST(CpuAttention, MatchesNaiveWithGqaWindowAndSoftcap) {
  ModelConfig c;
  c.n_layer = 1;
  c.n_head = 4;
  c.n_head_kv = 2;
  c.head_dim_k = 32;
  c.head_dim_v = 64;
  const int n_pos = 20;
  const auto k_all = random_vector(n_pos * 2 * 32, 1);
  const auto v_all = random_vector(n_pos * 2 * 64, 2);
  for (const KvType kv : {KvType::F32, KvType::BF16, KvType::Q8_0}) {
    for (const int window : {0, 1, 5}) {
      CpuKvCache cache(c, n_pos, kv);
      for (int p = 0; p < n_pos; ++p) {
        cache.store(0, p, std::span(k_all).subspan(p * 64, 64),
                    std::span(v_all).subspan(p * 128, 128));
      }
      // What the cache holds after rounding, read back through the same conversion the type uses.
      std::vector<std::vector<std::vector<float>>> keys(2), values(2);
      for (int h = 0; h < 2; ++h) {
        for (int p = 0; p < n_pos; ++p) {
          std::vector<float> kr(32), vr(64);
          for (int i = 0; i < 32; ++i) {
            std::vector<float> e(32, 0.0f);
            e[i] = 1.0f;
            kr[i] = cache.dot_k(0, p, h, e);
          }
          cache.add_scaled_v(0, p, h, 1.0f, vr);
          keys[h].push_back(kr);
          values[h].push_back(vr);
          const float tol = kv == KvType::F32 ? 0.0f : 0.02f;
          for (int i = 0; i < 32; ++i) EXPECT_NEAR(kr[i], k_all[p * 64 + h * 32 + i], tol * 4);
        }
      }
      // 4 tokens take the per-head path, 11 the token-block path (blocks of 8 + a tail).
      for (const int n_tok : {4, 11}) {
        const int pos0 = 8;
        const auto q = random_vector(n_tok * 4 * 32, 3);
        std::vector<float> out(n_tok * 4 * 64);
        const AttentionParams ap{4, 2, 32, 64, 0.3f, 1.5f, window};
        attention(cache, 0, pos0, n_tok, q, ap, out);
        for (int t = 0; t < n_tok; ++t) {
          const int pos = pos0 + t;
          const int first = window > 0 ? std::max(0, pos - window + 1) : 0;
          for (int h = 0; h < 4; ++h) {
            std::vector<float> qh(q.begin() + (t * 4 + h) * 32, q.begin() + (t * 4 + h + 1) * 32);
            const auto ref = naive_head(qh, keys[h / 2], values[h / 2], first, pos, 0.3, 1.5);
            for (int i = 0; i < 64; ++i) {
              ASSERT_NEAR(out[(t * 4 + h) * 64 + i], ref[i], 1e-4)
                  << kv_type_name(kv) << " window " << window << " t " << t << " h " << h << " of "
                  << n_tok << " tokens";
            }
          }
        }
      }
    }
  }
}

TEST(CpuRope, PairsRotateByPositionTimesFrequency) {
  const int n_rot = 8;
  std::vector<float> cos(4 * 1), sin(4 * 1);
  const RopeParams params{10000.0, 0.5};
  rope_tables(6, 1, n_rot, params, {}, cos, sin);
  for (int i = 0; i < 4; ++i) {
    const double angle = 6 * 0.5 * std::pow(10000.0, -2.0 * i / n_rot);
    EXPECT_NEAR(cos[i], std::cos(angle), 1e-6);
    EXPECT_NEAR(sin[i], std::sin(angle), 1e-6);
  }
  const std::vector<float> x{1, 2, 3, 4, 5, 6, 7, 8, 9};  // 9th element is not rotated
  std::vector<float> adj = x, halves = x;
  apply_rope(adj, n_rot, RopeStyle::kAdjacentPairs, cos, sin);
  apply_rope(halves, n_rot, RopeStyle::kHalves, cos, sin);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(adj[2 * i], x[2 * i] * cos[i] - x[2 * i + 1] * sin[i], 1e-6);
    EXPECT_NEAR(adj[2 * i + 1], x[2 * i] * sin[i] + x[2 * i + 1] * cos[i], 1e-6);
    EXPECT_NEAR(halves[i], x[i] * cos[i] - x[i + 4] * sin[i], 1e-6);
    EXPECT_NEAR(halves[i + 4], x[i] * sin[i] + x[i + 4] * cos[i], 1e-6);
  }
  EXPECT_EQ(adj[8], 9.0f);
  EXPECT_EQ(halves[8], 9.0f);
  // Frequency factors divide the frequency.
  const std::vector<float> factors{1, 2, 4, 8};
  std::vector<float> cos2(4), sin2(4);
  rope_tables(6, 1, n_rot, params, factors, cos2, sin2);
  EXPECT_NEAR(cos2[3], std::cos(6 * 0.5 * std::pow(10000.0, -6.0 / 8) / 8), 1e-6);
}

TEST(CpuMatmul, QuantizedWeightsMatchDequantizedReference) {
  // The F32-activation path (the 8-bit one is checked in test_q8_act.cpp).
  const cpu::ScopedCpuActivations f32(cpu::CpuActivations::kF32);
  const std::size_t rows = 37, cols = 256, n_tok = 3;
  const auto wf = random_vector(rows * cols, 4, 0.1f);
  const auto x = random_vector(n_tok * cols, 5);
  for (const GgmlType type : {GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_0}) {
    if (!can_quantize(type) && type != GgmlType::F32) continue;
    std::vector<std::byte> data(rows * row_bytes(type, cols));
    if (type == GgmlType::F32) {
      std::memcpy(data.data(), wf.data(), data.size());
    } else {
      quantize_rows(type, wf, cols, data);
    }
    const WeightMatrix w{"w", type, rows, cols, row_bytes(type, cols), data};
    std::vector<float> deq(rows * cols);
    dequantize_rows(type, data, cols, deq);
    for (const std::size_t n : {std::size_t{1}, n_tok}) {
      std::vector<float> y(n * rows);
      matmul(w, std::span(x).first(n * cols), n, y);
      for (std::size_t t = 0; t < n; ++t) {
        for (std::size_t r = 0; r < rows; ++r) {
          double ref = 0;
          for (std::size_t i = 0; i < cols; ++i) ref += double(deq[r * cols + i]) * x[t * cols + i];
          ASSERT_NEAR(y[t * rows + r], ref, 1e-4) << type_name(type) << " n " << n;
        }
      }
    }
  }
}

TEST(CpuKernels, RmsNormSoftmaxGelu) {
  std::vector<float> x{1, -2, 3, -4};
  const std::vector<float> w{1, 1, 2, 0.5f};
  rms_norm_rows(x, w, 0.0f);
  const double rms = std::sqrt((1 + 4 + 9 + 16) / 4.0);
  EXPECT_NEAR(x[2], 3 / rms * 2, 1e-6);
  std::vector<float> s{1000, 1001};
  softmax(s);
  EXPECT_NEAR(s[1], 1 / (1 + std::exp(-1.0)), 1e-6);
  // tanh-GELU at a few points (definition: 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))).
  for (const double v : {-3.0, -0.5, 0.0, 1.0, 4.0}) {
    const double ref = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
    EXPECT_NEAR(gelu_tanh(static_cast<float>(v)), ref, 1e-6);
  }
  EXPECT_NEAR(silu(2.0f), 2 / (1 + std::exp(-2.0)), 1e-6);
}

TEST(ThreadPool, ManySmallLoopsNestedCallsAndErrors) {
  set_thread_count(3);
  std::atomic<long> total{0};
  for (int i = 0; i < 2000; ++i) {
    parallel_for(64, [&](std::size_t b, std::size_t e) {
      // Nested loops run inline on the worker.
      parallel_for(e - b,
                   [&](std::size_t b2, std::size_t e2) { total += static_cast<long>(e2 - b2); });
    });
  }
  EXPECT_EQ(total.load(), 2000 * 64);
  EXPECT_THROW(parallel_for(100, [](std::size_t, std::size_t) { fail("boom"); }), Error);
  std::atomic<int> after{0};
  parallel_for(10, [&](std::size_t b, std::size_t e) { after += static_cast<int>(e - b); });
  EXPECT_EQ(after.load(), 10);
  set_thread_count(0);
}

// A batch of tokens gives bit for bit what the same tokens give one at a time (the tasks differ:
// blocks of 8 tokens x a KV group vs one query head), for stories260K's shape (8 heads, 4 KV
// heads, d 8). A BF16 cache rounds K/V on store, so any difference would grow through the layers.
TEST(CpuAttention, BatchEqualsTokenByToken) {
  ModelConfig c;
  c.n_layer = 1;
  c.n_head = 8;
  c.n_head_kv = 4;
  c.head_dim_k = 8;
  c.head_dim_v = 8;
  const int n_tok = 41;
  const auto k_all = random_vector(n_tok * 4 * 8, 4);
  const auto v_all = random_vector(n_tok * 4 * 8, 5);
  const auto q = random_vector(n_tok * 8 * 8, 6);
  for (const KvType kv : {KvType::F32, KvType::BF16}) {
    CpuKvCache cache(c, 64, kv);
    for (int p = 0; p < n_tok; ++p) {
      cache.store(0, p, std::span(k_all).subspan(p * 32, 32), std::span(v_all).subspan(p * 32, 32));
    }
    const AttentionParams ap{8, 4, 8, 8, 0.35f, 0.0f, 0};
    std::vector<float> batch(n_tok * 64), one(64);
    attention(cache, 0, 0, n_tok, q, ap, batch);
    for (int t = 0; t < n_tok; ++t) {
      attention(cache, 0, t, 1, std::span(q).subspan(t * 64, 64), ap, one);
      for (int i = 0; i < 64; ++i) {
        ASSERT_EQ(batch[t * 64 + i], one[i])
            << kv_type_name(kv) << " t " << t << " i " << i;
      }
    }
  }
}

}  // namespace
}  // namespace qforge::cpu
