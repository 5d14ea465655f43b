// Llama forward pass against the stories260K reference (greedy ids produced by an independent
// F32 implementation, see shared/data/MANIFEST.md), plus batch/sequential equivalence and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "model/model.h"

namespace qforge {
namespace {

const std::filesystem::path kStories =
    std::filesystem::path(QFORGE_SHARED_DATA) / "stories260K" / "stories260K.gguf";

std::vector<std::int32_t> read_ids(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<std::int32_t> ids;
  std::int32_t id;
  while (in >> id) ids.push_back(id);
  return ids;
}

std::int32_t argmax(std::span<const float> v) {
  return static_cast<std::int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

std::vector<std::int32_t> greedy_from_bos(Model& model, KvType kv, std::size_t steps) {
  auto cache = model.new_cache(512, kv);
  std::vector<std::int32_t> out;
  std::int32_t token = model.config().bos_token;
  for (std::size_t pos = 0; pos < steps; ++pos) {
    const std::vector<float> logits = model.forward({&token, 1}, static_cast<int>(pos), *cache);
    token = argmax(logits);
    out.push_back(token);
  }
  return out;
}

class Stories : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kStories)) GTEST_SKIP() << kStories << " not found";
    model_ = load_model(kStories);
  }
  std::unique_ptr<Model> model_;
};

TEST_F(Stories, ConfigFromMetadata) {
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.arch, "llama");
  EXPECT_EQ(c.n_vocab, 512);
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.n_layer, 5);
  EXPECT_EQ(c.n_head, 8);
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ(c.head_dim_k, 8);
  EXPECT_EQ(c.n_rot, 8);
  EXPECT_EQ(c.bos_token, 1);
  EXPECT_EQ(c.rope_style, RopeStyle::kAdjacentPairs);
}

TEST_F(Stories, GreedyFromBosMatchesReference) {
  const auto expected = read_ids(kStories.parent_path() / "greedy_from_bos.ids.txt");
  ASSERT_EQ(expected.size(), 257u);
  const auto got = greedy_from_bos(*model_, KvType::F32, expected.size());
  EXPECT_EQ(got, expected);
}

// The default BF16 cache rounds K/V; on this model the greedy path must not change.
TEST_F(Stories, GreedyWithBf16CacheMatchesReference) {
  const auto expected = read_ids(kStories.parent_path() / "greedy_from_bos.ids.txt");
  const auto got = greedy_from_bos(*model_, KvType::BF16, expected.size());
  EXPECT_EQ(got, expected);
}

TEST_F(Stories, BatchedPrefillEqualsSequentialDecode) {
  auto ids = read_ids(kStories.parent_path() / "greedy_from_bos.ids.txt");
  std::vector<std::int32_t> tokens{1};
  tokens.insert(tokens.end(), ids.begin(), ids.begin() + 40);
  const auto n_vocab = static_cast<std::size_t>(model_->config().n_vocab);
  for (const KvType kv : {KvType::F32, KvType::BF16}) {
    auto batch_cache = model_->new_cache(128, kv);
    const auto batched = model_->forward(tokens, 0, *batch_cache, {.all_logits = true});
    ASSERT_EQ(batched.size(), tokens.size() * n_vocab);
    auto seq_cache = model_->new_cache(128, kv);
    float max_diff = 0.0f;
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      const auto logits = model_->forward({&tokens[t], 1}, static_cast<int>(t), *seq_cache);
      for (std::size_t i = 0; i < n_vocab; ++i) {
        max_diff = std::max(max_diff, std::abs(logits[i] - batched[t * n_vocab + i]));
      }
    }
    EXPECT_LT(max_diff, 1e-4f) << kv_type_name(kv);
    // Last-token-only output equals the last row of the all-logits output.
    auto cache = model_->new_cache(128, kv);
    const auto last = model_->forward(tokens, 0, *cache);
    ASSERT_EQ(last.size(), n_vocab);
    EXPECT_TRUE(std::equal(last.begin(), last.end(), batched.end() - static_cast<long>(n_vocab)));
  }
}

// Prefill in uneven chunks continues the same sequence as one batch.
TEST_F(Stories, ChunkedPrefillMatchesOneBatch) {
  std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298};
  auto a = model_->new_cache(64, KvType::F32);
  const auto whole = model_->forward(tokens, 0, *a);
  auto b = model_->new_cache(64, KvType::F32);
  model_->forward(std::span(tokens).first(3), 0, *b);
  model_->forward(std::span(tokens).subspan(3, 5), 3, *b);
  const auto chunked = model_->forward(std::span(tokens).subspan(8), 8, *b);
  ASSERT_EQ(whole.size(), chunked.size());
  for (std::size_t i = 0; i < whole.size(); ++i) EXPECT_NEAR(whole[i], chunked[i], 1e-5f);
}

TEST_F(Stories, RejectsBadInput) {
  auto cache = model_->new_cache(8, KvType::F32);
  std::vector<std::int32_t> nine(9, 1);
  EXPECT_THROW(model_->forward(nine, 0, *cache), Error);  // context overflow
  std::vector<std::int32_t> bad{1, 512};
  EXPECT_THROW(model_->forward(bad, 0, *cache), Error);  // out of vocabulary
  std::vector<std::int32_t> one{1};
  EXPECT_THROW(model_->forward(one, 3, *cache), Error);  // gap after the cached positions
  EXPECT_THROW(model_->forward({}, 0, *cache), Error);
  model_->forward(one, 0, *cache);
  EXPECT_EQ(cache->n_filled(), 1);
  try {
    std::vector<std::int32_t> eight(8, 1);
    model_->forward(eight, 1, *cache);
    FAIL() << "expected a context overflow";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context"), std::string::npos) << e.what();
  }
}

TEST(ModelLoad, CudaDeviceIsAClearError) {
  if (!std::filesystem::exists(kStories)) GTEST_SKIP();
#ifndef QFORGE_HAVE_CUDA
  try {
    load_model(kStories, {.device = Device::Cuda});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA backend not available"), std::string::npos);
  }
#endif
}

TEST(ModelLoad, UnknownArchitectureIsAClearError) {
  // A vocab-only GGUF (arch phi3, no tensors) from the shared data.
  const auto path =
      std::filesystem::path(QFORGE_SHARED_DATA) / "llama.cpp-vocab" / "ggml-vocab-phi-3.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP();
  try {
    load_model(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported architecture 'phi3'"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace qforge
