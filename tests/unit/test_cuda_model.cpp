// The CUDA forward pass against the CPU forward pass (the numerical reference) and against real
// reference outputs. Skips without a GPU (and without the data it needs).
//
// Tolerances. With F32 KV caches on both sides, the two backends differ only in the order of F32
// sums (GEMV: 4 warps x 32 lanes x runs of 4 on the GPU, blocks in sequence on the CPU;
// attention: split-K online softmax vs a plain softmax). Such differences are ~1e-6 relative per
// dot product and grow a little through the layers; we require max |gpu - cpu| <= 1e-4 x
// max |cpu| over all logits of every position. BF16 caches round K/V to 8 mantissa bits, and a
// last-bit difference before the rounding can flip it (the CPU tests measured 0.03 between batched
// and sequential CPU runs), so there only the greedy token sequences must agree.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "formats/gguf.h"
#include "model/config.h"
#include "model/model.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cuda_device.h"
#include "runtime/cuda_model.h"

#ifdef QFORGE_HAVE_CUDA
#include "convert/converter.h"
#include "runtime/cuda/gemv.h"
#endif

namespace qforge {
namespace {

TEST(CudaModelLoad, FailsClearlyWithoutDevice) {
  if (cuda::available()) GTEST_SKIP() << "a CUDA device is present";
  try {
    make_cuda_model(nullptr, ModelConfig{});
    FAIL() << "make_cuda_model succeeded without a device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
  }
}

#ifdef QFORGE_HAVE_CUDA

// Test data locations: the build's defaults, overridable from the environment (the device
// machine runs the tests from another checkout path).
std::filesystem::path env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::filesystem::path(v) : std::filesystem::path(fallback);
}

#define SKIP_WITHOUT_GPU() \
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device"

// The GPU model with prompt chunks on the F32 GEMV (QFORGE_GEMM=off while it is built), so that
// its logits can be held to the F32 CPU reference tightly; `gemm` keeps the BF16 tensor-core path.
std::unique_ptr<Model> cuda_model(const std::filesystem::path& path, bool gemm = false) {
  const char* old = std::getenv("QFORGE_GEMM");
  const std::string saved = old != nullptr ? old : "";
  if (!gemm) setenv("QFORGE_GEMM", "off", 1);
  auto gguf = std::make_unique<GgufReader>(GgufReader::open(path));
  ModelConfig config = read_model_config(*gguf);
  auto model = make_cuda_model(std::move(gguf), std::move(config));
  if (old != nullptr) {
    setenv("QFORGE_GEMM", saved.c_str(), 1);
  } else {
    unsetenv("QFORGE_GEMM");
  }
  return model;
}

std::vector<float> all_logits(Model& m, std::span<const std::int32_t> ids, KvType kv) {
  auto cache = m.new_cache(static_cast<int>(ids.size()) + 1, kv);
  return m.forward(ids, 0, *cache, {.all_logits = true});
}

// Largest |a - b| relative to the largest |b|.
double rel_diff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(b[i])));
  }
  return d / std::max(scale, 1e-30);
}

std::int32_t argmax(std::span<const float> v) {
  return static_cast<std::int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

// Greedy continuation: prompt in one forward pass, then one token at a time.
std::vector<std::int32_t> greedy(Model& m, std::vector<std::int32_t> prompt, int n_new, KvType kv) {
  auto cache = m.new_cache(static_cast<int>(prompt.size()) + n_new + 1, kv);
  std::vector<float> logits = m.forward(prompt, 0, *cache);
  std::vector<std::int32_t> out;
  for (int i = 0; i < n_new; ++i) {
    const std::int32_t next = argmax(logits);
    out.push_back(next);
    logits = m.forward({&next, 1}, static_cast<int>(prompt.size()) + i, *cache);
  }
  return out;
}

constexpr double kLogitTolerance = 1e-4;

// ---- stories260K: a real trained Llama (F32 weights, head size 8, GQA 2) ----------------------

class CudaStories : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_GPU();
    dir_ = env_or("QFORGE_SHARED_DATA", QFORGE_SHARED_DATA) / "stories260K";
    if (!std::filesystem::exists(dir_ / "stories260K.gguf")) GTEST_SKIP() << dir_ << " not found";
    reference_.push_back(read_model_config(GgufReader::open(gguf())).bos_token);
    std::ifstream in(dir_ / "greedy_from_bos.ids.txt");
    for (std::int32_t id; in >> id;) reference_.push_back(id);
    ASSERT_GT(reference_.size(), 130u);
  }
  std::filesystem::path gguf() const { return dir_ / "stories260K.gguf"; }
  std::filesystem::path dir_;
  std::vector<std::int32_t> reference_;  // BOS, then the reference greedy continuation
};

// 100 tokens: two prompt chunks (64 + 36) on the GPU.
TEST_F(CudaStories, PrefillLogitsMatchCpu) {
  const std::vector<std::int32_t> ids(reference_.begin(), reference_.begin() + 100);
  const cpu::ScopedCpuActivations f32(cpu::CpuActivations::kF32);  // the F32 reference
  auto cpu = load_model(gguf());
  auto gpu = cuda_model(gguf());
  const double d = rel_diff(all_logits(*gpu, ids, KvType::F32), all_logits(*cpu, ids, KvType::F32));
  EXPECT_LT(d, kLogitTolerance);
  std::printf("stories260K prefill, F32 cache: max |gpu - cpu| / max |cpu| = %.3g\n", d);
}

// The same prompt through the BF16 tensor-core GEMM (the default for chunks of >= 16 tokens):
// activations and weights rounded to BF16 in the products, so a looser bound and the same greedy
// choices at almost every position.
TEST_F(CudaStories, PrefillWithTensorCoreGemmStaysClose) {
  const std::vector<std::int32_t> ids(reference_.begin(), reference_.begin() + 100);
  const cpu::ScopedCpuActivations f32(cpu::CpuActivations::kF32);
  auto cpu = load_model(gguf());
  auto gpu = cuda_model(gguf(), /*gemm=*/true);
  const auto want = all_logits(*cpu, ids, KvType::F32);
  const auto got = all_logits(*gpu, ids, KvType::F32);
  const double d = rel_diff(got, want);
  const auto n_vocab = static_cast<std::size_t>(cpu->config().n_vocab);
  std::size_t same = 0;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const auto a = std::span(want).subspan(t * n_vocab, n_vocab);
    const auto b = std::span(got).subspan(t * n_vocab, n_vocab);
    same += std::max_element(a.begin(), a.end()) - a.begin() ==
            std::max_element(b.begin(), b.end()) - b.begin();
  }
  std::printf(
      "stories260K prefill, tensor-core GEMM: max |gpu - cpu| / max |cpu| = %.3g, same "
      "argmax %zu / %zu\n",
      d, same, ids.size());
  EXPECT_LT(d, 0.03);
  EXPECT_GE(same, ids.size() * 97 / 100);
}

// One-token steps run the captured decode graph; their logits must match the batched pass.
TEST_F(CudaStories, DecodeStepsMatchPrefill) {
  const std::vector<std::int32_t> ids(reference_.begin(), reference_.begin() + 40);
  auto gpu = cuda_model(gguf());
  const auto batched = all_logits(*gpu, ids, KvType::F32);
  auto cache = gpu->new_cache(64, KvType::F32);
  const auto vocab = static_cast<std::size_t>(gpu->config().n_vocab);
  double d = 0.0;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const auto step = gpu->forward({&ids[t], 1}, static_cast<int>(t), *cache);
    d = std::max(d, rel_diff(step, std::span(batched).subspan(t * vocab, vocab)));
  }
  EXPECT_LT(d, kLogitTolerance);
  // Rewinding (pos0 < n_filled) reuses the graph with the new position.
  const auto again = gpu->forward({&ids[5], 1}, 5, *cache);
  EXPECT_LT(rel_diff(again, std::span(batched).subspan(5 * vocab, vocab)), kLogitTolerance);
}

// decode_step (a view of the backend's own page-locked copy of the logits) returns what forward()
// returns for the same one-token step, bit for bit, and makes the same checks.
TEST_F(CudaStories, DecodeStepEqualsForward) {
  const std::vector<std::int32_t> ids(reference_.begin(), reference_.begin() + 12);
  auto gpu = cuda_model(gguf());
  auto by_forward = gpu->new_cache(32, KvType::F32);
  auto by_step = gpu->new_cache(32, KvType::F32);
  for (std::size_t t = 0; t < ids.size(); ++t) {
    const auto want = gpu->forward({&ids[t], 1}, static_cast<int>(t), *by_forward);
    const std::span<const float> got = gpu->decode_step(ids[t], static_cast<int>(t), *by_step);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin())) << "step " << t;
    EXPECT_EQ(by_step->n_filled(), static_cast<int>(t) + 1);
  }
  EXPECT_THROW(gpu->decode_step(-1, 12, *by_step), Error);
  EXPECT_THROW(gpu->decode_step(ids[0], 13, *by_step), Error);  // past the cached prefix
  auto small = gpu->new_cache(1, KvType::F32);
  EXPECT_THROW(gpu->decode_step(ids[0], 1, *small), Error);
}

// The reference continuation was produced by an independent F32 implementation.
// (The CPU backend reproduces it with both cache types: tests/unit/test_model_llama.cpp.)
TEST_F(CudaStories, GreedyMatchesReference) {
  auto gpu = cuda_model(gguf());
  const int n_new = 128;
  const std::vector<std::int32_t> want(reference_.begin() + 1, reference_.begin() + 1 + n_new);
  EXPECT_EQ(greedy(*gpu, {reference_[0]}, n_new, KvType::F32), want);
  EXPECT_EQ(greedy(*gpu, {reference_[0]}, n_new, KvType::BF16), want);
}

TEST_F(CudaStories, GreedyBf16CacheMatchesCpu) {
  auto gpu = cuda_model(gguf());
  const cpu::ScopedCpuActivations f32(cpu::CpuActivations::kF32);  // the F32 reference
  auto cpu = load_model(gguf());
  const std::vector<std::int32_t> prompt(reference_.begin(), reference_.begin() + 8);
  EXPECT_EQ(greedy(*gpu, prompt, 64, KvType::BF16), greedy(*cpu, prompt, 64, KvType::BF16));
}

TEST_F(CudaStories, BadInputsFail) {
  auto gpu = cuda_model(gguf());
  auto cache = gpu->new_cache(8, KvType::BF16);
  const std::int32_t bad = gpu->config().n_vocab;
  EXPECT_THROW(gpu->forward({&bad, 1}, 0, *cache), Error);
  const std::vector<std::int32_t> nine(9, 1);
  EXPECT_THROW(gpu->forward(nine, 0, *cache), Error);  // context overflow
  EXPECT_THROW(gpu->new_cache(8, KvType::Q8_0), Error);
  try {
    gpu->new_cache(1 << 30, KvType::F32);  // ~5 TB
    FAIL() << "a cache larger than the device was created";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("free"), std::string::npos) << e.what();
  }
  const cpu::ScopedCpuActivations f32(cpu::CpuActivations::kF32);  // the F32 reference
  auto cpu = load_model(gguf());
  auto cpu_cache = cpu->new_cache(8, KvType::BF16);
  const std::int32_t one = 1;
  EXPECT_THROW(gpu->forward({&one, 1}, 0, *cpu_cache), Error);
}

// ---- Gemma 3: the tiny fixture checkpoint converted here (sliding window 8, QK-norm, post norms,
// GeGLU, NeoX rope with two bases, final soft-cap, head size 32) -------------------------------

class CudaGemma3Tiny : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_GPU();
    const auto src =
        env_or("QFORGE_SOURCE_DIR", QFORGE_SOURCE_DIR) / "tests/data/fixtures/hf/gemma3_tiny";
    if (!std::filesystem::exists(src / "config.json")) GTEST_SKIP() << src << " not found";
    const auto tmp = env_or("QFORGE_TEST_TMP", QFORGE_TEST_TMP);
    std::filesystem::create_directories(tmp);
    path_ = tmp / (std::string("cuda_gemma3_tiny_") + GetParam() + ".gguf");
    ConvertOptions opt;
    opt.input = src;
    opt.output = path_;
    opt.type = GetParam();
    convert_checkpoint(opt);
  }
  std::filesystem::path path_;
};

TEST_P(CudaGemma3Tiny, LogitsAndGreedyMatchCpu) {
  // The conversion really produced the type under test.
  const GgufReader gguf = GgufReader::open(path_);
  const GgufTensorInfo* q = gguf.find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(q, nullptr);
  std::string want_type = GetParam();
  std::transform(want_type.begin(), want_type.end(), want_type.begin(), ::toupper);
  EXPECT_EQ(type_name(q->type), want_type);

  const cpu::ScopedCpuActivations f32(cpu::CpuActivations::kF32);  // the F32 reference
  auto cpu = load_model(path_);
  auto gpu = cuda_model(path_);
  ASSERT_EQ(gpu->config().arch, "gemma3");
  std::mt19937 rng(42);
  std::uniform_int_distribution<std::int32_t> pick(3, cpu->config().n_vocab - 1);
  std::vector<std::int32_t> ids(24);
  for (auto& id : ids) id = pick(rng);
  ids[0] = cpu->config().bos_token >= 0 ? cpu->config().bos_token : 2;

  const auto want = all_logits(*cpu, ids, KvType::F32);
  // Both GEMV kernel families (the model is loaded while each is selected: nothing is cached).
  for (const auto kernel : {cuda::GemvKernel::kLegacy, cuda::GemvKernel::kTiled}) {
    cuda::set_gemv_kernel(kernel);
    const double d = rel_diff(all_logits(*gpu, ids, KvType::F32), want);
    EXPECT_LT(d, kLogitTolerance) << (kernel == cuda::GemvKernel::kTiled ? "tiled" : "legacy");
    std::printf("gemma3_tiny %s, %s GEMV, F32 cache: max |gpu - cpu| / max |cpu| = %.3g\n",
                GetParam(), kernel == cuda::GemvKernel::kTiled ? "tiled" : "legacy", d);
  }
  const std::vector<std::int32_t> prompt(ids.begin(), ids.begin() + 4);
  EXPECT_EQ(greedy(*gpu, prompt, 20, KvType::F32), greedy(*cpu, prompt, 20, KvType::F32));
}

INSTANTIATE_TEST_SUITE_P(CudaTypes, CudaGemma3Tiny, ::testing::Values("q8_0", "q4_0", "bf16"));

#endif  // QFORGE_HAVE_CUDA

}  // namespace
}  // namespace qforge
