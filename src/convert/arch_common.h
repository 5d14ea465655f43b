// Helpers shared by the architecture mappings: reading HF hyper-parameters the way llama.cpp's
// converter does (text_config merged over the root, first present key wins, RoPE parameters
// normalised), GGUF value constructors, HF tensor-name parsing and shape checks.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/arch.h"

namespace qforge::convert_detail {

// ---- GGUF values
GgufValue u32(std::uint64_t v);
GgufValue f32(double v);
GgufValue str(std::string v);
GgufValue boolean(bool v);
GgufValue i32_array(const std::vector<std::int64_t>& v);
GgufValue bool_array(const std::vector<bool>& v);

// ---- hyper-parameters
class Hparams {
 public:
  Hparams(const HfCheckpoint& checkpoint);  // NOLINT: config.json with text_config merged on top

  // The first of `keys` present in the config (a JSON null counts as absent); nullptr if none.
  const nlohmann::json* find(std::initializer_list<std::string_view> keys) const;
  bool has(std::string_view key) const { return find({key}) != nullptr; }
  // Required values: fail naming the config file and key when missing or of the wrong type.
  std::int64_t integer(std::string_view key) const;
  double number(std::string_view key) const;
  std::optional<std::int64_t> opt_integer(std::initializer_list<std::string_view> keys) const;
  std::optional<double> opt_number(std::initializer_list<std::string_view> keys) const;
  std::int64_t integer_or(std::string_view key, std::int64_t fallback) const;
  double number_or(std::string_view key, double fallback) const;

  // rope_parameters (or rope_scaling), with top-level rope_theta / local theta / type mirrored in
  // when it has no per-attention-type entries, as llama.cpp's TextModel does.
  const nlohmann::json& rope() const { return rope_; }
  // rope()["full_attention"] when present, else rope().
  const nlohmann::json& rope_full() const;

  const nlohmann::json& json() const { return merged_; }
  const std::string& where() const { return where_; }  // ".../config.json" for messages

 private:
  nlohmann::json merged_;
  nlohmann::json rope_;
  std::string where_;
};

// ---- general.* and shared <arch>.* keys
// general.architecture, general.type, general.name (the directory name in the title case
// llama.cpp's metadata heuristics produce for plain names).
void add_general_header(KvList& kvs, const std::string& arch, const HfCheckpoint& checkpoint);
// general.size_label from the planned tensors, as gguf-py computes it ("155K", "4x394K").
std::string size_label(const std::vector<TensorPlan>& tensors);
// The keys llama.cpp's TextModel.set_gguf_parameters writes for every text model.
void add_text_model_params(KvList& kvs, const std::string& arch, const Hparams& hp,
                           int block_count);
std::string title_case_name(std::string_view dir_name);

// ---- tensor names
// A source tensor's name relative to the language model: "layers.3.mlp.up_proj.weight",
// "embed_tokens.weight", "lm_head.weight". nullopt for tensors outside the language model
// (vision/audio towers, projectors), which are skipped.
std::optional<std::string> language_model_name(std::string_view hf_name);

struct LayerName {
  int layer = -1;    // -1: global tensor
  std::string rest;  // after "layers.N." (or the whole name for globals)
};
LayerName split_layer(std::string_view lm_name);

// Builds TensorPlans from the checkpoint: `layer_map` maps the part after "layers.N." and
// `global_map` the global names to GGUF names ("attn_q.weight" -> "blk.N.attn_q.weight").
// Unknown language-model tensors fail (naming them); non-text tensors go to plan.skipped.
// Output order is the source's name order, as llama.cpp's converter writes it.
void map_tensors(const HfCheckpoint& checkpoint,
                 const std::map<std::string, std::string>& global_map,
                 const std::map<std::string, std::string>& layer_map,
                 const std::vector<std::string>& ignored_suffixes, ArchPlan& plan);

// Role from the GGUF name and shape (F32-forced tensors follow llama.cpp's converter rules).
TensorRole role_for(std::string_view gguf_name, std::size_t n_dims);

TensorPlan* find_plan(ArchPlan& plan, std::string_view gguf_name);
// Fails unless the tensor (if present) has exactly this GGUF shape; `why` explains the expectation.
void expect_shape(const ArchPlan& plan, std::string_view gguf_name,
                  const std::vector<std::uint64_t>& ne, std::string_view why);
void require_tensor(const ArchPlan& plan, std::string_view gguf_name, std::string_view why);

// ---- Gemma family (defined in arch_gemma3.cpp, reused by Gemma 4)
// Gemma3Model.set_gguf_parameters: TextModel keys, then Gemma 3's defaults and overrides.
void add_gemma3_params(KvList& kvs, const std::string& arch, const Hparams& hp, int block_count);
std::map<std::string, std::string> gemma3_global_map();
std::map<std::string, std::string> gemma3_layer_map();
// Drops token-embedding rows beyond the real vocabulary (llama.cpp's Gemma converter does).
void truncate_vocab_rows(ArchPlan& plan, const PlanInputs& inputs);

}  // namespace qforge::convert_detail
