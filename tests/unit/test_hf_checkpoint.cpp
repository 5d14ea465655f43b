#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <sstream>
#include <string>

#include "core/error.h"
#include "formats/hf_checkpoint.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fresh_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::path(QFORGE_TEST_TMP) / "hf_checkpoint" /
                 (std::string(info->test_suite_name()) + "." + info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// Shaped like google/gemma-3-4b-it's config.json (multimodal: the LM lives in text_config).
const json kGemma3Config = {
    {"architectures", {"Gemma3ForConditionalGeneration"}},
    {"model_type", "gemma3"},
    {"boi_token_index", 255999},
    {"mm_tokens_per_image", 256},
    {"text_config",
     {{"model_type", "gemma3_text"},
      {"hidden_size", 2560},
      {"intermediate_size", 10240},
      {"num_hidden_layers", 34},
      {"num_attention_heads", 8},
      {"num_key_value_heads", 4},
      {"head_dim", 256},
      {"rope_theta", 1000000.0},
      {"rope_local_base_freq", 10000.0},
      {"sliding_window", 1024},
      {"rope_scaling", {{"factor", 8.0}, {"rope_type", "linear"}}}}},
    {"vision_config", {{"model_type", "siglip_vision_model"}, {"hidden_size", 1152}}},
};

TEST(HfCheckpoint, MultimodalGemma3ConfigAndTokenizerFiles) {
  const fs::path dir = fresh_dir();
  const std::string tmpl =
      "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
      "{{ m['content'] }}<end_of_turn>\n{% endfor %}";
  write_text(dir / "config.json", kGemma3Config.dump(2));
  write_text(dir / "generation_config.json", R"({"bos_token_id": 2, "eos_token_id": [1, 106]})");
  write_text(dir / "tokenizer_config.json",
             json{{"chat_template", tmpl}, {"add_bos_token", true}}.dump());
  write_text(dir / "tokenizer.model", "not parsed here");

  const HfCheckpoint ckpt = HfCheckpoint::open(dir);
  EXPECT_EQ(ckpt.dir, dir);
  EXPECT_EQ(ckpt.config, kGemma3Config);
  EXPECT_EQ(ckpt.architecture(), "Gemma3ForConditionalGeneration");
  EXPECT_EQ(&ckpt.text_config(), &ckpt.config.at("text_config"));
  EXPECT_EQ(ckpt.text_config().at("hidden_size"), 2560);
  EXPECT_EQ(ckpt.text_config().at("model_type"), "gemma3_text");
  ASSERT_TRUE(ckpt.generation_config.has_value());
  EXPECT_EQ(ckpt.generation_config->at("eos_token_id"), json::array({1, 106}));
  ASSERT_TRUE(ckpt.tokenizer_config.has_value());
  EXPECT_EQ(ckpt.tokenizer_config->at("add_bos_token"), true);
  ASSERT_TRUE(ckpt.tokenizer_model.has_value());
  EXPECT_EQ(*ckpt.tokenizer_model, dir / "tokenizer.model");
  EXPECT_FALSE(ckpt.tokenizer_json.has_value());
  ASSERT_TRUE(ckpt.chat_template.has_value());
  EXPECT_EQ(*ckpt.chat_template, tmpl);
  EXPECT_TRUE(ckpt.weights.tensors().empty());
}

TEST(HfCheckpoint, TextOnlyConfigIsItsOwnTextConfig) {
  const fs::path dir = fresh_dir();
  write_text(
      dir / "config.json",
      R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "text_config": null})");
  write_text(dir / "tokenizer.json", R"({"version": "1.0", "model": {"type": "BPE"}})");
  const HfCheckpoint ckpt = HfCheckpoint::open(dir);
  EXPECT_EQ(ckpt.architecture(), "LlamaForCausalLM");
  EXPECT_EQ(&ckpt.text_config(), &ckpt.config);
  ASSERT_TRUE(ckpt.tokenizer_json.has_value());
  EXPECT_EQ(ckpt.tokenizer_json->at("model").at("type"), "BPE");
  EXPECT_FALSE(ckpt.chat_template.has_value());
  EXPECT_FALSE(ckpt.tokenizer_model.has_value());

  HfCheckpoint odd;  // interpretation helpers never throw, whatever the config holds
  for (const char* text : {"[]", "3", R"({"architectures": [1]})", R"({"architectures": "x"})",
                           R"({"text_config": [1]})"}) {
    odd.config = json::parse(text);
    EXPECT_EQ(odd.architecture(), "") << text;
    EXPECT_EQ(&odd.text_config(), &odd.config) << text;
  }
}

TEST(HfCheckpoint, NamedChatTemplatesUseDefault) {
  const fs::path dir = fresh_dir();
  write_text(dir / "config.json", "{}");
  write_text(dir / "tokenizer_config.json",
             R"({"chat_template": [{"name": "tool_use", "template": "T"},
                                   {"name": "default", "template": "D"}]})");
  EXPECT_EQ(HfCheckpoint::open(dir).chat_template, "D");
  write_text(dir / "tokenizer_config.json",
             R"({"chat_template": [{"name": "tool_use", "template": "T"}]})");
  EXPECT_FALSE(HfCheckpoint::open(dir).chat_template.has_value());
  write_text(dir / "tokenizer_config.json", R"({"chat_template": [{"name": "default"}]})");
  EXPECT_NE(error_of([&] { (void)HfCheckpoint::open(dir); }).find("tokenizer_config.json"),
            std::string::npos);
  write_text(dir / "tokenizer_config.json", R"({"chat_template": 5})");
  EXPECT_NE(error_of([&] { (void)HfCheckpoint::open(dir); }).find("chat_template"),
            std::string::npos);
  // chat_template.json (processor format) overrides tokenizer_config.json.
  write_text(dir / "tokenizer_config.json", R"({"chat_template": "from tokenizer_config"})");
  write_text(dir / "chat_template.json", R"({"chat_template": "from chat_template.json"})");
  EXPECT_EQ(HfCheckpoint::open(dir).chat_template, "from chat_template.json");
}

// The real Gemma 2/3 chat template, as chat_template.jinja, wins over tokenizer_config.json and is
// returned byte for byte; the same text embedded in tokenizer_config.json also comes back intact.
TEST(HfCheckpoint, RealGemmaChatTemplateFile) {
  const fs::path real = fs::path(QFORGE_SHARED_DATA) / "chat-templates/google-gemma-2-2b-it.jinja";
  if (!fs::exists(real)) GTEST_SKIP() << "shared data absent: " << real;
  const std::string text = read_text(real);
  ASSERT_FALSE(text.empty());
  const fs::path dir = fresh_dir();
  write_text(dir / "config.json", kGemma3Config.dump());
  write_text(dir / "tokenizer_config.json", json{{"chat_template", text}}.dump());
  EXPECT_EQ(HfCheckpoint::open(dir).chat_template, text);

  write_text(dir / "tokenizer_config.json", R"({"chat_template": "older template"})");
  fs::copy_file(real, dir / "chat_template.jinja");
  const HfCheckpoint ckpt = HfCheckpoint::open(dir);
  ASSERT_TRUE(ckpt.chat_template.has_value());
  EXPECT_EQ(*ckpt.chat_template, text);
}

TEST(HfCheckpoint, MissingOrBrokenConfigIsNamed) {
  const fs::path dir = fresh_dir();
  std::string msg = error_of([&] { (void)HfCheckpoint::open(dir); });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not found"), std::string::npos) << msg;

  const std::string broken = R"({"a": 1,, "b": 2})";
  write_text(dir / "config.json", broken);
  msg = error_of([&] { (void)HfCheckpoint::open(dir); });
  EXPECT_NE(msg.find((dir / "config.json").string()), std::string::npos) << msg;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(msg, m, std::regex("at byte ([0-9]+)"))) << msg;
  const std::size_t byte = std::stoul(m[1]);  // counts bytes read, the bad one included
  ASSERT_GE(byte, 1u);
  ASSERT_LE(byte, broken.size());
  EXPECT_EQ(broken[byte - 1], ',') << msg;
  EXPECT_EQ(broken.find(",,") + 1, byte - 1);

  write_text(dir / "config.json", "[1, 2]");
  msg = error_of([&] { (void)HfCheckpoint::open(dir); });
  EXPECT_NE(msg.find("expected an object"), std::string::npos) << msg;

  write_text(dir / "config.json", R"({"text_config": 7})");
  msg = error_of([&] { (void)HfCheckpoint::open(dir); });
  EXPECT_NE(msg.find("text_config"), std::string::npos) << msg;

  write_text(dir / "config.json", "{}");
  write_text(dir / "generation_config.json", "{\"x\": }");
  msg = error_of([&] { (void)HfCheckpoint::open(dir); });
  EXPECT_NE(msg.find("generation_config.json"), std::string::npos) << msg;

  EXPECT_NE(
      error_of([&] { (void)HfCheckpoint::open(dir / "config.json"); }).find("not a directory"),
      std::string::npos);
}

TEST(HfCheckpoint, WeightsAreLoaded) {
  const fs::path dir = fresh_dir();
  write_text(dir / "config.json", kGemma3Config.dump());
  {
    SafetensorsWriter w(dir / "model.safetensors");
    w.add_tensor("model.norm.weight", StDtype::BF16, {4});
    const std::byte data[8]{};
    w.write_tensor_data(data);
    w.finish();
  }
  const HfCheckpoint ckpt = HfCheckpoint::open(dir);
  ASSERT_EQ(ckpt.weights.tensors().size(), 1u);
  EXPECT_EQ(ckpt.weights.get("model.norm.weight").shape, std::vector<std::uint64_t>{4});

  const fs::path pt = dir / "pt";
  fs::create_directories(pt);
  write_text(pt / "config.json", "{}");
  write_text(pt / "pytorch_model.bin", "pickle");
  EXPECT_NE(error_of([&] { (void)HfCheckpoint::open(pt); }).find("safetensors"), std::string::npos);
}

TEST(ParseJson, ErrorsNameWhatAndWhere) {
  EXPECT_EQ(parse_json(R"({"k": [1, 2]})", "x").at("k").size(), 2u);
  const std::string msg = error_of([&] { (void)parse_json("{\"k\": tru}", "my-file.json"); });
  EXPECT_NE(msg.find("my-file.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("at byte"), std::string::npos) << msg;
  EXPECT_THROW((void)parse_json("1e999", "big"), Error);
  EXPECT_THROW((void)parse_json("", "empty"), Error);
  EXPECT_THROW((void)parse_json(std::string_view("{}\0", 3), "nul"),
               Error);  // nlohmann alone stops at the NUL
  EXPECT_NE(error_of([] {
              (void)parse_json(std::string(5000, '[') + std::string(5000, ']'), "d");
            }).find("deeper"),
            std::string::npos);
  EXPECT_EQ(parse_json(std::string(100, '[') + std::string(100, ']'), "ok").size(), 1u);
  EXPECT_NE(error_of([] { (void)read_json_file("/nonexistent/qforge.json"); }).find("qforge.json"),
            std::string::npos);
}

}  // namespace
}  // namespace qforge
