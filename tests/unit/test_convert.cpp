// Unit tests of the converter's building blocks. End-to-end agreement with llama.cpp's converter
// and the lattice oracles live in tests/python/test_convert_*.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "convert/arch_common.h"
#include "convert/converter.h"
#include "convert/type_policy.h"
#include "core/error.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using convert_detail::language_model_name;
using convert_detail::split_layer;
using convert_detail::title_case_name;

const fs::path kFixtures = fs::path(QFORGE_SOURCE_DIR) / "tests/data/fixtures/hf";

TEST(ConvertNames, LanguageModelPrefixes) {
  EXPECT_EQ(language_model_name("model.layers.0.mlp.up_proj.weight"),
            "layers.0.mlp.up_proj.weight");
  EXPECT_EQ(language_model_name("model.language_model.layers.2.self_attn.q_proj.weight"),
            "layers.2.self_attn.q_proj.weight");
  EXPECT_EQ(language_model_name("language_model.model.norm.weight"), "norm.weight");
  EXPECT_EQ(language_model_name("language_model.lm_head.weight"), "lm_head.weight");
  EXPECT_EQ(language_model_name("lm_head.weight"), "lm_head.weight");
  EXPECT_EQ(language_model_name("model.vision_tower.encoder.layers.0.mlp.fc1.weight"),
            std::nullopt);
  EXPECT_EQ(language_model_name("vision_tower.vision_model.embeddings.weight"), std::nullopt);
  EXPECT_EQ(language_model_name("model.multi_modal_projector.mm_input_projection_weight"),
            std::nullopt);
  EXPECT_EQ(language_model_name("model.embed_vision.embedding_projection.weight"), std::nullopt);

  const auto l = split_layer("layers.17.self_attn.k_norm.weight");
  EXPECT_EQ(l.layer, 17);
  EXPECT_EQ(l.rest, "self_attn.k_norm.weight");
  EXPECT_EQ(split_layer("layers.x.foo").layer, -1);
  EXPECT_EQ(split_layer("embed_tokens.weight").layer, -1);
}

TEST(ConvertNames, TitleCaseLikeLlamaCpp) {
  // Python's str.title() per word, only for all-lowercase, non-version words.
  EXPECT_EQ(title_case_name("llama_tiny"), "Llama_Tiny");
  EXPECT_EQ(title_case_name("gemma4_dense_tiny"), "Gemma4_Dense_Tiny");
  EXPECT_EQ(title_case_name("gemma-3-270m-it"), "Gemma 3 270m It");
  EXPECT_EQ(title_case_name("Llama-2-7b-hf"), "Llama 2 7b Hf");
  EXPECT_EQ(title_case_name("v2-model"), "v2 Model");
}

TEST(ConvertPlan, RotaryPermutationMatchesDefinition) {
  // llama.cpp: w.reshape(h, 2, rows/h/2, cols).swapaxes(1, 2).reshape(rows, cols).
  TensorPlan t;
  t.ne = {4, 16};  // 16 rows
  t.source.permute_heads = 2;
  std::vector<std::uint64_t> expect;
  const std::uint64_t heads = 2, half = 16 / heads / 2;
  for (std::uint64_t h = 0; h < heads; ++h)
    for (std::uint64_t i = 0; i < half; ++i)
      for (std::uint64_t j = 0; j < 2; ++j) expect.push_back(h * 2 * half + j * half + i);
  for (std::uint64_t r = 0; r < 16; ++r) EXPECT_EQ(t.source_row(r), expect[r]) << r;
  t.source.permute_heads = 0;
  EXPECT_EQ(t.source_row(5), 5u);
}

TEST(ConvertPlan, KvListOverwritesInPlace) {
  KvList kvs;
  kvs.set("a", GgufValue{std::uint32_t{1}});
  kvs.set("b", GgufValue{std::uint32_t{2}});
  kvs.set("a", GgufValue{std::uint32_t{3}});
  ASSERT_EQ(kvs.items().size(), 2u);
  EXPECT_EQ(kvs.items()[0].key, "a");
  EXPECT_EQ(kvs.items()[0].value.as_uint(), 3u);
}

TEST(ConvertTypes, ParseAndFallbacks) {
  EXPECT_EQ(parse_type_request("Q4_K_M").file_type, 15u);
  EXPECT_EQ(parse_type_request("bf16").file_type, 32u);
  EXPECT_EQ(parse_type_request("q8_0").base, GgmlType::Q8_0);
  EXPECT_THROW(parse_type_request("q7_0"), Error);
  EXPECT_THROW(parse_override("noequals"), Error);
  EXPECT_THROW(parse_override("([=q8_0"), Error);
  EXPECT_THROW(parse_override("ffn=q4_k_m"), Error);
  EXPECT_EQ(parse_override("blk\\.0\\..*=q8_0").type, GgmlType::Q8_0);

  std::string why;
  EXPECT_EQ(fallback_for_row_length(GgmlType::Q4_K, 2048, why), GgmlType::Q4_K);
  EXPECT_TRUE(why.empty());
  EXPECT_EQ(fallback_for_row_length(GgmlType::Q4_K, 704, why), GgmlType::Q5_0);
  EXPECT_FALSE(why.empty());
  EXPECT_EQ(fallback_for_row_length(GgmlType::Q6_K, 704, why), GgmlType::Q8_0);
  EXPECT_EQ(fallback_for_row_length(GgmlType::IQ4_XS, 704, why), GgmlType::IQ4_NL);
  EXPECT_EQ(fallback_for_row_length(GgmlType::Q3_K, 96, why), GgmlType::Q4_0);
  EXPECT_EQ(fallback_for_row_length(GgmlType::Q4_K, 172, why), GgmlType::F16);
  EXPECT_EQ(fallback_for_row_length(GgmlType::Q8_0, 172, why), GgmlType::F16);
}

TensorPlan matrix(std::string name, TensorRole role, std::uint64_t cols, int layer = 0) {
  TensorPlan t;
  t.name = std::move(name);
  t.role = role;
  t.ne = {cols, 512};
  t.layer = layer;
  return t;
}

TEST(ConvertTypes, PolicyRules) {
  const TypeRequest q4km = parse_type_request("q4_k_m");
  TypeContext ctx;
  ctx.n_layers = 32;
  const LatticeSpec none{};
  const LatticeSpec sym8{LatticeKind::kSymmetric8, 32};
  const LatticeSpec asym{LatticeKind::kAsymmetric, 32};

  auto pick = [&](const TensorPlan& t, const TypeRequest& r, const LatticeSpec& s,
                  std::vector<TypeOverride> ov = {}) { return choose_type(t, r, ov, s, ctx); };

  EXPECT_EQ(pick(matrix("blk.0.attn_norm.weight", TensorRole::kFloat32, 2048), q4km, none).type,
            GgmlType::F32);
  EXPECT_EQ(pick(matrix("output.weight", TensorRole::kOutput, 2048), q4km, none).type,
            GgmlType::Q6_K);
  EXPECT_EQ(pick(matrix("token_embd.weight", TensorRole::kTokenEmbd, 2048), q4km, none).type,
            GgmlType::Q4_K);
  ctx.tied_embeddings = true;
  EXPECT_EQ(pick(matrix("token_embd.weight", TensorRole::kTokenEmbd, 2048), q4km, none).type,
            GgmlType::Q6_K);
  // use_more_bits: first n/8 layers, last n/8, every third in between.
  EXPECT_EQ(pick(matrix("blk.0.ffn_down.weight", TensorRole::kFfnDown, 2048, 0), q4km, none).type,
            GgmlType::Q6_K);
  EXPECT_EQ(pick(matrix("blk.5.ffn_down.weight", TensorRole::kFfnDown, 2048, 5), q4km, none).type,
            GgmlType::Q4_K);
  EXPECT_EQ(pick(matrix("blk.6.attn_v.weight", TensorRole::kAttnV, 2048, 6), q4km, none).type,
            GgmlType::Q6_K);
  EXPECT_EQ(pick(matrix("blk.31.ffn_down.weight", TensorRole::kFfnDown, 2048, 31), q4km, none).type,
            GgmlType::Q6_K);

  // Lattice tensors: exact Q4_0 / Q4_1, or Q8_0 when asked for q8_0.
  const auto d = pick(matrix("blk.3.attn_q.weight", TensorRole::kWeight, 2048), q4km, sym8);
  EXPECT_EQ(d.type, GgmlType::Q4_0);
  EXPECT_TRUE(d.lattice);
  EXPECT_EQ(pick(matrix("blk.3.attn_q.weight", TensorRole::kWeight, 2048), q4km, asym).type,
            GgmlType::Q4_1);
  EXPECT_EQ(pick(matrix("blk.3.attn_q.weight", TensorRole::kWeight, 2048),
                 parse_type_request("q8_0"), sym8)
                .type,
            GgmlType::Q8_0);
  EXPECT_FALSE(pick(matrix("blk.3.attn_q.weight", TensorRole::kWeight, 2048),
                    parse_type_request("bf16"), sym8)
                   .lattice);

  // QAT checkpoint: other matrices stay at 8 bits (BF16 when 32 does not divide the row).
  ctx.qat_checkpoint = true;
  EXPECT_EQ(pick(matrix("token_embd.weight", TensorRole::kTokenEmbd, 2048), q4km, none).type,
            GgmlType::Q8_0);
  EXPECT_EQ(pick(matrix("blk.0.ffn_down.weight", TensorRole::kFfnDown, 172), q4km, none).type,
            GgmlType::BF16);

  // Overrides win (and still encode a lattice exactly when the type can carry it).
  std::vector<TypeOverride> ov;
  ov.push_back(parse_override("attn_q=q8_0"));
  const auto o = pick(matrix("blk.3.attn_q.weight", TensorRole::kWeight, 2048), q4km, sym8, ov);
  EXPECT_EQ(o.type, GgmlType::Q8_0);
  EXPECT_TRUE(o.lattice);
  EXPECT_NE(o.reason.find("override"), std::string::npos);
}

TEST(ConvertEndToEnd, FailureLeavesNoFile) {
  const fs::path dir = fs::path(QFORGE_TEST_TMP) / "convert_unit";
  fs::create_directories(dir);
  ConvertOptions opt;
  opt.input = kFixtures / "llama_tiny";
  opt.output = dir / "missing_subdir" / "x.gguf";
  EXPECT_THROW(convert_checkpoint(opt), Error);
  EXPECT_FALSE(fs::exists(opt.output));

  opt.output = dir / "bad_type.gguf";
  opt.type = "q9_9";
  EXPECT_THROW(convert_checkpoint(opt), Error);
  EXPECT_FALSE(fs::exists(opt.output));
}

TEST(ConvertEndToEnd, ReportTotalsAreConsistent) {
  if (!fs::exists(kFixtures / "gemma4_e_tiny")) GTEST_SKIP() << "fixtures absent";
  const fs::path dir = fs::path(QFORGE_TEST_TMP) / "convert_unit";
  fs::create_directories(dir);
  ConvertOptions opt;
  opt.input = kFixtures / "gemma4_e_tiny";
  opt.output = dir / "e.gguf";
  opt.type = "q8_0";
  opt.tokenizer = false;
  const ConvertReport r = convert_checkpoint(opt);
  EXPECT_EQ(r.arch, "gemma4");
  std::uint64_t bytes = 0, weights = 0;
  for (const auto& t : r.tensors) {
    bytes += t.output_bytes;
    weights += t.n_elements;
    if (t.type == GgmlType::F32 || t.type == GgmlType::BF16) {
      EXPECT_EQ(t.max_abs_error, 0.0) << t.name;
    }
  }
  EXPECT_EQ(bytes, r.tensor_bytes);
  EXPECT_EQ(weights, r.n_weights);
  EXPECT_GT(r.output_file_bytes, r.tensor_bytes);
  EXPECT_EQ(r.output_file_bytes, fs::file_size(opt.output));
  const auto j = report_to_json(r);
  EXPECT_EQ(j["tensors"].size(), r.tensors.size());
  fs::remove(opt.output);
}

}  // namespace
}  // namespace qforge
