#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/special_matcher.h"
#include "tokenizer/token_map.h"
#include "tokenizer/unicode.h"

namespace qforge {
namespace {

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

bool is_plain(TokenType t) {
  return t == TokenType::Normal || t == TokenType::Undefined || t == TokenType::UserDefined;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// "<0xAB>" -> 0xAB, else -1.
int parse_byte_token(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  const int hi = hex_digit(text[3]), lo = hex_digit(text[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::size_t utf8_symbol_length(std::string_view text, std::size_t pos) {
  const std::size_t len = utf8_valid_length(text, pos);
  return len == 0 ? 1 : len;
}

}  // namespace

struct Tokenizer::Impl {
  Vocab vocab;
  TokenMap token_to_id;
  SpecialMatcher special;
  std::array<std::int32_t, 256> byte_tokens{};  // id encoding each raw byte, -1 when none
  // SentencePiece only: ASCII bytes that no mergeable piece longer than one byte contains. Such a
  // byte can never merge with a neighbour, so the text is cut there and each part is merged on
  // its own: same result, but small priority queues (a 1 MB text with newlines is not one
  // million-entry heap).
  std::array<bool, 256> isolated{};
  // Byte-level BPE only (Gemma 4 has no regex pre-tokenizer).
  std::unique_ptr<PreTokenizer> pre;
  // Gemma 4 only: cut each text fragment into newline runs and the text between them, and emit a
  // newline run that is a token directly (llama.cpp's rules). HF merges the whole fragment; the
  // cut gives the same result unless a merge joins newlines with other characters, so it is only
  // made when no merge does (real Gemma 4 vocabularies; our tiny fixture merges "." "\n").
  bool split_newline_runs = false;
  struct Merge {
    std::int32_t rank;
    std::int32_t result;
  };
  std::unordered_map<std::uint64_t, Merge> merges;

  explicit Impl(Vocab v) : vocab(validated(std::move(v))), token_to_id(vocab.tokens) {
    for (std::int32_t id = 0; id < vocab.size(); ++id) {
      const TokenType t = vocab.types[id];
      if (t == TokenType::UserDefined) special.add(vocab.tokens[id], id, /*always=*/true);
      if (t == TokenType::Control || t == TokenType::Unknown)
        special.add(vocab.tokens[id], id, /*always=*/false);
    }
    byte_tokens.fill(-1);
    if (vocab.model == VocabModel::SentencePiece) {
      init_spm();
    } else {
      init_bpe();
    }
  }

  static Vocab validated(Vocab v) {
    v.validate("vocabulary");
    return v;
  }

  std::int32_t find(std::string_view text) const { return token_to_id.find(text); }

  void init_spm() {
    for (int b = 0; b < 0x80; ++b) isolated[b] = true;
    for (std::int32_t id = 0; id < vocab.size(); ++id) {
      const TokenType t = vocab.types[id];
      if (vocab.tokens[id].size() < 2 || (!is_plain(t) && t != TokenType::Unused)) continue;
      for (const char c : vocab.tokens[id]) isolated[static_cast<std::uint8_t>(c)] = false;
    }
    for (int b = 0; b < 256; ++b) {
      std::int32_t id = find(fmt::format("<0x{:02X}>", b));
      if (id < 0) id = find(std::string(1, static_cast<char>(b)));
      byte_tokens[b] = id;
    }
  }

  void init_bpe() {
    const bool gemma4 = vocab.model == VocabModel::Gemma4Bpe;
    if (!gemma4) pre = std::make_unique<PreTokenizer>(vocab.pre);
    for (int b = 0; b < 256; ++b) {
      std::string mapped;
      if (gemma4) {
        mapped = fmt::format("<0x{:02X}>", b);  // SentencePiece-style byte fallback tokens
      } else {
        utf8_append(mapped, byte_to_unicode(static_cast<std::uint8_t>(b)));
      }
      byte_tokens[b] = find(mapped);
    }
    split_newline_runs = gemma4;
    merges.reserve(vocab.merges.size());
    for (std::size_t rank = 0; rank < vocab.merges.size(); ++rank) {
      const std::string& m = vocab.merges[rank];
      const std::size_t space = m.find(' ', 1);
      const std::string_view left(m.data(), space);
      const std::string_view right(m.data() + space + 1, m.size() - space - 1);
      const std::int32_t l = find(left), r = find(right);
      const std::int32_t result = find(std::string(left) + std::string(right));
      // A merge whose parts or result are not tokens can never apply to token symbols.
      if (l < 0 || r < 0 || result < 0) continue;
      const std::string& joined = vocab.tokens[result];
      if (joined.find('\n') != std::string::npos &&
          joined.find_first_not_of('\n') != std::string::npos)
        split_newline_runs = false;
      const std::uint64_t key = (std::uint64_t(std::uint32_t(l)) << 32) | std::uint32_t(r);
      merges.try_emplace(key, Merge{static_cast<std::int32_t>(rank), result});
    }
  }

  [[noreturn]] void unencodable(std::string_view what) const {
    fail(
        "cannot encode {}: the vocabulary has neither a token nor byte fallback for it, and no "
        "unknown token",
        what);
  }

  void push_bytes(std::string_view bytes, std::vector<std::int32_t>& out) const {
    for (char c : bytes) {
      const std::int32_t id = byte_tokens[static_cast<std::uint8_t>(c)];
      if (id >= 0) {
        out.push_back(id);
      } else if (vocab.unk_id >= 0) {
        out.push_back(vocab.unk_id);
      } else {
        unencodable(fmt::format("byte 0x{:02X}", static_cast<std::uint8_t>(c)));
      }
    }
  }

  // ---- SentencePiece-style BPE over characters, best score first.
  void encode_spm(std::string_view text, std::vector<std::int32_t>& out) const {
    std::size_t start = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (!isolated[static_cast<std::uint8_t>(text[i])]) continue;
      merge_spm(text.substr(start, i - start), out);
      merge_spm(text.substr(i, 1), out);
      start = i + 1;
    }
    merge_spm(text.substr(start), out);
  }
  void merge_spm(std::string_view text, std::vector<std::int32_t>& out) const;
  // ---- Byte-level BPE of one pre-tokenized word (Gemma 4: of UTF-8 characters).
  struct BpeScratch;
  void encode_bpe_word(std::string_view word, BpeScratch& scratch,
                       std::vector<std::int32_t>& out) const;
  // ---- Gemma 4: one text fragment (between special tokens), spaces already escaped.
  void encode_gemma4(std::string_view text, BpeScratch& scratch,
                     std::vector<std::int32_t>& out) const;
};

void Tokenizer::Impl::merge_spm(std::string_view text, std::vector<std::int32_t>& out) const {
  if (text.empty()) return;
  // A segment is a piece of the text; merged segments remember their two halves so that a
  // merge into an unused piece can be undone at output time (SentencePiece does the same).
  struct Segment {
    std::uint32_t start, len;
    std::int32_t left = -1, right = -1;
  };
  struct Symbol {
    std::int32_t prev, next;
    std::int32_t segment;
    std::uint32_t len;  // 0 once merged into its left neighbour
  };
  struct Candidate {
    float score;
    std::int32_t left, right;
    std::uint32_t len;
  };
  struct WorseCandidate {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  std::vector<Segment> segments;
  std::vector<Symbol> symbols;
  segments.reserve(text.size() * 2);
  symbols.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t len = std::min(utf8_symbol_length(text, pos), text.size() - pos);
    const auto index = static_cast<std::int32_t>(symbols.size());
    segments.push_back({static_cast<std::uint32_t>(pos), static_cast<std::uint32_t>(len)});
    symbols.push_back({index - 1, index + 1, index, static_cast<std::uint32_t>(len)});
    pos += len;
  }
  symbols.back().next = -1;

  std::priority_queue<Candidate, std::vector<Candidate>, WorseCandidate> queue;
  const auto try_pair = [&](std::int32_t left, std::int32_t right) {
    if (left < 0 || right < 0) return;
    const std::uint32_t start = segments[symbols[left].segment].start;
    const std::uint32_t len = symbols[left].len + symbols[right].len;
    const std::int32_t id = find(text.substr(start, len));
    if (id < 0) return;
    const TokenType t = vocab.types[id];
    if (!is_plain(t) && t != TokenType::Unused) return;
    queue.push({vocab.scores[id], left, right, len});
  };
  for (std::size_t i = 1; i < symbols.size(); ++i)
    try_pair(static_cast<std::int32_t>(i - 1), static_cast<std::int32_t>(i));

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = symbols[c.left];
    Symbol& right = symbols[c.right];
    if (left.len == 0 || right.len == 0 || left.next != c.right || left.len + right.len != c.len)
      continue;  // stale: one side was merged elsewhere since
    const std::uint32_t start = segments[left.segment].start;
    segments.push_back({start, c.len, left.segment, right.segment});
    left.segment = static_cast<std::int32_t>(segments.size() - 1);
    left.len = c.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    try_pair(left.prev, c.left);
    try_pair(c.left, left.next);
  }

  std::vector<std::int32_t> stack;
  for (std::int32_t i = 0; i >= 0; i = symbols[i].next) {
    stack.push_back(symbols[i].segment);
    while (!stack.empty()) {
      const Segment s = segments[stack.back()];
      stack.pop_back();
      const std::string_view piece = text.substr(s.start, s.len);
      const std::int32_t id = find(piece);
      if (id >= 0 && is_plain(vocab.types[id])) {
        out.push_back(id);
      } else if (s.left >= 0) {
        stack.push_back(s.right);
        stack.push_back(s.left);
      } else if (byte_tokens[static_cast<std::uint8_t>(piece[0])] >= 0) {
        push_bytes(piece, out);
      } else if (vocab.unk_id >= 0) {
        out.push_back(vocab.unk_id);  // no byte fallback: one unknown token per character
      } else {
        unencodable(fmt::format("'{}'", piece));
      }
    }
  }
}

struct Tokenizer::Impl::BpeScratch {
  struct Symbol {
    std::int32_t prev, next;
    std::int32_t id;
    bool alive;
  };
  struct Candidate {
    std::int32_t rank;
    std::int32_t left, right;
    std::int32_t left_id, right_id, result;
  };
  struct WorseCandidate {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;
  std::string mapped;
};

void Tokenizer::Impl::encode_bpe_word(std::string_view word, BpeScratch& scratch,
                                      std::vector<std::int32_t>& out) const {
  if (pre != nullptr && pre->ignore_merges()) {
    scratch.mapped.clear();
    for (char c : word) utf8_append(scratch.mapped, byte_to_unicode(static_cast<std::uint8_t>(c)));
    if (const std::int32_t id = find(scratch.mapped); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  auto& symbols = scratch.symbols;
  auto& heap = scratch.heap;
  symbols.clear();
  heap.clear();
  const auto add_symbol = [&](std::int32_t id) {
    const auto index = static_cast<std::int32_t>(symbols.size());
    symbols.push_back({index - 1, index + 1, id, true});
  };
  if (vocab.model == VocabModel::Gemma4Bpe) {
    // As HF BPE with byte_fallback: a character that is no token becomes its byte tokens (or
    // the unknown token) before merging.
    for (std::size_t pos = 0; pos < word.size();) {
      const std::size_t len = std::min(utf8_symbol_length(word, pos), word.size() - pos);
      const std::string_view ch = word.substr(pos, len);
      pos += len;
      if (const std::int32_t id = find(ch); id >= 0) {
        add_symbol(id);
        continue;
      }
      const bool has_bytes = std::all_of(ch.begin(), ch.end(), [&](char c) {
        return byte_tokens[static_cast<std::uint8_t>(c)] >= 0;
      });
      if (has_bytes) {
        for (char c : ch) add_symbol(byte_tokens[static_cast<std::uint8_t>(c)]);
      } else if (vocab.unk_id >= 0) {
        add_symbol(vocab.unk_id);
      } else {
        unencodable(fmt::format("'{}'", ch));
      }
    }
  } else {
    for (char c : word) add_symbol(byte_tokens[static_cast<std::uint8_t>(c)]);
  }
  symbols.back().next = -1;
  const BpeScratch::WorseCandidate worse;
  const auto try_pair = [&](std::int32_t left, std::int32_t right) {
    if (left < 0 || right < 0) return;
    const std::int32_t l = symbols[left].id, r = symbols[right].id;
    if (l < 0 || r < 0) return;
    const auto it = merges.find((std::uint64_t(std::uint32_t(l)) << 32) | std::uint32_t(r));
    if (it == merges.end()) return;
    heap.push_back({it->second.rank, left, right, l, r, it->second.result});
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (std::size_t i = 1; i < symbols.size(); ++i)
    try_pair(static_cast<std::int32_t>(i - 1), static_cast<std::int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const BpeScratch::Candidate c = heap.back();
    heap.pop_back();
    auto& left = symbols[c.left];
    auto& right = symbols[c.right];
    if (!left.alive || !right.alive || left.next != c.right || left.id != c.left_id ||
        right.id != c.right_id)
      continue;  // stale
    left.id = c.result;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    try_pair(left.prev, c.left);
    try_pair(c.left, left.next);
  }
  for (std::int32_t i = 0; i >= 0; i = symbols[i].next) {
    if (symbols[i].id >= 0) {
      out.push_back(symbols[i].id);
    } else {
      push_bytes(word.substr(static_cast<std::size_t>(i), 1), out);  // only single bytes lack ids
    }
  }
}

void Tokenizer::Impl::encode_gemma4(std::string_view text, BpeScratch& scratch,
                                    std::vector<std::int32_t>& out) const {
  if (text.empty()) return;
  if (!split_newline_runs) {
    encode_bpe_word(text, scratch, out);
    return;
  }
  // Words of [^\n]+|[\n]+.
  for (std::size_t start = 0; start < text.size();) {
    const bool newlines = text[start] == '\n';
    std::size_t end = newlines ? text.find_first_not_of('\n', start) : text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view word = text.substr(start, end - start);
    start = end;
    if (newlines) {
      if (const std::int32_t id = find(word); id >= 0) {
        out.push_back(id);
        continue;
      }
    }
    encode_bpe_word(word, scratch, out);
  }
}

Tokenizer::Tokenizer(Vocab vocab) : impl_(std::make_unique<Impl>(std::move(vocab))) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

const Vocab& Tokenizer::vocab() const {
  return impl_->vocab;
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                            bool parse_special) const {
  const Impl& im = *impl_;
  const Vocab& v = im.vocab;
  std::vector<std::int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special && v.add_bos && v.bos_id >= 0) out.push_back(v.bos_id);

  if (v.model == VocabModel::SentencePiece) {
    // As llama.cpp: every text fragment that starts the input or follows a special token gets
    // the space prefix.
    bool prev_special = true;
    std::string escaped;
    im.special.partition(
        text, parse_special,
        [&](std::string_view fragment) {
          escaped.clear();
          if (v.add_space_prefix && prev_special) escaped.append(kSpmSpace);
          for (char c : fragment) {
            if (c == ' ') {
              escaped.append(kSpmSpace);
            } else {
              escaped.push_back(c);
            }
          }
          im.encode_spm(escaped, out);
          prev_special = false;
        },
        [&](std::int32_t id) {
          out.push_back(id);
          prev_special = true;
        });
  } else if (v.model == VocabModel::Gemma4Bpe) {
    // Every ' ' becomes U+2581 (no space prefix); special tokens are matched as for the others.
    std::string escaped;
    Impl::BpeScratch scratch;
    im.special.partition(
        text, parse_special,
        [&](std::string_view fragment) {
          escaped.clear();
          for (char c : fragment) {
            if (c == ' ') {
              escaped.append(kSpmSpace);
            } else {
              escaped.push_back(c);
            }
          }
          im.encode_gemma4(escaped, scratch, out);
        },
        [&](std::int32_t id) { out.push_back(id); });
  } else {
    std::vector<std::pair<std::size_t, std::size_t>> words;
    Impl::BpeScratch scratch;
    im.special.partition(
        text, parse_special,
        [&](std::string_view fragment) {
          words.clear();
          im.pre->split(fragment, words);
          for (const auto& [b, e] : words)
            im.encode_bpe_word(fragment.substr(b, e - b), scratch, out);
        },
        [&](std::int32_t id) { out.push_back(id); });
  }

  if (add_special && v.add_eos && v.eos_id >= 0) out.push_back(v.eos_id);
  return out;
}

std::string Tokenizer::piece(std::int32_t id) const {
  const Vocab& v = impl_->vocab;
  if (id < 0 || id >= v.size())
    fail("token id {} is outside the vocabulary (0..{})", id, v.size() - 1);
  const std::string& text = v.tokens[id];
  switch (v.types[id]) {
    case TokenType::Control:
    case TokenType::Unknown:
      return text;
    case TokenType::Byte:
      if (const int b = parse_byte_token(text); b >= 0) return std::string(1, static_cast<char>(b));
      return text;
    default:
      break;
  }
  std::string out;
  if (v.model != VocabModel::ByteLevelBpe) {  // "▁" stands for a space
    out.reserve(text.size());
    for (std::size_t pos = 0; pos < text.size();) {
      if (text.compare(pos, kSpmSpace.size(), kSpmSpace) == 0) {
        out.push_back(' ');
        pos += kSpmSpace.size();
      } else {
        out.push_back(text[pos++]);
      }
    }
    return out;
  }
  if (v.types[id] == TokenType::UserDefined) return text;  // matched verbatim from the input
  for (const DecodedCodepoint& d : utf8_decode_lenient(text)) {
    const int b = d.cp < kInvalidCodepointBase ? unicode_to_byte(d.cp) : -1;
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else if (d.cp < kInvalidCodepointBase) {
      utf8_append(out, d.cp);  // outside the byte alphabet: keep the character
    } else {
      out.push_back(static_cast<char>(d.cp - kInvalidCodepointBase));
    }
  }
  return out;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool render_special) const {
  const Vocab& v = impl_->vocab;
  std::string out;
  bool strip_space = v.add_space_prefix;
  for (const std::int32_t id : ids) {
    if (id < 0 || id >= v.size())
      fail("cannot decode token id {}: outside the vocabulary (0..{})", id, v.size() - 1);
    const TokenType t = v.types[id];
    std::string p;
    if (t == TokenType::Control && !render_special) continue;
    if (t == TokenType::Unknown && !render_special) {
      p = "\xE2\x96\x85";  // U+2585, llama.cpp's rendering of the unknown token
    } else {
      p = piece(id);
    }
    if (p.empty()) continue;
    if (strip_space && p[0] == ' ') p.erase(0, 1);
    strip_space = false;
    out += p;
  }
  return out;
}

}  // namespace qforge
