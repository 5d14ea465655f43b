#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace qforge {
namespace unicode_detail {
extern const std::uint32_t kCategoryRuns[];
extern const std::size_t kCategoryRunCount;
}  // namespace unicode_detail

UnicodeCategory unicode_category(std::uint32_t cp) {
  using unicode_detail::kCategoryRunCount;
  using unicode_detail::kCategoryRuns;
  if (cp > 0x10FFFF) return UnicodeCategory::Cn;
  // Last run whose first codepoint is <= cp.
  const std::uint32_t key = (cp << 8) | 0xFF;
  const std::uint32_t* end = kCategoryRuns + kCategoryRunCount;
  const std::uint32_t* it = std::upper_bound(kCategoryRuns, end, key);
  return static_cast<UnicodeCategory>(*std::prev(it) & 0xFF);
}

char unicode_major_class(std::uint32_t cp) {
  switch (unicode_category(cp)) {
    case UnicodeCategory::Ll:
    case UnicodeCategory::Lm:
    case UnicodeCategory::Lo:
    case UnicodeCategory::Lt:
    case UnicodeCategory::Lu:
      return 'L';
    case UnicodeCategory::Mc:
    case UnicodeCategory::Me:
    case UnicodeCategory::Mn:
      return 'M';
    case UnicodeCategory::Nd:
    case UnicodeCategory::Nl:
    case UnicodeCategory::No:
      return 'N';
    case UnicodeCategory::Pc:
    case UnicodeCategory::Pd:
    case UnicodeCategory::Pe:
    case UnicodeCategory::Pf:
    case UnicodeCategory::Pi:
    case UnicodeCategory::Po:
    case UnicodeCategory::Ps:
      return 'P';
    case UnicodeCategory::Sc:
    case UnicodeCategory::Sk:
    case UnicodeCategory::Sm:
    case UnicodeCategory::So:
      return 'S';
    case UnicodeCategory::Zl:
    case UnicodeCategory::Zp:
    case UnicodeCategory::Zs:
      return 'Z';
    default:
      return 'C';
  }
}

bool unicode_is_whitespace(std::uint32_t cp) {
  // PropList.txt White_Space (stable since Unicode 6.3).
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::size_t utf8_valid_length(std::string_view text, std::size_t pos) {
  const auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(text[i]); };
  const std::uint8_t b0 = byte(pos);
  if (b0 < 0x80) return 1;
  std::size_t len = 0;
  std::uint32_t cp = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    cp = b0 & 0x07;
  } else
    return 0;
  if (pos + len > text.size()) return 0;
  for (std::size_t i = 1; i < len; ++i) {
    if ((byte(pos + i) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(pos + i) & 0x3F);
  }
  static constexpr std::uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

static std::uint32_t decode_valid(std::string_view text, std::size_t pos, std::size_t len) {
  const auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<std::uint8_t>(text[pos + i]));
  };
  switch (len) {
    case 1:
      return b(0);
    case 2:
      return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3:
      return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default:
      return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

std::vector<DecodedCodepoint> utf8_decode_lenient(std::string_view text) {
  std::vector<DecodedCodepoint> out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t len = utf8_valid_length(text, pos);
    if (len == 0) {
      out.push_back({kInvalidCodepointBase + static_cast<std::uint8_t>(text[pos]),
                     static_cast<std::uint32_t>(pos)});
      ++pos;
    } else {
      out.push_back({decode_valid(text, pos, len), static_cast<std::uint32_t>(pos)});
      pos += len;
    }
  }
  return out;
}

void utf8_append(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {
// GPT-2's table: the printable bytes '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF map to
// themselves; the remaining 68 bytes map, in increasing order, to U+0100, U+0101, ...
struct ByteAlphabet {
  std::array<std::uint32_t, 256> to_unicode{};
  std::array<std::int16_t, 324> to_byte{};  // indexed by codepoint, all mapped ones are < 324
  ByteAlphabet() {
    to_byte.fill(-1);
    std::uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_unicode[b] = printable ? static_cast<std::uint32_t>(b) : next++;
      to_byte[to_unicode[b]] = static_cast<std::int16_t>(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet table;
  return table;
}
}  // namespace

std::uint32_t byte_to_unicode(std::uint8_t byte) {
  return byte_alphabet().to_unicode[byte];
}

int unicode_to_byte(std::uint32_t cp) {
  if (cp >= byte_alphabet().to_byte.size()) return -1;
  return byte_alphabet().to_byte[cp];
}

}  // namespace qforge
