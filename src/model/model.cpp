#include "model/model.h"

#include "core/error.h"
#include "formats/gguf.h"
#include "runtime/cpu/cpu_model.h"
#include "runtime/cuda_model.h"

namespace qforge {

KvType parse_kv_type(std::string_view name) {
  if (name == "f32") return KvType::F32;
  if (name == "bf16") return KvType::BF16;
  if (name == "q8_0") return KvType::Q8_0;
  fail("unknown KV cache type '{}' (expected bf16, f32 or q8_0)", name);
}

std::string_view kv_type_name(KvType type) {
  switch (type) {
    case KvType::F32:
      return "f32";
    case KvType::BF16:
      return "bf16";
    case KvType::Q8_0:
      return "q8_0";
  }
  return "?";
}

Device parse_device(std::string_view name) {
  if (name == "cpu") return Device::Cpu;
  if (name == "cuda") return Device::Cuda;
  fail("unknown device '{}' (expected cpu or cuda)", name);
}

std::span<const float> Model::decode_step(std::int32_t token, int pos, KvCache& cache) {
  step_logits_ = forward({&token, 1}, pos, cache);
  return step_logits_;
}

void check_forward_inputs(std::span<const std::int32_t> tokens, int pos0, const KvCache& cache,
                          int n_vocab) {
  const std::size_t n = tokens.size();
  if (n == 0) fail("forward: no tokens to process");
  if (pos0 < 0 || pos0 > cache.n_filled()) {
    fail("forward: start position {} is not in [0, {}] (positions cached so far)", pos0,
         cache.n_filled());
  }
  if (static_cast<std::size_t>(pos0) + n > static_cast<std::size_t>(cache.n_ctx())) {
    fail(
        "context overflow: positions {}..{} do not fit a context of {} tokens (use a larger --ctx)",
        pos0, static_cast<std::size_t>(pos0) + n - 1, cache.n_ctx());
  }
  for (std::size_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= n_vocab) {
      fail("forward: token id {} at index {} is outside the vocabulary [0, {})", tokens[t], t,
           n_vocab);
    }
  }
}

std::unique_ptr<Model> load_model(const std::filesystem::path& path, const LoadOptions& options) {
  auto gguf = std::make_unique<GgufReader>(GgufReader::open(path));
  ModelConfig config = read_model_config(*gguf);
  if (options.adjust_config) {
    options.adjust_config(config);
    validate_model_config(config, fmt::format("{} (adjusted config)", path.string()));
  }
  if (options.device == Device::Cuda) return make_cuda_model(std::move(gguf), std::move(config));
  return std::make_unique<cpu::CpuModel>(std::move(gguf), std::move(config));
}

}  // namespace qforge
