// A small backtracking regex engine over codepoints, just big enough for the pre-tokenizer
// patterns of byte-level BPE vocabularies (std::regex cannot express \p{L} and friends).
//
// Supported: literals, '.', escapes \r \n \t \f \v \s \S \d, \x{HHHH} and escaped punctuation,
// Unicode classes \p{X} / \P{X} (X = L, M, N, P, S, Z, C or a two-letter general category such as
// Lu), bracket classes [...] / [^...] with ranges and the escapes above, groups (...) and (?:...),
// lookahead (?=...) / (?!...), alternation, greedy quantifiers ? * + {n} {n,} {n,m}, anchors ^ $.
// Semantics are leftmost-first (Perl/ECMAScript). The subject is the codepoint range handed to
// search(); ^, $ and lookahead see only that range, as when each pre-tokenizer fragment is
// matched on its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace qforge {

class CodepointRegex {
 public:
  // Throws qforge::Error on syntax it does not support.
  explicit CodepointRegex(std::string_view pattern);

  struct Match {
    std::size_t begin = 0;
    std::size_t end = 0;
  };
  // Leftmost non-empty match starting in [from, end) of the subject range [begin, end)
  // (indices into `subject`); false when none.
  bool search(std::span<const std::uint32_t> subject, std::size_t begin, std::size_t end,
              std::size_t from, Match& match) const;

  // Splits [begin, end) of `subject` into the matches and the gaps between them, in order
  // ("isolated" splitting): appends the boundary positions after `begin` to `cuts`.
  void split(std::span<const std::uint32_t> subject, std::size_t begin, std::size_t end,
             std::vector<std::size_t>& cuts) const;

  struct CharClass {
    bool negated = false;
    std::uint32_t categories = 0;      // bit per UnicodeCategory
    bool whitespace = false;           // \s inside
    bool non_whitespace = false;       // \S inside
    std::uint32_t not_categories = 0;  // \P{..} inside
    std::vector<std::pair<std::uint32_t, std::uint32_t>> ranges;
    std::uint64_t ascii[2] = {0, 0};  // precomputed result for codepoints < 128
    bool matches(std::uint32_t cp) const;
    bool matches_slow(std::uint32_t cp) const;
  };

  enum class Op : std::uint8_t {
    Class,
    Run,
    Split,
    Jump,
    Match,
    AssertBegin,
    AssertEnd,
    LookAhead,
    NegLookAhead
  };
  struct Inst {
    Op op;
    std::uint32_t a = 0;  // Class/Run: class index; Split: first target; Jump: target;
                          // Look*: start of the sub-program
    std::uint32_t b = 0;  // Split: second target; Look*: continuation after the sub-program
    std::uint32_t min = 0, max = 0;  // Run bounds (max = UINT32_MAX for unbounded)
  };

 private:
  bool run(std::span<const std::uint32_t> subject, std::size_t begin, std::size_t end,
           std::uint32_t pc, std::size_t pos, std::size_t& match_end) const;

  std::vector<CharClass> classes_;
  std::vector<Inst> program_;
};

}  // namespace qforge
