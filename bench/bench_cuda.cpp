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

namespace qforge {
namespace {

double copy_bandwidth_gbs() {
  static const double gbs = cuda::measure_copy_bandwidth_gbs(0, std::size_t{1} << 30, 20);
  return gbs;
}

void BM_CudaGemv(benchmark::State& state, GgmlType type, cuda::GemvKernel kernel) {
  if (!cuda::available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const auto rows = static_cast<std::size_t>(state.range(0));
  const auto cols = static_cast<std::size_t>(state.range(1));
  const int n_tokens = static_cast<int>(state.range(2));
  std::vector<float> w(rows * cols);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  for (float& f : w) f = dist(rng);
  std::vector<std::byte> q(rows * row_bytes(type, cols));
  quantize_rows(type, w, cols, q);
  const std::size_t copies = std::max<std::size_t>(2, (std::size_t{512} << 20) / q.size() + 1);
  std::vector<cuda::DeviceBuffer<std::byte>> weights;
  for (std::size_t c = 0; c < copies; ++c) weights.emplace_back(std::span<const std::byte>(q));
  std::vector<float> x(cols * n_tokens);
  for (float& f : x) f = dist(rng);
  cuda::DeviceBuffer<float> dx{std::span<const float>(x)}, dy(rows * n_tokens);
  cuda::set_gemv_kernel(kernel);
  cuda::Stream stream;
  cuda::Event start, stop;
  for (auto& wc : weights) {  // warm-up: module load, first-touch
    cuda::gemv(type, wc.data(), rows, cols, dx.data(), dy.data(), n_tokens, stream.get());
  }
  stream.synchronize();
  for (auto _ : state) {
    start.record(stream.get());
    for (auto& wc : weights) {
      cuda::gemv(type, wc.data(), rows, cols, dx.data(), dy.data(), n_tokens, stream.get());
    }
    stop.record(stream.get());
    stop.synchronize();
    state.SetIterationTime(cuda::Event::elapsed_ms(start, stop) * 1e-3 / copies);
  }
  const double bytes = static_cast<double>(q.size()) + 4.0 * (cols + rows) * n_tokens;
  state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["copy_GB/s"] = copy_bandwidth_gbs();
  state.counters["weight_MB"] = static_cast<double>(q.size()) / 1e6;
  state.SetLabel(std::string(type_name(type)) +
                 (kernel == cuda::GemvKernel::kTiled ? " tiled " : " legacy ") +
                 cuda::devices().at(0).name);
  cuda::set_gemv_kernel(cuda::GemvKernel::kTiled);
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "tokens"});
  for (const std::int64_t rows : {4096, 14336}) b->Args({rows, 4096, 1});
  b->Args({4096, 14336, 1});
  b->Args({4096, 4096, 4});
  b->UseManualTime()->Unit(benchmark::kMicrosecond)->MinTime(0.1);
}

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
