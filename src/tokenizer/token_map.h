// Token text -> id lookup for the tokenizers' inner loops: an open-addressing table of
// (hash tag, id) pairs over the vocabulary's own strings. A miss (the common case while
// merging) usually costs one probe and no string comparison; std::unordered_map's node chains
// made lookups half of the encoding time on a 262k-token vocabulary.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace qforge {

class TokenMap {
 public:
  // For duplicate texts the highest id wins (as llama.cpp's token_to_id map does).
  explicit TokenMap(const std::vector<std::string>& tokens) : tokens_(&tokens) {
    std::size_t capacity = 16;
    while (capacity < tokens.size() * 2) capacity *= 2;
    mask_ = capacity - 1;
    slots_.assign(capacity, Slot{0, -1});
    for (std::size_t id = 0; id < tokens.size(); ++id) {
      const std::uint64_t h = hash(tokens[id]);
      for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
        Slot& s = slots_[i];
        if (s.id < 0 || (s.tag == tag(h) && tokens[static_cast<std::size_t>(s.id)] == tokens[id])) {
          s = Slot{tag(h), static_cast<std::int32_t>(id)};
          break;
        }
      }
    }
  }

  // -1 when the text is not a token.
  std::int32_t find(std::string_view text) const {
    const std::uint64_t h = hash(text);
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id < 0) return -1;
      if (s.tag == tag(h) && (*tokens_)[static_cast<std::size_t>(s.id)] == text) return s.id;
    }
  }

 private:
  struct Slot {
    std::uint32_t tag;
    std::int32_t id;
  };
  static std::uint64_t hash(std::string_view s) { return std::hash<std::string_view>{}(s); }
  static std::uint32_t tag(std::uint64_t h) { return static_cast<std::uint32_t>(h >> 32); }

  const std::vector<std::string>* tokens_;
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
};

}  // namespace qforge
