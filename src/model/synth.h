// `qforge synth`: random-weight GGUF files with the tensor names, shapes, types and metadata that
// llama.cpp's converter (convert_hf_to_gguf.py) followed by llama-quantize would produce for a real
// checkpoint with the given Hugging Face config.json. Used to measure speed at full size when the
// real weights are not at hand. See docs/synth.md for the rules (type choice, fallbacks, vocab).
//
// Pipeline: read_synth_config() -> plan_synth_model() (names, shapes, types, metadata; no data)
// -> write_synth_model() (streams each tensor's random bytes through GgufWriter).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/type_policy.h"
#include "formats/gguf.h"
#include "quant/ggml_type.h"

namespace qforge::synth {

enum class SynthArch { kLlama, kGemma3, kGemma4 };
std::optional<SynthArch> parse_synth_arch(std::string_view name);  // "llama", "gemma3", "gemma4"
std::string_view synth_arch_name(SynthArch arch);

// What llama-quantize does with a tensor, which decides its type (see synth_types.cpp).
enum class SynthRole : std::uint8_t {
  kWeight,      // projection matrix: the main --type
  kTokenEmbd,   // token_embd / per_layer_token_embd
  kOutput,      // LM head (output.weight)
  kKeepSource,  // 2-D but never quantized by llama-quantize (per_layer_model_proj): BF16
  kFloat32,     // 1-D tensors, norms, routers, scales, rope_freqs: F32 as the converter writes them
};

// How the random values are drawn.
enum class SynthFill : std::uint8_t {
  kMatrix,   // zero-mean, std = scale (1/sqrt(fan_in)); quantized blocks get random-sign scales
  kNearOne,  // norms and scalar gains: uniform in [0.9, 1.1]
  kExact,    // `values` verbatim (rope_freqs)
};

struct SynthTensor {
  std::string name;
  std::vector<std::uint64_t> ne;  // GGUF (ggml) order: ne[0] is the row length
  SynthRole role = SynthRole::kWeight;
  SynthFill fill = SynthFill::kMatrix;
  GgmlType type = GgmlType::F32;  // final type after the type policy and fallbacks
  float scale = 0.0f;             // kMatrix: target standard deviation of the values
  std::vector<float> values;      // kExact

  std::uint64_t n_elements() const;
  std::uint64_t n_bytes() const;
};

struct SynthTypeOptions {
  GgmlType type = GgmlType::Q4_0;  // projection matrices
  std::optional<GgmlType>
      head_type;  // LM head (and tied token embeddings); default per llama-quantize
  std::optional<GgmlType> embd_type;  // untied token embeddings; default: `type`
  // A llama-quantize preset over `type` (q4_k_m: Q6_K attn_v / ffn_down in its chosen layers;
  // the rules of `qforge convert` and `quantize`, convert/type_policy.h), and its file type.
  TypePreset preset = TypePreset::kNone;
  std::optional<std::uint32_t> file_type;  // general.file_type; default: that of `type`
};

struct SynthPlan {
  SynthArch arch = SynthArch::kLlama;
  std::vector<GgufKV> kvs;  // in output order
  std::vector<SynthTensor> tensors;
  std::vector<std::string> notes;  // fallbacks taken, keys skipped: printed by the CLI
  std::uint64_t total_bytes() const;
};

// A config.json (root merged with `text_config` on top, as llama.cpp reads it) and where it came
// from (for error messages).
struct SynthConfig {
  nlohmann::json json;
  std::string where;
};
SynthConfig read_synth_config(const std::filesystem::path& path);
SynthConfig synth_config_from_json(nlohmann::json json, std::string where);

// Names, shapes, types and metadata. Fails naming the config and key on missing/bad values.
// `model_name` becomes general.name.
SynthPlan plan_synth_model(SynthArch arch, const SynthConfig& config, const SynthTypeOptions& types,
                           const std::string& model_name);

// The random bytes of tensor `index` of a plan (deterministic in seed and index, independent of
// the thread count). out.size() must be tensor.n_bytes().
void fill_synth_tensor(const SynthTensor& tensor, std::uint64_t seed, std::size_t index,
                       std::span<std::byte> out);

struct SynthProgress {
  std::size_t tensors_done = 0;
  std::size_t tensors_total = 0;
  std::uint64_t bytes_done = 0;
  std::uint64_t bytes_total = 0;
  double seconds = 0.0;
};
using SynthProgressFn = std::function<void(const SynthProgress&)>;

// Streams the file: metadata and tensor table first, then each tensor generated in parallel chunks
// while the previous one is written (at most two tensors in memory). The output appears
// atomically when complete.
void write_synth_model(const SynthPlan& plan, const std::filesystem::path& out, std::uint64_t seed,
                       const SynthProgressFn& progress = {});

}  // namespace qforge::synth
