// libFuzzer target for the tokenizers: arbitrary bytes through encode/decode of two small
// hand-built vocabularies (SentencePiece-style with byte fallback, byte-level BPE with the gpt-2
// pre-tokenizer), with and without special-token parsing. Both vocabularies have all 256 byte
// tokens, so decode(encode(x)) must give x back whenever no special token was parsed.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

using qforge::TokenType;
using qforge::Vocab;

void add(Vocab& v, std::string text, float score, TokenType type) {
  v.tokens.push_back(std::move(text));
  v.scores.push_back(score);
  v.types.push_back(type);
}

const qforge::Tokenizer& spm() {
  static const qforge::Tokenizer tok = [] {
    Vocab v;
    v.model = qforge::VocabModel::SentencePiece;
    add(v, "<unk>", 0, TokenType::Unknown);
    add(v, "<s>", 0, TokenType::Control);
    add(v, "</s>", 0, TokenType::Control);
    for (int b = 0; b < 256; ++b) add(v, fmt::format("<0x{:02X}>", b), 0, TokenType::Byte);
    const char* pieces[] = {"\xE2\x96\x81",
                            "a",
                            "b",
                            "c",
                            "ab",
                            "bc",
                            "abc",
                            "\xE2\x96\x81"
                            "a",
                            "\xC3\xA9",
                            "\xE2\x96\x81\xE2\x96\x81",
                            "<",
                            ">",
                            "x"};
    float score = -1;
    for (const char* p : pieces) add(v, p, score--, TokenType::Normal);
    add(v, "<x>", 0, TokenType::UserDefined);
    v.bos_id = 1;
    v.eos_id = 2;
    v.unk_id = 0;
    v.add_bos = true;
    v.add_space_prefix = true;
    return qforge::Tokenizer(std::move(v));
  }();
  return tok;
}

const qforge::Tokenizer& bpe() {
  static const qforge::Tokenizer tok = [] {
    Vocab v;
    v.model = qforge::VocabModel::ByteLevelBpe;
    v.pre = "gpt-2";
    for (int b = 0; b < 256; ++b) {
      std::string s;
      qforge::utf8_append(s, qforge::byte_to_unicode(static_cast<std::uint8_t>(b)));
      add(v, s, 0, TokenType::Normal);
    }
    for (const char* t : {"\xC4\xA0t", "he", "\xC4\xA0the", "in", "ing"})
      add(v, t, 0, TokenType::Normal);
    v.merges = {"\xC4\xA0 t", "h e", "\xC4\xA0t he", "i n", "in g"};
    add(v, "<|endoftext|>", 0, TokenType::Control);
    v.eos_id = v.size() - 1;
    v.add_eos = true;
    return qforge::Tokenizer(std::move(v));
  }();
  return tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const qforge::Tokenizer* tok : {&spm(), &bpe()}) {
    const auto plain = tok->encode(text, false, false);
    // Round trip, except where it cannot hold by design: user-defined "<x>" is matched even
    // without parse_special and the SPM space prefix after it stays in the output; and an input
    // U+2581 is SentencePiece's escaped space, so it decodes as ' '.
    const bool spm_input = tok == &spm();
    const bool exact = text.find("<x>") == std::string_view::npos &&
                       (!spm_input || text.find("\xE2\x96\x81") == std::string_view::npos);
    if (exact && tok->decode(plain) != text) std::abort();
    const auto special = tok->encode(text, true, true);
    (void)tok->decode(special, true);
  }
  return 0;
}
