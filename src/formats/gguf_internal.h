// Helpers shared by the GGUF reader and writer (not part of the public API).
#pragma once

#include <cstdint>
#include <string_view>

namespace qforge::gguf_detail {

inline constexpr std::uint32_t kMaxDims = 4;         // GGML_MAX_DIMS
inline constexpr std::uint32_t kMaxArrayDepth = 16;  // nesting limit for arrays of arrays
inline constexpr std::uint64_t kDefaultAlignment = 32;
inline constexpr std::string_view kAlignmentKey = "general.alignment";

// Strict UTF-8: rejects overlong forms, surrogates and code points above U+10FFFF.
bool is_valid_utf8(std::string_view s);
// Byte offset of the first invalid sequence (s.size() when valid).
std::size_t first_invalid_utf8(std::string_view s);

inline bool is_power_of_two(std::uint64_t x) {
  return x != 0 && (x & (x - 1)) == 0;
}

}  // namespace qforge::gguf_detail
