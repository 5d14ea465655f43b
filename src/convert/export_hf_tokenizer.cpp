// tokenizer.json / tokenizer_config.json from a GGUF vocabulary (tokenizer.ggml.*).
//
// Two layouts, as Hugging Face ships them:
//  - SentencePiece-style (GGUF model "llama" or "gemma4", or any vocabulary with <0xNN> byte
//    tokens): a BPE model with byte_fallback over '▁'-for-space text, the normalizer / decoder of
//    Llama 2 (with a '▁' prefix) or Gemma (without). Merges come from tokenizer.ggml.merges when
//    the GGUF has them, else they are rebuilt from the scores (merges_from_scores).
//  - byte-level BPE (GGUF model "gpt2" without byte tokens): GPT-2's byte-to-unicode alphabet, a
//    Split pre-tokenizer with the regex of tokenizer.ggml.pre, ByteLevel decoder.
#include <algorithm>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "convert/export_gguf_meta.h"
#include "convert/export_hf.h"
#include "core/error.h"

namespace qforge {

using namespace export_detail;
using Json = nlohmann::ordered_json;

namespace {

// llama.cpp's token types.
enum TokenType : std::int32_t {
  kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

constexpr const char* kVocabPlaceholder = "__qforge_vocab_placeholder__";
constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // U+2581 '▁'

std::size_t utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xe) return 3;
  if ((c >> 3) == 0x1e) return 4;
  return 1;  // invalid lead byte: treat as one unit
}

// Gemma 4's chat markers (<|turn>, <turn|>, <|"|>, ...) reach the GGUF as NORMAL tokens from
// llama.cpp's HF vocabulary reader; in tokenizer.json they are special added tokens.
bool looks_like_marker(std::string_view t) {
  return t.size() > 3 && t.front() == '<' && t.back() == '>' &&
         (t[1] == '|' || t[t.size() - 2] == '|') && t.find(' ') == std::string_view::npos;
}

Json added_token(std::int64_t id, const std::string& content, bool special, bool normalized) {
  return Json{{"id", id},           {"content", content}, {"single_word", false},
              {"lstrip", false},    {"rstrip", false},    {"normalized", normalized},
              {"special", special}};
}

Json template_processing(const std::vector<std::string>& tokens, std::optional<std::uint64_t> bos,
                         std::optional<std::uint64_t> eos, bool add_bos, bool add_eos) {
  Json single = Json::array(), pair = Json::array(), specials = Json::object();
  const auto special = [&](std::uint64_t id) {
    const std::string& t = tokens[id];
    specials[t] = {{"id", t}, {"ids", {id}}, {"tokens", {t}}};
    return Json{{"SpecialToken", {{"id", t}, {"type_id", 0}}}};
  };
  for (const char* seq : {"A", "B"}) {
    Json& out = std::string_view(seq) == "A" ? single : pair;
    if (std::string_view(seq) == "B") {  // pair = single's pieces for A, then for B
      for (const auto& piece : single) pair.push_back(piece);
    }
    if (add_bos && bos) out.push_back(special(*bos));
    out.push_back({{"Sequence", {{"id", seq}, {"type_id", 0}}}});
    if (add_eos && eos) out.push_back(special(*eos));
  }
  return Json{{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair},
              {"special_tokens", specials}};
}

// Pre-tokenizer regexes of the byte-level vocabularies llama.cpp names in tokenizer.ggml.pre.
std::optional<std::string> byte_level_regex(std::string_view pre) {
  if (pre == "default" || pre == "gpt2" || pre.empty())
    return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  if (pre == "llama-bpe" || pre == "llama3")
    return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  return std::nullopt;
}

}  // namespace

std::string tokenizer_json_text(const HfTokenizerFiles& files) {
  std::string vocab = "{";
  for (std::size_t i = 0; i < files.vocab.size(); ++i) {
    if (i) vocab += ',';
    vocab += Json(files.vocab[i].first).dump();
    vocab += ':';
    vocab += std::to_string(files.vocab[i].second);
  }
  vocab += '}';
  std::string text = files.tokenizer.dump(-1, ' ', false);
  const std::string placeholder = Json(kVocabPlaceholder).dump();
  const std::size_t at = text.find(placeholder);
  if (at == std::string::npos) fail("internal error: tokenizer.json has no vocabulary slot");
  text.replace(at, placeholder.size(), vocab);
  return text + "\n";
}

std::vector<std::pair<std::string, std::string>> merges_from_scores(
    const std::vector<std::string>& tokens, const std::vector<float>& scores,
    const std::vector<std::int32_t>& types) {
  std::unordered_map<std::string_view, std::size_t> normal;
  normal.reserve(tokens.size());
  const auto is_normal = [&](std::size_t i) { return i >= types.size() || types[i] == kNormal; };
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (is_normal(i)) normal.emplace(tokens[i], i);

  struct Candidate {
    float score;
    std::size_t merged, left, right;
  };
  std::vector<Candidate> found;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (!is_normal(i)) continue;
    const std::string_view t = tokens[i];
    for (std::size_t k = utf8_len(static_cast<unsigned char>(t[0])); k < t.size();
         k += utf8_len(static_cast<unsigned char>(t[k]))) {
      const auto l = normal.find(t.substr(0, k));
      if (l == normal.end()) continue;
      const auto r = normal.find(t.substr(k));
      if (r == normal.end()) continue;
      found.push_back({i < scores.size() ? scores[i] : 0.0f, i, l->second, r->second});
    }
  }
  std::sort(found.begin(), found.end(), [](const Candidate& a, const Candidate& b) {
    return std::tie(b.score, a.merged, a.left, a.right) < std::tie(a.score, b.merged, b.left, b.right);
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(found.size());
  for (const auto& c : found) out.emplace_back(tokens[c.left], tokens[c.right]);
  return out;
}

HfTokenizerFiles hf_tokenizer_from_gguf(const GgufReader& g, const std::string& hf_arch,
                                        std::uint64_t max_length) {
  const auto model = meta_string(g, "tokenizer.ggml.model");
  if (!model) fail("{}: no tokenizer.ggml.model metadata: cannot write tokenizer files", g.path());
  const std::vector<std::string> tokens = meta_string_array(g, "tokenizer.ggml.tokens");
  if (tokens.empty()) fail("{}: tokenizer.ggml.tokens is missing or empty", g.path());
  const std::vector<float> scores = meta_float_array(g, "tokenizer.ggml.scores");
  std::vector<std::int32_t> types;
  if (const auto t = meta_int_list(g, "tokenizer.ggml.token_type")) {
    for (std::int64_t v : *t) types.push_back(static_cast<std::int32_t>(v));
    if (types.size() != tokens.size())
      fail("{}: tokenizer.ggml.token_type has {} entries, tokenizer.ggml.tokens {}", g.path(),
           types.size(), tokens.size());
  }
  if (!scores.empty() && scores.size() != tokens.size())
    fail("{}: tokenizer.ggml.scores has {} entries, tokenizer.ggml.tokens {}", g.path(),
         scores.size(), tokens.size());
  const auto type_of = [&](std::size_t i) { return types.empty() ? kNormal : types[i]; };
  const std::vector<std::string> gguf_merges = meta_string_array(g, "tokenizer.ggml.merges");

  const bool has_bytes = std::find(tokens.begin(), tokens.end(), "<0x00>") != tokens.end();
  const bool spm = *model == "llama" || *model == "gemma4" || has_bytes;
  if (!spm && *model != "gpt2")
    fail("{}: tokenizer.ggml.model '{}' is not supported by export-hf (llama, gemma4, gpt2)",
         g.path(), *model);

  HfTokenizerFiles out;
  const auto id_key = [&](const char* what) { return meta_token_id(g, what, tokens.size()); };
  const auto bos = id_key("bos"), eos = id_key("eos"), unk = id_key("unknown"),
             pad = id_key("padding"), mask = id_key("mask");
  const bool add_bos = meta_bool(g, "tokenizer.ggml.add_bos_token").value_or(spm);
  const bool add_eos = meta_bool(g, "tokenizer.ggml.add_eos_token").value_or(false);
  const bool prefix_space =
      meta_bool(g, "tokenizer.ggml.add_space_prefix").value_or(*model == "llama");

  // ---- vocabulary and added tokens
  std::unordered_set<std::string_view> seen;
  seen.reserve(tokens.size());
  Json added = Json::array();
  std::size_t duplicates = 0;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (!seen.insert(tokens[i]).second) {
      ++duplicates;
    } else {
      out.vocab.emplace_back(tokens[i], i);
    }
    const std::int32_t ty = type_of(i);
    const bool marker = spm && ty == kNormal && looks_like_marker(tokens[i]);
    if (ty == kControl || ty == kUnknown || marker) {
      added.push_back(added_token(static_cast<std::int64_t>(i), tokens[i], true, false));
    } else if (ty == kUserDefined) {
      // SentencePiece matches user-defined pieces in the normalized text ('▁' for spaces).
      added.push_back(added_token(static_cast<std::int64_t>(i), tokens[i], false, spm));
    }
  }
  if (duplicates > 0)
    out.notes.push_back(fmt::format("{} duplicate token strings: only the first id of each is in "
                                    "the BPE vocabulary",
                                    duplicates));

  // ---- merges
  Json merges = Json::array();
  if (!gguf_merges.empty()) {
    for (const auto& m : gguf_merges) {
      const std::size_t sp = m.find(' ', 1);
      if (sp == std::string::npos || sp + 1 >= m.size())
        fail("{}: tokenizer.ggml.merges entry '{}' is not 'LEFT RIGHT'", g.path(), m);
      merges.push_back({m.substr(0, sp), m.substr(sp + 1)});
    }
  } else if (spm) {
    for (auto& [l, r] : merges_from_scores(tokens, scores, types)) merges.push_back({l, r});
    out.notes.push_back(fmt::format(
        "tokenizer.json merges rebuilt from the SentencePiece scores: {} merges (every split of a "
        "normal token into two normal tokens, ranked by the merged token's score, then id)",
        merges.size()));
  } else {
    fail("{}: byte-level BPE vocabulary without tokenizer.ggml.merges", g.path());
  }

  const std::string unk_text = unk ? tokens[*unk] : std::string();
  Json bpe{{"type", "BPE"},
           {"dropout", nullptr},
           {"unk_token", unk ? Json(unk_text) : Json(nullptr)},
           {"continuing_subword_prefix", nullptr},
           {"end_of_word_suffix", nullptr},
           {"fuse_unk", spm},
           {"byte_fallback", spm},
           {"ignore_merges", !spm},
           {"vocab", kVocabPlaceholder},
           {"merges", std::move(merges)}};

  Json tok{{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}};
  tok["added_tokens"] = std::move(added);
  if (spm) {
    const Json replace{{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpaceMark}};
    tok["normalizer"] = prefix_space ? Json{{"type", "Sequence"},
                                            {"normalizers",
                                             {{{"type", "Prepend"}, {"prepend", kSpaceMark}}, replace}}}
                                     : replace;
    tok["pre_tokenizer"] = nullptr;
    tok["post_processor"] = template_processing(tokens, bos, eos, add_bos, add_eos);
    Json decoders = Json::array(
        {{{"type", "Replace"}, {"pattern", {{"String", kSpaceMark}}}, {"content", " "}},
         {{"type", "ByteFallback"}},
         {{"type", "Fuse"}}});
    if (prefix_space) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    tok["decoder"] = {{"type", "Sequence"}, {"decoders", std::move(decoders)}};
  } else {
    const std::string pre = meta_string(g, "tokenizer.ggml.pre").value_or("default");
    const auto regex = byte_level_regex(pre);
    if (!regex)
      fail("{}: tokenizer.ggml.pre '{}' has no known pre-tokenizer regex (known: default, gpt2, "
           "llama-bpe)",
           g.path(), pre);
    tok["normalizer"] = nullptr;
    tok["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", *regex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
    tok["post_processor"] = template_processing(tokens, bos, eos, add_bos, add_eos);
    tok["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                      {"use_regex", true}};
  }
  tok["model"] = std::move(bpe);
  out.tokenizer = std::move(tok);

  // ---- tokenizer_config.json
  Json cfg = Json::object();
  const bool gemma = hf_arch.starts_with("Gemma");
  cfg["tokenizer_class"] = !spm ? "PreTrainedTokenizerFast" : gemma ? "GemmaTokenizer" : "LlamaTokenizer";
  const auto text_or_null = [&](std::optional<std::uint64_t> id) {
    return id ? Json(tokens[*id]) : Json(nullptr);
  };
  cfg["bos_token"] = text_or_null(bos);
  cfg["eos_token"] = text_or_null(eos);
  cfg["unk_token"] = text_or_null(unk);
  cfg["pad_token"] = text_or_null(pad);
  if (mask) cfg["mask_token"] = tokens[*mask];
  cfg["add_bos_token"] = add_bos;
  cfg["add_eos_token"] = add_eos;
  if (spm && !gemma) cfg["add_prefix_space"] = prefix_space;
  if (max_length > 0) cfg["model_max_length"] = max_length;
  cfg["clean_up_tokenization_spaces"] = false;
  if (const auto chat = meta_string(g, "tokenizer.chat_template")) cfg["chat_template"] = *chat;
  out.tokenizer_config = std::move(cfg);
  return out;
}

}  // namespace qforge
