// `qforge synth` planning and generation. The layout itself is checked against llama.cpp's
// converter listings by tests/python/test_synth.py; here: the llama-quantize type rules, errors,
// determinism across thread counts and the statistics of generated blocks (dequantized by
// qforge's own block decoders, which test_blocks.cpp checks against gguf-py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "model/synth.h"
#include "quant/blocks.h"

namespace qforge::synth {
namespace {

nlohmann::json moe_config() {
  // A small Gemma 4 MoE with the 26B-A4B's awkward widths (704, 2112 are not multiples of 256).
  nlohmann::json j = {{"hidden_size", 256},
                      {"num_hidden_layers", 6},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"head_dim", 64},
                      {"global_head_dim", 128},
                      {"num_global_key_value_heads", 1},
                      {"attention_k_eq_v", true},
                      {"intermediate_size", 2112},
                      {"enable_moe_block", true},
                      {"num_experts", 8},
                      {"top_k_experts", 2},
                      {"moe_intermediate_size", 704},
                      {"num_kv_shared_layers", 2},
                      {"vocab_size", 512},
                      {"sliding_window", 16},
                      {"final_logit_softcapping", 30.0},
                      {"max_position_embeddings", 1024}};
  j["layer_types"] = nlohmann::json::array();
  for (int i = 0; i < 6; ++i)
    j["layer_types"].push_back(i % 3 == 2 ? "full_attention" : "sliding_attention");
  j["rope_parameters"] = {
      {"full_attention",
       {{"rope_type", "proportional"}, {"rope_theta", 1e6}, {"partial_rotary_factor", 0.25}}},
      {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  return j;
}

nlohmann::json llama_config() {
  return {{"hidden_size", 256},          {"num_hidden_layers", 2},   {"num_attention_heads", 4},
          {"num_key_value_heads", 2},    {"intermediate_size", 512}, {"vocab_size", 600},
          {"tie_word_embeddings", false}};
}

SynthPlan plan(SynthArch arch, nlohmann::json j, SynthTypeOptions types) {
  return plan_synth_model(arch, synth_config_from_json(std::move(j), "test/config.json"), types,
                          "test");
}

const SynthTensor& find(const SynthPlan& p, const std::string& name) {
  auto it = std::find_if(p.tensors.begin(), p.tensors.end(),
                         [&](const SynthTensor& t) { return t.name == name; });
  if (it == p.tensors.end()) throw std::runtime_error("no tensor " + name);
  return *it;
}

bool has(const SynthPlan& p, const std::string& name) {
  return std::any_of(p.tensors.begin(), p.tensors.end(),
                     [&](const SynthTensor& t) { return t.name == name; });
}

TEST(Synth, Gemma4LayoutFollowsTheConfig) {
  const SynthPlan p = plan(SynthArch::kGemma4, moe_config(), {});
  // Full layers (2, 5): K = V, wider heads; kv-shared layers (4, 5): no K/V projections.
  EXPECT_TRUE(has(p, "blk.0.attn_v.weight"));
  EXPECT_FALSE(has(p, "blk.2.attn_v.weight"));
  EXPECT_EQ(find(p, "blk.2.attn_q.weight").ne, (std::vector<std::uint64_t>{256, 4 * 128}));
  EXPECT_EQ(find(p, "blk.2.attn_k.weight").ne, (std::vector<std::uint64_t>{256, 128}));
  EXPECT_FALSE(has(p, "blk.4.attn_k.weight"));
  EXPECT_FALSE(has(p, "blk.4.attn_k_norm.weight"));
  EXPECT_EQ(find(p, "blk.1.ffn_gate_up_exps.weight").ne,
            (std::vector<std::uint64_t>{256, 1408, 8}));
  EXPECT_EQ(find(p, "blk.1.ffn_down_exps.weight").ne, (std::vector<std::uint64_t>{704, 256, 8}));
  // rope_freqs: 1 for the rotated quarter of the frequency pairs, 1e30 for the rest.
  const SynthTensor& f = find(p, "rope_freqs.weight");
  ASSERT_EQ(f.values.size(), 64u);
  EXPECT_EQ(std::count(f.values.begin(), f.values.end(), 1.0f), 16);
  EXPECT_EQ(f.values[16], 1e30f);
}

TEST(Synth, TypesFollowLlamaQuantize) {
  SynthTypeOptions q4k;
  q4k.type = GgmlType::Q4_K;
  const SynthPlan p = plan(SynthArch::kGemma4, moe_config(), q4k);
  EXPECT_EQ(find(p, "blk.0.attn_q.weight").type, GgmlType::Q4_K);
  EXPECT_EQ(find(p, "blk.0.ffn_down_exps.weight").type, GgmlType::Q5_0);  // 704 columns
  EXPECT_EQ(find(p, "blk.0.ffn_down.weight").type, GgmlType::Q5_0);       // 2112 columns
  EXPECT_EQ(find(p, "blk.0.ffn_gate_inp.weight").type, GgmlType::F32);    // router never quantized
  EXPECT_EQ(find(p, "blk.0.attn_norm.weight").type, GgmlType::F32);
  EXPECT_EQ(find(p, "token_embd.weight").type, GgmlType::Q6_K);  // tied: LM head rule
  EXPECT_FALSE(p.notes.empty());

  SynthTypeOptions q8;
  q8.type = GgmlType::Q8_0;
  EXPECT_EQ(find(plan(SynthArch::kGemma4, moe_config(), q8), "token_embd.weight").type,
            GgmlType::Q8_0);
  SynthTypeOptions bf16;
  bf16.type = GgmlType::BF16;
  EXPECT_EQ(find(plan(SynthArch::kGemma4, moe_config(), bf16), "token_embd.weight").type,
            GgmlType::BF16);

  // Untied: token embeddings keep the main type, the LM head gets Q6_K; both overridable.
  SynthTypeOptions q40;
  const SynthPlan l = plan(SynthArch::kLlama, llama_config(), q40);
  EXPECT_EQ(find(l, "token_embd.weight").type, GgmlType::Q4_0);
  EXPECT_EQ(find(l, "output.weight").type, GgmlType::Q6_K);
  q40.head_type = GgmlType::Q8_0;
  q40.embd_type = GgmlType::F16;
  const SynthPlan l2 = plan(SynthArch::kLlama, llama_config(), q40);
  EXPECT_EQ(find(l2, "token_embd.weight").type, GgmlType::F16);
  EXPECT_EQ(find(l2, "output.weight").type, GgmlType::Q8_0);
}

TEST(Synth, ErrorsNameTheConfigAndKey) {
  auto expect_error = [](SynthArch arch, nlohmann::json j, const std::string& needle) {
    try {
      plan(arch, std::move(j), {});
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("test/config.json"), std::string::npos) << what;
      EXPECT_NE(what.find(needle), std::string::npos) << what;
    }
  };
  auto j = moe_config();
  j.erase("global_head_dim");
  expect_error(SynthArch::kGemma4, j, "global_head_dim");
  j = moe_config();
  j["layer_types"].erase(0);
  expect_error(SynthArch::kGemma4, j, "layer_types");
  j = moe_config();
  j["hidden_size"] = -3;
  expect_error(SynthArch::kGemma4, j, "hidden_size");
  j = llama_config();
  j["vocab_size"] = 100;  // no room for 256 byte tokens
  expect_error(SynthArch::kLlama, j, "vocab_size");
  j = llama_config();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_error(SynthArch::kLlama, j, "llama3");
}

std::vector<std::byte> generate(const SynthTensor& t, std::uint64_t seed) {
  std::vector<std::byte> out(t.n_bytes());
  fill_synth_tensor(t, seed, 3, out);
  return out;
}

TEST(Synth, BytesDependOnSeedNotThreads) {
  SynthTensor t;
  t.name = "w";
  t.ne = {4096, 300};
  t.type = GgmlType::Q4_0;
  t.scale = 1.0f / 64.0f;
  const int threads = thread_count();
  set_thread_count(1);
  const auto one = generate(t, 5);
  set_thread_count(4);
  const auto four = generate(t, 5);
  set_thread_count(threads);
  EXPECT_EQ(one, four);
  EXPECT_NE(one, generate(t, 6));
}

TEST(Synth, BlocksHaveTheTargetStatistics) {
  for (GgmlType type :
       {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
        GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::BF16}) {
    SynthTensor t;
    t.name = "w";
    t.ne = {1024, 256};
    t.type = type;
    t.scale = 1.0f / 32.0f;
    const auto bytes = generate(t, 1);
    std::vector<float> w(t.n_elements());
    dequantize_rows(type, bytes, t.ne[0], w);
    double sum = 0, sq = 0;
    for (float x : w) {
      ASSERT_TRUE(std::isfinite(x));
      sum += x;
      sq += static_cast<double>(x) * x;
    }
    const double mean = sum / static_cast<double>(w.size());
    const double std = std::sqrt(sq / static_cast<double>(w.size()) - mean * mean);
    EXPECT_LT(std::abs(mean), 0.05 * t.scale) << type_name(type);
    EXPECT_NEAR(std, t.scale, 0.1 * t.scale) << type_name(type);
  }
}

TEST(Synth, Q4_0ScalesHaveBothSigns) {
  SynthTensor t;
  t.name = "w";
  t.ne = {256, 256};
  t.type = GgmlType::Q4_0;
  t.scale = 0.0625f;
  const auto bytes = generate(t, 9);
  int negative = 0, blocks = 0;
  for (std::size_t off = 0; off < bytes.size(); off += 18, ++blocks) {
    std::uint16_t h;
    std::memcpy(&h, bytes.data() + off, 2);
    negative += f16_to_f32(h) < 0;
  }
  EXPECT_GT(negative, blocks * 45 / 100);
  EXPECT_LT(negative, blocks * 55 / 100);
}

}  // namespace
}  // namespace qforge::synth
