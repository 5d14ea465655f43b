// Architecture mappings for `qforge convert`: what a Hugging Face checkpoint's config and tensor
// names become in GGUF. Each supported architecture (arch_llama.cpp, arch_gemma3.cpp,
// arch_gemma4.cpp) turns an HfCheckpoint into an ArchPlan: the `<arch>.*` and `general.*`
// metadata with llama.cpp's keys and value types, and for every output tensor its GGUF name,
// shape (ggml order), role and how to compute its values from the source tensor (row permutation
// for Llama's rotary layout, +1 on Gemma 3 norms, truncated vocabulary rows, generated tensors).
// No tensor data is read here; the converter streams it later.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/hf_checkpoint.h"
#include "formats/safetensors.h"

namespace qforge {

// What a tensor is for; the type policy treats these differently from plain weight matrices.
enum class TensorRole : std::uint8_t {
  kWeight,             // ordinary projection matrix (attention, MLP, experts)
  kTokenEmbd,          // token embeddings
  kPerLayerTokenEmbd,  // Gemma 4 E-models' per-layer embeddings
  kOutput,             // LM head
  kAttnV,              // attention value projection (llama-quantize gives it more bits)
  kFfnDown,            // MLP down projection (same)
  kFloat32,            // always F32: 1-D tensors, norms, routers, scales, generated tables
};

// How to compute the output tensor's values (row-major, ggml order: ne[0] is the row length).
struct TensorSource {
  const StTensor* tensor = nullptr;  // null for generated tensors
  std::vector<float> generated;      // the values when tensor is null
  float add = 0.0f;                  // added to every value (Gemma 3 RMSNorm stores weight - 1)
  std::uint32_t permute_heads = 0;   // > 0: Llama Q/K rotary row permutation over this many heads
};

struct TensorPlan {
  std::string name;               // GGUF name
  std::vector<std::uint64_t> ne;  // GGUF (ggml) order
  TensorRole role = TensorRole::kWeight;
  int layer = -1;  // block index, -1 for global tensors
  TensorSource source;
  std::string source_name;  // HF name, or "(generated)"

  std::uint64_t cols() const { return ne.empty() ? 0 : ne[0]; }
  std::uint64_t rows() const;  // product of ne[1..]
  std::uint64_t n_elements() const { return cols() * rows(); }
  // Source row feeding output row r (the inverse of the rotary permutation, identity otherwise).
  std::uint64_t source_row(std::uint64_t r) const;
};

// Metadata in insertion order; set() replaces an existing key in place (as gguf-py does when a
// converter writes a key twice).
class KvList {
 public:
  void set(std::string key, GgufValue value);
  const GgufValue* find(std::string_view key) const;
  void erase(std::string_view key);
  const std::vector<GgufKV>& items() const { return items_; }

 private:
  std::vector<GgufKV> items_;
};

struct ArchPlan {
  std::string arch;                 // GGUF architecture name: "llama", "gemma3", "gemma4"
  std::string hf_arch;              // config.json architectures[0]
  KvList kvs;                       // general.* (except file_type) and <arch>.* keys
  std::vector<TensorPlan> tensors;  // in output order
  int n_layers = 0;
  bool tied_embeddings = false;      // no separate output tensor: token_embd doubles as the head
  std::vector<std::string> skipped;  // source tensors left out on purpose (vision/audio towers ...)
};

// Rows of the token embedding that the vocabulary really uses (Gemma drops padding rows), or
// nullopt to keep all rows. Computed by the converter from the tokenizer files.
struct PlanInputs {
  std::optional<std::uint64_t> n_vocab_real;
};

// Dispatches on config.json's architectures[0]; fails naming the architecture when unsupported.
ArchPlan plan_architecture(const HfCheckpoint& checkpoint, const PlanInputs& inputs);

ArchPlan plan_llama(const HfCheckpoint& checkpoint, const PlanInputs& inputs);
ArchPlan plan_gemma3(const HfCheckpoint& checkpoint, const PlanInputs& inputs);
ArchPlan plan_gemma4(const HfCheckpoint& checkpoint, const PlanInputs& inputs);

// True when `hf_arch` is one of the architectures plan_architecture accepts.
bool is_supported_architecture(std::string_view hf_arch);

}  // namespace qforge
