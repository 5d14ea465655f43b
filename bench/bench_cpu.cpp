// CPU inference benchmarks: quantized matmul (decode: 1 token, prefill: 32 tokens) per weight
// type, and whole-model prefill / decode steps of the default model when it is present.
#include <benchmark/benchmark.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "model/model.h"
#include "quant/blocks.h"
#include "runtime/cpu/kernels.h"

namespace qforge {
namespace {

#ifndef QFORGE_DEFAULT_MODEL
#define QFORGE_DEFAULT_MODEL "models/gemma-3-270m-q4_k_m.gguf"
#endif

void BM_Matmul(benchmark::State& state) {
  const auto type = static_cast<GgmlType>(state.range(0));
  const auto n_tokens = static_cast<std::size_t>(state.range(1));
  const std::size_t rows = 2048, cols = 2048;
  if (!can_quantize(type) && type != GgmlType::F32) {
    state.SkipWithError("type not quantizable in this build");
    return;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> wf(rows * cols), x(n_tokens * cols), y(n_tokens * rows);
  for (float& v : wf) v = dist(rng);
  for (float& v : x) v = dist(rng);
  std::vector<std::byte> data(rows * row_bytes(type, cols));
  if (type == GgmlType::F32) {
    std::memcpy(data.data(), wf.data(), data.size());
  } else {
    quantize_rows(type, wf, cols, data);
  }
  const WeightMatrix w{"bench", type, rows, cols, row_bytes(type, cols), data};
  for (auto _ : state) {
    cpu::matmul(w, x, n_tokens, y);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GMAC/s"] = benchmark::Counter(
      static_cast<double>(rows * cols * n_tokens) * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
  state.SetLabel(std::string(type_name(type)));
}

void MatmulArgs(benchmark::internal::Benchmark* b) {
  for (const GgmlType t : {GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0,
                           GgmlType::Q4_K, GgmlType::Q6_K}) {
    for (const int n : {1, 32}) b->Args({static_cast<long>(t), n});
  }
}
BENCHMARK(BM_Matmul)->Apply(MatmulArgs)->Unit(benchmark::kMillisecond);

std::unique_ptr<Model>& default_model() {
  static std::unique_ptr<Model> model =
      std::filesystem::exists(QFORGE_DEFAULT_MODEL) ? load_model(QFORGE_DEFAULT_MODEL) : nullptr;
  return model;
}

void BM_GemmaPrefill(benchmark::State& state) {
  auto& model = default_model();
  if (!model) {
    state.SkipWithError("default model not found");
    return;
  }
  const std::vector<std::int32_t> tokens(static_cast<std::size_t>(state.range(0)), 1000);
  auto cache = model->new_cache(1024, KvType::BF16);
  for (auto _ : state) benchmark::DoNotOptimize(model->forward(tokens, 0, *cache));
  state.counters["tokens/s"] = benchmark::Counter(
      static_cast<double>(tokens.size()) * static_cast<double>(state.iterations()),
      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GemmaPrefill)->Arg(32)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_GemmaDecode(benchmark::State& state) {
  auto& model = default_model();
  if (!model) {
    state.SkipWithError("default model not found");
    return;
  }
  auto cache = model->new_cache(1024, KvType::BF16);
  const std::vector<std::int32_t> prompt(64, 1000);
  model->forward(prompt, 0, *cache);
  const std::int32_t token = 1000;
  for (auto _ : state) {
    benchmark::DoNotOptimize(model->forward({&token, 1}, 64, *cache));  // re-runs position 64
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_GemmaDecode)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace qforge
