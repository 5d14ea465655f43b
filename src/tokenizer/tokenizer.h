// Text <-> token ids for GGUF vocabularies, following llama.cpp's conventions:
//  - SentencePiece-style ("llama"): spaces become U+2581, an optional space prefix, then
//    adjacent pieces are merged best score first; characters that no piece covers fall back to
//    <0xXX> byte tokens (or the unknown token when the vocabulary has none).
//  - Byte-level BPE ("gpt2"): a regex pre-tokenizer chosen by tokenizer.ggml.pre splits the text
//    into words; each word's bytes are merged by merge rank (lowest first).
//  - Gemma 4 ("gemma4", HF BPE over a SentencePiece vocabulary): spaces become U+2581 (no
//    prefix), then UTF-8 characters are merged by merge rank; characters that are no token fall
//    back to <0xXX> byte tokens.
//  - User-defined tokens are always matched in the input and never split; control and unknown
//    tokens are matched too when parse_special is true. Matching is leftmost, longest first.
// Invalid UTF-8 never fails: an invalid byte is a symbol of its own, encoded through byte
// tokens, so decode(encode(x)) == x whenever the vocabulary has all 256 byte tokens, except
// (by design) a U+2581 in SentencePiece input (it is the escaped space and decodes as ' '), text
// after a matched special token (llama.cpp adds the space prefix there too), and byte-level
// characters that a vocabulary holds only as user-defined tokens (DeepSeek).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/vocab.h"

namespace qforge {

class GgufReader;

class Tokenizer {
 public:
  explicit Tokenizer(Vocab vocab);
  static Tokenizer from_gguf(const GgufReader& reader) { return Tokenizer(load_vocab(reader)); }
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // add_special: prepend BOS / append EOS as the vocabulary's add_bos / add_eos flags say.
  // parse_special: also recognise control/unknown token texts (e.g. "<start_of_turn>").
  std::vector<std::int32_t> encode(std::string_view text, bool add_special,
                                   bool parse_special) const;

  // Concatenated pieces. Control tokens (BOS, EOS, ...) contribute nothing unless
  // render_special; when the vocabulary adds a space prefix, the first leading space produced
  // is dropped again. Throws qforge::Error for an id outside the vocabulary.
  std::string decode(std::span<const std::int32_t> ids, bool render_special = false) const;

  // The text of one token as it would appear in the output: "▁" -> " " (SentencePiece), byte-
  // level characters -> bytes (BPE), <0xXX> -> that byte; control/unknown tokens give their
  // stored text. Throws for an id outside the vocabulary.
  std::string piece(std::int32_t id) const;

  const Vocab& vocab() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qforge
