#include "tokenizer/vocab.h"

#include <cmath>

#include "core/error.h"
#include "formats/gguf.h"

namespace qforge {
namespace {

const GgufArray* find_array(const GgufReader& reader, std::string_view key,
                            GgufValueType element_type) {
  const GgufValue* value = reader.find(key);
  if (value == nullptr) return nullptr;
  const std::string what = fmt::format("{}: {}", reader.path(), key);
  const GgufArray& array = value->as_array(what);
  if (array.element_type != element_type)
    fail("{}: expected an array of {}, got an array of {}", what,
         gguf_value_type_name(element_type), gguf_value_type_name(array.element_type));
  return &array;
}

std::int32_t read_id(const GgufReader& reader, std::string_view key, std::int32_t fallback) {
  const GgufValue* value = reader.find(key);
  if (value == nullptr) return fallback;
  const std::string what = fmt::format("{}: {}", reader.path(), key);
  const std::int64_t id = value->as_int(what);
  // Converters write UINT32_MAX (or -1) for "no such token".
  if (id == -1 || id == 0xFFFFFFFFLL) return -1;
  if (id < 0 || id > 0x7FFFFFFF) fail("{}: token id {} out of range", what, id);
  return static_cast<std::int32_t>(id);
}

bool read_flag(const GgufReader& reader, std::string_view key, bool fallback) {
  const GgufValue* value = reader.find(key);
  if (value == nullptr) return fallback;
  return value->as_bool(fmt::format("{}: {}", reader.path(), key));
}

}  // namespace

void Vocab::validate(std::string_view source) const {
  const std::size_t n = tokens.size();
  if (n == 0) fail("{}: tokenizer.ggml.tokens: the vocabulary is empty", source);
  if (n > 0x7FFFFFFF) fail("{}: tokenizer.ggml.tokens: {} tokens is too many", source, n);
  if (scores.size() != n)
    fail("{}: tokenizer.ggml.scores: {} entries, expected {} (one per token)", source,
         scores.size(), n);
  if (types.size() != n)
    fail("{}: tokenizer.ggml.token_type: {} entries, expected {} (one per token)", source,
         types.size(), n);
  for (std::size_t i = 0; i < n; ++i) {
    if (static_cast<unsigned>(types[i]) > static_cast<unsigned>(TokenType::Byte))
      fail("{}: tokenizer.ggml.token_type[{}]: {} is not a token type (0..6)", source, i,
           static_cast<unsigned>(types[i]));
    if (!std::isfinite(scores[i]))
      fail("{}: tokenizer.ggml.scores[{}]: not a finite number", source, i);
  }
  const auto check_id = [&](std::int32_t id, std::string_view key) {
    if (id < -1 || id >= static_cast<std::int64_t>(n))
      fail("{}: tokenizer.ggml.{}: token id {} out of range [0, {})", source, key, id, n);
  };
  check_id(bos_id, "bos_token_id");
  check_id(eos_id, "eos_token_id");
  check_id(unk_id, "unknown_token_id");
  check_id(pad_id, "padding_token_id");
  check_id(sep_id, "seperator_token_id");
  if (model == VocabModel::ByteLevelBpe && merges.empty())
    fail("{}: tokenizer.ggml.merges: a gpt2 (byte-level BPE) vocabulary needs merges", source);
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const auto space = merges[i].find(' ', 1);
    if (space == std::string::npos || space + 1 >= merges[i].size())
      fail("{}: tokenizer.ggml.merges[{}]: '{}' is not of the form 'left right'", source, i,
           merges[i]);
  }
}

Vocab load_vocab(const GgufReader& reader) {
  const std::string& source = reader.path();
  const GgufValue* model_value = reader.find("tokenizer.ggml.model");
  if (model_value == nullptr) fail("{}: no tokenizer (tokenizer.ggml.model is missing)", source);
  Vocab vocab;
  vocab.model_name = std::string(model_value->as_string(source + ": tokenizer.ggml.model"));
  if (vocab.model_name == "llama") {
    vocab.model = VocabModel::SentencePiece;
  } else if (vocab.model_name == "gpt2") {
    vocab.model = VocabModel::ByteLevelBpe;
  } else if (vocab.model_name == "gemma4") {
    vocab.model = VocabModel::Gemma4Bpe;
  } else {
    fail(
        "{}: tokenizer.ggml.model: unsupported tokenizer model '{}' (supported: llama, gpt2, "
        "gemma4)",
        source, vocab.model_name);
  }
  if (const GgufValue* pre = reader.find("tokenizer.ggml.pre"))
    vocab.pre = std::string(pre->as_string(source + ": tokenizer.ggml.pre"));

  const GgufArray* tokens = find_array(reader, "tokenizer.ggml.tokens", GgufValueType::STRING);
  if (tokens == nullptr) fail("{}: tokenizer.ggml.tokens is missing", source);
  vocab.tokens.reserve(tokens->items.size());
  for (const GgufValue& t : tokens->items)
    vocab.tokens.emplace_back(t.as_string("tokenizer.ggml.tokens"));
  const std::size_t n = vocab.tokens.size();

  if (const GgufValue* value = reader.find("tokenizer.ggml.scores")) {
    const std::string what = source + ": tokenizer.ggml.scores";
    const GgufArray& scores = value->as_array(what);
    vocab.scores.reserve(scores.items.size());
    for (const GgufValue& s : scores.items)
      vocab.scores.push_back(static_cast<float>(s.as_double(what)));
  } else {
    vocab.scores.assign(n, 0.0f);
  }

  if (const GgufValue* value = reader.find("tokenizer.ggml.token_type")) {
    const std::string what = source + ": tokenizer.ggml.token_type";
    const GgufArray& types = value->as_array(what);
    vocab.types.reserve(types.items.size());
    for (std::size_t i = 0; i < types.items.size(); ++i) {
      const std::int64_t t = types.items[i].as_int(what);
      if (t < 0 || t > static_cast<std::int64_t>(TokenType::Byte))
        fail("{}[{}]: {} is not a token type (0..6)", what, i, t);
      vocab.types.push_back(static_cast<TokenType>(t));
    }
  } else {
    vocab.types.assign(n, TokenType::Normal);
  }

  if (const GgufArray* merges =
          find_array(reader, "tokenizer.ggml.merges", GgufValueType::STRING)) {
    vocab.merges.reserve(merges->items.size());
    for (const GgufValue& m : merges->items)
      vocab.merges.emplace_back(m.as_string("tokenizer.ggml.merges"));
  }

  const bool spm = vocab.model == VocabModel::SentencePiece;
  // A default id that does not exist in a (tiny) vocabulary means "none"; a stored one is
  // validated below.
  const auto id_or_default = [&](std::string_view key, std::int32_t fallback) {
    if (fallback >= static_cast<std::int64_t>(n)) fallback = -1;
    return read_id(reader, key, fallback);
  };
  vocab.bos_id = id_or_default("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  vocab.eos_id = id_or_default("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  vocab.unk_id = id_or_default("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  vocab.pad_id = id_or_default("tokenizer.ggml.padding_token_id", -1);
  // The GGUF key is spelled "seperator"; accept the correct spelling too.
  vocab.sep_id = id_or_default("tokenizer.ggml.seperator_token_id",
                               read_id(reader, "tokenizer.ggml.separator_token_id", -1));

  const bool llama3_family = vocab.pre == "llama3" || vocab.pre == "llama-v3" ||
                             vocab.pre == "llama-bpe" || vocab.pre == "falcon3";
  vocab.add_bos = read_flag(reader, "tokenizer.ggml.add_bos_token", spm || llama3_family);
  // Gemma 4 prompts must start with <bos>; llama.cpp ignores a stored false (with a warning).
  if (vocab.model == VocabModel::Gemma4Bpe) vocab.add_bos = true;
  vocab.add_eos = read_flag(reader, "tokenizer.ggml.add_eos_token", false);
  vocab.add_space_prefix = read_flag(reader, "tokenizer.ggml.add_space_prefix", spm);

  vocab.validate(source);
  return vocab;
}

}  // namespace qforge
