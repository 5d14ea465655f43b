// Internals of `qforge synth` shared by its source files (not a public interface).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/synth.h"

namespace qforge::synth::detail {

// Typed access to a config.json the way llama.cpp's converter reads hyper-parameters: the first
// present key of a list wins and a JSON null counts as absent. Errors name the file and the key.
class ConfigReader {
 public:
  explicit ConfigReader(const SynthConfig& config) : config_(config) {}

  const nlohmann::json* find(std::initializer_list<std::string_view> keys) const;
  bool has(std::string_view key) const { return find({key}) != nullptr; }
  std::uint64_t count(std::string_view key) const;  // required integer > 0
  std::optional<std::uint64_t> opt_count(std::initializer_list<std::string_view> keys) const;
  std::uint64_t count_or(std::string_view key, std::uint64_t fallback) const;
  std::uint64_t size_or(std::string_view key, std::uint64_t fallback) const;  // integer >= 0
  std::optional<double> opt_number(std::initializer_list<std::string_view> keys) const;
  double number_or(std::string_view key, double fallback) const;
  bool flag_or(std::string_view key, bool fallback) const;
  // First element when the value is a list (eos_token_id may be [1, 106]).
  std::optional<std::uint64_t> opt_token_id(std::string_view key) const;
  // layer_types as "sliding" flags; empty when the key is absent. Fails unless it has n entries.
  std::vector<bool> sliding_layers(std::size_t n) const;
  [[noreturn]] void bad(std::string_view key, std::string_view expected) const;
  const std::string& where() const { return config_.where; }

 private:
  const SynthConfig& config_;
};

// RoPE parameters normalised from `rope_parameters` (transformers 5, optionally split per
// attention type) or the legacy rope_theta / rope_local_base_freq / rope_scaling keys.
struct RopeSpec {
  double theta = 10000.0;
  std::string type = "default";  // rope_type: default, linear, proportional, llama3, ...
  std::optional<double> factor;
  double partial_rotary_factor = 1.0;
};
struct RopeConfig {
  RopeSpec full;
  std::optional<RopeSpec> sliding;
};
RopeConfig read_rope(const ConfigReader& cfg, double default_theta,
                     std::optional<double> default_sliding_theta);

// ---- GGUF value constructors
GgufValue u32(std::uint64_t v);
GgufValue f32(double v);
GgufValue str(std::string v);
GgufValue boolean(bool v);
GgufValue i32_array(const std::vector<std::uint64_t>& v);
GgufValue f32_array(const std::vector<float>& v);
GgufValue bool_array(const std::vector<bool>& v);
GgufValue str_array(std::vector<std::string> v);

// Metadata list that replaces a key in place when set twice (as gguf-py's writer does).
class KvBuilder {
 public:
  void set(const std::string& key, GgufValue value);
  std::vector<GgufKV> take() { return std::move(items_); }

 private:
  std::vector<GgufKV> items_;
};

// ---- tensor list helpers
SynthTensor matrix(std::string name, std::vector<std::uint64_t> ne,
                   SynthRole role = SynthRole::kWeight);
SynthTensor vec_near_one(std::string name, std::vector<std::uint64_t> ne);
std::string blk(std::size_t layer, std::string_view rest);  // "blk.N.rest"

// ---- pieces of the plan
// general.size_label as gguf-py computes it ("155K", "4x394K").
std::string size_label(const std::vector<SynthTensor>& tensors);
// Sets every tensor's type (llama-quantize's rules for a single-type target, see docs/synth.md);
// records fallbacks in notes. `tied`: no output.weight, token embeddings double as the LM head.
void assign_types(std::vector<SynthTensor>& tensors, const SynthTypeOptions& types, bool tied,
                  std::vector<std::string>& notes);
// True when fill_synth_tensor can produce this type (block generator or library quantizer).
bool can_fill(GgmlType type);
// llama.cpp's LLAMA_FTYPE number for a file whose main type is `type` (general.file_type).
std::uint32_t file_type_for(GgmlType type);
// tokenizer.* keys: a minimal valid vocabulary of n_vocab tokens (specials, 256 byte tokens,
// "<tok_N>" fillers) as llama.cpp's loader for that architecture expects it.
void add_vocab(KvBuilder& kvs, SynthArch arch, const ConfigReader& cfg, std::uint64_t n_vocab);

}  // namespace qforge::synth::detail
