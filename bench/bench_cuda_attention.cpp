// Attention on the GPU: flash_prefill / flash_decode (flash_attention.h) against batch_attention
// (model_ops.h) over a BF16 cache.
//   Prefill: 512 queries at positions 0..511 (one prompt chunk); counter TFLOP/s counts
//     2 * (dk + dv) flops per visible (query head, position) pair.
//   Decode: args (queries, splits; 0 = default) ending at position 4095 (depth 4096). Caches rotate
//   over >= 512 MiB of copies,
//     like the layers of a model, so K/V stream from device memory, not L2; counter GB/s is the
//     K/V bytes the query sees per call divided by the time.
// Split counts: flash_decode_splits for flash_decode; batch_attention gets what cuda_model.cpp
// gives it (clamp(ceil(2 * SMs / (n_tokens * n_head)), 1, 64)).
#include <benchmark/benchmark.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/flash_attention.h"
#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/stream.h"

namespace qforge {
namespace {

struct AttnShape {
  int n_head, n_head_kv, dim, window;
};

constexpr AttnShape kLlama3{32, 8, 128, 0};
constexpr AttnShape kGemma4Global{32, 4, 512, 0};
constexpr AttnShape kGemma4Sliding{32, 16, 256, 1024};
constexpr AttnShape kGemma4MoeGlobal{16, 2, 512, 0};
constexpr AttnShape kGemma4MoeSliding{16, 8, 256, 1024};

enum class Impl { kFlash, kBatch };

cuda::BatchAttention params(const AttnShape& s) {
  cuda::BatchAttention p;
  p.n_head = s.n_head;
  p.kv = {s.n_head_kv, s.dim, s.dim, true};
  p.scale = 1.0f / std::sqrt(static_cast<float>(s.dim));
  p.window = s.window;
  p.q_stride = static_cast<std::size_t>(s.n_head + 2 * s.n_head_kv) * s.dim;
  return p;
}

std::vector<std::uint16_t> random_bf16(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<std::uint16_t> v(n);
  for (auto& x : v) x = f32_to_bf16(dist(rng));
  return v;
}

int batch_splits(const cuda::BatchAttention& p, int n_tokens, int sm_count) {
  const int per_head = (2 * sm_count + p.n_head - 1) / p.n_head;
  const int s_max = std::clamp(per_head, 1, 64);
  const int n = n_tokens * p.n_head;
  return std::clamp((2 * sm_count + n - 1) / n, 1, s_max);
}

// Visible (query, position) pairs per query head for n_tokens queries at pos0.. pos0 + n - 1.
double visible_pairs(int pos0, int n_tokens, int window) {
  double pairs = 0.0;
  for (int t = 0; t < n_tokens; ++t) {
    const int pos = pos0 + t;
    pairs += window > 0 ? std::min(pos + 1, window) : pos + 1;
  }
  return pairs;
}

// counters: n_tokens * n_head zeroed ints (batch_attention's split counters).
void run_attention(Impl impl, const cuda::BatchAttention& p, const float* q, const void* k,
                   const void* v, const int* pos, int n_tokens, int splits, float* part,
                   int* counters, float* out, cuda::StreamHandle s) {
  if (impl == Impl::kBatch) {
    cuda::batch_attention(q, k, v, pos, n_tokens, p, splits, part, counters, out, s);
  } else if (n_tokens <= cuda::kFlashDecodeMaxTokens && splits > 0) {
    cuda::flash_decode(q, k, v, pos, n_tokens, p, splits, part, out, s);
  } else {
    cuda::flash_prefill(q, k, v, pos, n_tokens, p, out, s);
  }
}

void BM_CudaAttentionPrefill(benchmark::State& state, AttnShape shape, Impl impl) {
  if (!cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int n_tokens = 512, sm_count = cuda::devices().at(0).sm_count;
  const cuda::BatchAttention p = params(shape);
  const std::size_t row = static_cast<std::size_t>(shape.n_head_kv) * shape.dim;
  const auto kv = random_bf16(row * n_tokens, 1);
  cuda::DeviceBuffer<std::uint16_t> k{std::span<const std::uint16_t>(kv)};
  cuda::DeviceBuffer<std::uint16_t> v{std::span<const std::uint16_t>(kv)};
  std::vector<float> q(p.q_stride * n_tokens);
  std::mt19937 rng(2);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& x : q) x = dist(rng);
  cuda::DeviceBuffer<float> dq{std::span<const float>(q)};
  const int pos0[1] = {0};
  cuda::DeviceBuffer<int> dpos{std::span<const int>(pos0)};
  const int splits = impl == Impl::kBatch ? batch_splits(p, n_tokens, sm_count) : 0;
  cuda::DeviceBuffer<float> part(impl == Impl::kBatch ? static_cast<std::size_t>(n_tokens) *
                                                            p.n_head * splits * (shape.dim + 2)
                                                      : 1);
  cuda::DeviceBuffer<int> counters(static_cast<std::size_t>(n_tokens) * p.n_head);
  counters.fill_bytes(0);
  cuda::DeviceBuffer<float> out(static_cast<std::size_t>(n_tokens) * p.n_head * shape.dim);
  cuda::Stream stream;
  cuda::Event start, stop;
  const int reps = 10;
  auto call = [&] {
    run_attention(impl, p, dq.data(), k.data(), v.data(), dpos.data(), n_tokens, splits,
                  part.data(), counters.data(), out.data(), stream.get());
  };
  call();
  stream.synchronize();
  for (auto _ : state) {
    start.record(stream.get());
    for (int r = 0; r < reps; ++r) call();
    stop.record(stream.get());
    stop.synchronize();
    state.SetIterationTime(cuda::Event::elapsed_ms(start, stop) * 1e-3 / reps);
  }
  const double flops = 2.0 * 2.0 * shape.dim * p.n_head * visible_pairs(0, n_tokens, shape.window);
  state.counters["TFLOP/s"] =
      benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(cuda::devices().at(0).name);
}

void BM_CudaAttentionDecode(benchmark::State& state, AttnShape shape, Impl impl) {
  if (!cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int depth = 4096, n_tokens = static_cast<int>(state.range(0));
  const int pos = depth - n_tokens, sm_count = cuda::devices().at(0).sm_count;
  const cuda::BatchAttention p = params(shape);
  const std::size_t row = static_cast<std::size_t>(shape.n_head_kv) * shape.dim;
  const auto kv = random_bf16(row * depth, 3);
  const std::size_t cache_bytes = 2 * kv.size() * sizeof(std::uint16_t);
  const std::size_t copies = std::max<std::size_t>(2, (std::size_t{512} << 20) / cache_bytes + 1);
  std::vector<cuda::DeviceBuffer<std::uint16_t>> ks, vs;
  for (std::size_t c = 0; c < copies; ++c) {
    ks.emplace_back(std::span<const std::uint16_t>(kv));
    vs.emplace_back(std::span<const std::uint16_t>(kv));
  }
  std::vector<float> q(p.q_stride * n_tokens, 0.01f);
  cuda::DeviceBuffer<float> dq{std::span<const float>(q)};
  const int pos0[1] = {pos};
  cuda::DeviceBuffer<int> dpos{std::span<const int>(pos0)};
  const int forced_splits = static_cast<int>(state.range(1));
  const int splits = forced_splits > 0 ? forced_splits
                     : impl == Impl::kBatch
                         ? batch_splits(p, n_tokens, sm_count)
                         : cuda::flash_decode_splits(p, n_tokens, sm_count, depth);
  const std::size_t part_floats =
      impl == Impl::kBatch
          ? static_cast<std::size_t>(n_tokens) * p.n_head * splits * (shape.dim + 2)
          : cuda::flash_decode_scratch_floats(p, n_tokens, splits);
  cuda::DeviceBuffer<float> part(part_floats);
  cuda::DeviceBuffer<int> counters(static_cast<std::size_t>(n_tokens) * p.n_head);
  counters.fill_bytes(0);
  cuda::DeviceBuffer<float> out(static_cast<std::size_t>(n_tokens) * p.n_head * shape.dim);
  cuda::Stream stream;
  cuda::Event start, stop;
  auto run_all = [&] {
    for (std::size_t c = 0; c < copies; ++c) {
      run_attention(impl, p, dq.data(), ks[c].data(), vs[c].data(), dpos.data(), n_tokens, splits,
                    part.data(), counters.data(), out.data(), stream.get());
    }
  };
  run_all();
  stream.synchronize();
  for (auto _ : state) {
    start.record(stream.get());
    run_all();
    stop.record(stream.get());
    stop.synchronize();
    state.SetIterationTime(cuda::Event::elapsed_ms(start, stop) * 1e-3 / copies);
  }
  // K/V bytes the queries see: the union of their windows.
  const int first = shape.window > 0 ? std::max(0, pos - shape.window + 1) : 0;
  const double bytes = 2.0 * (depth - first) * row * sizeof(std::uint16_t);
  state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["splits"] = splits;
  state.SetLabel(cuda::devices().at(0).name);
}

#define QFORGE_ATTN_BENCH(name, shape)                                          \
  BENCHMARK_CAPTURE(BM_CudaAttentionPrefill, name##_flash, shape, Impl::kFlash) \
      ->UseManualTime()                                                         \
      ->Unit(benchmark::kMicrosecond);                                          \
  BENCHMARK_CAPTURE(BM_CudaAttentionPrefill, name##_batch, shape, Impl::kBatch) \
      ->UseManualTime()                                                         \
      ->Unit(benchmark::kMicrosecond);                                          \
  BENCHMARK_CAPTURE(BM_CudaAttentionDecode, name##_flash, shape, Impl::kFlash)  \
      ->Args({1, 0})                                                            \
      ->Args({1, 32})                                                           \
      ->Args({1, 128})                                                          \
      ->Args({4, 0})                                                            \
      ->UseManualTime()                                                         \
      ->Unit(benchmark::kMicrosecond);                                          \
  BENCHMARK_CAPTURE(BM_CudaAttentionDecode, name##_batch, shape, Impl::kBatch)  \
      ->Args({1, 0})                                                            \
      ->Args({4, 0})                                                            \
      ->UseManualTime()                                                         \
      ->Unit(benchmark::kMicrosecond)

QFORGE_ATTN_BENCH(llama3_8b, kLlama3);
QFORGE_ATTN_BENCH(gemma4_31b_global, kGemma4Global);
QFORGE_ATTN_BENCH(gemma4_31b_sliding, kGemma4Sliding);
QFORGE_ATTN_BENCH(gemma4_26b_global, kGemma4MoeGlobal);
QFORGE_ATTN_BENCH(gemma4_26b_sliding, kGemma4MoeSliding);

}  // namespace
}  // namespace qforge

#endif  // QFORGE_HAVE_CUDA
