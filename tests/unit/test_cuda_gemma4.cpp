// Gemma 4 on the CUDA backend against the CPU forward pass (the numerical reference), on the tiny
// fixture checkpoints (tests/data/fixtures/hf, converted here) and on a small synthetic MoE model
// with the 26B-A4B's awkward widths (written here with qforge synth). Skips without a GPU.
//
// What is covered: per-layer head sizes (sliding 32 / full 64), proportional RoPE on full layers,
// value norm, V = K layers, layer output scales, final soft-cap, KV-sharing layers and MoE
// (routing, top-k, only the chosen experts on the device), per-layer embeddings (E model);
// prompts longer than the sliding window and than one 64-token chunk; decode steps through the
// captured CUDA graph; BF16 KV caches; the tensor-core GEMM prefill path.
//
// Tolerance. The CPU runs with F32 activations (set_cpu_activations(kF32)), so with F32 KV caches
// both backends compute the same F32 math in a different summation order (~1e-6 relative per dot
// product). We require max |gpu - cpu| <= 1e-3 * max |cpu| + 1e-4 over all logits compared (the
// measured value is printed; it is expected to be ~1e-5 relative). MoE routing is a discrete
// choice: a near tie between experts could flip under such noise, which would show as a large
// difference; with these fixtures it does not happen (the margins are far larger than 1e-5).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/error.h"
#include "formats/gguf.h"
#include "model/config.h"
#include "model/model.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cuda_device.h"
#include "runtime/cuda_model.h"

#ifdef QFORGE_HAVE_CUDA
#include "cuda_test_util.h"

#include "convert/converter.h"
#include "model/synth.h"
#include "quant/ggml_type.h"
#include "runtime/cuda/cuda_model.h"
#include "runtime/cuda/decode_persistent.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/q4_0x8.h"
#endif

namespace qforge {
namespace {

#ifdef QFORGE_HAVE_CUDA

namespace fs = std::filesystem;

fs::path env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? fs::path(v) : fs::path(fallback);
}

// F32 CPU activations for the duration of a test (the CPU default quantizes activations to 8
// bits, which is not the reference the GPU's F32 math should match).
class CpuF32Activations {
 public:
  CpuF32Activations() : saved_(cpu::cpu_activations()) {
    cpu::set_cpu_activations(cpu::CpuActivations::kF32);
  }
  ~CpuF32Activations() { cpu::set_cpu_activations(saved_); }
  CpuF32Activations(const CpuF32Activations&) = delete;
  CpuF32Activations& operator=(const CpuF32Activations&) = delete;

 private:
  cpu::CpuActivations saved_;
};

std::unique_ptr<cuda::CudaModel> cuda_model(const fs::path& path, bool gemm) {
  auto gguf = std::make_unique<GgufReader>(GgufReader::open(path));
  ModelConfig config = read_model_config(*gguf);
  auto model = std::make_unique<cuda::CudaModel>(std::move(gguf), std::move(config));
  model->set_prefill_gemm(gemm);
  return model;
}

std::int32_t argmax(std::span<const float> v) {
  return static_cast<std::int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// Difference between the best and the second-best logit.
float top_margin(std::span<const float> v) {
  std::vector<float> s(v.begin(), v.end());
  std::partial_sort(s.begin(), s.begin() + 2, s.end(), std::greater<>());
  return s[0] - s[1];
}

float max_abs(std::span<const float> v) {
  float m = 0.0f;
  for (const float x : v) m = std::max(m, std::fabs(x));
  return m;
}

struct Diff {
  double max_abs = 0.0, max_ref = 0.0;
  bool finite = true;
  double rel() const { return max_abs / std::max(max_ref, 1e-30); }
  // max |gpu - cpu| <= 1e-3 * max |cpu| + 1e-4
  bool within(double rel_tol = 1e-3, double abs_tol = 1e-4) const {
    return finite && max_abs <= rel_tol * max_ref + abs_tol;
  }
};

Diff diff(std::span<const float> gpu, std::span<const float> cpu) {
  Diff d;
  EXPECT_EQ(gpu.size(), cpu.size());
  for (std::size_t i = 0; i < std::min(gpu.size(), cpu.size()); ++i) {
    if (!std::isfinite(gpu[i])) d.finite = false;
    d.max_abs = std::max(d.max_abs, static_cast<double>(std::fabs(gpu[i] - cpu[i])));
    d.max_ref = std::max(d.max_ref, static_cast<double>(std::fabs(cpu[i])));
  }
  return d;
}

// The fixture prompt (47 tokens) followed by itself until it has n tokens.
std::vector<std::int32_t> fixture_prompt(const std::string& name, std::size_t n) {
  const fs::path ref = env_or("QFORGE_SOURCE_DIR", QFORGE_SOURCE_DIR) / "tests/data/fixtures/ref" /
                       name / "ref.json";
  std::ifstream in(ref);
  const auto ids = nlohmann::json::parse(in)["input_ids"].get<std::vector<std::int32_t>>();
  std::vector<std::int32_t> out;
  while (out.size() < n) out.push_back(ids[out.size() % ids.size()]);
  return out;
}

// Prompt with all logits on both backends, then `steps` one-token decode steps (the GPU's graph
// path) fed with the CPU's greedy choice; every row and step compared.
// n_ctx: the caches' positions (0: just enough for the prompt and the steps).
void expect_gpu_matches_cpu(Model& cpu, Model& gpu, const std::vector<std::int32_t>& prompt,
                            int steps, KvType kv, const std::string& label, int n_ctx = 0) {
  const auto vocab = static_cast<std::size_t>(cpu.config().n_vocab);
  if (n_ctx == 0) n_ctx = static_cast<int>(prompt.size()) + steps + 1;
  auto cpu_cache = cpu.new_cache(n_ctx, kv);
  auto gpu_cache = gpu.new_cache(n_ctx, kv);
  std::vector<float> want = cpu.forward(prompt, 0, *cpu_cache, {.all_logits = true});
  std::vector<float> got = gpu.forward(prompt, 0, *gpu_cache, {.all_logits = true});
  const Diff d_prompt = diff(got, want);
  EXPECT_TRUE(d_prompt.within()) << label << ": prompt logits differ by " << d_prompt.max_abs
                                 << " (max |cpu| " << d_prompt.max_ref << ")";
  std::printf("%s: prompt of %zu tokens: max |gpu - cpu| / max |cpu| = %.3g\n", label.c_str(),
              prompt.size(), d_prompt.rel());

  want.erase(want.begin(), want.end() - static_cast<std::ptrdiff_t>(vocab));
  got.erase(got.begin(), got.end() - static_cast<std::ptrdiff_t>(vocab));
  double worst = 0.0;
  for (int step = 0; step < steps; ++step) {
    SCOPED_TRACE(step);
    const std::int32_t next = argmax(want);
    // Greedy continuations agree wherever the CPU's choice is not a near tie.
    if (top_margin(want) > 1e-3f * max_abs(want) + 1e-3f) {
      EXPECT_EQ(argmax(got), next) << label;
    }
    const int pos = static_cast<int>(prompt.size()) + step;
    want = cpu.forward({&next, 1}, pos, *cpu_cache);
    got = gpu.forward({&next, 1}, pos, *gpu_cache);
    const Diff d = diff(got, want);
    EXPECT_TRUE(d.within()) << label << ": decode logits differ by " << d.max_abs << " (max |cpu| "
                            << d.max_ref << ")";
    worst = std::max(worst, d.rel());
  }
  std::printf("%s: %d decode steps: max |gpu - cpu| / max |cpu| = %.3g\n", label.c_str(), steps,
              worst);
}

// ---- the tiny fixtures (dense, MoE, E), converted here --------------------------------------

struct FixtureCase {
  const char* name;
  const char* type;
};

std::string case_name(const ::testing::TestParamInfo<FixtureCase>& info) {
  return std::string(info.param.name) + "_" + info.param.type;
}

class CudaGemma4Fixture : public ::testing::TestWithParam<FixtureCase> {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_GPU();
    const fs::path src =
        env_or("QFORGE_SOURCE_DIR", QFORGE_SOURCE_DIR) / "tests/data/fixtures/hf" / GetParam().name;
    if (!fs::exists(src / "config.json")) GTEST_SKIP() << src << " not found";
    const fs::path tmp = env_or("QFORGE_TEST_TMP", QFORGE_TEST_TMP);
    fs::create_directories(tmp);
    path_ = tmp / (std::string("cuda_") + GetParam().name + "_" + GetParam().type + ".gguf");
    ConvertOptions opt;
    opt.input = src;
    opt.output = path_;
    opt.type = GetParam().type;
    opt.tokenizer = false;
    convert_checkpoint(opt);
  }
  fs::path path_;
};

// 80 tokens: two prefill chunks (64 + 16), both past the sliding window of 8; then 8 decode steps.
TEST_P(CudaGemma4Fixture, PrefillAndDecodeMatchCpu) {
  const CpuF32Activations f32;
  auto cpu = load_model(path_);
  auto gpu = cuda_model(path_, /*gemm=*/false);
  ASSERT_EQ(gpu->config().arch, "gemma4");
  EXPECT_LT(gpu->config().sliding_window, 47);
  const std::string label = std::string(GetParam().name) + " " + GetParam().type;
  expect_gpu_matches_cpu(*cpu, *gpu, fixture_prompt(GetParam().name, 80), 8, KvType::F32, label);
}

// One-token steps (graph replays, one capture per cache) reproduce the batched prompt pass.
TEST_P(CudaGemma4Fixture, DecodeStepsMatchBatchedPrompt) {
  auto gpu = cuda_model(path_, /*gemm=*/false);
  const auto ids = fixture_prompt(GetParam().name, 30);
  const auto vocab = static_cast<std::size_t>(gpu->config().n_vocab);
  auto batch_cache = gpu->new_cache(32, KvType::F32);
  const auto batched = gpu->forward(ids, 0, *batch_cache, {.all_logits = true});
  for (int round = 0; round < 2; ++round) {  // a second cache: the graph is captured again
    auto cache = gpu->new_cache(32, KvType::F32);
    double worst = 0.0;
    for (std::size_t t = 0; t < ids.size(); ++t) {
      const auto step = gpu->forward({&ids[t], 1}, static_cast<int>(t), *cache);
      const Diff d = diff(step, std::span(batched).subspan(t * vocab, vocab));
      EXPECT_TRUE(d.within(1e-4, 1e-5)) << "round " << round << " token " << t << ": " << d.max_abs;
      worst = std::max(worst, d.rel());
    }
    std::printf("%s: decode vs batched, round %d: %.3g\n", GetParam().name, round, worst);
  }
}

// BF16 caches round K and V once on both sides; the logits stay close.
TEST_P(CudaGemma4Fixture, Bf16KvCacheIsClose) {
  const CpuF32Activations f32;
  auto cpu = load_model(path_);
  auto gpu = cuda_model(path_, /*gemm=*/false);
  const auto ids = fixture_prompt(GetParam().name, 40);
  auto cpu_cache = cpu->new_cache(41, KvType::BF16);
  auto gpu_cache = gpu->new_cache(41, KvType::BF16);
  const Diff d = diff(gpu->forward(ids, 0, *gpu_cache), cpu->forward(ids, 0, *cpu_cache));
  EXPECT_TRUE(d.within(0.02, 1e-3)) << d.max_abs << " (max |cpu| " << d.max_ref << ")";
  std::printf("%s %s, BF16 caches: max |gpu - cpu| / max |cpu| = %.3g\n", GetParam().name,
              GetParam().type, d.rel());
}

INSTANTIATE_TEST_SUITE_P(CudaGemma4Tiny, CudaGemma4Fixture,
                         ::testing::Values(FixtureCase{"gemma4_dense_tiny", "bf16"},
                                           FixtureCase{"gemma4_dense_tiny", "q4_0"},
                                           FixtureCase{"gemma4_moe_tiny", "bf16"},
                                           FixtureCase{"gemma4_moe_tiny", "q8_0"},
                                           FixtureCase{"gemma4_e_tiny", "bf16"}),
                         case_name);

// ---- a synthetic MoE with the 26B-A4B's structure at small width ------------------------------

// The 26B-A4B config (bench/configs/gemma4-26b-a4b.json) shrunk: hidden 256, 6 layers, 16 experts
// (top 4), expert FFN 704 and dense FFN 2112 as in the real model (not multiples of 256: Q4_K
// falls back to Q5_0 there), head sizes 64 / 128, two KV-sharing layers.
nlohmann::json small_moe_config() {
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
                      {"num_experts", 16},
                      {"top_k_experts", 4},
                      {"moe_intermediate_size", 704},
                      {"num_kv_shared_layers", 2},
                      {"hidden_size_per_layer_input", 0},
                      {"vocab_size", 512},
                      {"sliding_window", 16},
                      {"final_logit_softcapping", 30.0},
                      {"rms_norm_eps", 1e-6},
                      {"max_position_embeddings", 1024}};
  j["layer_types"] = nlohmann::json::array();
  for (int i = 0; i < 6; ++i) {
    j["layer_types"].push_back(i % 3 == 2 ? "full_attention" : "sliding_attention");
  }
  j["rope_parameters"] = {
      {"full_attention",
       {{"rope_type", "proportional"}, {"rope_theta", 1e6}, {"partial_rotary_factor", 0.25}}},
      {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  return j;
}

// Its dense variant (no MoE block, a dense FFN of 1024): every attention and FFN matrix 256-column
// aligned, so Q4_0 is regrouped into Q4_0x8 and the K-quants take the integer-plane GEMVs.
nlohmann::json small_dense_config() {
  nlohmann::json j = small_moe_config();
  j["enable_moe_block"] = false;
  j["intermediate_size"] = 1024;
  return j;
}

// A random-weight model of `config` (an HF config.json) in `type` under the test directory.
fs::path write_synth_file(synth::SynthArch arch, const nlohmann::json& config, GgmlType type,
                          const std::string& file_name, std::uint32_t seed,
                          TypePreset preset = TypePreset::kNone) {
  const fs::path tmp = env_or("QFORGE_TEST_TMP", QFORGE_TEST_TMP);
  fs::create_directories(tmp);
  const fs::path path = tmp / file_name;
  synth::SynthTypeOptions types;
  types.type = type;
  types.preset = preset;
  const synth::SynthPlan plan = synth::plan_synth_model(
      arch, synth::synth_config_from_json(config, file_name), types, file_name);
  synth::write_synth_model(plan, path, seed);
  return path;
}

// Token ids first, first + step, ... modulo the range [first, first + range).
std::vector<std::int32_t> prompt_ids(std::size_t n, int first, int step, int range) {
  std::vector<std::int32_t> ids(n);
  for (std::size_t i = 0; i < n; ++i) {
    ids[i] = static_cast<std::int32_t>(first + (static_cast<int>(i) * step) % range);
  }
  return ids;
}

fs::path write_small_moe(GgmlType type) {
  return write_synth_file(synth::SynthArch::kGemma4, small_moe_config(), type,
                          "cuda_gemma4_small_moe_" + std::string(type_name(type)) + ".gguf", 7);
}

class CudaGemma4SmallMoe : public ::testing::TestWithParam<GgmlType> {};

TEST_P(CudaGemma4SmallMoe, PrefillAndDecodeMatchCpu) {
  SKIP_WITHOUT_GPU();
  const fs::path path = write_small_moe(GetParam());
  const CpuF32Activations f32;
  auto cpu = load_model(path);
  auto gpu = cuda_model(path, /*gemm=*/false);
  const ModelConfig& c = gpu->config();
  ASSERT_EQ(c.n_expert, 16);
  ASSERT_EQ(c.n_expert_used, 4);
  ASSERT_EQ(c.n_layer_kv, 4);
  std::vector<std::int32_t> ids(70);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<std::int32_t>(3 + (i * 37) % 500);
  }
  expect_gpu_matches_cpu(*cpu, *gpu, ids, 6, KvType::F32,
                         std::string("small MoE ") + std::string(type_name(GetParam())));
}

INSTANTIATE_TEST_SUITE_P(CudaGemma4Types, CudaGemma4SmallMoe,
                         ::testing::Values(GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q4_0,
                                           GgmlType::Q5_K),
                         [](const ::testing::TestParamInfo<GgmlType>& param_info) {
                           return std::string(type_name(param_info.param));
                         });

// llama-quantize's Q4_K_M mix on the small MoE: Q6_K attn_v in some layers beside Q4_K attn_q and
// attn_k (Q and K then one stacked launch, V its own), and the 704-column expert down stacks in
// Q5_0 (Q4_K's fallback for rows that are not whole super-blocks) and Q8_0 (Q6_K's), which the
// expert down GEMV takes as stored; prefill and decode against the CPU.
TEST(CudaGemma4Mixes, SmallMoeQ4KMMatchesCpu) {
  SKIP_WITHOUT_GPU();
  // 8 layers, every fourth of full attention (K = V there): the mix then gives layer 0 a Q6_K V.
  nlohmann::json config = small_moe_config();
  const int n_layer = 8;
  config["num_hidden_layers"] = n_layer;
  config["layer_types"] = nlohmann::json::array();
  for (int i = 0; i < n_layer; ++i) {
    config["layer_types"].push_back(i % 4 == 3 ? "full_attention" : "sliding_attention");
  }
  const fs::path path =
      write_synth_file(synth::SynthArch::kGemma4, config, GgmlType::Q4_K,
                       "cuda_gemma4_small_moe_q4_k_m.gguf", 9, TypePreset::kQ4_K_M);
  {
    const GgufReader gguf = GgufReader::open(path);
    bool mixed_qkv = false, down_q5_0 = false, down_q8_0 = false;
    for (int il = 0; il < n_layer; ++il) {
      const std::string blk = "blk." + std::to_string(il) + ".";
      const GgufTensorInfo* q = gguf.find_tensor(blk + "attn_q.weight");
      const GgufTensorInfo* k = gguf.find_tensor(blk + "attn_k.weight");
      const GgufTensorInfo* v = gguf.find_tensor(blk + "attn_v.weight");
      const GgufTensorInfo* down = gguf.find_tensor(blk + "ffn_down_exps.weight");
      ASSERT_NE(q, nullptr);
      ASSERT_NE(down, nullptr);
      mixed_qkv = mixed_qkv || (k != nullptr && v != nullptr && q->type == GgmlType::Q4_K &&
                                k->type == GgmlType::Q4_K && v->type == GgmlType::Q6_K);
      down_q5_0 = down_q5_0 || down->type == GgmlType::Q5_0;
      down_q8_0 = down_q8_0 || down->type == GgmlType::Q8_0;
    }
    ASSERT_TRUE(mixed_qkv) << "no layer with Q4_K Q and K and a Q6_K V";
    ASSERT_TRUE(down_q5_0) << "no Q5_0 expert down stack";
    ASSERT_TRUE(down_q8_0) << "no Q8_0 expert down stack";
  }
  const CpuF32Activations f32;
  auto cpu = load_model(path);
  auto gpu = cuda_model(path, /*gemm=*/false);
  expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(40, 3, 37, 500), 6, KvType::F32,
                         "small MoE Q4_K_M");
}

// The Q4_0x8 GEMVs' cluster choice forced for a test (every unnormed launch in CTA pairs, which
// the shapes of these small models never pick by themselves), back to the choice before it.
struct ForcedGemvPairs {
  int before = cuda::gemv_q4_0x8_cluster_chosen();
  ForcedGemvPairs() { cuda::set_gemv_q4_0x8_cluster(2); }
  ~ForcedGemvPairs() { cuda::set_gemv_q4_0x8_cluster(before); }
  ForcedGemvPairs(const ForcedGemvPairs&) = delete;
  ForcedGemvPairs& operator=(const ForcedGemvPairs&) = delete;
};

// Decode steps as one persistent kernel (decode_persistent.h) on every cache, or on none, for a
// test; back to the choice before it.
struct ForcedPersistentDecode {
  cuda::PersistentMode before = cuda::decode_persistent_mode();
  explicit ForcedPersistentDecode(bool on) {
    cuda::set_decode_persistent_mode(on ? cuda::PersistentMode::kAlways
                                        : cuda::PersistentMode::kOff);
  }
  ~ForcedPersistentDecode() { cuda::set_decode_persistent_mode(before); }
  ForcedPersistentDecode(const ForcedPersistentDecode&) = delete;
  ForcedPersistentDecode& operator=(const ForcedPersistentDecode&) = delete;
};

// A dense variant whose every attention and FFN matrix is 256-column aligned, in Q4_0: the GPU
// regroups them (q4_0x8.h), so decode runs the integer-plane GEMV, including the gate/up product
// that applies GeGLU to its sums (gemm off here: the F32-equivalent GEMV for every token count;
// the Q4_0x8 GEMM decoder is checked bit for bit in test_cuda_kernels.cpp).
TEST(CudaGemma4Q4_0x8, DenseModelMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const nlohmann::json config = small_dense_config();
  const fs::path path = write_synth_file(synth::SynthArch::kGemma4, config, GgmlType::Q4_0,
                                         "cuda_gemma4_small_dense_q4_0.gguf", 9);
  const CpuF32Activations f32;
  auto cpu = load_model(path);
  auto gpu = cuda_model(path, /*gemm=*/false);
  // Decode steps with every update inside the Q/K/V and gate/up GEMVs (the post-norm ones and the
  // first layer's norm), none, and the default, which at this width (256 columns, under
  // kPostNormMinCols) keeps them apart too.
  const std::pair<cuda::GemvNorms, const char*> modes[] = {
      {cuda::GemvNorms::kPostNorm, "post norms"},
      {cuda::GemvNorms::kAll, "all"},
      {cuda::GemvNorms::kOff, "none"}};
  for (const auto& [mode, name] : modes) {
    gpu->set_gemv_norms(mode);
    expect_gpu_matches_cpu(
        *cpu, *gpu, prompt_ids(40, 3, 53, 500), 6, KvType::F32,
        std::string("small dense Q4_0 (Q4_0x8 on the GPU), norms in GEMVs: ") + name);
  }
  // The unnormed products in CTA pairs sharing the planes, also inside the decode graph.
  gpu->set_gemv_norms(cuda::GemvNorms::kPostNorm);
  const ForcedGemvPairs pairs;
  expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(40, 3, 53, 500), 6, KvType::F32,
                         "small dense Q4_0 (Q4_0x8 on the GPU), GEMVs in CTA pairs");
}

// The same dense model at 4096 columns (cuda::kPostNormMinCols), where the default takes the
// post-norm updates into the Q/K/V and gate/up GEMVs as Gemma 4 31B's decode steps do; a cache of
// 1024 positions, so the decode attention's splits follow the depth bucket, not the cache.
TEST(CudaGemma4Q4_0x8, WideDenseModelDefaultNormsMatchCpu) {
  SKIP_WITHOUT_GPU();
  nlohmann::json config = small_dense_config();
  config["hidden_size"] = static_cast<int>(cuda::kPostNormMinCols);
  config["num_hidden_layers"] = 3;
  config["layer_types"] = {"sliding_attention", "sliding_attention", "full_attention"};
  config["num_kv_shared_layers"] = 0;
  const fs::path path = write_synth_file(synth::SynthArch::kGemma4, config, GgmlType::Q4_0,
                                         "cuda_gemma4_wide_dense_q4_0.gguf", 17);
  const CpuF32Activations f32;
  auto cpu = load_model(path);
  auto gpu = cuda_model(path, /*gemm=*/false);
  for (const auto& [mode, name] : {std::pair{cuda::GemvNorms::kPostNorm, "default"},
                                   std::pair{cuda::GemvNorms::kOff, "none"}}) {
    gpu->set_gemv_norms(mode);
    expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(40, 3, 53, 500), 6, KvType::F32,
                           std::string("wide dense Q4_0, norms in GEMVs: ") + name, 1024);
  }
}

// Why gpu's decode steps on a small cache of type kv cannot take the persistent kernel (empty: they
// can; decode_persistent.h).
std::string persistent_why(const cuda::CudaModel& gpu, KvType kv) {
  auto probe = gpu.new_cache(8, kv);
  return gpu.persistent_unsupported(dynamic_cast<cuda::CudaKvCache&>(*probe));
}

// The small Llama of the Q4_0x8 and persistent-step tests.
nlohmann::json small_llama_config() {
  return {{"hidden_size", 512},       {"num_hidden_layers", 3},      {"num_attention_heads", 8},
          {"num_key_value_heads", 2}, {"intermediate_size", 1536},   {"vocab_size", 700},
          {"rms_norm_eps", 1e-5},     {"tie_word_embeddings", false}};
}

// The small Llama in Q4_0 (seed 11) under the test directory, which several tests below share.
fs::path write_small_llama() {
  return write_synth_file(synth::SynthArch::kLlama, small_llama_config(), GgmlType::Q4_0,
                          "cuda_llama_small_q4_0.gguf", 11);
}

// A small Llama in Q4_0, every matrix regrouped on the GPU: prefill and decode run the Q4_0x8
// GEMVs between Llama-style norms (no post norms, SiLU gate).
TEST(CudaLlamaQ4_0x8, DecodeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const fs::path path = write_small_llama();
  const CpuF32Activations f32;
  auto cpu = load_model(path);
  auto gpu = cuda_model(path, /*gemm=*/false);
  // The ordinary decode kernels (these small caches would take the persistent step, tested below).
  const ForcedPersistentDecode ordinary(false);
  // Llama has no post norms: by default its norms stay apart; kAll takes them into the GEMVs.
  for (const cuda::GemvNorms mode : {cuda::GemvNorms::kAll, cuda::GemvNorms::kPostNorm}) {
    gpu->set_gemv_norms(mode);
    expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(24, 5, 37, 600), 8, KvType::F32,
                           std::string("small Llama Q4_0 (Q4_0x8 on the GPU), norms in GEMVs: ") +
                               (mode == cuda::GemvNorms::kAll ? "all" : "post norms (none)"));
  }
  const ForcedGemvPairs pairs;  // every GEMV in CTA pairs, also inside the decode graph
  expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(24, 5, 37, 600), 8, KvType::F32,
                         "small Llama Q4_0 (Q4_0x8 on the GPU), GEMVs in CTA pairs");
}

// The same small Llama and small dense Gemma 4 in Q4_K (every matrix width a multiple of 256):
// decode runs the integer-plane GEMVs on the Q4_K bytes as stored (PlaneWeights::kQ4_K), with the
// norms inside the GEMVs and apart, and in CTA pairs (prompts through the same GEMVs, gemm off).
TEST(CudaQ4K, SmallModelsDecodeMatchCpu) {
  SKIP_WITHOUT_GPU();
  ASSERT_TRUE(cuda::q4_k_planes_applies(GgmlType::Q4_K, 256));
  const CpuF32Activations f32;
  const fs::path llama = write_synth_file(synth::SynthArch::kLlama, small_llama_config(),
                                          GgmlType::Q4_K, "cuda_llama_small_q4_k.gguf", 12);
  const nlohmann::json config = small_dense_config();
  const fs::path gemma = write_synth_file(synth::SynthArch::kGemma4, config, GgmlType::Q4_K,
                                          "cuda_gemma4_small_dense_q4_k.gguf", 13);
  // The ordinary decode kernels (the Llama would take the persistent step, tested below).
  const ForcedPersistentDecode ordinary(false);
  for (const auto& [path, name] :
       {std::pair{llama, "small Llama Q4_K"}, std::pair{gemma, "small dense Gemma 4 Q4_K"}}) {
    auto cpu = load_model(path);
    auto gpu = cuda_model(path, /*gemm=*/false);  // F32-grade products for prompts too
    for (const cuda::GemvNorms mode : {cuda::GemvNorms::kAll, cuda::GemvNorms::kPostNorm}) {
      gpu->set_gemv_norms(mode);
      expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(24, 5, 37, 500), 8, KvType::F32,
                             std::string(name) + ", norms in GEMVs: " +
                                 (mode == cuda::GemvNorms::kAll ? "all" : "post norms"));
    }
    const ForcedGemvPairs pairs;
    expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(24, 5, 37, 500), 8, KvType::F32,
                           std::string(name) + ", GEMVs in CTA pairs");
  }
}

// The same small Llama and small dense Gemma 4 in Q8_0 and in Q5_K: decode runs the integer-plane
// GEMVs on those bytes as stored (PlaneWeights::kQ8_0 / kQ5_K; the LM head too where it is Q8_0),
// with the norms inside the GEMVs and apart, and in CTA pairs (prompts through the same GEMVs).
TEST(CudaPlaneForms, SmallModelsDecodeMatchCpu) {
  SKIP_WITHOUT_GPU();
  const CpuF32Activations f32;
  const nlohmann::json gemma_config = small_dense_config();
  // The ordinary decode kernels (the Llama could take the persistent step).
  const ForcedPersistentDecode ordinary(false);
  for (const auto& [type, weights, suffix] :
       {std::tuple{GgmlType::Q8_0, cuda::PlaneWeights::kQ8_0, "q8_0"},
        std::tuple{GgmlType::Q5_K, cuda::PlaneWeights::kQ5_K, "q5_k"}}) {
    ASSERT_TRUE(cuda::gguf_plane_weights(type, 256) == weights) << type_name(type);
    const fs::path llama =
        write_synth_file(synth::SynthArch::kLlama, small_llama_config(), type,
                         std::string("cuda_llama_small_") + suffix + ".gguf", 12);
    const fs::path gemma =
        write_synth_file(synth::SynthArch::kGemma4, gemma_config, type,
                         std::string("cuda_gemma4_small_dense_") + suffix + ".gguf", 13);
    for (const auto& [path, model] :
         {std::pair{llama, "small Llama "}, std::pair{gemma, "small dense Gemma 4 "}}) {
      const std::string name = model + std::string(type_name(type));
      auto cpu = load_model(path);
      auto gpu = cuda_model(path, /*gemm=*/false);  // F32-grade products for prompts too
      for (const cuda::GemvNorms mode : {cuda::GemvNorms::kAll, cuda::GemvNorms::kPostNorm}) {
        gpu->set_gemv_norms(mode);
        expect_gpu_matches_cpu(
            *cpu, *gpu, prompt_ids(24, 5, 37, 500), 8, KvType::F32,
            name + ", norms in GEMVs: " + (mode == cuda::GemvNorms::kAll ? "all" : "post norms"));
      }
      const ForcedGemvPairs pairs;
      expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(24, 5, 37, 500), 8, KvType::F32,
                             name + ", GEMVs in CTA pairs");
    }
  }
}

// The opt-in int8 x of the Q4_0x8 GEMVs (cuda_device.h, DecodeX::kInt8), as a user sets it before
// loading: the small Llama's logits over a prompt and decode steps (the same tokens fed to every
// run) move away from the exact form's, in the ordinary kernels and in the persistent step alike,
// by what int8 rounding of x costs through three random layers (a few percent of the largest
// logit; a wrong scale or plane would cost it all). The kernel's own numerics are checked
// exactly in test_cuda_kernels.cpp (Q4_0x8Int8XMatchesRoundedReference). Two int8 paths agree
// less closely than two exact ones: a last-bit difference upstream can move a value across an
// int8 rounding boundary.
TEST(CudaLlamaQ4_0x8, Int8DecodeXStaysClose) {
  SKIP_WITHOUT_GPU();
  const fs::path path = write_small_llama();
  const std::vector<std::int32_t> tokens = prompt_ids(30, 5, 37, 600);
  const std::size_t n_prompt = 24;
  auto run = [&](cuda::DecodeX x, bool persistent) {
    const ForcedDecodeX forced_x(x);
    const ForcedPersistentDecode forced(persistent);
    auto gpu = cuda_model(path, /*gemm=*/false);
    auto cache = gpu->new_cache(static_cast<int>(tokens.size()) + 1, KvType::F32);
    if (persistent &&
        !gpu->persistent_unsupported(dynamic_cast<cuda::CudaKvCache&>(*cache)).empty()) {
      return std::vector<float>{};
    }
    std::vector<float> all = gpu->forward({tokens.data(), n_prompt}, 0, *cache);
    for (std::size_t i = n_prompt; i < tokens.size(); ++i) {
      const std::vector<float> step = gpu->forward({&tokens[i], 1}, static_cast<int>(i), *cache);
      all.insert(all.end(), step.begin(), step.end());
    }
    return all;
  };
  const std::vector<float> exact = run(cuda::DecodeX::kExact, false);
  const std::vector<float> int8 = run(cuda::DecodeX::kInt8, false);
  const Diff d = diff(int8, exact);
  std::printf("int8 x vs exact, ordinary kernels: max rel %.3g\n", d.rel());
  EXPECT_TRUE(d.finite);
  EXPECT_GT(d.rel(), 1e-4) << "the int8 form should round x (is the switch read?)";
  EXPECT_LT(d.rel(), 0.1) << "more than int8 rounding of x";
  const std::vector<float> persistent = run(cuda::DecodeX::kInt8, true);
  if (persistent.empty()) GTEST_SKIP() << "no persistent decode on this device";
  const Diff dp = diff(persistent, int8), de = diff(persistent, exact);
  std::printf("int8 x, persistent step vs ordinary kernels: max rel %.3g (vs exact %.3g)\n",
              dp.rel(), de.rel());
  EXPECT_TRUE(dp.finite);
  EXPECT_LT(dp.rel(), 0.05) << "the persistent step's int8 products differ by " << dp.max_abs;
  EXPECT_GT(de.rel(), 1e-4) << "the persistent step ignored the switch";
  EXPECT_LT(de.rel(), 0.1) << "more than int8 rounding of x";
}

// The small Llama's decode steps through the persistent kernel: every layer's products, rotary
// embedding, cache stores, attention and residual updates in one launch, against the CPU, with
// F32 and BF16 caches (the prompt itself runs the ordinary kernels); in Q4_0 (regrouped to
// Q4_0x8 on the GPU) and in Q4_K (its bytes as stored).
TEST(CudaLlamaPersistent, DecodeMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const CpuF32Activations f32;
  const ForcedPersistentDecode on(true);
  for (const auto& [path, name] :
       {std::pair{write_small_llama(), "small Llama Q4_0"},
        std::pair{write_synth_file(synth::SynthArch::kLlama, small_llama_config(), GgmlType::Q4_K,
                                   "cuda_llama_small_q4_k.gguf", 12),
                  "small Llama Q4_K"}}) {
    auto cpu = load_model(path);
    auto gpu = cuda_model(path, /*gemm=*/false);
    for (const KvType kv : {KvType::F32, KvType::BF16}) {
      const std::string why = persistent_why(*gpu, kv);
      if (why.rfind("needs compute capability", 0) == 0) GTEST_SKIP() << why;
      ASSERT_EQ(why, "") << name << " should take the persistent decode step";
      expect_gpu_matches_cpu(
          *cpu, *gpu, prompt_ids(24, 5, 37, 600), 8, kv,
          std::string(name) + ", persistent decode, cache " + (kv == KvType::F32 ? "F32" : "BF16"));
    }
  }
}

// A Q4_K_M mix by llama-quantize's rule (Q6_K attn_v and ffn_down in layer 2 of 3, Q4_K elsewhere):
// decode steps through the persistent step's mixed form (that layer's Q, K and V as three
// matrices, its Q6_K stages of 1680 bytes) against the CPU, with F32 and BF16 caches.
TEST(CudaLlamaPersistent, Q4KMMixMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const nlohmann::json config = {{"hidden_size", 2048},       {"num_hidden_layers", 3},
                                 {"num_attention_heads", 16}, {"num_key_value_heads", 4},
                                 {"intermediate_size", 4096}, {"vocab_size", 700},
                                 {"rms_norm_eps", 1e-5},      {"tie_word_embeddings", false}};
  const fs::path path = write_synth_file(synth::SynthArch::kLlama, config, GgmlType::Q4_K,
                                         "cuda_llama_q4_k_m.gguf", 14, TypePreset::kQ4_K_M);
  {
    const GgufReader gguf = GgufReader::open(path);
    for (const char* name : {"blk.2.attn_v.weight", "blk.2.ffn_down.weight"}) {
      const GgufTensorInfo* t = gguf.find_tensor(name);
      ASSERT_NE(t, nullptr) << name;
      ASSERT_EQ(t->type, GgmlType::Q6_K) << name << ": the mix this test needs";
    }
    ASSERT_EQ(gguf.find_tensor("blk.0.attn_v.weight")->type, GgmlType::Q4_K);
  }
  const CpuF32Activations f32;
  auto cpu = load_model(path);
  auto gpu = cuda_model(path, /*gemm=*/false);
  const ForcedPersistentDecode on(true);
  for (const KvType kv : {KvType::F32, KvType::BF16}) {
    const std::string why = persistent_why(*gpu, kv);
    if (why.rfind("needs compute capability", 0) == 0) GTEST_SKIP() << why;
    ASSERT_EQ(why, "") << "the Q4_K_M mix should take the persistent decode step";
    expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(16, 5, 37, 600), 6, kv,
                           std::string("Llama Q4_K_M mix, persistent decode, cache ") +
                               (kv == KvType::F32 ? "F32" : "BF16"));
  }
}

// Rows of several ring stages, the last one partial (2304 columns: stages of 64 + 8 blocks; 2560:
// 64 + 16), through both ring shapes of the persistent step: the default (two 32-block steps per
// stage) and one step per stage (QFORGE_PERSISTENT_SPAN=1, read when the step is built); Q4_0 and
// Q4_K.
TEST(CudaLlamaPersistent, WideRowsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const nlohmann::json config = {{"hidden_size", 2304},       {"num_hidden_layers", 2},
                                 {"num_attention_heads", 18}, {"num_key_value_heads", 6},
                                 {"intermediate_size", 2560}, {"vocab_size", 700},
                                 {"rms_norm_eps", 1e-5},      {"tie_word_embeddings", false}};
  const CpuF32Activations f32;
  const ForcedPersistentDecode on(true);
  for (const GgmlType type : {GgmlType::Q4_0, GgmlType::Q4_K}) {
    const bool q4_k = type == GgmlType::Q4_K;
    const fs::path path =
        write_synth_file(synth::SynthArch::kLlama, config, type,
                         q4_k ? "cuda_llama_wide_q4_k.gguf" : "cuda_llama_wide_q4_0.gguf", 12);
    auto cpu = load_model(path);
    for (const char* span : {"", "1"}) {
      if (*span != 0) setenv("QFORGE_PERSISTENT_SPAN", span, 1);
      auto gpu = cuda_model(path, /*gemm=*/false);
      unsetenv("QFORGE_PERSISTENT_SPAN");
      const std::string why = persistent_why(*gpu, KvType::F32);
      if (why.rfind("needs compute capability", 0) == 0) GTEST_SKIP() << why;
      ASSERT_EQ(why, "") << "the wide Llama should take the persistent decode step";
      expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(12, 5, 37, 600), 6, KvType::F32,
                             std::string("wide Llama ") + (q4_k ? "Q4_K" : "Q4_0") +
                                 ", persistent decode, span " + (*span != 0 ? span : "default"));
    }
  }
}

// At a depth where the attention splits of a head take several 32-position chunks each (more
// than 64 splits x 32 positions) the persistent step equals the ordinary decode kernels.
TEST(CudaLlamaPersistent, LongContextMatchesOrdinaryDecode) {
  SKIP_WITHOUT_GPU();
  const fs::path path = write_small_llama();
  auto gpu = cuda_model(path, /*gemm=*/false);
  const std::vector<std::int32_t> prompt = prompt_ids(2200, 5, 37, 600);
  const int n_ctx = static_cast<int>(prompt.size()) + 4;
  auto run = [&](bool persistent) {
    const ForcedPersistentDecode forced(persistent);
    auto cache = gpu->new_cache(n_ctx, KvType::BF16);
    if (persistent) {
      const std::string why = gpu->persistent_unsupported(dynamic_cast<cuda::CudaKvCache&>(*cache));
      if (!why.empty()) return std::vector<float>{};
    }
    std::vector<float> logits = gpu->forward(prompt, 0, *cache);
    std::vector<float> all;
    for (int step = 0; step < 3; ++step) {
      const std::int32_t next = argmax(logits);
      logits = gpu->forward({&next, 1}, static_cast<int>(prompt.size()) + step, *cache);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  };
  const std::vector<float> want = run(false);
  const std::vector<float> got = run(true);
  if (got.empty()) GTEST_SKIP() << "no persistent decode on this device";
  const Diff d = diff(got, want);
  EXPECT_TRUE(d.within()) << "decode logits at depth 2200 differ by " << d.max_abs;
  std::printf("persistent vs ordinary decode at depth %zu: max rel %.3g\n", prompt.size(), d.rel());
}

// In the default mode a decode step takes the persistent kernel below position kPersistentMaxCtx
// and the ordinary kernels from there on, on one cache of any size (two decode graphs): steps on
// both sides of the switch equal the ordinary kernels'.
TEST(CudaLlamaPersistent, SwitchAtDepthMatchesOrdinaryDecode) {
  SKIP_WITHOUT_GPU();
  const fs::path path = write_small_llama();
  auto gpu = cuda_model(path, /*gemm=*/false);
  const int first = cuda::kPersistentMaxCtx - 4;
  const std::vector<std::int32_t> prompt = prompt_ids(static_cast<std::size_t>(first), 5, 37, 600);
  auto run = [&](cuda::PersistentMode mode) {
    const cuda::PersistentMode before = cuda::decode_persistent_mode();
    cuda::set_decode_persistent_mode(mode);
    auto cache = gpu->new_cache(first + 64, KvType::BF16);
    std::vector<float> logits = gpu->forward(prompt, 0, *cache);
    std::vector<float> all;
    for (int step = 0; step < 8; ++step) {  // positions first .. first + 7, across the switch
      const std::int32_t next = argmax(logits);
      logits = gpu->forward({&next, 1}, first + step, *cache);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    cuda::set_decode_persistent_mode(before);
    return all;
  };
  if (const std::string why = persistent_why(*gpu, KvType::BF16); !why.empty()) {
    GTEST_SKIP() << why;
  }
  const std::vector<float> want = run(cuda::PersistentMode::kOff);
  const std::vector<float> got = run(cuda::PersistentMode::kShallowSteps);
  const Diff d = diff(got, want);
  EXPECT_TRUE(d.within()) << "decode logits across position " << cuda::kPersistentMaxCtx
                          << " differ by " << d.max_abs;
}

// On a cache larger than the context, the ordinary decode kernels follow the depth: each depth
// bucket (a power of two above the position) has its own graph, batch_attention below 1024
// positions and flash decoding with splits for the bucket above. Decode steps across the bucket
// edges at 512 (batch_attention -> flash) and 1024 (flash splits for 1024 -> 2048) on a cache of
// 4096 positions against the CPU.
TEST(CudaDecodeBuckets, StepsAcrossBucketsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const fs::path path = write_small_llama();
  const CpuF32Activations f32;
  auto cpu = load_model(path);
  auto gpu = cuda_model(path, /*gemm=*/false);
  const ForcedPersistentDecode ordinary(false);
  for (const int first : {508, 1020}) {
    expect_gpu_matches_cpu(*cpu, *gpu, prompt_ids(static_cast<std::size_t>(first), 5, 37, 600), 8,
                           KvType::F32,
                           "small Llama, ordinary decode across position " +
                               std::to_string(first + 4) + " on a cache of 4096",
                           4096);
  }
}

// ---- the tensor-core GEMM prefill path -------------------------------------------------------

// Prompt chunks of >= 16 tokens go through the BF16 tensor-core GEMM: both operands are rounded
// to BF16 (gemm_tc.h; the kernel itself is checked in test_cuda_gemm.cpp). In these tiny random
// models the rounding is amplified through the layers (measured on an H200: ~1% relative on
// gemma3_tiny, ~15% on gemma4_dense_tiny q8_0), so this checks the wiring only: the GEMM path is
// taken (results differ from the GEMV path), set_prefill_gemm(false) restores the GEMV results
// exactly, and the GEMM results stay in the same neighbourhood (most rows keep their arg-max).
// Dense model only: in a MoE model the rounding may legitimately change the chosen experts.
TEST(CudaGemma4Gemm, PrefillThroughGemmIsClose) {
  SKIP_WITHOUT_GPU();
  const fs::path src =
      env_or("QFORGE_SOURCE_DIR", QFORGE_SOURCE_DIR) / "tests/data/fixtures/hf/gemma4_dense_tiny";
  if (!fs::exists(src / "config.json")) GTEST_SKIP() << src << " not found";
  const fs::path tmp = env_or("QFORGE_TEST_TMP", QFORGE_TEST_TMP);
  fs::create_directories(tmp);
  ConvertOptions opt;
  opt.input = src;
  opt.output = tmp / "cuda_gemm_gemma4_dense_tiny_q8_0.gguf";
  opt.type = "q8_0";
  opt.tokenizer = false;
  convert_checkpoint(opt);
  const auto ids = fixture_prompt("gemma4_dense_tiny", 80);
  auto model = cuda_model(opt.output, /*gemm=*/false);
  auto run = [&] {
    auto cache = model->new_cache(81, KvType::F32);
    return model->forward(ids, 0, *cache, {.all_logits = true});
  };
  const auto want = run();
  model->set_prefill_gemm(true);
  const auto got = run();
  model->set_prefill_gemm(false);
  EXPECT_EQ(run(), want) << "switching the GEMM off again does not restore the GEMV results";

  const Diff d = diff(got, want);
  EXPECT_TRUE(d.finite);
  EXPECT_GT(d.max_abs, 0.0) << "the GEMM path was not taken (results identical to the GEMV)";
  EXPECT_LT(d.rel(), 0.35) << d.max_abs << " (max |gemv| " << d.max_ref << ")";
  const auto vocab = static_cast<std::size_t>(model->config().n_vocab);
  int same = 0;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    same += argmax(std::span(got).subspan(t * vocab, vocab)) ==
            argmax(std::span(want).subspan(t * vocab, vocab));
  }
  EXPECT_GE(same, static_cast<int>(ids.size()) * 3 / 4);
  std::printf(
      "gemma4_dense_tiny q8_0 prefill, GEMM vs GEMV: max diff / max |logit| = %.3g, same "
      "arg-max in %d of %zu rows\n",
      d.rel(), same, ids.size());
}

// Prompt chunks of a MoE model take the expert-grouped tensor-core GEMM (moe_gemm.h) for the
// experts as well as the dense GEMM: a wiring check like the one above. The BF16 rounding changes
// chosen experts in later layers of this random model, which moves whole logit rows (measured on
// an H200: max diff 0.42 of max |logit|, same arg-max in 66 of 70 rows), so the size bound only
// catches garbage and the arg-max agreement carries the check; moe_gemm itself is checked against
// moe_gemv in test_cuda_moe_gemm.cpp.
TEST(CudaGemma4Gemm, MoePrefillThroughGroupedGemmIsClose) {
  SKIP_WITHOUT_GPU();
  const fs::path path = write_small_moe(GgmlType::Q8_0);
  auto model = cuda_model(path, /*gemm=*/false);
  std::vector<std::int32_t> ids(70);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<std::int32_t>(3 + (i * 37) % 500);
  }
  auto run = [&] {
    auto cache = model->new_cache(71, KvType::F32);
    return model->forward(ids, 0, *cache, {.all_logits = true});
  };
  const auto want = run();
  model->set_prefill_gemm(true);
  const auto got = run();
  const Diff d = diff(got, want);
  EXPECT_TRUE(d.finite);
  EXPECT_GT(d.max_abs, 0.0) << "the GEMM path was not taken (results identical to the GEMV)";
  EXPECT_LT(d.rel(), 1.0) << d.max_abs << " (max |gemv| " << d.max_ref << ")";
  const auto vocab = static_cast<std::size_t>(model->config().n_vocab);
  int same = 0;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    same += argmax(std::span(got).subspan(t * vocab, vocab)) ==
            argmax(std::span(want).subspan(t * vocab, vocab));
  }
  EXPECT_GE(same, static_cast<int>(ids.size()) * 17 / 20);
  std::printf(
      "small MoE q8_0 prefill, GEMM + grouped experts vs GEMV: max diff / max |logit| = %.3g, "
      "same arg-max in %d of %zu rows\n",
      d.rel(), same, ids.size());
}

// ---- the bench configs' tensors have GPU kernels (planning only: no device needed) -------------

TEST(CudaGemma4Plan, BenchConfigTensorsHaveGpuKernels) {
  const fs::path dir = env_or("QFORGE_SOURCE_DIR", QFORGE_SOURCE_DIR) / "bench/configs";
  for (const char* file : {"gemma4-26b-a4b.json", "gemma4-31b.json", "gemma4-e4b.json"}) {
    if (!fs::exists(dir / file)) continue;
    for (const GgmlType type :
         {GgmlType::Q4_K, GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q6_K, GgmlType::BF16}) {
      SCOPED_TRACE(std::string(file) + " " + std::string(type_name(type)));
      synth::SynthTypeOptions types;
      types.type = type;
      const synth::SynthPlan plan = synth::plan_synth_model(
          synth::SynthArch::kGemma4, synth::read_synth_config(dir / file), types, "plan");
      int matrices = 0, stacks = 0;
      for (const synth::SynthTensor& t : plan.tensors) {
        if (t.ne.size() == 2) {
          ++matrices;
          EXPECT_TRUE(cuda::gemv_supported(t.type)) << t.name << " " << type_name(t.type);
        } else if (t.ne.size() == 3) {
          ++stacks;
          // The device layout of a stacked expert tensor: a 256-byte aligned base, experts
          // rows * row_bytes apart.
          cuda::ExpertStack s;
          s.type = t.type;
          s.data = reinterpret_cast<const void*>(std::uintptr_t{1} << 20);
          s.cols = t.ne[0];
          s.rows = t.ne[1];
          s.n_experts = static_cast<int>(t.ne[2]);
          s.expert_bytes = s.rows * row_bytes(t.type, s.cols);
          EXPECT_NO_THROW(cuda::check_expert_stack(s, t.name.c_str())) << t.name;
        }
      }
      EXPECT_GT(matrices, 0);
      if (std::string(file) == "gemma4-26b-a4b.json") {
        EXPECT_GT(stacks, 0);
      }
    }
  }
}

#endif  // QFORGE_HAVE_CUDA

}  // namespace
}  // namespace qforge
