// Gemma 4 on the CPU engine against transformers (tests/data/fixtures): the tiny dense, MoE and E
// checkpoints are converted with the library's converter, then decoded with the KV cache (which
// the Python logits test, a full-prompt pass, does not exercise): every greedy step's logits must
// match transformers' greedy_logits.npy. Also the per-layer geometry read from the GGUF against
// the HF config.json, batch vs token-by-token equivalence and config validation errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "convert/converter.h"
#include "core/error.h"
#include "model/model.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixtures = fs::path(QFORGE_SOURCE_DIR) / "tests/data/fixtures";

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

// A float32 C-order 2-D .npy array (what the fixture script wrote).
struct Npy {
  std::size_t rows = 0, cols = 0;
  std::vector<float> data;
  std::span<const float> row(std::size_t i) const {
    return std::span(data).subspan(i * cols, cols);
  }
};

Npy read_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    fail("{}: not .npy", path.string());
  const std::size_t header_len =
      static_cast<unsigned char>(bytes[8]) |
      (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
  const std::string header = bytes.substr(10, header_len);
  if (header.find("'<f4'") == std::string::npos || header.find("False") == std::string::npos) {
    fail("{}: expected a C-order float32 array: {}", path.string(), header);
  }
  Npy npy;
  const std::size_t open = header.find('(', header.find("shape"));
  std::sscanf(header.c_str() + open, "(%zu, %zu)", &npy.rows, &npy.cols);
  npy.data.resize(npy.rows * npy.cols);
  if (bytes.size() != 10 + header_len + npy.data.size() * 4) fail("{}: bad size", path.string());
  std::memcpy(npy.data.data(), bytes.data() + 10 + header_len, npy.data.size() * 4);
  return npy;
}

float max_abs_diff(std::span<const float> a, std::span<const float> b) {
  float d = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

std::int32_t argmax(std::span<const float> v) {
  return static_cast<std::int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// Converted once per test binary run and name.
fs::path converted(const std::string& name) {
  static std::map<std::string, fs::path> done;
  if (auto it = done.find(name); it != done.end()) return it->second;
  const fs::path dir = fs::path(QFORGE_TEST_TMP) / "gemma4_model";
  fs::create_directories(dir);
  ConvertOptions options;
  options.input = kFixtures / "hf" / name;
  options.output = dir / (name + ".bf16.gguf");
  options.type = "bf16";
  options.tokenizer = false;
  convert_checkpoint(options);
  return done[name] = options.output;
}

class Gemma4Fixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!fs::exists(kFixtures / "hf" / GetParam())) GTEST_SKIP() << "fixtures not found";
    model_ = load_model(converted(GetParam()));
    ref_ = read_json(kFixtures / "ref" / GetParam() / "ref.json");
    config_ = read_json(kFixtures / "hf" / GetParam() / "config.json");
    // See tests/python/test_logits_fixtures.py: 4x transformers' own float32 rounding noise.
    tol_ = 4.0f * ref_["max_abs_diff_f32_vs_f64_logits"].get<float>();
  }
  std::vector<std::int32_t> prompt() const {
    return ref_["input_ids"].get<std::vector<std::int32_t>>();
  }

  std::unique_ptr<Model> model_;
  json ref_, config_;
  float tol_ = 0.0f;
};

TEST_P(Gemma4Fixture, GeometryMatchesHfConfig) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.arch, "gemma4");
  EXPECT_EQ(c.n_layer, config_["num_hidden_layers"].get<int>());
  const int n_shared = config_["num_kv_shared_layers"].get<int>();
  const auto& types = config_["layer_types"];
  for (int il = 0; il < c.n_layer; ++il) {
    SCOPED_TRACE(il);
    const bool full = types[static_cast<std::size_t>(il)] == "full_attention";
    EXPECT_EQ(c.is_swa_layer(il), !full);
    EXPECT_EQ(c.head_dim_k_of(il), config_[full ? "global_head_dim" : "head_dim"].get<int>());
    EXPECT_EQ(c.head_dim_v_of(il), c.head_dim_k_of(il));
    const bool global_kv = full && config_.contains("num_global_key_value_heads") &&
                           config_["attention_k_eq_v"].get<bool>();
    EXPECT_EQ(c.n_head_kv_of(il),
              config_[global_kv ? "num_global_key_value_heads" : "num_key_value_heads"].get<int>());
    const bool shared = il >= c.n_layer - n_shared;
    EXPECT_EQ(c.has_kv(il), !shared);
    const bool wide = shared && config_["use_double_wide_mlp"].get<bool>();
    EXPECT_EQ(c.n_ff_of(il), config_["intermediate_size"].get<int>() * (wide ? 2 : 1));
    // transformers: a shared layer reads the last non-shared layer of its type.
    int source = il;
    if (shared) {
      for (int j = c.n_layer - n_shared - 1; j >= 0; --j) {
        if (types[static_cast<std::size_t>(j)] == types[static_cast<std::size_t>(il)]) {
          source = j;
          break;
        }
      }
    }
    EXPECT_EQ(c.kv_source(il), source);
  }
  EXPECT_EQ(c.sliding_window, config_["sliding_window"].get<int>());
  EXPECT_FLOAT_EQ(c.attn_scale, 1.0f);
  EXPECT_EQ(c.n_embd_per_layer, config_["hidden_size_per_layer_input"].get<int>());
  EXPECT_EQ(c.n_expert, config_["num_experts"].is_null() ? 0 : config_["num_experts"].get<int>());
}

// Prompt in one batch, then the 16 greedy steps one token at a time through the KV cache (past
// the sliding window of 8, through KV-sharing layers), feeding the reference tokens.
TEST_P(Gemma4Fixture, KvCacheDecodeMatchesTransformersGreedy) {
  const auto ids = prompt();
  const auto greedy = ref_["greedy_ids"].get<std::vector<std::int32_t>>();
  const auto margins = ref_["greedy_margins"].get<std::vector<float>>();
  const Npy want_prompt = read_npy(kFixtures / "ref" / GetParam() / "logits.npy");
  const Npy want_steps = read_npy(kFixtures / "ref" / GetParam() / "greedy_logits.npy");
  ASSERT_EQ(want_steps.rows, greedy.size());

  auto cache = model_->new_cache(static_cast<int>(ids.size() + greedy.size()), KvType::F32);
  std::vector<float> logits = model_->forward(ids, 0, *cache);
  EXPECT_LT(max_abs_diff(logits, want_prompt.row(want_prompt.rows - 1)), tol_);
  int pos = static_cast<int>(ids.size());
  for (std::size_t step = 0; step < greedy.size(); ++step) {
    SCOPED_TRACE(step);
    EXPECT_LT(max_abs_diff(logits, want_steps.row(step)), tol_);
    if (margins[step] > 2 * tol_) {
      EXPECT_EQ(argmax(logits), greedy[step]);
    }
    logits = model_->forward({&greedy[step], 1}, pos++, *cache);
  }
}

TEST_P(Gemma4Fixture, BatchEqualsTokenByToken) {
  const auto ids = prompt();
  auto cache = model_->new_cache(static_cast<int>(ids.size()), KvType::F32);
  const std::vector<float> batch = model_->forward(ids, 0, *cache, {.all_logits = true});
  const auto n_vocab = static_cast<std::size_t>(model_->config().n_vocab);
  cache->clear();
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const std::vector<float> one = model_->forward({&ids[t], 1}, static_cast<int>(t), *cache);
    ASSERT_LT(max_abs_diff(one, std::span(batch).subspan(t * n_vocab, n_vocab)), 1e-4f) << t;
  }
}

// A BF16 KV cache rounds K and V once: close to the F32 result, but not equal.
TEST_P(Gemma4Fixture, Bf16KvCacheIsClose) {
  const auto ids = prompt();
  auto f32 = model_->new_cache(static_cast<int>(ids.size()), KvType::F32);
  auto bf16 = model_->new_cache(static_cast<int>(ids.size()), KvType::BF16);
  const float d = max_abs_diff(model_->forward(ids, 0, *f32), model_->forward(ids, 0, *bf16));
  EXPECT_GT(d, 0.0f);
  EXPECT_LT(d, 0.1f);
}

INSTANTIATE_TEST_SUITE_P(Tiny, Gemma4Fixture,
                         ::testing::Values("gemma4_dense_tiny", "gemma4_moe_tiny",
                                           "gemma4_e_tiny"));

TEST(Gemma4Config, SharedLayerWithoutSourceFails) {
  if (!fs::exists(kFixtures / "hf" / "gemma4_e_tiny")) GTEST_SKIP() << "fixtures not found";
  const fs::path path = converted("gemma4_e_tiny");
  // Layers 1.. share KV, but only layer 0 (sliding) has its own: full layers have no source.
  EXPECT_THROW(load_model(path, {.adjust_config = [](ModelConfig& c) { c.n_layer_kv = 1; }}),
               Error);
}

}  // namespace
}  // namespace qforge
