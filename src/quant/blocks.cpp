// Dispatch from GgmlType to the per-family kernels (block_*.cpp), with the size checks every
// public entry point makes before touching memory.
#include "quant/blocks.h"

#include <algorithm>

#include "core/error.h"
#include "core/parallel.h"
#include "quant/block_kernels.h"

namespace qforge {
namespace {

struct BlockOps {
  GgmlType type;
  blocks::DequantizeFn dequantize;
  blocks::QuantizeFn quantize;
  blocks::DotFn dot;
};

#define QFORGE_OPS(T, fn)                                                         \
  BlockOps {                                                                      \
    GgmlType::T, blocks::dequantize_##fn, blocks::quantize_##fn, blocks::dot_##fn \
  }

constexpr BlockOps kOps[] = {
    QFORGE_OPS(F32, f32),       QFORGE_OPS(F16, f16),   QFORGE_OPS(BF16, bf16),
    QFORGE_OPS(Q4_0, q4_0),     QFORGE_OPS(Q4_1, q4_1), QFORGE_OPS(Q5_0, q5_0),
    QFORGE_OPS(Q5_1, q5_1),     QFORGE_OPS(Q8_0, q8_0), QFORGE_OPS(Q2_K, q2_k),
    QFORGE_OPS(Q3_K, q3_k),     QFORGE_OPS(Q4_K, q4_k), QFORGE_OPS(Q5_K, q5_k),
    QFORGE_OPS(Q6_K, q6_k),     QFORGE_OPS(Q8_K, q8_k), QFORGE_OPS(IQ4_NL, iq4_nl),
    QFORGE_OPS(IQ4_XS, iq4_xs),
};
#undef QFORGE_OPS

const BlockOps* find_ops(GgmlType type) {
  for (const auto& ops : kOps)
    if (ops.type == type) return &ops;
  return nullptr;
}

const BlockOps& ops_or_fail(GgmlType type, const char* what) {
  const BlockOps* ops = find_ops(type);
  if (ops == nullptr) {
    const auto t = ggml_type_traits(static_cast<std::uint32_t>(type));
    fail("{}: ggml type {} ({}) is not supported", what, t ? t->name : std::string_view("unknown"),
         static_cast<std::uint32_t>(type));
  }
  return *ops;
}

void check_row(GgmlType type, std::size_t n, std::size_t n_bytes, const char* what) {
  const std::size_t bs = block_size(type);
  if (n % bs != 0)
    fail("{}: row of {} {} elements is not a multiple of the block size {}", what, n,
         type_name(type), bs);
  const std::uint64_t want = row_bytes(type, n);
  if (n_bytes != want)
    fail("{}: {} row of {} elements needs {} bytes, got {}", what, type_name(type), n, want,
         n_bytes);
}

void check_importance(std::span<const float> importance, std::size_t n, const char* what) {
  if (!importance.empty() && importance.size() != n)
    fail("{}: importance has {} values, expected {} (one per column) or none", what,
         importance.size(), n);
}

}  // namespace

bool can_dequantize(GgmlType type) {
  return find_ops(type) != nullptr;
}
bool can_quantize(GgmlType type) {
  return find_ops(type) != nullptr;
}

void dequantize_row(GgmlType type, std::span<const std::byte> src, std::span<float> dst) {
  const BlockOps& ops = ops_or_fail(type, "dequantize_row");
  check_row(type, dst.size(), src.size(), "dequantize_row");
  ops.dequantize(src.data(), dst.data(), dst.size());
}

void quantize_row(GgmlType type, std::span<const float> src, std::span<std::byte> dst,
                  std::span<const float> importance) {
  const BlockOps& ops = ops_or_fail(type, "quantize_row");
  check_row(type, src.size(), dst.size(), "quantize_row");
  check_importance(importance, src.size(), "quantize_row");
  ops.quantize(src.data(), dst.data(), src.size(),
               importance.empty() ? nullptr : importance.data());
}

float dot_row(GgmlType type, std::span<const std::byte> row, std::span<const float> x) {
  const BlockOps& ops = ops_or_fail(type, "dot_row");
  check_row(type, x.size(), row.size(), "dot_row");
  return ops.dot(row.data(), x.data(), x.size());
}

void quantize_rows(GgmlType type, std::span<const float> src, std::size_t n_per_row,
                   std::span<std::byte> dst, std::span<const float> importance) {
  const BlockOps& ops = ops_or_fail(type, "quantize_rows");
  if (n_per_row == 0 || src.size() % n_per_row != 0)
    fail("quantize_rows: {} values do not form rows of {}", src.size(), n_per_row);
  const std::size_t n_rows = src.size() / n_per_row;
  if (n_per_row % block_size(type) != 0)
    fail("quantize_rows: row of {} {} elements is not a multiple of the block size {}", n_per_row,
         type_name(type), block_size(type));
  const std::size_t row_size = row_bytes(type, n_per_row);
  if (dst.size() != n_rows * row_size)
    fail("quantize_rows: {} rows of {} {} need {} bytes, got {}", n_rows, n_per_row,
         type_name(type), n_rows * row_size, dst.size());
  check_importance(importance, n_per_row, "quantize_rows");
  const float* imp = importance.empty() ? nullptr : importance.data();
  parallel_for(n_rows, [&](std::size_t begin, std::size_t end) {
    for (std::size_t r = begin; r < end; ++r)
      ops.quantize(src.data() + r * n_per_row, dst.data() + r * row_size, n_per_row, imp);
  });
}

void dequantize_rows(GgmlType type, std::span<const std::byte> src, std::size_t n_per_row,
                     std::span<float> dst) {
  const BlockOps& ops = ops_or_fail(type, "dequantize_rows");
  if (n_per_row == 0 || dst.size() % n_per_row != 0)
    fail("dequantize_rows: {} values do not form rows of {}", dst.size(), n_per_row);
  const std::size_t n_rows = dst.size() / n_per_row;
  if (n_per_row % block_size(type) != 0)
    fail("dequantize_rows: row of {} {} elements is not a multiple of the block size {}", n_per_row,
         type_name(type), block_size(type));
  const std::size_t row_size = row_bytes(type, n_per_row);
  if (src.size() != n_rows * row_size)
    fail("dequantize_rows: {} rows of {} {} need {} bytes, got {}", n_rows, n_per_row,
         type_name(type), n_rows * row_size, src.size());
  parallel_for(n_rows, [&](std::size_t begin, std::size_t end) {
    for (std::size_t r = begin; r < end; ++r)
      ops.dequantize(src.data() + r * row_size, dst.data() + r * n_per_row, n_per_row);
  });
}

}  // namespace qforge
