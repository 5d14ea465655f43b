#include "tokenizer/pretokenizer.h"

#include <algorithm>
#include <array>
#include <initializer_list>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace qforge {
namespace {

// Patterns from the vocabularies' tokenizer.json files (case-insensitive groups spelled out).
constexpr std::string_view kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr std::string_view kLlama3 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)"
    R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)"
    R"(\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Cased letters (Lu, Ll, Lt) of an older Unicode version, spelled as escapes so that no editor
// can normalise them (several are canonical singletons such as U+212A KELVIN SIGN).
constexpr std::string_view kDeepseekLlmLetters =
    R"(\s?[A-Za-z\x{b5}\x{c0}-\x{d6}\x{d8}-\x{f6}\x{f8}-\x{1ba}\x{1bc}-\x{1bf})"
    R"(\x{1c4}-\x{293}\x{295}-\x{2af}\x{370}-\x{373}\x{376}-\x{377}\x{37b}-\x{37d})"
    R"(\x{37f}\x{386}\x{388}-\x{38a}\x{38c}\x{38e}-\x{3a1}\x{3a3}-\x{3f5})"
    R"(\x{3f7}-\x{481}\x{48a}-\x{52f}\x{531}-\x{556}\x{10a0}-\x{10c5}\x{13a0}-\x{13f5})"
    R"(\x{13f8}-\x{13fd}\x{1c90}-\x{1cba}\x{1cbd}-\x{1cbf}\x{1d00}-\x{1d2b})"
    R"(\x{1d6b}-\x{1d77}\x{1d79}-\x{1d9a}\x{1e00}-\x{1f15}\x{1f18}-\x{1f1d})"
    R"(\x{1f20}-\x{1f45}\x{1f48}-\x{1f4d}\x{1f50}-\x{1f57}\x{1f59}\x{1f5b}\x{1f5d})"
    R"(\x{1f5f}-\x{1f7d}\x{1f80}-\x{1fb4}\x{1fb6}-\x{1fbc}\x{1fbe}\x{1fc2}-\x{1fc4})"
    R"(\x{1fc6}-\x{1fcc}\x{1fd0}-\x{1fd3}\x{1fd6}-\x{1fdb}\x{1fe0}-\x{1fec})"
    R"(\x{1ff2}-\x{1ff4}\x{1ff6}-\x{1ffc}\x{2102}\x{2107}\x{210a}-\x{2113}\x{2115})"
    R"(\x{2119}-\x{211d}\x{2124}\x{2126}\x{2128}\x{212a}-\x{212d}\x{212f}-\x{2134})"
    R"(\x{2139}\x{213c}-\x{213f}\x{2145}-\x{2149}\x{214e}\x{2183}-\x{2184})"
    R"(\x{2c00}-\x{2c7b}\x{2c7e}-\x{2ce4}\x{2ceb}-\x{2cee}\x{2cf2}-\x{2cf3})"
    R"(\x{a640}-\x{a66d}\x{a680}-\x{a69b}\x{a722}-\x{a76f}\x{a771}-\x{a787})"
    R"(\x{a78b}-\x{a78e}\x{ab70}-\x{abbf}\x{fb00}-\x{fb06}\x{fb13}-\x{fb17})"
    R"(\x{ff21}-\x{ff3a}\x{ff41}-\x{ff5a}\x{10400}-\x{1044f}\x{104b0}-\x{104d3})"
    R"(\x{104d8}-\x{104fb}\x{10c80}-\x{10cb2}\x{10cc0}-\x{10cf2}\x{118a0}-\x{118df})"
    R"(\x{1e900}-\x{1e943}]+)";
constexpr std::string_view kDeepseekLlmPunct =
    R"(\s?[!-/:-~\x{ff01}-\x{ff0f}\x{ff1a}-\x{ff5e}\x{2018}-\x{201f}\x{3000}-\x{3002}]+)";
constexpr std::string_view kCjk = R"([\x{4e00}-\x{9fa5}\x{800}-\x{4e00}\x{ac00}-\x{d7ff}]+)";
constexpr std::string_view kPoro =
    R"( ?[^(\s|.,!?\x{2026}\x{3002}\x{ff0c}\x{3001}\x{964}\x{6d4}\x{60c})]+)";

struct PreSpec {
  std::initializer_list<std::string_view> names;
  std::initializer_list<std::string_view> patterns;
  bool ignore_merges = false;
};

const std::array<PreSpec, 10>& specs() {
  static const std::array<PreSpec, 10> table = {{
      {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", R"([0-9][0-9][0-9])"}},
      {{"gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion"}, {kGpt2}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"}, {kLlama3}, true},
      {{"qwen2", "stablelm2", "hunyuan"}, {kQwen2}},
      {{"chatglm-bpe"}, {kLlama3}},
      {{"deepseek-llm"},
       {R"([\r\n])", kDeepseekLlmLetters, kDeepseekLlmPunct, R"(\s+$)", kCjk, R"(\p{N}+)"}},
      {{"deepseek-coder"}, {R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kCjk, R"(\p{N})"}},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, R"([0-9][0-9][0-9])"}},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
       {R"(\p{N})", kGpt2}},
      {{"poro-chat", "bloom", "gpt3-finnish"}, {kPoro}},
  }};
  return table;
}

}  // namespace

PreTokenizer::PreTokenizer(std::string_view pre) {
  for (const PreSpec& spec : specs()) {
    if (std::find(spec.names.begin(), spec.names.end(), pre) == spec.names.end()) continue;
    for (std::string_view pattern : spec.patterns) regexes_.emplace_back(pattern);
    ignore_merges_ = spec.ignore_merges;
    return;
  }
  fail("unsupported pre-tokenizer '{}' (tokenizer.ggml.pre)", pre);
}

std::vector<std::string_view> PreTokenizer::supported_names() {
  std::vector<std::string_view> names;
  for (const PreSpec& spec : specs())
    names.insert(names.end(), spec.names.begin(), spec.names.end());
  return names;
}

void PreTokenizer::split(std::string_view text,
                         std::vector<std::pair<std::size_t, std::size_t>>& words) const {
  if (text.empty()) return;
  const std::vector<DecodedCodepoint> decoded = utf8_decode_lenient(text);
  std::vector<std::uint32_t> cps(decoded.size());
  for (std::size_t i = 0; i < decoded.size(); ++i) cps[i] = decoded[i].cp;

  // Piece boundaries in codepoint indices: pieces are [cuts[i-1], cuts[i]).
  std::vector<std::size_t> cuts = {0, cps.size()};
  std::vector<std::size_t> next;
  for (const CodepointRegex& regex : regexes_) {
    next.clear();
    next.push_back(0);
    for (std::size_t i = 1; i < cuts.size(); ++i) regex.split(cps, cuts[i - 1], cuts[i], next);
    cuts.swap(next);
  }
  const auto byte_offset = [&](std::size_t cp_index) {
    return cp_index < decoded.size() ? std::size_t{decoded[cp_index].offset} : text.size();
  };
  for (std::size_t i = 1; i < cuts.size(); ++i)
    words.emplace_back(byte_offset(cuts[i - 1]), byte_offset(cuts[i]));
}

}  // namespace qforge
