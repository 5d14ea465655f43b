// Regex pre-tokenizers of byte-level BPE vocabularies, selected by tokenizer.ggml.pre. Each
// pattern of the list splits every piece produced by the previous one into its matches and the
// gaps between them (nothing is dropped), as llama.cpp and HF tokenizers' "isolated" splits do.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/regex.h"

namespace qforge {

class PreTokenizer {
 public:
  // Throws qforge::Error for an unknown name.
  explicit PreTokenizer(std::string_view pre);

  // Appends [begin, end) byte ranges of the words of `text` (they tile the text) to `words`.
  void split(std::string_view text, std::vector<std::pair<std::size_t, std::size_t>>& words) const;

  // llama3-style vocabularies emit a word that is itself a token without running merges.
  bool ignore_merges() const { return ignore_merges_; }

  static std::vector<std::string_view> supported_names();

 private:
  std::vector<CodepointRegex> regexes_;
  bool ignore_merges_ = false;
};

}  // namespace qforge
