// Text helpers for error messages about untrusted files (see safetensors_internal.h).
#include <fmt/format.h>

#include "formats/safetensors_internal.h"

namespace qforge::st_detail {
namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if there is none (overlong forms,
// surrogates and code points above U+10FFFF count as invalid).
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    n = 2;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    n = 3;
    if (b0 == 0xe0) lo = 0xa0;
    if (b0 == 0xed) hi = 0x9f;
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    n = 4;
    if (b0 == 0xf0) lo = 0x90;
    if (b0 == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (i + n > s.size() || byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xbf) return 0;
  }
  return n;
}

}  // namespace

std::string printable(std::string_view s, std::size_t max_chars) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(s[i]);
    if (u >= 0x80) {
      if (const std::size_t n = utf8_sequence_length(s, i); n != 0) {
        out.append(s.substr(i, n));
        i += n;
        continue;
      }
    }
    if (u < 0x20 || u >= 0x7f) {  // control characters and bytes that are not UTF-8
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += static_cast<char>(u);
    }
    ++i;
  }
  return out;
}

std::string json_error_text(const std::exception& e) {
  std::string_view text = e.what();
  // Drop nlohmann's "[json.exception.parse_error.101] " prefix; keep the readable part short.
  if (const auto close = text.find("] ");
      text.starts_with("[json.exception.") && close != std::string_view::npos) {
    text.remove_prefix(close + 2);
  }
  return printable(text, 300);
}

}  // namespace qforge::st_detail
