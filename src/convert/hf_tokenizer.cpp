// tokenizer.ggml.* metadata as llama.cpp's converter (convert_hf_to_gguf.py, gguf-py's vocab.py)
// writes it, re-derived from the tokenizer files without Python, sentencepiece or transformers.
//
// Which vocabulary path runs (as in llama.cpp, by architecture and by the files present):
//  - "llama":  tokenizer.model -> SentencePiece path; else a byte-fallback BPE tokenizer.json
//              (decoder Sequence) -> "HF Llama" path; else (e.g. Llama 3) -> GPT-2 BPE path.
//              tokenizer_config.json's add_prefix_space, when set, is written first.
//  - "gemma3": tokenizer.model -> SentencePiece path + add_space_prefix false. Without it
//              llama.cpp takes the GPT-2 BPE path, which is wrong for a byte-fallback
//              SentencePiece-style tokenizer.json ("▁" pieces and <0xXX> byte tokens are never
//              produced by a byte-level BPE tokenizer, so such a GGUF tokenizes text wrongly; for
//              our gemma3_tiny fixture llama.cpp even refuses, see tests/data/fixtures/README.md).
//              qforge decision: such a tokenizer.json becomes the SentencePiece-style vocabulary
//              llama.cpp writes for real Gemma 3 checkpoints (model "llama", pre "default",
//              add_space_prefix false), with the tokens and token types of llama.cpp's GPT-2 path
//              (added tokens: special -> CONTROL, others -> USER_DEFINED) except that <0xXX> pieces
//              are BYTE, and scores -1000 (tokenizer.json has no piece scores; llama.cpp's
//              HF Llama path writes -1000 too). A byte-level BPE tokenizer.json keeps the GPT-2
//              path.
//  - "gemma4": HF Llama path (required), model "gemma4", merges, a few "visible" tokens forced to
//              USER_DEFINED, then add_space_prefix false and add_bos_token true.
//  - anything else: llama.cpp's generic default, the GPT-2 BPE path.
// Then the "special vocab": merges (when asked), bos/eos/unk/sep/pad/mask(/eot/eom) ids,
// add_bos/add_eos/add_sep flags, the chat template and normalizer flags.
//
// Where llama.cpp asks transformers (AutoTokenizer) we read the same facts from the files:
//  - the tokenizer's vocab_size is the size of tokenizer.json's model.vocab; added tokens are
//    tokenizer.json's added_tokens;
//  - "all special tokens" are the bos/eos/unk/sep/pad/cls/mask tokens named in
//    tokenizer_config.json plus its additional_special_tokens / extra_special_tokens;
//  - decode(encode(t)) of a non-normalized added token is assumed to give t back.
//  - tokenizer.ggml.pre: llama.cpp hashes the token ids of a test string, which needs a working
//    HF tokenizer. qforge recognises the pre-tokenizer configurations instead: none -> "default";
//    ByteLevel with its own regex -> "gpt-2"; Split(Llama 3 regex) + ByteLevel -> "llama-bpe";
//    Split(Qwen 2 regex) + ByteLevel -> "qwen2"; anything else -> "default".
#include "convert/hf_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "convert/sentencepiece_model.h"
#include "core/error.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// GGUF token types (tokenizer.ggml.token_type).
constexpr std::int32_t kNormal = 1;
constexpr std::int32_t kUnknown = 2;
constexpr std::int32_t kControl = 3;
constexpr std::int32_t kUserDefined = 4;
constexpr std::int32_t kUnused = 5;
constexpr std::int32_t kByte = 6;

// More tokens than any real vocabulary; a larger vocab_size is refused rather than allocated.
constexpr std::int64_t kMaxVocab = std::int64_t{1} << 24;

const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space

// ---------------------------------------------------------------------------------------------
// Ordered key/values with llama.cpp's GGUFWriter semantics: adding a key again overwrites its
// value but keeps its first position.
class KvList {
 public:
  void set(const std::string& key, GgufValue value) {
    for (GgufKV& kv : kvs_) {
      if (kv.key == key) {
        kv.value = std::move(value);
        return;
      }
    }
    kvs_.push_back({key, std::move(value)});
  }
  void set_string(const std::string& key, std::string v) { set(key, GgufValue{std::move(v)}); }
  void set_bool(const std::string& key, bool v) { set(key, GgufValue{v}); }
  void set_u32(const std::string& key, std::uint32_t v) { set(key, GgufValue{v}); }
  void set_strings(const std::string& key, const std::vector<std::string>& items) {
    if (items.empty()) return;  // llama.cpp writes no empty arrays
    std::vector<GgufValue> values;
    values.reserve(items.size());
    for (const std::string& s : items) values.push_back(GgufValue{s});
    set(key, GgufValue::make_array(GgufValueType::STRING, std::move(values)));
  }
  void set_floats(const std::string& key, const std::vector<float>& items) {
    if (items.empty()) return;
    std::vector<GgufValue> values;
    values.reserve(items.size());
    for (const float f : items) values.push_back(GgufValue{f});
    set(key, GgufValue::make_array(GgufValueType::FLOAT32, std::move(values)));
  }
  void set_ints(const std::string& key, const std::vector<std::int32_t>& items) {
    if (items.empty()) return;
    std::vector<GgufValue> values;
    values.reserve(items.size());
    for (const std::int32_t i : items) values.push_back(GgufValue{i});
    set(key, GgufValue::make_array(GgufValueType::INT32, std::move(values)));
  }
  std::vector<GgufKV> take() { return std::move(kvs_); }

 private:
  std::vector<GgufKV> kvs_;
};

// ---------------------------------------------------------------------------------------------
// Small JSON helpers with Python's semantics where llama.cpp relies on them.

// Python truthiness of a JSON value.
bool truthy(const json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0.0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return true;
}

// obj.get(key) for any JSON value: null when obj is not an object or has no such key.
const json& get(const json& obj, std::string_view key) {
  static const json null_value;
  if (!obj.is_object()) return null_value;
  const auto it = obj.find(key);
  return it == obj.end() ? null_value : *it;
}

std::optional<std::int64_t> as_int(const json& v) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t{INT64_MAX})
      return INT64_MAX;
    return v.get<std::int64_t>();
  }
  return std::nullopt;
}

// The text of a special token entry: a string or an AddedToken object {"content": ...}.
std::optional<std::string> token_content(const json& entry) {
  if (entry.is_string()) return entry.get<std::string>();
  const json& content = get(entry, "content");
  if (content.is_string()) return content.get<std::string>();
  return std::nullopt;
}

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  for (std::size_t pos = s.find(from); pos != std::string::npos;
       pos = s.find(from, pos + to.size()))
    s.replace(pos, from.size(), to);
  return s;
}

bool is_byte_token(std::string_view t) {
  const auto hex = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  };
  return t.size() == 6 && t.starts_with("<0x") && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

// llama.cpp marks some added tokens CONTROL by their look even when they are not "special".
bool looks_special(std::string_view t) {
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (t.starts_with("<|") && t.ends_with("|>") && t.size() >= 4) return true;
  // Fullwidth bars (U+FF5C) as in deepseek-coder.
  const std::string_view bar = "\xEF\xBD\x9C";
  if (t.starts_with(std::string("<").append(bar)) && t.ends_with(std::string(bar).append(">")) &&
      t.size() >= 2 * (1 + bar.size()))
    return true;
  return t.starts_with("<unused") && t.ends_with(">") && t.size() >= 8;
}

struct Files {
  const HfCheckpoint& ck;
  std::string path(std::string_view file) const { return (ck.dir / file).string(); }
};

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

std::string read_text_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("{}: cannot open", p.string());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: read error", p.string());
  return text;
}

// llama.cpp's hparams: config.json with text_config's keys moved to the top level.
const json* find_hparam(const HfCheckpoint& ck, std::initializer_list<std::string_view> keys) {
  const json& text = get(ck.config, "text_config");
  for (const std::string_view key : keys) {
    if (text.is_object() && text.contains(key)) return &text[std::string(key)];
    if (ck.config.is_object() && ck.config.contains(key)) return &ck.config[std::string(key)];
  }
  return nullptr;
}

std::int64_t checked_vocab_size(const json& v, const std::string& where) {
  const auto n = as_int(v);
  if (!n || *n < 0 || *n > kMaxVocab)
    fail("{}: vocab_size {} is not a vocabulary size (0..{})", where, v.dump(), kMaxVocab);
  return *n;
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json access

const json& tokenizer_json(const Files& f) {
  if (!f.ck.tokenizer_json)
    fail("{}: no tokenizer.json (and no tokenizer.model): cannot build the vocabulary",
         f.ck.dir.string());
  return *f.ck.tokenizer_json;
}

const json& tokenizer_model(const Files& f) {
  const json& model = get(tokenizer_json(f), "model");
  if (!model.is_object()) fail("{}: model is missing or not an object", f.path("tokenizer.json"));
  return model;
}

// model.vocab as id -> token (dense, ids 0..n-1 expected).
std::map<std::int64_t, std::string> model_vocab(const Files& f) {
  const json& vocab = get(tokenizer_model(f), "vocab");
  if (!vocab.is_object())
    fail("{}: model.vocab is {}, expected an object of token -> id", f.path("tokenizer.json"),
         vocab.type_name());
  std::map<std::int64_t, std::string> by_id;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const auto id = as_int(it.value());
    if (!id || *id < 0 || *id >= kMaxVocab)
      fail("{}: model.vocab[{}] = {} is not a token id", f.path("tokenizer.json"),
           json(it.key()).dump(), it.value().dump());
    if (!by_id.emplace(*id, it.key()).second)
      fail("{}: model.vocab: id {} is used by {} and {}", f.path("tokenizer.json"), *id,
           json(by_id[*id]).dump(), json(it.key()).dump());
  }
  return by_id;
}

struct AddedToken {
  std::int64_t id;
  std::string content;
  bool special;
};

std::vector<AddedToken> added_tokens(const Files& f) {
  std::vector<AddedToken> out;
  if (!f.ck.tokenizer_json) return out;
  const json& list = get(*f.ck.tokenizer_json, "added_tokens");
  if (list.is_null()) return out;
  if (!list.is_array())
    fail("{}: added_tokens is {}, expected a list", f.path("tokenizer.json"), list.type_name());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const json& t = list[i];
    const auto id = as_int(get(t, "id"));
    const json& content = get(t, "content");
    if (!id || *id < 0 || *id >= kMaxVocab || !content.is_string())
      fail("{}: added_tokens[{}] needs an integer id (0..{}) and a string content",
           f.path("tokenizer.json"), i, kMaxVocab - 1);
    out.push_back({*id, content.get<std::string>(), truthy(get(t, "special"))});
  }
  std::stable_sort(out.begin(), out.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Vocabulary paths

struct BuiltVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;  // empty: no tokenizer.ggml.scores
  std::vector<std::int32_t> types;
};

// llama.cpp's SentencePiece path: pieces of tokenizer.model, sized to the config's vocab_size
// (missing ids are "[PAD<id>]", score -10000, UNUSED), then added_tokens.json and
// tokenizer_config.json's added_tokens_decoder override tokens.
BuiltVocab sentencepiece_vocab(const Files& f) {
  const SentencePieceModel spm = SentencePieceModel::load(*f.ck.tokenizer_model);
  const auto n_pieces = static_cast<std::int64_t>(spm.pieces.size());
  std::int64_t vocab_size = n_pieces;
  if (const json* v = find_hparam(f.ck, {"vocab_size_per_layer_input", "vocab_size"});
      v != nullptr && truthy(*v))
    vocab_size = checked_vocab_size(*v, f.path("config.json"));

  BuiltVocab out;
  const auto n = static_cast<std::size_t>(vocab_size);
  out.tokens.resize(n);
  out.scores.assign(n, -10000.0f);
  out.types.assign(n, kUnused);
  for (std::size_t i = 0; i < n; ++i) out.tokens[i] = "[PAD" + std::to_string(i) + "]";
  for (std::size_t i = 0; i < n && i < spm.pieces.size(); ++i) {
    const SpmPiece& p = spm.pieces[i];
    out.tokens[i] = p.piece;
    out.scores[i] = p.score;
    switch (p.type) {
      case SpmPieceType::Unknown:
        out.types[i] = kUnknown;
        break;
      case SpmPieceType::Control:
        out.types[i] = kControl;
        break;
      case SpmPieceType::Unused:
        out.types[i] = kUnused;
        break;
      case SpmPieceType::Byte:
        out.types[i] = kByte;
        break;
      default:
        out.types[i] = kNormal;  // NORMAL and USER_DEFINED
    }
  }

  const fs::path added_path = f.ck.dir / "added_tokens.json";
  if (is_file(added_path)) {
    // File order matters when two entries share an id (the later one wins), so keep it.
    nlohmann::ordered_json added;
    try {
      added = nlohmann::ordered_json::parse(read_text_file(added_path));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: invalid JSON: {}", added_path.string(), e.what());
    }
    if (!added.is_object()) fail("{}: expected an object of token -> id", added_path.string());
    for (auto it = added.begin(); it != added.end(); ++it) {
      if (!it.value().is_number_integer() || it.value().get<std::int64_t>() < 0)
        fail("{}: {} -> {} is not a token id", added_path.string(), json(it.key()).dump(),
             it.value().dump());
      const auto id = it.value().get<std::int64_t>();
      if (id >= vocab_size) continue;  // llama.cpp ignores ids past the vocabulary
      out.tokens[id] = it.key();
      out.scores[id] = -1000.0f;
      out.types[id] = kUserDefined;
    }
  }

  if (f.ck.tokenizer_config) {
    const json& decoder = get(*f.ck.tokenizer_config, "added_tokens_decoder");
    if (!decoder.is_null() && !decoder.is_object())
      fail("{}: added_tokens_decoder is {}, expected an object", f.path("tokenizer_config.json"),
           decoder.type_name());
    for (auto it = decoder.begin(); decoder.is_object() && it != decoder.end(); ++it) {
      std::int64_t id = -1;
      std::size_t used = 0;
      try {
        id = std::stoll(it.key(), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      const json& content = get(it.value(), "content");
      if (used == 0 || used != it.key().size() || id < 0 || !content.is_string())
        fail("{}: added_tokens_decoder[{}] needs a token id key and a string content",
             f.path("tokenizer_config.json"), json(it.key()).dump());
      if (id >= vocab_size) continue;
      std::string token = content.get<std::string>();
      if (truthy(get(it.value(), "special")) || looks_special(token)) {
        out.types[id] = kControl;
      } else {
        token = replace_all(token, kSpace, " ");  // llama.cpp pre-normalizes user-defined spaces
        out.types[id] = kUserDefined;
      }
      out.scores[id] = -1000.0f;
      out.tokens[id] = std::move(token);
    }
  }
  return out;
}

enum class HfJsonKind {
  LlamaHf,     // byte-fallback BPE with a Sequence decoder (Llama 2 / Gemma style)
  Llama3,      // BPE with ignore_merges and no byte fallback
  NotLlamaHf,  // anything else
};

HfJsonKind classify_tokenizer_json(const Files& f) {
  const json& model = tokenizer_model(f);
  const json& type = get(model, "type");
  const bool bpe = type.is_string() && type.get<std::string>() == "BPE";
  const json& fallback = get(model, "byte_fallback");
  if (bpe && truthy(get(model, "ignore_merges")) && !(fallback.is_null() ? true : truthy(fallback)))
    return HfJsonKind::Llama3;
  if (!bpe || !truthy(fallback)) return HfJsonKind::NotLlamaHf;
  const json& decoder_type = get(get(tokenizer_json(f), "decoder"), "type");
  if (!decoder_type.is_string() || decoder_type.get<std::string>() != "Sequence")
    return HfJsonKind::NotLlamaHf;
  return HfJsonKind::LlamaHf;
}

// Texts of transformers' "all special tokens": the named special tokens of tokenizer_config.json
// and its additional/extra special tokens.
std::set<std::string> all_special_tokens(const Files& f) {
  std::set<std::string> out;
  if (!f.ck.tokenizer_config) return out;
  const json& tc = *f.ck.tokenizer_config;
  for (const char* name : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                           "cls_token", "mask_token"}) {
    if (auto t = token_content(get(tc, name))) out.insert(*t);
  }
  for (const char* name : {"additional_special_tokens", "extra_special_tokens"}) {
    const json& extra = get(tc, name);
    if (!extra.is_array() && !extra.is_object()) continue;
    for (const json& item : extra) {
      if (auto t = token_content(item)) out.insert(*t);
    }
  }
  return out;
}

// The tokenizer's full vocabulary (model.vocab plus added tokens) by id.
std::map<std::int64_t, std::string> full_vocab(const Files& f,
                                               const std::vector<AddedToken>& added) {
  std::map<std::int64_t, std::string> by_id = model_vocab(f);
  for (const AddedToken& t : added) by_id[t.id] = t.content;
  return by_id;
}

// llama.cpp's HF Llama path (gguf-py LlamaHfVocab): model.vocab in id order with score -1000,
// BYTE for <0xXX>, CONTROL for the tokenizer's special tokens, then added tokens past the
// model vocabulary.
BuiltVocab llama_hf_vocab(const Files& f) {
  const std::vector<AddedToken> added = added_tokens(f);
  const std::map<std::int64_t, std::string> vocab = full_vocab(f, added);
  const auto base = static_cast<std::int64_t>(get(tokenizer_model(f), "vocab").size());

  std::map<std::string, std::int64_t> text_to_id;  // for special token lookups
  for (const auto& [id, text] : vocab) text_to_id[text] = id;
  std::set<std::int64_t> special_ids;
  const std::set<std::string> specials = all_special_tokens(f);
  for (const std::string& s : specials) {
    if (const auto it = text_to_id.find(s); it != text_to_id.end()) special_ids.insert(it->second);
  }

  BuiltVocab out;
  for (std::int64_t id = 0; id < base; ++id) {
    const auto it = vocab.find(id);
    if (it == vocab.end())
      fail("{}: token id {} is missing (model.vocab has {} entries, ids must be 0..{})",
           f.path("tokenizer.json"), id, base, base - 1);
    out.tokens.push_back(it->second);
    out.scores.push_back(-1000.0f);
    out.types.push_back(is_byte_token(it->second)  ? kByte
                        : special_ids.contains(id) ? kControl
                                                   : kNormal);
  }
  // Added tokens past the model vocabulary: transformers' get_added_vocab maps content -> id
  // (the highest id wins for repeated content); they must follow the vocabulary without gaps.
  std::map<std::string, std::int64_t> added_vocab;
  for (const AddedToken& t : added) added_vocab[t.content] = t.id;
  std::map<std::int64_t, std::string> extra;
  for (const auto& [text, id] : added_vocab) {
    if (id >= base) extra.emplace(id, text);
  }
  for (const auto& [id, text] : extra) {
    if (id != static_cast<std::int64_t>(out.tokens.size()))
      fail("{}: added token {} has id {}, expected {} (added tokens must follow the vocabulary)",
           f.path("tokenizer.json"), json(text).dump(), id, out.tokens.size());
    out.tokens.push_back(text);
    out.scores.push_back(-1000.0f);
    out.types.push_back(specials.contains(text) ? kControl : kUserDefined);
  }
  return out;
}

// llama.cpp's GPT-2 BPE path (get_vocab_base): ids 0..vocab_size-1 (config vocab_size, else the
// tokenizer's size), "[PAD<id>]" UNUSED for holes, added tokens CONTROL when special (or when
// they look special) else USER_DEFINED, everything else NORMAL. No scores.
BuiltVocab bpe_vocab(const Files& f) {
  const std::vector<AddedToken> added = added_tokens(f);
  const std::map<std::int64_t, std::string> vocab = full_vocab(f, added);
  std::map<std::string, const AddedToken*> added_by_text;
  for (const AddedToken& t : added) added_by_text[t.content] = &t;
  std::map<std::int64_t, const AddedToken*> added_by_id;
  for (const AddedToken& t : added) added_by_id[t.id] = &t;

  // Python's len(tokenizer.vocab): distinct texts.
  std::set<std::string_view> texts;
  for (const auto& [id, text] : vocab) texts.insert(text);
  std::int64_t vocab_size = static_cast<std::int64_t>(texts.size());
  if (const json* v = find_hparam(f.ck, {"vocab_size"}); v != nullptr)
    vocab_size = checked_vocab_size(*v, f.path("config.json"));
  if (!vocab.empty() && vocab.rbegin()->first >= vocab_size)
    fail("{}: token id {} is not below the config's vocab_size {}", f.path("tokenizer.json"),
         vocab.rbegin()->first, vocab_size);

  BuiltVocab out;
  for (std::int64_t id = 0; id < vocab_size; ++id) {
    const auto it = vocab.find(id);
    if (it == vocab.end()) {
      out.tokens.push_back("[PAD" + std::to_string(id) + "]");
      out.types.push_back(kUnused);
      continue;
    }
    std::string token = it->second;
    if (added_by_text.contains(token)) {
      const auto a = added_by_id.find(id);
      const bool special = a != added_by_id.end() && a->second->special;
      if (special || looks_special(token)) {
        out.types.push_back(kControl);
      } else {
        token = replace_all(token, kSpace, " ");
        out.types.push_back(kUserDefined);
      }
    } else {
      out.types.push_back(kNormal);
    }
    out.tokens.push_back(std::move(token));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer name for the GPT-2 BPE path (see the file comment).

constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string bpe_pre_name(const Files& f) {
  const json& pre = get(tokenizer_json(f), "pre_tokenizer");
  const auto type_is = [](const json& p, std::string_view t) {
    const json& type = get(p, "type");
    return type.is_string() && type.get<std::string>() == t;
  };
  if (pre.is_null()) return "default";
  if (type_is(pre, "ByteLevel") &&
      (get(pre, "use_regex").is_null() || truthy(get(pre, "use_regex"))))
    return "gpt-2";
  if (type_is(pre, "Sequence")) {
    const json& list = get(pre, "pretokenizers");
    if (list.is_array() && list.size() == 2 && type_is(list[0], "Split") &&
        type_is(list[1], "ByteLevel") && get(list[1], "use_regex") == json(false)) {
      const json& regex = get(get(list[0], "pattern"), "Regex");
      if (regex == json(kLlama3Regex)) return "llama-bpe";
      if (regex == json(kQwen2Regex)) return "qwen2";
    }
  }
  return "default";
}

// ---------------------------------------------------------------------------------------------
// gguf-py's SpecialVocab: merges, special token ids, add_* flags, chat template, normalizer.

class SpecialVocab {
 public:
  SpecialVocab(const Files& f, bool load_merges, std::optional<std::int64_t> n_vocab)
      : f_(f), load_merges_(load_merges), n_vocab_(n_vocab) {
    load_from_tokenizer_files();
    load_from_config();
    if (load_merges_ && merges_.empty()) load_merges_txt();
  }

  void add_to(KvList& kvs) const {
    kvs.set_strings("tokenizer.ggml.merges", merges_);
    for (const auto& [type, id] : ids_) {
      const std::string key = id_key(type);
      if (!key.empty()) kvs.set_u32(key, static_cast<std::uint32_t>(id));
    }
    for (const auto& [type, value] : add_) {
      if (type == "bos" || type == "eos" || type == "sep")
        kvs.set_bool("tokenizer.ggml.add_" + type + "_token", value);
    }
    if (chat_template_) add_chat_template(kvs, *chat_template_);
    if (lowercase_) kvs.set_bool("tokenizer.ggml.normalizer.lowercase", *lowercase_);
    if (strip_accents_) kvs.set_bool("tokenizer.ggml.normalizer.strip_accents", *strip_accents_);
  }

 private:
  static std::string id_key(const std::string& type) {
    if (type == "bos" || type == "eos" || type == "eot" || type == "eom" || type == "mask")
      return "tokenizer.ggml." + type + "_token_id";
    if (type == "unk") return "tokenizer.ggml.unknown_token_id";
    if (type == "sep") return "tokenizer.ggml.seperator_token_id";  // sic: llama.cpp's key
    if (type == "pad") return "tokenizer.ggml.padding_token_id";
    return "";  // e.g. cls: llama.cpp has no key for it
  }

  void set_add(const std::string& type, bool value) {
    for (auto& [t, v] : add_) {
      if (t == type) {
        v = value;
        return;
      }
    }
    add_.emplace_back(type, value);
  }

  void set_special(const std::string& type, const json& id_value) {
    const auto id = as_int(id_value);
    if (!id || id_value.is_boolean()) return;
    if (*id < 0) fail("{}: invalid {} token id {}", f_.ck.dir.string(), type, *id);
    if (n_vocab_ && *id >= *n_vocab_) return;  // out of range: llama.cpp skips it
    if (*id > std::int64_t{UINT32_MAX}) return;
    for (const auto& [t, v] : ids_) {
      if (t == type) return;  // the first source wins
    }
    ids_.emplace_back(type, *id);
  }

  void load_merges_json(const json& merges) {
    if (!merges.is_array() || merges.empty()) return;
    const std::string where = f_.path("tokenizer.json");
    if (merges[0].is_string()) {
      for (std::size_t i = 0; i < merges.size(); ++i) {
        if (!merges[i].is_string())
          fail("{}: model.merges[{}] is {}, expected a string", where, i, merges[i].type_name());
        merges_.push_back(merges[i].get<std::string>());
      }
      return;
    }
    if (merges[0].is_array() && merges[0].size() == 2 && merges[0][0].is_string()) {
      // Pairs (tokenizers >= 0.20): joined with a space; a space inside a part is written as
      // U+0120 so that the joined form can be split again.
      for (std::size_t i = 0; i < merges.size(); ++i) {
        const json& pair = merges[i];
        if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string())
          fail("{}: model.merges[{}] is not a pair of strings", where, i);
        merges_.push_back(replace_all(pair[0].get<std::string>(), " ", "\xC4\xA0") + " " +
                          replace_all(pair[1].get<std::string>(), " ", "\xC4\xA0"));
      }
      return;
    }
    fail("{}: model.merges: unknown format (expected strings or pairs of strings)", where);
  }

  void load_merges_txt() {
    const fs::path path = f_.ck.dir / "merges.txt";
    if (!is_file(path)) return;
    const std::string text = read_text_file(path);
    const auto is_space = [](char c) {
      return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
    };
    std::size_t pos = 0;
    bool first = true;
    while (pos < text.size()) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      std::string_view line(text.data() + pos, end - pos);
      pos = end + 1;
      while (!line.empty() && is_space(line.front())) line.remove_prefix(1);
      while (!line.empty() && is_space(line.back())) line.remove_suffix(1);
      if (std::exchange(first, false) && line.starts_with("#")) continue;  // version header
      if (line.empty()) continue;
      std::vector<std::string_view> parts;
      std::size_t i = 0;
      while (i < line.size()) {
        while (i < line.size() && is_space(line[i])) ++i;
        const std::size_t start = i;
        while (i < line.size() && !is_space(line[i])) ++i;
        if (i > start) parts.push_back(line.substr(start, i - start));
      }
      if (parts.size() != 2) continue;  // malformed entries are skipped, as llama.cpp does
      merges_.push_back(std::string(parts[0]) + " " + std::string(parts[1]));
    }
  }

  void parse_normalizer(const json& n) {
    const json& type = get(n, "type");
    if (!type.is_string()) return;
    const std::string t = type.get<std::string>();
    const auto flag = [&](const json& v, std::optional<bool>& out) {
      if (v.is_boolean())
        out = v.get<bool>();
      else if (v.is_null())
        out.reset();
      else
        fail("{}: normalizer flag is {}, expected true/false/null", f_.path("tokenizer.json"),
             v.dump());
    };
    if (t == "Lowercase") {
      lowercase_ = true;
    } else if (t == "StripAccents") {
      strip_accents_ = true;
    } else if (t == "BertNormalizer") {
      if (n.contains("lowercase")) flag(n["lowercase"], lowercase_);
      if (n.contains("strip_accents")) flag(n["strip_accents"], strip_accents_);
    } else if (t == "Sequence") {
      const json& list = get(n, "normalizers");
      if (list.is_array())
        for (const json& item : list) parse_normalizer(item);
    }
  }

  // A post-processor's template: infers add_bos/add_eos/add_sep and may fill in special tokens
  // that tokenizer_config.json does not name (gguf-py's crude TemplateProcessing parsing).
  void parse_template(const json& processor, json& tc, json& bos, json& cls, json& eos, json& sep) {
    const bool have_tc = truthy(tc);
    const json& single = get(processor, "single");
    const json& pair_all = get(processor, "pair");
    json first, last;
    const auto special_id = [](const json& item) -> const json& {
      return get(get(item, "SpecialToken"), "id");
    };
    if (single.is_array() && single.size() > 1) {
      first = special_id(single.front());
      if (truthy(first)) {
        if (!have_tc) {
          bos = first;
        } else if (first != bos && first != cls) {
          if (!truthy(bos)) tc["bos_token"] = bos = first;
          if (!truthy(cls)) tc["cls_token"] = cls = first;
        }
        set_add("bos", first == bos || first == cls);
      }
      last = special_id(single.back());
      if (truthy(last)) {
        if (!have_tc) {
          eos = last;
        } else if (last != eos) {
          const auto has = [&](std::string_view t) {
            return std::find(types_.begin(), types_.end(), t) != types_.end();
          };
          if (!has("eot")) {
            types_.push_back("eot");
            tc["eot_token"] = eos;
          } else if (!has("eom")) {
            types_.push_back("eom");
            tc["eom_token"] = eos;
          }
          tc["eos_token"] = eos = last;
        }
        set_add("eos", last == eos);
      }
    }
    if (!pair_all.is_array() || pair_all.empty()) return;
    std::size_t start = 0;
    std::size_t stop = pair_all.size();
    if (truthy(first) && special_id(pair_all.front()) == first) start = 1;
    if (truthy(last) && special_id(pair_all.back()) == last) stop -= 1;
    if (start >= stop) return;
    const json& a = get(get(pair_all[start], "Sequence"), "id");
    const json& b = get(get(pair_all[stop - 1], "Sequence"), "id");
    if (a != json("A") || b != json("B") || stop - start < 3) return;
    // The items between A and B: a separator (and maybe a second one).
    const std::size_t n_mid = stop - start - 2;
    bool add_sep = false;
    const json& entry = special_id(pair_all[start + 1]);
    if (truthy(entry) && (entry == sep || entry == eos) && !truthy(last)) add_sep = true;
    if (n_mid == 2) {
      const json& second = special_id(pair_all[start + 2]);
      if (truthy(second) && (second == sep || second == eos)) add_sep = true;
    }
    set_add("sep", add_sep);
    if (add_sep && !truthy(sep) && have_tc) tc["sep_token"] = eos;
  }

  void load_from_tokenizer_files() {
    const json* tj = f_.ck.tokenizer_json ? &*f_.ck.tokenizer_json : nullptr;
    json added = json::array();
    if (tj != nullptr) {
      if (load_merges_) load_merges_json(get(get(*tj, "model"), "merges"));
      if (const json& n = get(*tj, "normalizer"); truthy(n)) parse_normalizer(n);
      added = get(*tj, "added_tokens");
    }
    json tc = f_.ck.tokenizer_config ? *f_.ck.tokenizer_config : json();
    if (tj != nullptr && truthy(*tj)) {
      json bos = get(tc, "bos_token"), cls = get(tc, "cls_token");
      json eos = get(tc, "eos_token"), sep = get(tc, "sep_token");
      if (!truthy(bos) && truthy(cls) && truthy(tc)) tc["bos_token"] = bos = cls;
      if (!truthy(eos) && truthy(sep) && truthy(tc)) tc["eos_token"] = eos = sep;
      if (const json& post = get(*tj, "post_processor"); truthy(post)) {
        const json& procs = get(post, "processors");
        const json list = procs.is_null() ? json::array({post}) : procs;
        for (const json& p : list) {
          const json& type = get(p, "type");
          if (type == json("RobertaProcessing")) {
            set_add("bos", true);
            set_add("eos", true);
            set_add("sep", true);
            if (!truthy(cls) && truthy(tc)) {
              const json& c = get(p, "cls");
              tc["cls_token"] = cls = c.is_array() && !c.empty() ? c[0] : bos;
            }
            if (!truthy(sep) && truthy(tc)) {
              const json& s = get(p, "sep");
              tc["sep_token"] = sep = s.is_array() && !s.empty() ? s[0] : eos;
            }
          } else if (type == json("TemplateProcessing")) {
            parse_template(p, tc, bos, cls, eos, sep);
          }
        }
      }
    }
    if (!truthy(tc)) return;
    load_chat_template(tc);
    for (const std::string& type : types_) {
      if (const json& flag = get(tc, "add_" + type + "_token"); flag.is_boolean())
        set_add(type, flag.get<bool>());
      const auto content = token_content(get(tc, type + "_token"));
      if (!content || !added.is_array()) continue;
      for (const json& t : added) {  // the first added token with that text
        if (get(t, "content") == json(*content)) {
          set_special(type, get(t, "id"));
          break;
        }
      }
    }
  }

  void load_chat_template(const json& tc) {
    // tokenizer_config.json's chat_template wins (even when null); else chat_template.jinja
    // (with additional_chat_templates/*.jinja as named ones), else chat_template.json.
    json value;
    if (tc.contains("chat_template")) {
      value = tc["chat_template"];
    } else if (const fs::path jinja = f_.ck.dir / "chat_template.jinja"; is_file(jinja)) {
      value = read_text_file(jinja);
      std::vector<fs::path> extra;
      std::error_code ec;
      for (fs::directory_iterator it(f_.ck.dir / "additional_chat_templates", ec), end;
           !ec && it != end; it.increment(ec)) {
        if (it->path().extension() == ".jinja" && is_file(it->path())) extra.push_back(it->path());
      }
      std::sort(extra.begin(), extra.end());
      if (!extra.empty()) {
        json list = json::array({json{{"name", "default"}, {"template", value}}});
        for (const fs::path& p : extra)
          list.push_back(json{{"name", p.stem().string()}, {"template", read_text_file(p)}});
        value = std::move(list);
      }
    } else if (const fs::path jpath = f_.ck.dir / "chat_template.json"; is_file(jpath)) {
      value = get(read_json_file(jpath), "chat_template");
    }
    if (value.is_string() || value.is_array()) chat_template_ = std::move(value);
  }

  void add_chat_template(KvList& kvs, const json& value) const {
    if (value.is_string()) {
      kvs.set_string("tokenizer.chat_template", value.get<std::string>());
      return;
    }
    std::optional<std::string> default_template;
    std::vector<std::string> names;
    for (const json& choice : value) {
      if (!choice.is_object())
        fail("{}: chat_template list items must be objects {{name, template}}", f_.ck.dir.string());
      const json& name_value = get(choice, "name");
      const json& tmpl = get(choice, "template");
      const std::string raw = name_value.is_string() ? name_value.get<std::string>() : "";
      // Only ASCII letters and digits survive in the key; each other character becomes '_'.
      std::string name;
      for (std::size_t i = 0; i < raw.size(); ++i) {
        const auto c = static_cast<unsigned char>(raw[i]);
        if ((c & 0xC0) == 0x80) continue;  // UTF-8 continuation byte: same character
        const bool alnum =
            (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        name.push_back(alnum ? static_cast<char>(c) : '_');
      }
      if (name.empty() || tmpl.is_null()) continue;
      if (!tmpl.is_string())
        fail("{}: chat template '{}' is {}, expected a string", f_.ck.dir.string(), raw,
             tmpl.type_name());
      if (name == "default") {
        default_template = tmpl.get<std::string>();
      } else {
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
        kvs.set_string("tokenizer.chat_template." + name, tmpl.get<std::string>());
      }
    }
    kvs.set_strings("tokenizer.chat_templates", names);
    if (default_template) kvs.set_string("tokenizer.chat_template", *default_template);
  }

  void load_from_config() {
    const json& config = f_.ck.config;
    for (const std::string& type : types_) {
      const json* id = &get(config, type + "_token_id");
      if (id->is_null() && config.is_object() && config.contains("text_config"))
        id = &get(config["text_config"], type + "_token_id");
      set_special(type, *id);
    }
  }

  const Files& f_;
  bool load_merges_;
  std::optional<std::int64_t> n_vocab_;
  std::vector<std::string> types_ = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
  std::vector<std::string> merges_;
  std::vector<std::pair<std::string, std::int64_t>> ids_;  // in the order they were found
  std::vector<std::pair<std::string, bool>> add_;
  std::optional<json> chat_template_;
  std::optional<bool> lowercase_;
  std::optional<bool> strip_accents_;
};

// ---------------------------------------------------------------------------------------------
// The paths as llama.cpp's model classes combine them.

void write_vocab(KvList& kvs, const std::string& model, const std::optional<std::string>& pre,
                 const BuiltVocab& v) {
  kvs.set_string("tokenizer.ggml.model", model);
  if (pre) kvs.set_string("tokenizer.ggml.pre", *pre);
  kvs.set_strings("tokenizer.ggml.tokens", v.tokens);
  kvs.set_floats("tokenizer.ggml.scores", v.scores);
  kvs.set_ints("tokenizer.ggml.token_type", v.types);
}

void set_vocab_sentencepiece(KvList& kvs, const Files& f) {
  const BuiltVocab v = sentencepiece_vocab(f);
  write_vocab(kvs, "llama", "default", v);
  SpecialVocab(f, false, static_cast<std::int64_t>(v.tokens.size())).add_to(kvs);
}

void set_vocab_llama_hf(KvList& kvs, const Files& f) {
  const BuiltVocab v = llama_hf_vocab(f);
  write_vocab(kvs, "llama", "default", v);
  SpecialVocab(f, false, static_cast<std::int64_t>(v.tokens.size())).add_to(kvs);
}

void set_vocab_gpt2(KvList& kvs, const Files& f) {
  const BuiltVocab v = bpe_vocab(f);
  write_vocab(kvs, "gpt2", bpe_pre_name(f), v);
  SpecialVocab(f, true, std::nullopt).add_to(kvs);
}

void set_vocab_llama(KvList& kvs, const Files& f) {
  if (f.ck.tokenizer_config) {
    const json& prefix = get(*f.ck.tokenizer_config, "add_prefix_space");
    if (prefix.is_boolean())
      kvs.set_bool("tokenizer.ggml.add_space_prefix", prefix.get<bool>());
    else if (!prefix.is_null())
      fail("{}: add_prefix_space is {}, expected true/false", f.path("tokenizer_config.json"),
           prefix.dump());
  }
  if (f.ck.tokenizer_model) return set_vocab_sentencepiece(kvs, f);
  if (classify_tokenizer_json(f) == HfJsonKind::LlamaHf) return set_vocab_llama_hf(kvs, f);
  set_vocab_gpt2(kvs, f);
}

void set_vocab_gemma3(KvList& kvs, const Files& f) {
  if (f.ck.tokenizer_model) {
    set_vocab_sentencepiece(kvs, f);
  } else if (classify_tokenizer_json(f) == HfJsonKind::LlamaHf) {
    // qforge's decision (file comment): SentencePiece-style vocabulary from tokenizer.json.
    BuiltVocab v = bpe_vocab(f);
    v.scores.assign(v.tokens.size(), -1000.0f);
    for (std::size_t i = 0; i < v.tokens.size(); ++i)
      if (v.types[i] == kNormal && is_byte_token(v.tokens[i])) v.types[i] = kByte;
    write_vocab(kvs, "llama", "default", v);
    SpecialVocab(f, false, static_cast<std::int64_t>(v.tokens.size())).add_to(kvs);
  } else {
    return set_vocab_gpt2(kvs, f);
  }
  kvs.set_bool("tokenizer.ggml.add_space_prefix", false);
}

void set_vocab_gemma4(KvList& kvs, const Files& f) {
  if (classify_tokenizer_json(f) != HfJsonKind::LlamaHf)
    fail(
        "{}: Gemma 4 needs a byte-fallback BPE tokenizer.json (model BPE with byte_fallback, "
        "decoder Sequence)",
        f.path("tokenizer.json"));
  BuiltVocab v = llama_hf_vocab(f);
  // Always rendered, so that chat output parsers can see them.
  static const std::set<std::string> kVisible = {
      "<|channel>",       "<channel|>",       "<|tool_call>", "<tool_call|>",
      "<|tool_response>", "<tool_response|>", "<|\"|>"};
  for (std::size_t i = 0; i < v.tokens.size(); ++i)
    if (kVisible.contains(v.tokens[i])) v.types[i] = kUserDefined;
  write_vocab(kvs, "gemma4", std::nullopt, v);
  SpecialVocab(f, true, std::nullopt).add_to(kvs);
  kvs.set_bool("tokenizer.ggml.add_space_prefix", false);
  kvs.set_bool("tokenizer.ggml.add_bos_token", true);
}

}  // namespace

std::vector<GgufKV> tokenizer_metadata(const HfCheckpoint& checkpoint, std::string_view arch) {
  const Files f{checkpoint};
  KvList kvs;
  if (arch == "llama") {
    set_vocab_llama(kvs, f);
  } else if (arch == "gemma3") {
    set_vocab_gemma3(kvs, f);
  } else if (arch == "gemma4") {
    set_vocab_gemma4(kvs, f);
  } else {
    set_vocab_gpt2(kvs, f);
  }
  return kvs.take();
}

}  // namespace qforge
