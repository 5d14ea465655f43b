// Finds special token texts in the input: user-defined tokens always, control/unknown tokens
// only when asked to. At each position the longest token text wins, scanning left to right
// (as SentencePiece's user-defined symbols and HF tokenizers' added tokens behave).
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace qforge {

class SpecialMatcher {
 public:
  // `always`: matched even when parse_special is false (user-defined tokens). Empty texts are
  // ignored; for duplicate texts the first token added wins.
  void add(std::string_view text, std::int32_t id, bool always);

  // Calls on_text for each non-empty run of ordinary text and on_token for each match, in order.
  void partition(std::string_view text, bool parse_special,
                 const std::function<void(std::string_view)>& on_text,
                 const std::function<void(std::int32_t)>& on_token) const;

 private:
  struct Node {
    std::int32_t always_id = -1;
    std::int32_t special_id = -1;
  };
  std::int32_t child(std::int32_t node, unsigned char byte) const;

  std::vector<Node> nodes_ = {Node{}};
  std::unordered_map<std::uint64_t, std::int32_t> edges_;  // (node << 8 | byte) -> node
  bool first_always_[256] = {};
  bool first_any_[256] = {};
};

}  // namespace qforge
