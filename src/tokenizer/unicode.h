// Unicode helpers for the tokenizers: lenient UTF-8 decoding, general categories (from the
// generated unicode_tables.cpp), the White_Space property, and GPT-2's byte <-> unicode mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qforge {

// Unicode general categories; the order matches tools/gen_unicode_tables.py.
enum class UnicodeCategory : std::uint8_t {
  Cn,
  Cc,
  Cf,
  Co,
  Cs,
  Ll,
  Lm,
  Lo,
  Lt,
  Lu,
  Mc,
  Me,
  Mn,
  Nd,
  Nl,
  No,
  Pc,
  Pd,
  Pe,
  Pf,
  Pi,
  Po,
  Ps,
  Sc,
  Sk,
  Sm,
  So,
  Zl,
  Zp,
  Zs,
};

// Marks a byte that is not part of a valid UTF-8 sequence. Such bytes decode to one pseudo
// codepoint each (kInvalidCodepointBase + byte), which belongs to no category and is not
// whitespace, so regexes treat it like an unknown symbol while the original byte is kept.
inline constexpr std::uint32_t kInvalidCodepointBase = 0x110000;

UnicodeCategory unicode_category(std::uint32_t cp);
// The major class letter of the category: 'L', 'M', 'N', 'P', 'S', 'Z' or 'C' (also for
// invalid pseudo codepoints).
char unicode_major_class(std::uint32_t cp);
bool unicode_is_whitespace(std::uint32_t cp);  // the White_Space property

// Length of the UTF-8 sequence starting at text[pos] if it is valid (1..4; shortest form, no
// surrogates, <= U+10FFFF), else 0.
std::size_t utf8_valid_length(std::string_view text, std::size_t pos);

struct DecodedCodepoint {
  std::uint32_t cp;      // a codepoint, or kInvalidCodepointBase + byte
  std::uint32_t offset;  // byte offset of the sequence in the text
};
// Decodes the whole text; every invalid byte becomes its own pseudo codepoint.
std::vector<DecodedCodepoint> utf8_decode_lenient(std::string_view text);

void utf8_append(std::string& out, std::uint32_t cp);

// GPT-2 byte-level alphabet: every byte maps to one printable codepoint.
std::uint32_t byte_to_unicode(std::uint8_t byte);
// Inverse mapping; returns -1 for codepoints outside the alphabet.
int unicode_to_byte(std::uint32_t cp);

}  // namespace qforge
