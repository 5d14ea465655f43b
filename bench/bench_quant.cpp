// Throughput of the block kernels for the types the CPU engine uses most: dequantize and a
// matrix-vector product (dot_row per row) over a 4096 x 4096 matrix, and quantize over 256
// rows of 4096 (K-quant search is much slower than decoding). Single-threaded.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "quant/blocks.h"

namespace {

constexpr std::size_t kCols = 4096;
constexpr std::size_t kRows = 4096;
constexpr std::size_t kQuantizeRows = 256;

std::vector<float> gaussian(std::size_t n) {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct Matrix {
  qforge::GgmlType type;
  std::size_t row_bytes;
  std::vector<std::byte> data;
};

const Matrix& matrix(qforge::GgmlType t) {
  static std::vector<Matrix> cache;
  for (const auto& m : cache)
    if (m.type == t) return m;
  // Quantize one block-row pattern of 64 rows and tile it: building 4096 rows of K-quants
  // would dominate the benchmark start-up.
  const std::size_t rb = qforge::row_bytes(t, kCols);
  const auto src = gaussian(64 * kCols);
  std::vector<std::byte> tile(64 * rb);
  qforge::quantize_rows(t, src, kCols, tile);
  Matrix m{t, rb, std::vector<std::byte>(kRows * rb)};
  for (std::size_t r = 0; r < kRows; ++r)
    std::copy_n(tile.begin() + static_cast<std::ptrdiff_t>((r % 64) * rb), rb,
                m.data.begin() + static_cast<std::ptrdiff_t>(r * rb));
  cache.push_back(std::move(m));
  return cache.back();
}

qforge::GgmlType type_arg(const benchmark::State& state) {
  return static_cast<qforge::GgmlType>(state.range(0));
}

void BM_Dequantize(benchmark::State& state) {
  const Matrix& m = matrix(type_arg(state));
  std::vector<float> out(kCols);
  for (auto _ : state) {
    for (std::size_t r = 0; r < kRows; ++r) {
      qforge::dequantize_row(m.type, std::span(m.data).subspan(r * m.row_bytes, m.row_bytes), out);
      benchmark::DoNotOptimize(out.data());
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kRows * kCols));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * m.data.size()));
  state.SetLabel(std::string(qforge::type_name(m.type)));
}

void BM_DotMatVec(benchmark::State& state) {
  const Matrix& m = matrix(type_arg(state));
  const auto x = gaussian(kCols);
  for (auto _ : state) {
    float acc = 0.0f;
    for (std::size_t r = 0; r < kRows; ++r)
      acc += qforge::dot_row(m.type, std::span(m.data).subspan(r * m.row_bytes, m.row_bytes), x);
    benchmark::DoNotOptimize(acc);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kRows * kCols));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * m.data.size()));
  state.SetLabel(std::string(qforge::type_name(m.type)));
}

void BM_Quantize(benchmark::State& state) {
  const auto t = type_arg(state);
  const auto src = gaussian(kQuantizeRows * kCols);
  const std::size_t rb = qforge::row_bytes(t, kCols);
  std::vector<std::byte> out(rb);
  for (auto _ : state) {
    for (std::size_t r = 0; r < kQuantizeRows; ++r) {
      qforge::quantize_row(t, std::span(src).subspan(r * kCols, kCols), out);
      benchmark::DoNotOptimize(out.data());
    }
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kQuantizeRows * kCols));
  state.SetLabel(std::string(qforge::type_name(t)));
}

void types(benchmark::internal::Benchmark* b) {
  for (auto t : {qforge::GgmlType::Q4_0, qforge::GgmlType::Q8_0, qforge::GgmlType::Q4_K,
                 qforge::GgmlType::Q6_K})
    b->Arg(static_cast<std::int64_t>(t));
  b->Unit(benchmark::kMillisecond)->MinTime(0.2);
}

BENCHMARK(BM_Dequantize)->Apply(types);
BENCHMARK(BM_DotMatVec)->Apply(types);
BENCHMARK(BM_Quantize)->Apply(types);

}  // namespace
