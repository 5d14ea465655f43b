#include "runtime/cpu/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <numbers>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "quant/blocks.h"
#include "quant/q8_act.h"
#include "runtime/cpu/activation_observer.h"

namespace qforge::cpu {

namespace {

// -1: not decided yet (QFORGE_CPU_ACT is read at first use).
std::atomic<int> g_cpu_activations{-1};

CpuActivations activations_from_env() {
  const char* env = std::getenv("QFORGE_CPU_ACT");
  if (env == nullptr || *env == '\0') return CpuActivations::kQ8;
  const std::string_view v(env);
  if (v == "f32" || v == "F32") return CpuActivations::kF32;
  if (v == "q8" || v == "Q8") return CpuActivations::kQ8;
  fail("QFORGE_CPU_ACT='{}': expected f32 or q8", v);
}

// Weight rows per parallel chunk: enough work per chunk to amortise the hand-off.
std::size_t min_rows_per_chunk(const WeightMatrix& w, std::size_t n_tokens) {
  const std::size_t work_per_row = std::max<std::size_t>(w.cols * n_tokens, 1);
  return std::max<std::size_t>(16, 32768 / work_per_row);
}

void matmul_q8(const WeightMatrix& w, std::span<const float> x, std::size_t n_tokens,
               std::span<float> y) {
  // Reused across calls: the forward pass calls matmul hundreds of times. The body below must use
  // the reference `a`: naming a thread_local inside a lambda that runs on a pool worker would
  // refer to that worker's own (empty) instance.
  thread_local Q8Activations acts;
  Q8Activations& a = acts;
  a.quantize(x, n_tokens, w.cols);
  parallel_for(
      w.rows,
      [&](std::size_t begin, std::size_t end) {
        matmul_q8_rows(w.type, w.data.data(), w.row_stride, begin, end, a, y.data(), w.rows);
      },
      min_rows_per_chunk(w, n_tokens));
}

void matmul_f32(const WeightMatrix& w, std::span<const float> x, std::size_t n_tokens,
                std::span<float> y) {
  constexpr std::size_t kTile = 16;
  const std::size_t min_rows =
      std::max<std::size_t>(kTile, 32768 / std::max<std::size_t>(w.cols, 1));
  if (n_tokens == 1 || w.type == GgmlType::F32) {
    // One fused dot product per output element: nothing is decoded twice for a single token.
    parallel_for(
        w.rows,
        [&](std::size_t begin, std::size_t end) {
          for (std::size_t r0 = begin; r0 < end; r0 += kTile) {
            const std::size_t r1 = std::min(end, r0 + kTile);
            for (std::size_t t = 0; t < n_tokens; ++t) {
              const std::span<const float> xt = x.subspan(t * w.cols, w.cols);
              float* yt = y.data() + t * w.rows;
              for (std::size_t r = r0; r < r1; ++r) yt[r] = dot_row(w.type, w.row(r), xt);
            }
          }
        },
        min_rows);
    return;
  }
  // Several tokens: decode a tile of weight rows to F32 once and reuse it for every token.
  parallel_for(
      w.rows,
      [&](std::size_t begin, std::size_t end) {
        std::vector<float> tile(kTile * w.cols);
        for (std::size_t r0 = begin; r0 < end; r0 += kTile) {
          const std::size_t r1 = std::min(end, r0 + kTile);
          for (std::size_t r = r0; r < r1; ++r) {
            dequantize_row(w.type, w.row(r), std::span(tile).subspan((r - r0) * w.cols, w.cols));
          }
          for (std::size_t t = 0; t < n_tokens; ++t) {
            const std::span<const float> xt = x.subspan(t * w.cols, w.cols);
            float* yt = y.data() + t * w.rows;
            for (std::size_t r = r0; r < r1; ++r) {
              const auto row = std::as_bytes(std::span(tile).subspan((r - r0) * w.cols, w.cols));
              yt[r] = dot_row(GgmlType::F32, row, xt);
            }
          }
        }
      },
      min_rows);
}

}  // namespace

void set_cpu_activations(CpuActivations mode) {
  g_cpu_activations.store(static_cast<int>(mode));
}

CpuActivations cpu_activations() {
  int mode = g_cpu_activations.load(std::memory_order_relaxed);
  if (mode < 0) {
    mode = static_cast<int>(activations_from_env());
    int expected = -1;
    // A concurrent set_cpu_activations wins over the environment.
    if (!g_cpu_activations.compare_exchange_strong(expected, mode)) mode = expected;
  }
  return static_cast<CpuActivations>(mode);
}

void matmul(const WeightMatrix& w, std::span<const float> x, std::size_t n_tokens,
            std::span<float> y) {
  if (x.size() != n_tokens * w.cols || y.size() != n_tokens * w.rows) {
    fail("matmul '{}': input {} / output {} floats do not match {} tokens x [{} x {}]", w.name,
         x.size(), y.size(), n_tokens, w.rows, w.cols);
  }
  notify_matmul_input({w.name, x, n_tokens, w.cols, w.expert, w.n_experts});
  if (n_tokens == 0 || w.rows == 0) return;
  if (cpu_activations() == CpuActivations::kQ8 && q8_act_supported(w.type) &&
      w.cols % kQ8ActBlock == 0 && w.cols % block_size(w.type) == 0) {
    matmul_q8(w, x, n_tokens, y);
    return;
  }
  matmul_f32(w, x, n_tokens, y);
}

namespace {

float inverse_rms(std::span<const float> row, float eps) {
  float sum_sq = 0.0f;
  for (const float v : row) sum_sq += v * v;
  return 1.0f / std::sqrt(sum_sq / static_cast<float>(row.size()) + eps);
}

}  // namespace

void rms_norm_rows(std::span<float> x, std::span<const float> weight, float eps) {
  const std::size_t n = weight.size();
  for (std::size_t off = 0; off + n <= x.size(); off += n) {
    const std::span<float> row = x.subspan(off, n);
    const float inv = inverse_rms(row, eps);
    for (std::size_t i = 0; i < n; ++i) row[i] = row[i] * inv * weight[i];
  }
}

void rms_norm_rows(std::span<float> x, std::size_t row_len, float eps) {
  for (std::size_t off = 0; off + row_len <= x.size(); off += row_len) {
    const std::span<float> row = x.subspan(off, row_len);
    const float inv = inverse_rms(row, eps);
    for (float& v : row) v *= inv;
  }
}

void apply_rope(std::span<float> head, int n_rot, RopeStyle style, std::span<const float> cos,
                std::span<const float> sin) {
  const auto half = static_cast<std::size_t>(n_rot / 2);
  for (std::size_t i = 0; i < half; ++i) {
    // The two elements of pair i: adjacent (2i, 2i+1) or split across halves (i, i + n_rot/2).
    const std::size_t a = style == RopeStyle::kAdjacentPairs ? 2 * i : i;
    const std::size_t b = style == RopeStyle::kAdjacentPairs ? 2 * i + 1 : i + half;
    const float x0 = head[a];
    const float x1 = head[b];
    head[a] = x0 * cos[i] - x1 * sin[i];
    head[b] = x0 * sin[i] + x1 * cos[i];
  }
}

void rope_tables(int pos0, std::size_t n_positions, int n_rot, const RopeParams& params,
                 std::span<const float> freq_factors, std::span<float> cos, std::span<float> sin) {
  const auto half = static_cast<std::size_t>(n_rot / 2);
  for (std::size_t t = 0; t < n_positions; ++t) {
    const double pos = static_cast<double>(pos0 + static_cast<int>(t)) * params.freq_scale;
    for (std::size_t i = 0; i < half; ++i) {
      double inv_freq =
          std::pow(params.freq_base, -2.0 * static_cast<double>(i) / static_cast<double>(n_rot));
      if (!freq_factors.empty()) inv_freq /= freq_factors[i];
      const double angle = pos * inv_freq;
      cos[t * half + i] = static_cast<float>(std::cos(angle));
      sin[t * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

float gelu_tanh(float x) {
  // 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): one exp instead of
  // tanh. For large |u| the exp saturates to 0 or inf and the result to x or -0, as it should.
  const float k = std::sqrt(2.0f / std::numbers::pi_v<float>);
  const float u = k * (x + 0.044715f * x * x * x);
  return x / (1.0f + std::exp(-2.0f * u));
}

float silu(float x) {
  return x / (1.0f + std::exp(-x));
}

void glu(FfnActivation act, std::span<float> gate, std::span<const float> up) {
  parallel_for(
      gate.size(),
      [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) {
          const float g = act == FfnActivation::kSiluGlu ? silu(gate[i]) : gelu_tanh(gate[i]);
          gate[i] = g * up[i];
        }
      },
      8192);
}

void softmax(std::span<float> x) {
  if (x.empty()) return;
  const float max = *std::max_element(x.begin(), x.end());
  float sum = 0.0f;
  for (float& v : x) {
    v = std::exp(v - max);
    sum += v;
  }
  const float inv = 1.0f / sum;
  for (float& v : x) v *= inv;
}

void softcap(std::span<float> x, float cap) {
  if (cap <= 0.0f) return;
  for (float& v : x) v = cap * std::tanh(v / cap);
}

}  // namespace qforge::cpu
