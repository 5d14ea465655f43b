#include "tokenizer/special_matcher.h"

namespace qforge {

std::int32_t SpecialMatcher::child(std::int32_t node, unsigned char byte) const {
  const auto it = edges_.find((static_cast<std::uint64_t>(node) << 8) | byte);
  return it == edges_.end() ? -1 : it->second;
}

void SpecialMatcher::add(std::string_view text, std::int32_t id, bool always) {
  if (text.empty()) return;
  std::int32_t node = 0;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    const std::uint64_t key = (static_cast<std::uint64_t>(node) << 8) | byte;
    const auto [it, inserted] = edges_.try_emplace(key, static_cast<std::int32_t>(nodes_.size()));
    if (inserted) nodes_.emplace_back();
    node = it->second;
  }
  Node& n = nodes_[static_cast<std::size_t>(node)];
  std::int32_t& slot = always ? n.always_id : n.special_id;
  if (slot < 0) slot = id;
  const auto first = static_cast<unsigned char>(text[0]);
  first_any_[first] = true;
  if (always) first_always_[first] = true;
}

void SpecialMatcher::partition(std::string_view text, bool parse_special,
                               const std::function<void(std::string_view)>& on_text,
                               const std::function<void(std::int32_t)>& on_token) const {
  const bool* first = parse_special ? first_any_ : first_always_;
  std::size_t text_start = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (!first[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    std::int32_t best_id = -1;
    std::size_t best_len = 0;
    std::int32_t node = 0;
    for (std::size_t i = pos; i < text.size(); ++i) {
      node = child(node, static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      const Node& n = nodes_[static_cast<std::size_t>(node)];
      const std::int32_t id = n.always_id >= 0 ? n.always_id : (parse_special ? n.special_id : -1);
      if (id >= 0) {
        best_id = id;
        best_len = i + 1 - pos;
      }
    }
    if (best_id < 0) {
      ++pos;
      continue;
    }
    if (pos > text_start) on_text(text.substr(text_start, pos - text_start));
    on_token(best_id);
    pos += best_len;
    text_start = pos;
  }
  if (text_start < text.size()) on_text(text.substr(text_start));
}

}  // namespace qforge
