// SentencePiece ModelProto reader on hand-written protobuf bytes, and tokenizer_metadata() on
// small hand-made checkpoints (tokenizer.model / tokenizer.json / tokenizer_config.json). The
// fixture checkpoints are compared with llama.cpp's output in
// tests/python/test_hf_tokenizer_oracle.py; here the rules are exercised one by one.
#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/hf_tokenizer.h"
#include "convert/sentencepiece_model.h"
#include "core/error.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- protobuf writing helpers (wire format by hand)

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_tag(std::string& out, std::uint32_t field, std::uint32_t wire) {
  put_varint(out, (std::uint64_t{field} << 3) | wire);
}
void put_bytes(std::string& out, std::uint32_t field, const std::string& bytes) {
  put_tag(out, field, 2);
  put_varint(out, bytes.size());
  out += bytes;
}
void put_int(std::string& out, std::uint32_t field, std::int64_t v) {
  put_tag(out, field, 0);
  put_varint(out, static_cast<std::uint64_t>(v));
}
void put_float(std::string& out, std::uint32_t field, float f) {
  put_tag(out, field, 5);
  const auto bits = std::bit_cast<std::uint32_t>(f);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}

std::string piece(const std::string& text, float score, int type /* 0: absent */) {
  std::string p;
  put_bytes(p, 1, text);
  put_float(p, 2, score);
  if (type != 0) put_int(p, 3, type);
  return p;
}

// A small Llama-2-like model: <unk> <s> </s> <0x41> ▁a b(user-defined) u(unused), with an unknown
// field in one piece and in the model, a trainer_spec and a normalizer_spec.
std::string small_model() {
  std::string m;
  put_bytes(m, 1, piece("<unk>", 0.0f, 2));
  put_bytes(m, 1, piece("<s>", 0.0f, 3));
  put_bytes(m, 1, piece("</s>", 0.0f, 3));
  put_bytes(m, 1, piece("<0x41>", 0.0f, 6));
  std::string a = piece(
      "\xE2\x96\x81"
      "a",
      -1.5f, 0);
  put_int(a, 99, 12345);  // unknown varint field: skipped
  put_tag(a, 98, 1);      // unknown fixed64 field: skipped
  a.append(8, '\x01');
  put_bytes(m, 1, a);
  put_bytes(m, 1, piece("b", -2.25f, 4));
  put_bytes(m, 1, piece("u", -3.0f, 5));
  std::string trainer;
  put_int(trainer, 3, 2);    // model_type BPE
  put_int(trainer, 4, 7);    // vocab_size
  put_int(trainer, 35, 1);   // byte_fallback
  put_int(trainer, 43, -1);  // pad_id: negative int32 as a 10-byte varint
  put_bytes(trainer, 1, "ignored input");
  put_bytes(m, 2, trainer);
  std::string norm;
  put_bytes(norm, 1, "identity");
  put_int(norm, 3, 0);  // add_dummy_prefix false
  put_bytes(m, 3, norm);
  put_bytes(m, 4, "self test data, skipped");
  return m;
}

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(SentencePieceModel, ParsesPiecesAndSpecs) {
  const std::string bytes = small_model();
  const SentencePieceModel m = SentencePieceModel::parse(as_bytes(bytes), "t.model");
  ASSERT_EQ(m.pieces.size(), 7u);
  EXPECT_EQ(m.pieces[0].piece, "<unk>");
  EXPECT_EQ(m.pieces[0].type, SpmPieceType::Unknown);
  EXPECT_EQ(m.pieces[1].type, SpmPieceType::Control);
  EXPECT_EQ(m.pieces[3].type, SpmPieceType::Byte);
  EXPECT_EQ(m.pieces[4].piece,
            "\xE2\x96\x81"
            "a");
  EXPECT_EQ(m.pieces[4].score, -1.5f);
  EXPECT_EQ(m.pieces[4].type, SpmPieceType::Normal);  // absent: proto default
  EXPECT_EQ(m.pieces[5].type, SpmPieceType::UserDefined);
  EXPECT_EQ(m.pieces[6].type, SpmPieceType::Unused);
  EXPECT_EQ(m.pieces[6].score, -3.0f);
  EXPECT_TRUE(m.has_trainer_spec);
  EXPECT_EQ(m.trainer_spec.model_type, SpmModelType::Bpe);
  EXPECT_EQ(m.trainer_spec.vocab_size, 7);
  EXPECT_TRUE(m.trainer_spec.byte_fallback);
  EXPECT_EQ(m.trainer_spec.pad_id, -1);
  EXPECT_EQ(m.trainer_spec.unk_id, 0);  // default
  EXPECT_TRUE(m.has_normalizer_spec);
  EXPECT_EQ(m.normalizer_spec.name, "identity");
  EXPECT_FALSE(m.normalizer_spec.add_dummy_prefix);
  EXPECT_TRUE(m.normalizer_spec.remove_extra_whitespaces);  // default
}

TEST(SentencePieceModel, RepeatedSpecsMerge) {
  std::string m;
  put_bytes(m, 1, piece("x", 0.0f, 1));
  std::string n1, n2;
  put_int(n1, 3, 0);
  put_int(n2, 4, 0);
  put_bytes(m, 3, n1);
  put_bytes(m, 3, n2);
  const SentencePieceModel model = SentencePieceModel::parse(as_bytes(m), "t");
  EXPECT_FALSE(model.normalizer_spec.add_dummy_prefix);
  EXPECT_FALSE(model.normalizer_spec.remove_extra_whitespaces);
}

TEST(SentencePieceModel, MalformedInputsFailWithFileAndOffset) {
  const auto err = [](const std::string& bytes) {
    return error_of([&] { SentencePieceModel::parse(as_bytes(bytes), "bad.model"); });
  };
  const std::string good = small_model();
  // A tag whose varint is cut off (continuation bit on the last byte).
  std::string e = err(good + "\x88");
  EXPECT_NE(e.find("bad.model"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated varint"), std::string::npos) << e;
  EXPECT_NE(e.find(std::to_string(good.size())), std::string::npos) << e;  // its offset
  // Every prefix of a valid file either parses or fails cleanly.
  for (std::size_t n = 0; n < good.size(); ++n) {
    try {
      SentencePieceModel::parse(as_bytes(good.substr(0, n)), "prefix.model");
    } catch (const Error&) {
    }
  }
  // A length past the end.
  std::string past;
  put_tag(past, 1, 2);
  put_varint(past, 100);
  past += "abc";
  e = err(past);
  EXPECT_NE(e.find("past the end"), std::string::npos) << e;
  EXPECT_NE(e.find("offset 1"), std::string::npos) << e;
  // score as a varint instead of fixed32.
  std::string p;
  put_bytes(p, 1, "x");
  put_int(p, 2, 3);
  std::string wrong;
  put_bytes(wrong, 1, p);
  e = err(wrong);
  EXPECT_NE(e.find("pieces[0].score"), std::string::npos) << e;
  EXPECT_NE(e.find("expected 5 (fixed32)"), std::string::npos) << e;
  // pieces as a varint.
  std::string pieces_varint;
  put_int(pieces_varint, 1, 7);
  EXPECT_NE(err(pieces_varint).find("ModelProto.pieces"), std::string::npos);
  // Group wire types, field number 0, over-long varints.
  std::string group;
  put_tag(group, 7, 3);
  EXPECT_NE(err(group).find("unsupported wire type 3"), std::string::npos);
  EXPECT_NE(err(std::string("\x00\x01", 2)).find("invalid field number 0"), std::string::npos);
  EXPECT_NE(err(std::string(11, '\xFF')).find("does not fit in 64 bits"), std::string::npos);
  // A truncated fixed32 score.
  std::string short_float;
  put_bytes(short_float, 1, "x");
  put_tag(short_float, 2, 5);
  short_float += "\x01\x02";
  std::string sf;
  put_bytes(sf, 1, short_float);
  EXPECT_NE(err(sf).find("truncated fixed32"), std::string::npos) << err(sf);
  // An unknown piece type and an empty model.
  std::string bad_type;
  put_bytes(bad_type, 1, piece("x", 0.0f, 9));
  EXPECT_NE(err(bad_type).find("9 is not a piece type"), std::string::npos);
  EXPECT_NE(err("").find("no pieces"), std::string::npos);
  // Not a protobuf at all.
  EXPECT_NE(err("{\"model\": 1}").find("bad.model"), std::string::npos);
}

// ---- tokenizer_metadata on hand-made checkpoints

fs::path fresh_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::path(QFORGE_TEST_TMP) / "hf_tokenizer" /
                 (std::string(info->test_suite_name()) + "." + info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

const GgufValue* find(const std::vector<GgufKV>& kvs, std::string_view key) {
  for (const GgufKV& kv : kvs)
    if (kv.key == key) return &kv.value;
  return nullptr;
}

std::vector<std::string> keys(const std::vector<GgufKV>& kvs) {
  std::vector<std::string> out;
  for (const GgufKV& kv : kvs) out.push_back(kv.key);
  return out;
}

std::vector<std::string> strings(const GgufValue& v) {
  std::vector<std::string> out;
  for (const GgufValue& item : v.as_array().items) out.emplace_back(item.as_string());
  return out;
}
std::vector<std::int64_t> ints(const GgufValue& v) {
  std::vector<std::int64_t> out;
  for (const GgufValue& item : v.as_array().items) out.push_back(item.as_int());
  return out;
}
std::vector<double> floats(const GgufValue& v) {
  std::vector<double> out;
  for (const GgufValue& item : v.as_array().items) out.push_back(item.as_double());
  return out;
}

std::vector<GgufKV> meta(const fs::path& dir, std::string_view arch) {
  return tokenizer_metadata(HfCheckpoint::open(dir), arch);
}

TEST(HfTokenizer, SentencePieceModelWithOverridesAndPadding) {
  const fs::path dir = fresh_dir();
  write_text(dir / "tokenizer.model", small_model());
  write_text(dir / "config.json", json{{"vocab_size", 10}, {"bos_token_id", 1}}.dump());
  // added_tokens.json: a user-defined token at id 7 (inside the vocab) and one past it (ignored).
  write_text(dir / "added_tokens.json", R"({"<extra>": 7, "<far>": 99})");
  write_text(dir / "tokenizer_config.json",
             json{{"add_prefix_space", false},
                  {"eos_token", "</s>"},
                  {"add_eos_token", true},
                  {"chat_template", "{{ messages }}"},
                  {"added_tokens_decoder",
                   {{"8", {{"content", "<turn>"}, {"special", true}}},
                    {"5",
                     {{"content",
                       "\xE2\x96\x81"
                       "hi"},
                      {"special", false}}},
                    {"9", {{"content", "<|look|>"}, {"special", false}}}}}}
                 .dump());
  const auto kvs = meta(dir, "llama");
  EXPECT_EQ(keys(kvs), (std::vector<std::string>{
                           "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.model",
                           "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                           "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
                           "tokenizer.ggml.add_eos_token", "tokenizer.chat_template"}));
  EXPECT_FALSE(find(kvs, "tokenizer.ggml.add_space_prefix")->as_bool());
  EXPECT_EQ(find(kvs, "tokenizer.ggml.model")->as_string(), "llama");
  EXPECT_EQ(strings(*find(kvs, "tokenizer.ggml.tokens")),
            (std::vector<std::string>{"<unk>", "<s>", "</s>", "<0x41>",
                                      "\xE2\x96\x81"
                                      "a",
                                      " hi", "u", "<extra>", "<turn>", "<|look|>"}));
  EXPECT_EQ(floats(*find(kvs, "tokenizer.ggml.scores")),
            (std::vector<double>{0, 0, 0, 0, -1.5, -1000, -3, -1000, -1000, -1000}));
  EXPECT_EQ(ints(*find(kvs, "tokenizer.ggml.token_type")),
            (std::vector<std::int64_t>{2, 3, 3, 6, 1, 4, 5, 4, 3, 3}));
  // bos from config.json (no tokenizer.json, so tokenizer_config names resolve to nothing).
  EXPECT_EQ(find(kvs, "tokenizer.ggml.bos_token_id")->as_uint(), 1u);
  EXPECT_TRUE(find(kvs, "tokenizer.ggml.add_eos_token")->as_bool());
  EXPECT_EQ(find(kvs, "tokenizer.chat_template")->as_string(), "{{ messages }}");
}

TEST(HfTokenizer, SentencePiecePaddingFillsMissingIds) {
  const fs::path dir = fresh_dir();
  write_text(dir / "tokenizer.model", small_model());
  write_text(dir / "config.json", json{{"text_config", {{"vocab_size", 9}}}}.dump());
  const auto kvs = meta(dir, "gemma3");
  const auto tokens = strings(*find(kvs, "tokenizer.ggml.tokens"));
  ASSERT_EQ(tokens.size(), 9u);
  EXPECT_EQ(tokens[7], "[PAD7]");
  EXPECT_EQ(tokens[8], "[PAD8]");
  EXPECT_EQ(floats(*find(kvs, "tokenizer.ggml.scores"))[8], -10000.0);
  EXPECT_EQ(ints(*find(kvs, "tokenizer.ggml.token_type"))[8], 5);
  EXPECT_FALSE(find(kvs, "tokenizer.ggml.add_space_prefix")->as_bool());
  EXPECT_EQ(kvs.back().key, "tokenizer.ggml.add_space_prefix");
  // A smaller vocab_size cuts the model's pieces.
  write_text(dir / "config.json", json{{"vocab_size", 3}}.dump());
  EXPECT_EQ(strings(*find(meta(dir, "gemma3"), "tokenizer.ggml.tokens")).size(), 3u);
}

// GPT-2 style byte-level BPE (what llama.cpp handles as "gpt2").
json gpt2_tokenizer_json(json merges) {
  return {
      {"model",
       {{"type", "BPE"},
        {"vocab",
         {{"a", 0},
          {"b", 1},
          {"\xC4\xA0", 2},
          {"ab", 3},
          {"\xC4\xA0"
           "ab",
           4}}},
        {"merges", std::move(merges)}}},
      {"added_tokens", json::array({{{"id", 5}, {"content", "<|endoftext|>"}, {"special", true}},
                                    {{"id", 6}, {"content", "\xE2\x96\x81x"}, {"special", false}},
                                    {{"id", 7}, {"content", "<mask>"}, {"special", false}}})},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"post_processor", nullptr}};
}

TEST(HfTokenizer, Gpt2BpePath) {
  const fs::path dir = fresh_dir();
  write_text(
      dir / "config.json",
      json{{"vocab_size", 10}, {"bos_token_id", 5}, {"eos_token_id", json::array({5, 6})}}.dump());
  write_text(dir / "tokenizer.json", gpt2_tokenizer_json({"a b", "\xC4\xA0 ab"}).dump());
  write_text(dir / "tokenizer_config.json", json{{"eos_token", "<|endoftext|>"}}.dump());
  const auto kvs = meta(dir, "gpt2");
  EXPECT_EQ(keys(kvs), (std::vector<std::string>{
                           "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                           "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                           "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"}));
  EXPECT_EQ(find(kvs, "tokenizer.ggml.model")->as_string(), "gpt2");
  EXPECT_EQ(find(kvs, "tokenizer.ggml.pre")->as_string(), "gpt-2");
  EXPECT_EQ(strings(*find(kvs, "tokenizer.ggml.tokens")),
            (std::vector<std::string>{"a", "b", "\xC4\xA0", "ab",
                                      "\xC4\xA0"
                                      "ab",
                                      "<|endoftext|>", " x", "<mask>", "[PAD8]", "[PAD9]"}));
  EXPECT_EQ(ints(*find(kvs, "tokenizer.ggml.token_type")),
            (std::vector<std::int64_t>{1, 1, 1, 1, 1, 3, 4, 3, 5, 5}));
  EXPECT_EQ(strings(*find(kvs, "tokenizer.ggml.merges")),
            (std::vector<std::string>{"a b", "\xC4\xA0 ab"}));
  EXPECT_EQ(find(kvs, "tokenizer.ggml.eos_token_id")->as_uint(), 5u);  // via tokenizer_config
  EXPECT_EQ(find(kvs, "tokenizer.ggml.bos_token_id")->as_uint(), 5u);  // via config.json
  // The eos list in config.json is not an id: llama.cpp ignores it, so do we.

  // Merges as pairs (tokenizers >= 0.20); a space inside a part becomes U+0120.
  write_text(dir / "tokenizer.json",
             gpt2_tokenizer_json(json::array({json::array({"a", "b"}), json::array({"a b", "c"})}))
                 .dump());
  EXPECT_EQ(strings(*find(meta(dir, "gpt2"), "tokenizer.ggml.merges")),
            (std::vector<std::string>{"a b",
                                      "a\xC4\xA0"
                                      "b c"}));
  // An unknown merges format fails.
  write_text(dir / "tokenizer.json", gpt2_tokenizer_json(json::array({1, 2})).dump());
  EXPECT_NE(error_of([&] { meta(dir, "gpt2"); }).find("merges"), std::string::npos);
}

TEST(HfTokenizer, LlamaPicksThePathByTokenizerJson) {
  const fs::path dir = fresh_dir();
  write_text(dir / "config.json", json{{"vocab_size", 8}}.dump());
  // Llama 3 style: byte-level, ignore_merges, Split(regex) + ByteLevel pre-tokenizer.
  json tj = gpt2_tokenizer_json({"a b"});
  tj["model"]["ignore_merges"] = true;
  tj["model"]["byte_fallback"] = false;
  tj["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern",
          {{"Regex",
            R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
         {"behavior", "Isolated"}},
        {{"type", "ByteLevel"}, {"use_regex", false}}}}};
  write_text(dir / "tokenizer.json", tj.dump());
  auto kvs = meta(dir, "llama");
  EXPECT_EQ(find(kvs, "tokenizer.ggml.model")->as_string(), "gpt2");
  EXPECT_EQ(find(kvs, "tokenizer.ggml.pre")->as_string(), "llama-bpe");
  // An unrecognised pre-tokenizer falls back to "default".
  tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+";
  write_text(dir / "tokenizer.json", tj.dump());
  EXPECT_EQ(find(meta(dir, "llama"), "tokenizer.ggml.pre")->as_string(), "default");
}

// Byte-fallback BPE like Llama 2 / Gemma tokenizer.json files.
json spm_style_tokenizer_json() {
  return {{"model",
           {{"type", "BPE"},
            {"byte_fallback", true},
            {"vocab",
             {{"<unk>", 0},
              {"<s>", 1},
              {"</s>", 2},
              {"<0x0A>", 3},
              {"\xE2\x96\x81"
               "a",
               4},
              {"<|turn>", 5},
              {"<|channel>", 6}}},
            {"merges", json::array({json::array({"\xE2\x96\x81", "a"})})}}},
          {"added_tokens", json::array({{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                                        {{"id", 1}, {"content", "<s>"}, {"special", true}},
                                        {{"id", 2}, {"content", "</s>"}, {"special", true}},
                                        {{"id", 5}, {"content", "<|turn>"}, {"special", true}},
                                        {{"id", 7}, {"content", "<new>"}, {"special", false}}})},
          {"normalizer",
           {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "Lowercase"}}})}}},
          {"decoder", {{"type", "Sequence"}, {"decoders", json::array()}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single", json::array({{{"SpecialToken", {{"id", "<s>"}}}},
                                    {{"Sequence", {{"id", "A"}}}},
                                    {{"SpecialToken", {{"id", "</s>"}}}}})},
            {"pair", json::array({{{"SpecialToken", {{"id", "<s>"}}}},
                                  {{"Sequence", {{"id", "A"}}}},
                                  {{"SpecialToken", {{"id", "</s>"}}}},
                                  {{"Sequence", {{"id", "B"}}}},
                                  {{"SpecialToken", {{"id", "</s>"}}}}})}}}};
}

TEST(HfTokenizer, LlamaHfPathAndTemplateProcessing) {
  const fs::path dir = fresh_dir();
  write_text(dir / "config.json", json{{"vocab_size", 8}}.dump());
  write_text(dir / "tokenizer.json", spm_style_tokenizer_json().dump());
  // eos differs from the template's trailing token: the old eos becomes eot.
  write_text(dir / "tokenizer_config.json",
             json{{"bos_token", "<s>"}, {"eos_token", "<|turn>"}, {"unk_token", "<unk>"}}.dump());
  const auto kvs = meta(dir, "llama");
  EXPECT_EQ(find(kvs, "tokenizer.ggml.model")->as_string(), "llama");
  EXPECT_EQ(strings(*find(kvs, "tokenizer.ggml.tokens")),
            (std::vector<std::string>{"<unk>", "<s>", "</s>", "<0x0A>",
                                      "\xE2\x96\x81"
                                      "a",
                                      "<|turn>", "<|channel>", "<new>"}));
  // CONTROL only for the tokenizer's special tokens (bos, eos, unk): </s> is not one here.
  EXPECT_EQ(ints(*find(kvs, "tokenizer.ggml.token_type")),
            (std::vector<std::int64_t>{3, 3, 1, 6, 1, 3, 1, 4}));
  EXPECT_EQ(floats(*find(kvs, "tokenizer.ggml.scores")), std::vector<double>(8, -1000.0));
  EXPECT_EQ(find(kvs, "tokenizer.ggml.bos_token_id")->as_uint(), 1u);
  EXPECT_EQ(find(kvs, "tokenizer.ggml.eos_token_id")->as_uint(), 2u);
  EXPECT_EQ(find(kvs, "tokenizer.ggml.eot_token_id")->as_uint(), 5u);
  EXPECT_EQ(find(kvs, "tokenizer.ggml.unknown_token_id")->as_uint(), 0u);
  EXPECT_TRUE(find(kvs, "tokenizer.ggml.add_bos_token")->as_bool());
  EXPECT_TRUE(find(kvs, "tokenizer.ggml.add_eos_token")->as_bool());
  // "A </s> B" between the trailing tokens: with a trailing eos, llama.cpp adds no separator.
  EXPECT_FALSE(find(kvs, "tokenizer.ggml.add_sep_token")->as_bool());
  EXPECT_TRUE(find(kvs, "tokenizer.ggml.normalizer.lowercase")->as_bool());
  EXPECT_EQ(find(kvs, "tokenizer.ggml.merges"), nullptr);  // not on this path
  EXPECT_EQ(find(kvs, "tokenizer.chat_template"), nullptr);
}

TEST(HfTokenizer, Gemma4AndChatTemplateLists) {
  const fs::path dir = fresh_dir();
  write_text(dir / "config.json", json{{"vocab_size", 8}}.dump());
  write_text(dir / "tokenizer.json", spm_style_tokenizer_json().dump());
  write_text(dir / "tokenizer_config.json",
             json{{"bos_token", "<s>"},
                  {"eos_token", "</s>"},
                  {"add_bos_token", false},
                  {"chat_template", json::array({{{"name", "tool use!"}, {"template", "T"}},
                                                 {{"name", "default"}, {"template", "D"}}})}}
                 .dump());
  const auto kvs = meta(dir, "gemma4");
  EXPECT_EQ(find(kvs, "tokenizer.ggml.model")->as_string(), "gemma4");
  EXPECT_EQ(find(kvs, "tokenizer.ggml.pre"), nullptr);
  EXPECT_EQ(ints(*find(kvs, "tokenizer.ggml.token_type")),
            (std::vector<std::int64_t>{1, 3, 3, 6, 1, 1, 4, 4}));  // <|channel> forced visible
  EXPECT_EQ(strings(*find(kvs, "tokenizer.ggml.merges")),
            (std::vector<std::string>{"\xE2\x96\x81 a"}));
  EXPECT_EQ(find(kvs, "tokenizer.chat_template.tool_use_")->as_string(), "T");
  EXPECT_EQ(strings(*find(kvs, "tokenizer.chat_templates")),
            (std::vector<std::string>{"tool_use_"}));
  EXPECT_EQ(find(kvs, "tokenizer.chat_template")->as_string(), "D");
  // add_bos_token is forced true for Gemma 4, in the position it was first written.
  EXPECT_TRUE(find(kvs, "tokenizer.ggml.add_bos_token")->as_bool());
  const auto k = keys(kvs);
  EXPECT_LT(std::find(k.begin(), k.end(), "tokenizer.ggml.add_bos_token"),
            std::find(k.begin(), k.end(), "tokenizer.chat_template"));
  EXPECT_EQ(k.back(), "tokenizer.ggml.add_space_prefix");

  // Gemma 4 needs the byte-fallback form.
  write_text(dir / "tokenizer.json", gpt2_tokenizer_json({"a b"}).dump());
  EXPECT_NE(error_of([&] { meta(dir, "gemma4"); }).find("byte-fallback"), std::string::npos);
}

TEST(HfTokenizer, ChatTemplateSources) {
  const fs::path dir = fresh_dir();
  write_text(dir / "config.json", "{}");
  write_text(dir / "tokenizer.json", spm_style_tokenizer_json().dump());
  write_text(dir / "chat_template.jinja", "J");
  write_text(dir / "tokenizer_config.json", json{{"bos_token", "<s>"}}.dump());
  EXPECT_EQ(find(meta(dir, "llama"), "tokenizer.chat_template")->as_string(), "J");
  // tokenizer_config.json's template wins over the file, and an explicit null removes it.
  write_text(dir / "tokenizer_config.json", json{{"chat_template", "C"}}.dump());
  EXPECT_EQ(find(meta(dir, "llama"), "tokenizer.chat_template")->as_string(), "C");
  write_text(dir / "tokenizer_config.json", json{{"chat_template", nullptr}}.dump());
  EXPECT_EQ(find(meta(dir, "llama"), "tokenizer.chat_template"), nullptr);
}

TEST(HfTokenizer, MalformedInputsFail) {
  const fs::path dir = fresh_dir();
  write_text(dir / "config.json", json{{"vocab_size", 8}}.dump());
  // No tokenizer at all.
  EXPECT_NE(error_of([&] { meta(dir, "llama"); }).find("no tokenizer.json"), std::string::npos);
  // vocab not an object; ids with holes; duplicate ids; negative special ids.
  json tj = spm_style_tokenizer_json();
  tj["model"]["vocab"] = json::array();
  write_text(dir / "tokenizer.json", tj.dump());
  EXPECT_NE(error_of([&] { meta(dir, "llama"); }).find("model.vocab"), std::string::npos);
  tj = spm_style_tokenizer_json();
  tj["model"]["vocab"].erase("<0x0A>");
  tj["model"]["vocab"]["zz"] = 40;
  write_text(dir / "tokenizer.json", tj.dump());
  EXPECT_NE(error_of([&] { meta(dir, "llama"); }).find("token id 3 is missing"), std::string::npos);
  tj = spm_style_tokenizer_json();
  tj["model"]["vocab"]["dup"] = 4;
  write_text(dir / "tokenizer.json", tj.dump());
  EXPECT_NE(error_of([&] { meta(dir, "llama"); }).find("id 4 is used by"), std::string::npos);
  write_text(dir / "tokenizer.json", spm_style_tokenizer_json().dump());
  write_text(dir / "config.json", json{{"pad_token_id", -3}}.dump());
  EXPECT_NE(error_of([&] { meta(dir, "llama"); }).find("invalid pad token id -3"),
            std::string::npos);
  // A corrupt tokenizer.model names the file.
  write_text(dir / "config.json", "{}");
  write_text(dir / "tokenizer.model",
             "\x0a\x05"
             "ab");
  const std::string e = error_of([&] { meta(dir, "llama"); });
  EXPECT_NE(e.find("tokenizer.model"), std::string::npos) << e;
  EXPECT_NE(e.find("past the end"), std::string::npos) << e;
  // An absurd vocab_size is refused, not allocated.
  write_text(dir / "tokenizer.model", small_model());
  write_text(dir / "config.json", json{{"vocab_size", 1LL << 40}}.dump());
  EXPECT_NE(error_of([&] { meta(dir, "llama"); }).find("vocab_size"), std::string::npos);
}

}  // namespace
}  // namespace qforge
