// Reading config.json for `qforge synth`: text_config merged over the root, typed look-ups with
// errors that name the file and key, RoPE parameters normalised, GGUF value helpers.
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "model/synth_internal.h"

namespace qforge::synth {

std::optional<SynthArch> parse_synth_arch(std::string_view name) {
  if (name == "llama") return SynthArch::kLlama;
  if (name == "gemma3") return SynthArch::kGemma3;
  if (name == "gemma4") return SynthArch::kGemma4;
  return std::nullopt;
}

std::string_view synth_arch_name(SynthArch arch) {
  switch (arch) {
    case SynthArch::kLlama:
      return "llama";
    case SynthArch::kGemma3:
      return "gemma3";
    case SynthArch::kGemma4:
      return "gemma4";
  }
  return "?";
}

SynthConfig synth_config_from_json(nlohmann::json json, std::string where) {
  if (!json.is_object()) fail("{}: expected a JSON object at the top level", where);
  // llama.cpp reads multimodal configs' text_config on top of the root keys.
  if (auto it = json.find("text_config"); it != json.end() && it->is_object()) {
    nlohmann::json text = *it;
    json.erase("text_config");
    for (auto& [key, value] : text.items()) json[key] = value;
  }
  return SynthConfig{std::move(json), std::move(where)};
}

SynthConfig read_synth_config(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open the config file", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: not valid JSON at byte {}: {}", path.string(), e.byte, e.what());
  }
  return synth_config_from_json(std::move(json), path.string());
}

namespace detail {

const nlohmann::json* ConfigReader::find(std::initializer_list<std::string_view> keys) const {
  for (std::string_view key : keys) {
    auto it = config_.json.find(std::string(key));
    if (it != config_.json.end() && !it->is_null()) return &*it;
  }
  return nullptr;
}

void ConfigReader::bad(std::string_view key, std::string_view expected) const {
  fail("{}: key '{}': expected {}", config_.where, key, expected);
}

namespace {

std::uint64_t as_count(const ConfigReader& cfg, std::string_view key, const nlohmann::json& v,
                       bool allow_zero = false) {
  const std::uint64_t min = allow_zero ? 0 : 1;
  if (v.is_number_unsigned() && v.get<std::uint64_t>() >= min) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= static_cast<std::int64_t>(min))
    return static_cast<std::uint64_t>(v.get<std::int64_t>());
  // Some configs write integers as floats (e.g. 256.0).
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d >= static_cast<double>(min) && d < 1e15 && std::floor(d) == d)
      return static_cast<std::uint64_t>(d);
  }
  cfg.bad(key, allow_zero ? "a non-negative integer" : "a positive integer");
}

}  // namespace

std::uint64_t ConfigReader::count(std::string_view key) const {
  const nlohmann::json* v = find({key});
  if (v == nullptr) fail("{}: required key '{}' is missing", config_.where, key);
  return as_count(*this, key, *v);
}

std::optional<std::uint64_t> ConfigReader::opt_count(
    std::initializer_list<std::string_view> keys) const {
  for (std::string_view key : keys)
    if (const nlohmann::json* v = find({key})) return as_count(*this, key, *v);
  return std::nullopt;
}

std::uint64_t ConfigReader::count_or(std::string_view key, std::uint64_t fallback) const {
  const nlohmann::json* v = find({key});
  return v == nullptr ? fallback : as_count(*this, key, *v);
}

std::uint64_t ConfigReader::size_or(std::string_view key, std::uint64_t fallback) const {
  const nlohmann::json* v = find({key});
  return v == nullptr ? fallback : as_count(*this, key, *v, true);
}

std::optional<double> ConfigReader::opt_number(std::initializer_list<std::string_view> keys) const {
  for (std::string_view key : keys) {
    if (const nlohmann::json* v = find({key})) {
      if (!v->is_number()) bad(key, "a number");
      return v->get<double>();
    }
  }
  return std::nullopt;
}

double ConfigReader::number_or(std::string_view key, double fallback) const {
  return opt_number({key}).value_or(fallback);
}

bool ConfigReader::flag_or(std::string_view key, bool fallback) const {
  const nlohmann::json* v = find({key});
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) bad(key, "true or false");
  return v->get<bool>();
}

std::optional<std::uint64_t> ConfigReader::opt_token_id(std::string_view key) const {
  const nlohmann::json* v = find({key});
  if (v == nullptr) return std::nullopt;
  const nlohmann::json& first = v->is_array() ? (v->empty() ? *v : v->front()) : *v;
  if (!first.is_number_integer() || first.get<std::int64_t>() < 0)
    bad(key, "a token id (non-negative integer, or a list of them)");
  return static_cast<std::uint64_t>(first.get<std::int64_t>());
}

std::vector<bool> ConfigReader::sliding_layers(std::size_t n) const {
  const nlohmann::json* v = find({"layer_types"});
  if (v == nullptr) return {};
  if (!v->is_array() || v->size() != n)
    bad("layer_types", fmt::format("a list of {} entries (one per layer)", n));
  std::vector<bool> out;
  out.reserve(n);
  for (const auto& t : *v) {
    if (t == "sliding_attention") {
      out.push_back(true);
    } else if (t == "full_attention") {
      out.push_back(false);
    } else {
      bad("layer_types", "entries \"sliding_attention\" or \"full_attention\"");
    }
  }
  return out;
}

namespace {

RopeSpec read_rope_spec(const ConfigReader& cfg, const nlohmann::json& j, std::string_view key,
                        double default_theta) {
  if (!j.is_object()) cfg.bad(key, "an object");
  RopeSpec spec;
  spec.theta = default_theta;
  if (auto it = j.find("rope_theta"); it != j.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() <= 0) cfg.bad(key, "rope_theta > 0");
    spec.theta = it->get<double>();
  }
  for (const char* type_key : {"rope_type", "type"}) {
    if (auto it = j.find(type_key); it != j.end() && it->is_string()) {
      spec.type = it->get<std::string>();
      break;
    }
  }
  if (auto it = j.find("factor"); it != j.end() && it->is_number()) spec.factor = it->get<double>();
  if (auto it = j.find("partial_rotary_factor"); it != j.end() && it->is_number())
    spec.partial_rotary_factor = it->get<double>();
  if (spec.partial_rotary_factor <= 0 || spec.partial_rotary_factor > 1)
    cfg.bad(key, "partial_rotary_factor in (0, 1]");
  return spec;
}

}  // namespace

RopeConfig read_rope(const ConfigReader& cfg, double default_theta,
                     std::optional<double> default_sliding_theta) {
  RopeConfig rope;
  const double legacy_theta = cfg.number_or("rope_theta", default_theta);
  if (const nlohmann::json* params = cfg.find({"rope_parameters"})) {
    if (!params->is_object()) cfg.bad("rope_parameters", "an object");
    if (params->contains("full_attention") || params->contains("sliding_attention")) {
      if (auto it = params->find("full_attention"); it != params->end())
        rope.full = read_rope_spec(cfg, *it, "rope_parameters.full_attention", legacy_theta);
      else
        rope.full.theta = legacy_theta;
      if (auto it = params->find("sliding_attention"); it != params->end())
        rope.sliding = read_rope_spec(cfg, *it, "rope_parameters.sliding_attention",
                                      default_sliding_theta.value_or(legacy_theta));
    } else {
      rope.full = read_rope_spec(cfg, *params, "rope_parameters", legacy_theta);
    }
  } else {
    // Legacy keys (transformers 4): rope_theta, rope_scaling, rope_local_base_freq (Gemma 3).
    rope.full.theta = legacy_theta;
    if (const nlohmann::json* scaling = cfg.find({"rope_scaling"}))
      rope.full = read_rope_spec(cfg, *scaling, "rope_scaling", legacy_theta);
    if (auto local = cfg.opt_number({"rope_local_base_freq"})) {
      rope.sliding = RopeSpec{};
      rope.sliding->theta = *local;
    } else if (default_sliding_theta) {
      rope.sliding = RopeSpec{};
      rope.sliding->theta = *default_sliding_theta;
    }
  }
  return rope;
}

// ---- GGUF values

GgufValue u32(std::uint64_t v) {
  if (v > 0xffffffffu) fail("metadata value {} does not fit in UINT32", v);
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

GgufValue i32_array(const std::vector<std::uint64_t>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (std::uint64_t x : v) {
    if (x > 0x7fffffffu) fail("metadata array value {} does not fit in INT32", x);
    items.push_back(GgufValue{static_cast<std::int32_t>(x)});
  }
  return GgufValue::make_array(GgufValueType::INT32, std::move(items));
}

GgufValue f32_array(const std::vector<float>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (float x : v) items.push_back(GgufValue{x});
  return GgufValue::make_array(GgufValueType::FLOAT32, std::move(items));
}

GgufValue bool_array(const std::vector<bool>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (bool x : v) items.push_back(GgufValue{x});
  return GgufValue::make_array(GgufValueType::BOOL, std::move(items));
}

GgufValue str_array(std::vector<std::string> v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (auto& x : v) items.push_back(GgufValue{std::move(x)});
  return GgufValue::make_array(GgufValueType::STRING, std::move(items));
}

void KvBuilder::set(const std::string& key, GgufValue value) {
  for (auto& kv : items_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  items_.push_back(GgufKV{key, std::move(value)});
}

}  // namespace detail
}  // namespace qforge::synth
