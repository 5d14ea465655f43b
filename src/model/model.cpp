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
