#include "convert/arch_common.h"

#include "formats/size_label.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <regex>

#include <fmt/format.h>

#include "core/error.h"

namespace qforge {

std::uint64_t TensorPlan::rows() const {
  std::uint64_t r = 1;
  for (std::size_t i = 1; i < ne.size(); ++i) r *= ne[i];
  return r;
}

std::uint64_t TensorPlan::source_row(std::uint64_t r) const {
  const std::uint32_t heads = source.permute_heads;
  if (heads == 0) return r;
  // HF stores each head's rotary pairs as two halves; llama.cpp's GGUF interleaves them. Output
  // row (h, i, j) of shape (heads, half, 2) comes from source row (h, j, i) of (heads, 2, half).
  const std::uint64_t per_head = rows() / heads;
  const std::uint64_t half = per_head / 2;
  const std::uint64_t h = r / per_head, within = r % per_head;
  const std::uint64_t i = within / 2, j = within % 2;
  return h * per_head + j * half + i;
}

void KvList::set(std::string key, GgufValue value) {
  for (auto& kv : items_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  items_.push_back({std::move(key), std::move(value)});
}

const GgufValue* KvList::find(std::string_view key) const {
  for (const auto& kv : items_)
    if (kv.key == key) return &kv.value;
  return nullptr;
}

void KvList::erase(std::string_view key) {
  std::erase_if(items_, [&](const GgufKV& kv) { return kv.key == key; });
}

bool is_supported_architecture(std::string_view hf_arch) {
  return hf_arch == "LlamaForCausalLM" || hf_arch == "Gemma3ForCausalLM" ||
         hf_arch == "Gemma3ForConditionalGeneration" || hf_arch == "Gemma4ForCausalLM" ||
         hf_arch == "Gemma4ForConditionalGeneration";
}

ArchPlan plan_architecture(const HfCheckpoint& checkpoint, const PlanInputs& inputs) {
  const std::string hf_arch = checkpoint.architecture();
  if (hf_arch == "LlamaForCausalLM") return plan_llama(checkpoint, inputs);
  if (hf_arch == "Gemma3ForCausalLM" || hf_arch == "Gemma3ForConditionalGeneration")
    return plan_gemma3(checkpoint, inputs);
  if (hf_arch == "Gemma4ForCausalLM" || hf_arch == "Gemma4ForConditionalGeneration")
    return plan_gemma4(checkpoint, inputs);
  fail(
      "{}: architecture '{}' is not supported (supported: LlamaForCausalLM, "
      "Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma4ForCausalLM, "
      "Gemma4ForConditionalGeneration)",
      (checkpoint.dir / "config.json").string(), hf_arch.empty() ? "(none)" : hf_arch);
}

namespace convert_detail {

GgufValue u32(std::uint64_t v) {
  if (v > 0xffffffffu) fail("value {} does not fit a UINT32 metadata field", v);
  return GgufValue{static_cast<std::uint32_t>(v)};
}
GgufValue f32(double v) {
  return GgufValue{static_cast<float>(v)};
}
GgufValue str(std::string v) {
  return GgufValue{std::move(v)};
}
GgufValue boolean(bool v) {
  return GgufValue{v};
}

GgufValue i32_array(const std::vector<std::int64_t>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (std::int64_t x : v) items.push_back(GgufValue{static_cast<std::int32_t>(x)});
  return GgufValue::make_array(GgufValueType::INT32, std::move(items));
}

GgufValue bool_array(const std::vector<bool>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (bool x : v) items.push_back(GgufValue{x});
  return GgufValue::make_array(GgufValueType::BOOL, std::move(items));
}

// ---- Hparams

Hparams::Hparams(const HfCheckpoint& checkpoint)
    : where_((checkpoint.dir / "config.json").string()) {
  merged_ = checkpoint.config.is_object() ? checkpoint.config : nlohmann::json::object();
  const auto tc = merged_.find("text_config");
  if (tc != merged_.end() && tc->is_object()) {
    const nlohmann::json text = *tc;
    for (auto it = text.begin(); it != text.end(); ++it) merged_[it.key()] = it.value();
  }
  rope_ = nlohmann::json::object();
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    const auto it = merged_.find(key);
    if (it != merged_.end() && it->is_object()) {
      rope_ = *it;
      break;
    }
  }
  if (!rope_.contains("full_attention") && !rope_.contains("sliding_attention")) {
    if (const auto* local = find({"local_rope_theta", "rope_local_theta", "rope_theta_local",
                                  "swa_rope_theta", "rope_local_base_freq"}))
      rope_["sliding_attention"] = {{"rope_theta", *local}};
    if (!rope_.contains("rope_theta")) {
      if (const auto* theta = find({"global_rope_theta", "rope_global_theta", "rope_theta_global",
                                    "rope_theta", "rotary_emb_base"}))
        rope_["rope_theta"] = *theta;
    }
    if (!rope_.contains("rope_type") && rope_.contains("type")) rope_["rope_type"] = rope_["type"];
    if (!rope_.contains("partial_rotary_factor")) {
      if (const auto* p = find({"partial_rotary_factor", "rope_pct", "rope_percent"}))
        rope_["partial_rotary_factor"] = *p;
    }
  }
}

const nlohmann::json* Hparams::find(std::initializer_list<std::string_view> keys) const {
  for (std::string_view key : keys) {
    const auto it = merged_.find(std::string(key));
    if (it != merged_.end()) return it->is_null() ? nullptr : &*it;
  }
  return nullptr;
}

std::int64_t Hparams::integer(std::string_view key) const {
  const auto* v = find({key});
  if (v == nullptr) fail("{}: required field '{}' is missing", where_, key);
  if (!v->is_number_integer() &&
      !(v->is_number_float() && std::floor(v->get<double>()) == v->get<double>()))
    fail("{}: field '{}' is {}, expected an integer", where_, key, v->dump());
  return v->is_number_integer() ? v->get<std::int64_t>()
                                : static_cast<std::int64_t>(v->get<double>());
}

double Hparams::number(std::string_view key) const {
  const auto* v = find({key});
  if (v == nullptr) fail("{}: required field '{}' is missing", where_, key);
  if (!v->is_number()) fail("{}: field '{}' is {}, expected a number", where_, key, v->dump());
  return v->get<double>();
}

std::optional<std::int64_t> Hparams::opt_integer(
    std::initializer_list<std::string_view> keys) const {
  for (std::string_view key : keys) {
    const auto it = merged_.find(std::string(key));
    if (it == merged_.end()) continue;
    if (it->is_null()) return std::nullopt;
    if (!it->is_number_integer())
      fail("{}: field '{}' is {}, expected an integer", where_, key, it->dump());
    return it->get<std::int64_t>();
  }
  return std::nullopt;
}

std::optional<double> Hparams::opt_number(std::initializer_list<std::string_view> keys) const {
  for (std::string_view key : keys) {
    const auto it = merged_.find(std::string(key));
    if (it == merged_.end()) continue;
    if (it->is_null()) return std::nullopt;
    if (!it->is_number()) fail("{}: field '{}' is {}, expected a number", where_, key, it->dump());
    return it->get<double>();
  }
  return std::nullopt;
}

std::int64_t Hparams::integer_or(std::string_view key, std::int64_t fallback) const {
  return has(key) ? integer(key) : fallback;
}
double Hparams::number_or(std::string_view key, double fallback) const {
  return has(key) ? number(key) : fallback;
}

const nlohmann::json& Hparams::rope_full() const {
  const auto it = rope_.find("full_attention");
  return it != rope_.end() && it->is_object() ? *it : rope_;
}

// ---- general keys

std::string title_case_name(std::string_view dir_name) {
  // Python's str.title() per whitespace/'-' separated word, applied to all-lowercase words that
  // are not version-like ("v2", "3b").
  std::string s(dir_name);
  std::replace(s.begin(), s.end(), '-', ' ');
  std::vector<std::string> words;
  std::string cur;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!cur.empty()) words.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) words.push_back(std::move(cur));
  static const std::regex version_like(R"(^(v\d+(?:\.\d+)*|\d.*))");
  std::string out;
  for (auto& w : words) {
    const bool has_cased = std::any_of(
        w.begin(), w.end(), [](char c) { return std::isalpha(static_cast<unsigned char>(c)); });
    const bool lower = has_cased && std::none_of(w.begin(), w.end(), [](char c) {
                         return std::isupper(static_cast<unsigned char>(c));
                       });
    if (lower && !std::regex_search(w, version_like)) {
      bool prev_cased = false;
      for (char& c : w) {
        const bool cased = std::isalpha(static_cast<unsigned char>(c)) != 0;
        if (cased)
          c = static_cast<char>(prev_cased ? std::tolower(static_cast<unsigned char>(c))
                                           : std::toupper(static_cast<unsigned char>(c)));
        prev_cased = cased;
      }
    }
    if (!out.empty()) out += ' ';
    out += w;
  }
  return out;
}

void add_general_header(KvList& kvs, const std::string& arch, const HfCheckpoint& checkpoint) {
  kvs.set("general.architecture", str(arch));
  kvs.set("general.type", str("model"));
  std::filesystem::path dir = checkpoint.dir;
  if (dir.filename().empty()) dir = dir.parent_path();  // "foo/" -> "foo"
  const std::string name = title_case_name(std::filesystem::absolute(dir).filename().string());
  kvs.set("general.name", str(name.empty() ? std::string("model") : name));
  kvs.set("general.size_label", str(""));  // filled in once the tensors are known
}

std::string size_label(const std::vector<TensorPlan>& tensors) { return gguf_size_label(tensors); }

void add_text_model_params(KvList& kvs, const std::string& arch, const Hparams& hp,
                           int block_count) {
  const std::string p = arch + ".";
  kvs.set(p + "block_count", u32(static_cast<std::uint64_t>(block_count)));
  if (auto v = hp.opt_integer({"max_position_embeddings", "n_ctx", "n_positions", "max_length",
                               "max_sequence_length", "model_max_length"}))
    kvs.set(p + "context_length", u32(static_cast<std::uint64_t>(*v)));
  if (auto v = hp.opt_integer({"hidden_size", "n_embd", "dim"}))
    kvs.set(p + "embedding_length", u32(static_cast<std::uint64_t>(*v)));
  if (auto v = hp.opt_integer({"prefix_dense_intermediate_size", "dense_intermediate_size",
                               "intermediate_size", "n_inner", "hidden_dim"}))
    kvs.set(p + "feed_forward_length", u32(static_cast<std::uint64_t>(*v)));
  if (auto v = hp.opt_integer({"num_attention_heads", "n_head", "n_heads"}))
    kvs.set(p + "attention.head_count", u32(static_cast<std::uint64_t>(*v)));
  if (auto v = hp.opt_integer({"num_key_value_heads", "n_kv_heads"}))
    kvs.set(p + "attention.head_count_kv", u32(static_cast<std::uint64_t>(*v)));

  const nlohmann::json& rope = hp.rope_full();
  if (const auto type = rope.find("rope_type"); type != rope.end() && type->is_string()) {
    const std::string t = type->get<std::string>();
    const auto factor = rope.find("factor");
    const bool has_factor = factor != rope.end() && factor->is_number();
    if (t == "linear" && has_factor) {
      kvs.set(p + "rope.scaling.type", str("linear"));
      kvs.set(p + "rope.scaling.factor", f32(factor->get<double>()));
    } else if (t == "yarn" && has_factor) {
      kvs.set(p + "rope.scaling.type", str("yarn"));
      kvs.set(p + "rope.scaling.factor", f32(factor->get<double>()));
      const auto orig = rope.find("original_max_position_embeddings");
      if (orig == rope.end() || !orig->is_number_integer())
        fail("{}: yarn RoPE scaling needs original_max_position_embeddings", hp.where());
      kvs.set(p + "rope.scaling.original_context_length", u32(orig->get<std::uint64_t>()));
      for (const auto& [hf_key, gguf_key] :
           {std::pair{"extrapolation_factor", "rope.scaling.yarn_ext_factor"},
            std::pair{"beta_fast", "rope.scaling.yarn_beta_fast"},
            std::pair{"beta_slow", "rope.scaling.yarn_beta_slow"}}) {
        if (const auto it = rope.find(hf_key); it != rope.end() && it->is_number())
          kvs.set(p + gguf_key, f32(it->get<double>()));
      }
      const auto attn = rope.contains("attention_factor") ? rope.find("attention_factor")
                                                          : rope.find("attn_factor");
      if (attn != rope.end() && attn->is_number())
        kvs.set(p + "rope.scaling.yarn_attn_factor", f32(attn->get<double>()));
    } else if (t == "su" || t == "longrope") {
      kvs.set(p + "rope.scaling.type", str("longrope"));
    }
    // "default", "llama3" (rope_freqs tensor), "proportional" (Gemma 4): no scaling keys.
  }
  if (const auto it = rope.find("rope_theta"); it != rope.end() && it->is_number())
    kvs.set(p + "rope.freq_base", f32(it->get<double>()));
  if (const auto sw = hp.rope().find("sliding_attention");
      sw != hp.rope().end() && sw->is_object()) {
    if (const auto it = sw->find("rope_theta"); it != sw->end() && it->is_number())
      kvs.set(p + "rope.freq_base_swa", f32(it->get<double>()));
  }
  if (auto v = hp.opt_number({"rms_norm_eps", "norm_eps"}))
    kvs.set(p + "attention.layer_norm_rms_epsilon", f32(*v));
  if (auto v = hp.opt_number({"layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"}))
    kvs.set(p + "attention.layer_norm_epsilon", f32(*v));
  if (auto v = hp.opt_integer({"num_local_experts", "num_experts", "n_routed_experts"}))
    kvs.set(p + "expert_count", u32(static_cast<std::uint64_t>(*v)));
  if (auto v = hp.opt_integer({"num_experts_per_tok", "num_experts_per_token", "top_k_experts"}))
    kvs.set(p + "expert_used_count", u32(static_cast<std::uint64_t>(*v)));
  if (auto v = hp.opt_integer({"head_dim"})) {
    kvs.set(p + "attention.key_length", u32(static_cast<std::uint64_t>(*v)));
    kvs.set(p + "attention.value_length", u32(static_cast<std::uint64_t>(*v)));
  }
  kvs.set("general.file_type", u32(0));  // the converter sets the real value
}

// ---- tensor names

std::optional<std::string> language_model_name(std::string_view name) {
  for (std::string_view prefix :
       {"model.language_model.", "language_model.model.", "language_model."}) {
    if (name.starts_with(prefix)) return std::string(name.substr(prefix.size()));
  }
  if (name == "lm_head.weight" || name.starts_with("lm_head.")) return std::string(name);
  if (name.starts_with("model.")) {
    const std::string_view rest = name.substr(6);
    // Multimodal checkpoints keep their towers beside the language model under model.*.
    for (std::string_view tower :
         {"vision_tower.", "audio_tower.", "multi_modal_projector.", "embed_vision.",
          "embed_audio.", "vision_model.", "audio_model."})
      if (rest.starts_with(tower)) return std::nullopt;
    return std::string(rest);
  }
  return std::nullopt;  // vision_tower.*, multi_modal_projector.*, audio_tower.* ...
}

LayerName split_layer(std::string_view lm_name) {
  LayerName out;
  if (lm_name.starts_with("layers.")) {
    const std::string_view rest = lm_name.substr(7);
    const std::size_t dot = rest.find('.');
    if (dot != std::string_view::npos && dot > 0 &&
        std::all_of(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(dot),
                    [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }) &&
        dot < 9) {
      out.layer = std::stoi(std::string(rest.substr(0, dot)));
      out.rest = std::string(rest.substr(dot + 1));
      return out;
    }
  }
  out.rest = std::string(lm_name);
  return out;
}

TensorRole role_for(std::string_view n, std::size_t n_dims) {
  if (n_dims <= 1 || n.ends_with("_norm.weight") || n.ends_with("ffn_gate_inp.weight") ||
      !n.ends_with(".weight"))
    return TensorRole::kFloat32;
  if (n == "token_embd.weight") return TensorRole::kTokenEmbd;
  if (n == "per_layer_token_embd.weight") return TensorRole::kPerLayerTokenEmbd;
  if (n == "output.weight") return TensorRole::kOutput;
  if (n.ends_with(".attn_v.weight")) return TensorRole::kAttnV;
  if (n.ends_with(".ffn_down.weight") || n.ends_with(".ffn_down_exps.weight"))
    return TensorRole::kFfnDown;
  return TensorRole::kWeight;
}

void map_tensors(const HfCheckpoint& checkpoint,
                 const std::map<std::string, std::string>& global_map,
                 const std::map<std::string, std::string>& layer_map,
                 const std::vector<std::string>& ignored_suffixes, ArchPlan& plan) {
  for (const StTensor* t : checkpoint.weights.tensors()) {
    const auto lm = language_model_name(t->name);
    if (!lm) {
      plan.skipped.push_back(t->name);
      continue;
    }
    if (std::any_of(ignored_suffixes.begin(), ignored_suffixes.end(),
                    [&](const std::string& s) { return lm->ends_with(s); })) {
      plan.skipped.push_back(t->name);
      continue;
    }
    const LayerName ln = split_layer(*lm);
    std::string gguf;
    if (ln.layer >= 0) {
      const auto it = layer_map.find(ln.rest);
      if (it == layer_map.end())
        fail("{}: tensor '{}' is not known for architecture {} (no GGUF name for '{}')", t->file,
             t->name, plan.hf_arch, ln.rest);
      if (ln.layer >= plan.n_layers)
        fail("{}: tensor '{}' belongs to layer {} but the config has {} layers", t->file, t->name,
             ln.layer, plan.n_layers);
      gguf = fmt::format("blk.{}.{}", ln.layer, it->second);
    } else {
      const auto it = global_map.find(ln.rest);
      if (it == global_map.end())
        fail("{}: tensor '{}' is not known for architecture {}", t->file, t->name, plan.hf_arch);
      gguf = it->second;
    }
    if (t->dtype != StDtype::BF16 && t->dtype != StDtype::F16 && t->dtype != StDtype::F32)
      fail("{}: tensor '{}' has dtype {}; the converter reads BF16, F16 and F32 weights", t->file,
           t->name, st_dtype_name(t->dtype));
    if (t->shape.empty() || t->shape.size() > 4)
      fail("{}: tensor '{}' has {} dimensions, expected 1 to 4", t->file, t->name, t->shape.size());
    TensorPlan tp;
    tp.name = std::move(gguf);
    tp.ne.assign(t->shape.rbegin(), t->shape.rend());
    tp.role = role_for(tp.name, tp.ne.size());
    tp.layer = ln.layer;
    tp.source.tensor = t;
    tp.source_name = t->name;
    for (const auto& other : plan.tensors)
      if (other.name == tp.name)
        fail("{}: tensors '{}' and '{}' both map to GGUF tensor '{}'", checkpoint.dir.string(),
             other.source_name, t->name, tp.name);
    plan.tensors.push_back(std::move(tp));
  }
}

TensorPlan* find_plan(ArchPlan& plan, std::string_view name) {
  for (auto& t : plan.tensors)
    if (t.name == name) return &t;
  return nullptr;
}

void expect_shape(const ArchPlan& plan, std::string_view name, const std::vector<std::uint64_t>& ne,
                  std::string_view why) {
  for (const auto& t : plan.tensors) {
    if (t.name != name) continue;
    if (t.ne != ne) {
      std::vector<std::uint64_t> hf_shape(t.ne.rbegin(), t.ne.rend());
      std::vector<std::uint64_t> want(ne.rbegin(), ne.rend());
      fail("tensor '{}' has shape [{}], but the config implies [{}] ({})", t.source_name,
           fmt::join(hf_shape, ", "), fmt::join(want, ", "), why);
    }
    return;
  }
}

void require_tensor(const ArchPlan& plan, std::string_view name, std::string_view why) {
  for (const auto& t : plan.tensors)
    if (t.name == name) return;
  fail("checkpoint has no tensor for GGUF '{}' ({})", name, why);
}

}  // namespace convert_detail
}  // namespace qforge
