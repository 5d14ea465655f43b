// C API for the Python oracle tests: validates arguments, converts exceptions to error codes.
#include "capi/qforge_c.h"

#include <exception>
#include <span>
#include <string>

#include "core/error.h"
#include "quant/blocks.h"
#include "quant/ggml_type.h"

namespace {

thread_local std::string g_last_error;

int set_error(int code, std::string message) {
  g_last_error = std::move(message);
  return code;
}

// Runs body, mapping qforge::Error to QFORGE_ERR_INVALID and anything else to INTERNAL.
template <typename Body>
int guarded(Body&& body) {
  try {
    body();
    g_last_error.clear();
    return QFORGE_OK;
  } catch (const qforge::Error& e) {
    return set_error(QFORGE_ERR_INVALID, e.what());
  } catch (const std::exception& e) {
    return set_error(QFORGE_ERR_INTERNAL, e.what());
  } catch (...) {
    return set_error(QFORGE_ERR_INTERNAL, "unknown exception");
  }
}

qforge::GgmlType checked_type(uint32_t raw, int64_t n) {
  const auto t = qforge::ggml_type_traits(raw);
  if (!t) qforge::fail("ggml type {} is unknown", raw);
  if (n < 0) qforge::fail("{}: negative element count {}", t->name, n);
  if (static_cast<uint64_t>(n) % t->block_size != 0)
    qforge::fail("{}: {} elements is not a multiple of the block size {}", t->name, n,
                 t->block_size);
  return t->type;
}

std::size_t bytes_of(qforge::GgmlType type, int64_t n) {
  return static_cast<std::size_t>(qforge::row_bytes(type, static_cast<std::uint64_t>(n)));
}

}  // namespace

extern "C" {

const char* qforge_last_error(void) {
  return g_last_error.c_str();
}

int64_t qforge_row_bytes(uint32_t type, int64_t n) {
  int64_t result = -1;
  const int rc =
      guarded([&] { result = static_cast<int64_t>(bytes_of(checked_type(type, n), n)); });
  return rc == QFORGE_OK ? result : rc;
}

int qforge_can_dequantize(uint32_t type) {
  const auto t = qforge::ggml_type_traits(type);
  return t && qforge::can_dequantize(t->type) ? 1 : 0;
}

int qforge_can_quantize(uint32_t type) {
  const auto t = qforge::ggml_type_traits(type);
  return t && qforge::can_quantize(t->type) ? 1 : 0;
}

int qforge_dequantize_row(uint32_t type, const void* src, int64_t n, float* dst) {
  return guarded([&] {
    const auto t = checked_type(type, n);
    if (n > 0 && (src == nullptr || dst == nullptr)) qforge::fail("dequantize_row: null buffer");
    qforge::dequantize_row(t, {static_cast<const std::byte*>(src), bytes_of(t, n)},
                           {dst, static_cast<std::size_t>(n)});
  });
}

int qforge_quantize_row(uint32_t type, const float* src, int64_t n, void* dst,
                        const float* importance) {
  return guarded([&] {
    const auto t = checked_type(type, n);
    if (n > 0 && (src == nullptr || dst == nullptr)) qforge::fail("quantize_row: null buffer");
    const auto count = static_cast<std::size_t>(n);
    qforge::quantize_row(
        t, {src, count}, {static_cast<std::byte*>(dst), bytes_of(t, n)},
        importance ? std::span<const float>(importance, count) : std::span<const float>());
  });
}

int qforge_quantize_rows(uint32_t type, const float* src, int64_t n_rows, int64_t n_per_row,
                         void* dst, const float* importance) {
  return guarded([&] {
    const auto t = checked_type(type, n_per_row);
    if (n_rows < 0) qforge::fail("quantize_rows: negative row count {}", n_rows);
    if (n_rows > 0 && (src == nullptr || dst == nullptr))
      qforge::fail("quantize_rows: null buffer");
    const auto rows = static_cast<std::size_t>(n_rows),
               per_row = static_cast<std::size_t>(n_per_row);
    qforge::quantize_rows(
        t, {src, rows * per_row}, per_row,
        {static_cast<std::byte*>(dst), rows * bytes_of(t, n_per_row)},
        importance ? std::span<const float>(importance, per_row) : std::span<const float>());
  });
}

int qforge_dot_row(uint32_t type, const void* row, int64_t n, const float* x, float* out) {
  return guarded([&] {
    const auto t = checked_type(type, n);
    if (out == nullptr || (n > 0 && (row == nullptr || x == nullptr)))
      qforge::fail("dot_row: null buffer");
    *out = qforge::dot_row(t, {static_cast<const std::byte*>(row), bytes_of(t, n)},
                           {x, static_cast<std::size_t>(n)});
  });
}

}  // extern "C"
