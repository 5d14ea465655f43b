// GgufValue typed accessors, value type names and the size arithmetic of GgufTensorInfo.
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/gguf_internal.h"

namespace qforge {

std::string_view gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
      return "UINT8";
    case GgufValueType::INT8:
      return "INT8";
    case GgufValueType::UINT16:
      return "UINT16";
    case GgufValueType::INT16:
      return "INT16";
    case GgufValueType::UINT32:
      return "UINT32";
    case GgufValueType::INT32:
      return "INT32";
    case GgufValueType::FLOAT32:
      return "FLOAT32";
    case GgufValueType::BOOL:
      return "BOOL";
    case GgufValueType::STRING:
      return "STRING";
    case GgufValueType::ARRAY:
      return "ARRAY";
    case GgufValueType::UINT64:
      return "UINT64";
    case GgufValueType::INT64:
      return "INT64";
    case GgufValueType::FLOAT64:
      return "FLOAT64";
  }
  return "UNKNOWN";
}

std::string_view GgufValue::as_string(std::string_view what) const {
  if (const auto* s = std::get_if<std::string>(&value)) return *s;
  fail("{}: expected STRING, got {}", what, gguf_value_type_name(type()));
}

const GgufArray& GgufValue::as_array(std::string_view what) const {
  if (const auto* a = std::get_if<std::shared_ptr<GgufArray>>(&value); a != nullptr && *a)
    return **a;
  fail("{}: expected ARRAY, got {}", what, gguf_value_type_name(type()));
}

bool GgufValue::as_bool(std::string_view what) const {
  if (const auto* b = std::get_if<bool>(&value)) return *b;
  fail("{}: expected BOOL, got {}", what, gguf_value_type_name(type()));
}

std::uint64_t GgufValue::as_uint(std::string_view what) const {
  return std::visit(
      [&](const auto& v) -> std::uint64_t {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_signed_v<T>) {
            if (v < 0) fail("{}: expected a non-negative integer, got {}", what, v);
          }
          return static_cast<std::uint64_t>(v);
        } else {
          fail("{}: expected an unsigned integer, got {}", what, gguf_value_type_name(type()));
        }
      },
      value);
}

std::int64_t GgufValue::as_int(std::string_view what) const {
  return std::visit(
      [&](const auto& v) -> std::int64_t {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
          if constexpr (std::is_same_v<T, std::uint64_t>) {
            if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
              fail("{}: integer {} does not fit in int64", what, v);
          }
          return static_cast<std::int64_t>(v);
        } else {
          fail("{}: expected an integer, got {}", what, gguf_value_type_name(type()));
        }
      },
      value);
}

double GgufValue::as_double(std::string_view what) const {
  return std::visit(
      [&](const auto& v) -> double {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
          return static_cast<double>(v);
        } else {
          fail("{}: expected a number, got {}", what, gguf_value_type_name(type()));
        }
      },
      value);
}

GgufValue GgufValue::make_array(GgufValueType element_type, std::vector<GgufValue> items) {
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (items[i].type() != element_type)
      fail("array item {}: expected {}, got {}", i, gguf_value_type_name(element_type),
           gguf_value_type_name(items[i].type()));
  }
  auto array = std::make_shared<GgufArray>();
  array->element_type = element_type;
  array->items = std::move(items);
  return GgufValue{std::move(array)};
}

std::uint64_t GgufTensorInfo::n_elements() const {
  // ggml counts elements in int64; keep the product inside that range.
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t n = 1;
  for (const std::uint64_t d : shape) {
    if (d == 0) return 0;
    if (d > kMax / n) fail("tensor '{}': element count of shape overflows int64", name);
    n *= d;
  }
  return n;
}

std::uint64_t GgufTensorInfo::n_bytes() const {
  const GgmlTypeTraits& t = traits(type);
  const std::uint64_t row = shape.empty() ? 1 : shape[0];
  if (row % t.block_size != 0)
    fail("tensor '{}': shape[0] = {} is not a multiple of the {} block size {}", name, row, t.name,
         t.block_size);
  const std::uint64_t n = n_elements();
  const std::uint64_t blocks = n / t.block_size;
  if (blocks > std::numeric_limits<std::uint64_t>::max() / t.type_size)
    fail("tensor '{}': byte size overflows", name);
  return blocks * t.type_size;
}

}  // namespace qforge

namespace qforge::gguf_detail {

std::size_t first_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;  // no overlongs
      if (c == 0xed) hi = 0x9f;  // no surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;  // no overlongs
      if (c == 0xf4) hi = 0x8f;  // nothing above U+10FFFF
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k)
      if ((p[i + k] & 0xc0) != 0x80) return i;
    i += len;
  }
  return n;
}

bool is_valid_utf8(std::string_view s) {
  return first_invalid_utf8(s) == s.size();
}

}  // namespace qforge::gguf_detail
