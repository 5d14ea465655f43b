// GEMV on the GPU: effective bandwidth (weight bytes + x + y per call) vs the device's copy
// bandwidth (cuda::measure_copy_bandwidth_gbs, read + write). The weights rotate over enough
// copies (>= 512 MiB in all) that every call streams from device memory, not from L2.
#include <benchmark/benchmark.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "quant/blocks.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/gemv_mma.h"
#include "runtime/cuda/gemv_q6_k.h"
#include "runtime/cuda/graph.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/q4_0x8.h"

namespace qforge {
namespace {

double copy_bandwidth_gbs() {
  static const double gbs = cuda::measure_copy_bandwidth_gbs(0, std::size_t{1} << 30, 20);
  return gbs;
}

// Random weights for the first min(rows, 1024) rows, repeated: the bytes streamed are the same
// and the setup of 262144-row LM heads stays short.
std::vector<std::byte> bench_weights(GgmlType type, std::size_t rows, std::size_t cols) {
  const std::size_t distinct = std::min<std::size_t>(rows, 1024);
  std::vector<float> w(distinct * cols);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  for (float& f : w) f = dist(rng);
  const std::size_t rb = row_bytes(type, cols);
  std::vector<std::byte> q(rows * rb);
  quantize_rows(type, w, cols, std::span<std::byte>(q).first(distinct * rb));
  for (std::size_t r = distinct; r < rows; ++r) {
    std::copy_n(q.begin() + static_cast<std::ptrdiff_t>((r % distinct) * rb), rb,
                q.begin() + static_cast<std::ptrdiff_t>(r * rb));
  }
  return q;
}

// mma_stages: 0 = the Q4_0 tensor-core kernel off (row-tiled CUDA-core kernel), else its stages;
// kQ4_0x8 - r: the weights regrouped (q4_0x8.h) and gemv_q4_0x8 with r rows per warp task (0 =
// its own choice), and `parts` column parts per row group (0 = its own choice).
constexpr int kQ4_0x8 = -10;
void BM_CudaGemv(benchmark::State& state, GgmlType type, cuda::GemvKernel kernel,
                 int mma_stages = 12, int parts = 0) {
  if (!cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const int n_tokens = static_cast<int>(state.range(2));
  const std::vector<std::byte> q = bench_weights(type, rows, cols);
  const std::size_t copies = std::max<std::size_t>(2, (std::size_t{512} << 20) / q.size() + 1);
  std::vector<cuda::DeviceBuffer<std::byte>> weights;
  for (std::size_t c = 0; c < copies; ++c) weights.emplace_back(std::span<const std::byte>(q));
  std::vector<float> x(cols * n_tokens);
  std::mt19937 rng(8);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (float& f : x) f = dist(rng);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, dy(rows * n_tokens);
  cuda::set_gemv_kernel(kernel);
  cuda::detail::set_gemv_mma_stages(mma_stages);
  cuda::detail::set_gemv_mma_min_rows(0);  // variants compare the kernels on every shape
  cuda::Stream stream;
  cuda::Event start, stop;
  const bool x8 = mma_stages <= kQ4_0x8;
  if (x8) {
    for (auto& wc : weights) cuda::repack_q4_0x8(wc.data(), rows, cols);
    cuda::set_gemv_q4_0x8_rows(kQ4_0x8 - mma_stages);
    cuda::set_gemv_q4_0x8_parts(parts);
  }
  auto gemv = [&](const void* w) {
    if (x8) {
      cuda::gemv_q4_0x8(w, rows, cols, dx.data(), dy.data(), rows, n_tokens, stream.get());
    } else {
      cuda::gemv(type, w, rows, cols, dx.data(), dy.data(), n_tokens, stream.get());
    }
  };
  for (auto& wc : weights) gemv(wc.data());  // warm-up: module load, first-touch
  stream.synchronize();
  // One CUDA graph for the whole rotation, as the model's decode runs: host launch cost (several
  // us per call) would otherwise hide the kernels of small matrices.
  cuda::Graph graph;
  graph.capture(stream.get(), [&] {
    for (auto& wc : weights) gemv(wc.data());
  });
  graph.launch(stream.get());
  stream.synchronize();
  for (auto _ : state) {
    start.record(stream.get());
    graph.launch(stream.get());
    stop.record(stream.get());
    stop.synchronize();
    state.SetIterationTime(cuda::Event::elapsed_ms(start, stop) * 1e-3 / copies);
  }
  const double bytes = static_cast<double>(q.size()) + 4.0 * (cols + rows) * n_tokens;
  state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GB/s"] = copy_bandwidth_gbs();
  state.counters["weight_MB"] = static_cast<double>(q.size()) / 1e6;
  const bool mma = mma_stages != 0 && kernel == cuda::GemvKernel::kTiled &&
                   cuda::detail::gemv_mma_applies(type, weights[0].data(), cols, n_tokens);
  const bool q6_k = type == GgmlType::Q6_K && kernel == cuda::GemvKernel::kTiled && n_tokens == 1 &&
                    cuda::detail::gemv_q6_k_applies(cols);
  state.SetLabel(std::string(type_name(type)) +
                 (x8     ? " x8r" + std::to_string(kQ4_0x8 - mma_stages) + " "
                  : mma  ? " mma" + std::to_string(mma_stages) + " "
                  : q6_k ? " q6_k "
                  : kernel == cuda::GemvKernel::kTiled ? " tiled "
                                                       : " legacy ") +
                 cuda::devices().at(0).name);
  cuda::set_gemv_q4_0x8_rows(0);
  cuda::set_gemv_q4_0x8_parts(0);
  cuda::set_gemv_kernel(cuda::GemvKernel::kTiled);
  cuda::detail::set_gemv_mma_stages(12);
  cuda::detail::set_gemv_mma_min_rows(8192);
}

// The one-token Q6_K kernel (gemv_q6_k.cu) with two rows per warp task instead of one.
void BM_CudaGemvQ6KRows2(benchmark::State& state) {
  cuda::detail::set_gemv_q6_k_rows(2);
  BM_CudaGemv(state, GgmlType::Q6_K, cuda::GemvKernel::kTiled);
  cuda::detail::set_gemv_q6_k_rows(0);
}

// moe_gemv at Gemma 4 26B-A4B decode shapes: 128 experts, 8 slots (one token, top 8). Args: rows,
// cols, x_group. Each call picks 8 distinct experts from a rotating list and the stack is copied
// so that the experts stream from device memory. Bytes = 8 experts + x + y.
// mma_stages 0 with the row-tiled family: the row-tiled expert kernel; with kLegacy: one warp per
// row; kQ4_0x8: the stacks regrouped and the gated Q4_0x8 expert GEMV (gate/up shapes only; its
// output is the activation, rows / 2 values per slot).
void BM_CudaMoeGemv(benchmark::State& state, GgmlType type, int mma_stages,
                    cuda::GemvKernel kernel) {
  if (!cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const int x_group = static_cast<int>(state.range(2));
  const int n_experts = 128, k = 8, n_sets = 16;
  const std::vector<std::byte> q = bench_weights(type, rows * n_experts, cols);
  const std::size_t copies = std::max<std::size_t>(2, (std::size_t{768} << 20) / q.size() + 1);
  std::vector<cuda::DeviceBuffer<std::byte>> stacks;
  const bool x8 = mma_stages == kQ4_0x8;
  for (std::size_t c = 0; c < copies; ++c) {
    stacks.emplace_back(std::span<const std::byte>(q));
    if (x8) cuda::repack_q4_0x8(stacks.back().data(), rows * n_experts, cols);
  }
  std::vector<int> ids;
  std::mt19937 rng(9);
  std::vector<int> all(n_experts);
  for (int e = 0; e < n_experts; ++e) all[static_cast<std::size_t>(e)] = e;
  for (int s = 0; s < n_sets; ++s) {
    std::shuffle(all.begin(), all.end(), rng);
    std::vector<int> chosen(all.begin(), all.begin() + k);
    std::sort(chosen.begin(), chosen.end());
    ids.insert(ids.end(), chosen.begin(), chosen.end());
  }
  cuda::DeviceBuffer<int> dids{std::span<const int>(ids)};
  const std::size_t x_rows = static_cast<std::size_t>((k - 1) / x_group + 1);
  std::vector<float> x(x_rows * cols, 0.5f);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, dy(rows * k);
  cuda::detail::set_gemv_mma_stages(x8 ? 12 : mma_stages);
  cuda::set_gemv_kernel(kernel);
  cuda::ExpertStack w;
  w.type = type;
  w.rows = rows;
  w.cols = cols;
  w.expert_bytes = rows * row_bytes(type, cols);
  w.n_experts = n_experts;
  if (x8) w.layout = cuda::WeightLayout::kQ4_0x8;
  cuda::Stream stream;
  cuda::Event start, stop;
  const int calls = static_cast<int>(copies) * n_sets;
  auto run_all = [&] {
    for (int c = 0; c < calls; ++c) {
      w.data = stacks[static_cast<std::size_t>(c) % copies].data();
      if (x8) {
        cuda::moe_gemv_q4_0x8_glu(FfnActivation::kGeluTanhGlu, w, dids.data() + (c % n_sets) * k, k,
                                  dx.data(), dy.data(), rows / 2, stream.get());
      } else {
        cuda::moe_gemv(w, dids.data() + (c % n_sets) * k, k, x_group, dx.data(), dy.data(), rows,
                       stream.get());
      }
    }
  };
  cuda::Graph graph;
  graph.capture(stream.get(), run_all);
  graph.launch(stream.get());
  stream.synchronize();
  for (auto _ : state) {
    start.record(stream.get());
    graph.launch(stream.get());
    stop.record(stream.get());
    stop.synchronize();
    state.SetIterationTime(cuda::Event::elapsed_ms(start, stop) * 1e-3 / calls);
  }
  const double bytes = static_cast<double>(k * w.expert_bytes) + 4.0 * (cols * x_rows + rows * k);
  state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GB/s"] = copy_bandwidth_gbs();
  const bool legacy = kernel == cuda::GemvKernel::kLegacy;
  state.SetLabel(std::string(type_name(type)) +
                 (x8                ? " q4_0x8 gated "
                  : legacy          ? " warp-per-row "
                  : mma_stages != 0 ? " mma/tiled "
                                    : " tiled ") +
                 cuda::devices().at(0).name);
  cuda::detail::set_gemv_mma_stages(12);
  cuda::set_gemv_kernel(cuda::GemvKernel::kTiled);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "tokens"});
  for (const std::int64_t rows : {4096, 14336}) b->Args({rows, 4096, 1});
  b->Args({4096, 14336, 1});
  b->Args({4096, 4096, 4});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
}

void q4_0_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "tokens"});
  for (const std::int64_t tokens : {1, 2, 4, 8}) {
    b->Args({4096, 4096, tokens});
    b->Args({14336, 4096, tokens});
  }
  b->Args({4096, 14336, 1});
  b->Args({4096, 14336, 4});
  b->Args({6144, 4096, 1});    // Llama-3-8B's fused Q/K/V
  b->Args({5376, 5376, 1});    // Gemma 4 31B-sized square
  b->Args({5376, 8192, 1});    // Gemma 4 31B's attention output (sliding layers)
  b->Args({16384, 5376, 1});   // Gemma 4 31B's fused Q/K/V (sliding layers)
  b->Args({5376, 21504, 1});   // Gemma 4 31B's down projection
  b->Args({262144, 2816, 1});  // a Q4_0 LM head
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
}

void lm_head_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "tokens"});
  b->Args({262144, 2816, 1});  // Gemma 4 LM head
  b->Args({128256, 4096, 1});  // Llama 3 LM head
  b->Args({262144, 5376, 1});  // Gemma 4 31B LM head
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
}

void moe_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "x_group"});
  b->Args({1408, 2816, 8});  // gate_up of 26B-A4B
  b->Args({2816, 704, 1});   // down
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.05);
}

BENCHMARK_CAPTURE(BM_CudaGemv, q4_0x8, GgmlType::Q4_0, cuda::GemvKernel::kTiled, kQ4_0x8)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0x8_p1, GgmlType::Q4_0, cuda::GemvKernel::kTiled, kQ4_0x8, 1)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0x8_p2, GgmlType::Q4_0, cuda::GemvKernel::kTiled, kQ4_0x8, 2)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0x8_p4, GgmlType::Q4_0, cuda::GemvKernel::kTiled, kQ4_0x8, 4)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0x8_r1, GgmlType::Q4_0, cuda::GemvKernel::kTiled, kQ4_0x8 - 1)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0x8_r2, GgmlType::Q4_0, cuda::GemvKernel::kTiled, kQ4_0x8 - 2)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0x8_r4, GgmlType::Q4_0, cuda::GemvKernel::kTiled, kQ4_0x8 - 4)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_mma2, GgmlType::Q4_0, cuda::GemvKernel::kTiled, 2)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_mma3, GgmlType::Q4_0, cuda::GemvKernel::kTiled, 3)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_mma4, GgmlType::Q4_0, cuda::GemvKernel::kTiled, 4)
    ->Apply(q4_0_shapes);
// 12..14: chunks of 256 elements (8 blocks) with 2..4 stages (less shared memory per warp).
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_mma12, GgmlType::Q4_0, cuda::GemvKernel::kTiled, 12)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_mma13, GgmlType::Q4_0, cuda::GemvKernel::kTiled, 13)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_mma14, GgmlType::Q4_0, cuda::GemvKernel::kTiled, 14)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_cudacore, GgmlType::Q4_0, cuda::GemvKernel::kTiled, 0)
    ->Apply(q4_0_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q6_k_head, GgmlType::Q6_K, cuda::GemvKernel::kTiled, 12)
    ->Apply(lm_head_shapes);
BENCHMARK(BM_CudaGemvQ6KRows2)->Apply(lm_head_shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q6_k_head_legacy, GgmlType::Q6_K, cuda::GemvKernel::kLegacy)
    ->Apply(lm_head_shapes);
BENCHMARK_CAPTURE(BM_CudaMoeGemv, q4_0_mma, GgmlType::Q4_0, 12, cuda::GemvKernel::kTiled)
    ->Apply(moe_shapes);
BENCHMARK_CAPTURE(BM_CudaMoeGemv, q4_0_tiled, GgmlType::Q4_0, 0, cuda::GemvKernel::kTiled)
    ->Apply(moe_shapes);
BENCHMARK_CAPTURE(BM_CudaMoeGemv, q4_0_warp, GgmlType::Q4_0, 0, cuda::GemvKernel::kLegacy)
    ->Apply(moe_shapes);
BENCHMARK_CAPTURE(BM_CudaMoeGemv, q4_0x8_glu, GgmlType::Q4_0, kQ4_0x8, cuda::GemvKernel::kTiled)
    ->Args({1408, 2816, 8})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);

BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_tiled, GgmlType::Q4_0, cuda::GemvKernel::kTiled)->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_0_legacy, GgmlType::Q4_0, cuda::GemvKernel::kLegacy)
    ->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_k_tiled, GgmlType::Q4_K, cuda::GemvKernel::kTiled)->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q4_k_legacy, GgmlType::Q4_K, cuda::GemvKernel::kLegacy)
    ->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q8_0_tiled, GgmlType::Q8_0, cuda::GemvKernel::kTiled)->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q8_0_legacy, GgmlType::Q8_0, cuda::GemvKernel::kLegacy)
    ->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q6_k_tiled, GgmlType::Q6_K, cuda::GemvKernel::kTiled)->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q6_k_legacy, GgmlType::Q6_K, cuda::GemvKernel::kLegacy)
    ->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q5_0_tiled, GgmlType::Q5_0, cuda::GemvKernel::kTiled)->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, q5_0_legacy, GgmlType::Q5_0, cuda::GemvKernel::kLegacy)
    ->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, bf16_tiled, GgmlType::BF16, cuda::GemvKernel::kTiled)->Apply(shapes);
BENCHMARK_CAPTURE(BM_CudaGemv, bf16_legacy, GgmlType::BF16, cuda::GemvKernel::kLegacy)
    ->Apply(shapes);

}  // namespace
}  // namespace qforge

#endif  // QFORGE_HAVE_CUDA
