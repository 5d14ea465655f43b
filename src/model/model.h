// The inference interface shared by every backend: a loaded model runs a span of tokens at
// consecutive positions, appending their keys/values to a KV cache, and returns logits.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "model/config.h"

namespace qforge {

// Element type of cached keys/values. BF16 is the default: half the memory of F32, and K/V are
// rounded once when stored (attention itself is computed in F32).
enum class KvType { F32, BF16, Q8_0 };
KvType parse_kv_type(std::string_view name);  // "f32" | "bf16" | "q8_0"; fails otherwise
std::string_view kv_type_name(KvType type);

enum class Device { Cpu, Cuda };
Device parse_device(std::string_view name);  // "cpu" | "cuda"

// Keys and values of the positions processed so far, for every layer. Backend-specific storage.
class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual int n_ctx() const = 0;
  virtual KvType type() const = 0;
  // Positions [0, n_filled()) hold valid entries. forward() may start at any pos0 <= n_filled()
  // (starting earlier discards the later entries).
  virtual int n_filled() const = 0;
  virtual void clear() = 0;
};

struct ForwardOptions {
  bool all_logits = false;  // logits for every token instead of only the last one
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  virtual std::unique_ptr<KvCache> new_cache(int n_ctx, KvType type) const = 0;

  // Runs `tokens` at positions pos0, pos0 + 1, ... and returns row-major logits
  // [n_out x n_vocab], n_out = tokens.size() with all_logits, else 1 (the last token).
  // Fails (qforge::Error) on an empty span, an out-of-vocabulary id, or pos0 + n > n_ctx.
  virtual std::vector<float> forward(std::span<const std::int32_t> tokens, int pos0, KvCache& cache,
                                     const ForwardOptions& options = {}) = 0;

  // One decode step, `token` at position `pos`: its logits, valid until the next call on this
  // model. Same checks and results as forward(); a backend may return a view of its own host copy
  // of the logits (the CUDA one does: no new vector per generated token). The default keeps
  // forward()'s vector.
  virtual std::span<const float> decode_step(std::int32_t token, int pos, KvCache& cache);

 private:
  std::vector<float> step_logits_;  // the default decode_step's result
};

// The checks every backend's forward() makes before touching the cache: a non-empty span of
// in-vocabulary ids, a start position within the cached prefix, and room in the context.
void check_forward_inputs(std::span<const std::int32_t> tokens, int pos0, const KvCache& cache,
                          int n_vocab);

struct LoadOptions {
  Device device = Device::Cpu;
  // Applied to the config read from the file before the weights are bound (tests use it to
  // shrink the sliding window, for instance).
  std::function<void(ModelConfig&)> adjust_config;
};

// Opens a GGUF and builds the model for the requested device; fails for unknown architectures,
// missing tensors or metadata, and for a device not compiled into this build.
std::unique_ptr<Model> load_model(const std::filesystem::path& path, const LoadOptions& options = {});

}  // namespace qforge
