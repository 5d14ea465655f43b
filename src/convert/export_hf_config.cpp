// config.json / generation_config.json from GGUF metadata, in the form transformers 5 writes
// (rope_parameters dicts, layer_types lists). The GGUF keys are those llama.cpp's converter (and
// `qforge convert`) write; values the GGUF does not carry fall back to what llama.cpp's loader
// assumes (Gemma 3: query_pre_attn_scalar = head_dim except 27B, sliding pattern 5:1), and each
// such assumption is reported as a note.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include <fmt/format.h>

#include "convert/export_gguf_meta.h"
#include "convert/export_hf.h"
#include "core/error.h"

namespace qforge {

using namespace export_detail;
using Json = nlohmann::ordered_json;

namespace {

struct Meta {
  const GgufReader& g;
  std::string arch;
  std::string key(std::string_view k) const { return fmt::format("{}.{}", arch, k); }
  std::optional<std::uint64_t> u(std::string_view k) const { return meta_uint(g, key(k)); }
  std::uint64_t req(std::string_view k) const { return require_uint(g, key(k)); }
  std::optional<double> f(std::string_view k) const {
    auto v = meta_float(g, key(k));
    if (v) v = tidy_float(*v);
    return v;
  }
  bool has_tensor(std::string_view name) const { return g.find_tensor(name) != nullptr; }
};

std::uint64_t rows_of(const GgufReader& g, std::string_view tensor) {
  const GgufTensorInfo* t = g.find_tensor(tensor);
  if (t == nullptr) fail("{}: tensor '{}' is missing", g.path(), tensor);
  return t->shape.size() >= 2 ? t->shape[1] : 1;
}

std::optional<std::uint64_t> token_id(const GgufReader& g, std::string_view what) {
  const GgufValue* tokens = g.find("tokenizer.ggml.tokens");
  const std::uint64_t n = tokens && tokens->type() == GgufValueType::ARRAY
                              ? tokens->as_array().items.size()
                              : 0;
  return meta_token_id(g, what, n);
}

Json id_or_null(std::optional<std::uint64_t> v) { return v ? Json(*v) : Json(nullptr); }

// The end-of-turn token of chat models (generation stops there too).
std::optional<std::uint64_t> end_of_turn(const GgufReader& g) {
  if (auto v = token_id(g, "eot")) return v;
  const auto tokens = meta_string_array(g, "tokenizer.ggml.tokens");
  for (std::string_view marker : {"<end_of_turn>", "<turn|>", "<|eot_id|>"}) {
    const auto it = std::find(tokens.begin(), tokens.end(), marker);
    if (it != tokens.end()) return static_cast<std::uint64_t>(it - tokens.begin());
  }
  return std::nullopt;
}

// llama.cpp's llama3 rope_freqs table for the given parameters (same formula as the converter).
std::vector<float> llama3_table(double theta, std::uint64_t dim, double factor, double low,
                                double high, double old_ctx) {
  std::vector<float> out;
  const float low_wavelen = static_cast<float>(old_ctx / low);
  const float high_wavelen = static_cast<float>(old_ctx / high);
  for (std::uint64_t i = 0; i < dim; i += 2) {
    const float freq = 1.0f / std::pow(static_cast<float>(theta), static_cast<float>(i) / static_cast<float>(dim));
    const float wavelen = 2.0f * std::numbers::pi_v<float> / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(static_cast<float>(factor));
    } else {
      const float smooth = (static_cast<float>(old_ctx) / wavelen - static_cast<float>(low)) /
                           static_cast<float>(high - low);
      out.push_back(1.0f / ((1.0f - smooth) / static_cast<float>(factor) + smooth));
    }
  }
  return out;
}

std::vector<float> f32_tensor_values(const GgufReader& g, const GgufTensorInfo& t) {
  if (t.type != GgmlType::F32) fail("{}: tensor '{}' must be F32", g.path(), t.name);
  const auto bytes = g.tensor_data(t);
  std::vector<float> v(bytes.size() / 4);
  std::memcpy(v.data(), bytes.data(), v.size() * 4);
  return v;
}

// Llama 3 stores its RoPE scaling only as the rope_freqs table: find the published parameter
// set that reproduces it.
Json llama3_rope(const GgufReader& g, double theta, std::uint64_t head_dim) {
  const std::vector<float> table = f32_tensor_values(g, *g.find_tensor("rope_freqs.weight"));
  struct P {
    double factor, low, high, old_ctx;
  };
  for (const P p : {P{8, 1, 4, 8192}, P{32, 1, 4, 8192}, P{16, 1, 4, 8192}, P{4, 1, 4, 8192}}) {
    const auto want = llama3_table(theta, head_dim, p.factor, p.low, p.high, p.old_ctx);
    if (want.size() != table.size()) continue;
    bool same = true;
    for (std::size_t i = 0; i < want.size() && same; ++i)
      same = std::fabs(want[i] - table[i]) <= 1e-5f * std::max(1.0f, std::fabs(want[i]));
    if (same)
      return Json{{"rope_type", "llama3"},        {"rope_theta", theta},
                  {"factor", p.factor},           {"low_freq_factor", p.low},
                  {"high_freq_factor", p.high},   {"original_max_position_embeddings", p.old_ctx}};
  }
  fail("{}: rope_freqs.weight does not match any known llama3 RoPE scaling (factor 4/8/16/32, "
       "low 1, high 4, original context 8192); export-hf cannot rebuild rope_parameters",
       g.path());
}

HfConfigFiles llama_config(const Meta& m, const std::string& dtype) {
  HfConfigFiles out;
  out.hf_arch = "LlamaForCausalLM";
  const std::uint64_t n_embd = m.req("embedding_length");
  const std::uint64_t n_head = m.req("attention.head_count");
  if (n_head == 0) fail("{}: {} is 0", m.g.path(), m.key("attention.head_count"));
  const std::uint64_t n_kv = m.u("attention.head_count_kv").value_or(n_head);
  const std::uint64_t head_dim =
      m.u("rope.dimension_count").value_or(m.u("attention.key_length").value_or(n_embd / n_head));
  const double theta = m.f("rope.freq_base").value_or(10000.0);
  Json rope{{"rope_theta", theta}, {"rope_type", "default"}};
  if (m.has_tensor("rope_freqs.weight")) {
    rope = llama3_rope(m.g, theta, head_dim);
  } else if (const auto type = meta_string(m.g, m.key("rope.scaling.type")); type && *type == "linear") {
    rope = {{"rope_theta", theta}, {"rope_type", "linear"},
            {"factor", m.f("rope.scaling.factor").value_or(1.0)}};
  } else if (type && *type != "none") {
    fail("{}: {} '{}' is not supported by export-hf", m.g.path(), m.key("rope.scaling.type"), *type);
  }
  Json& c = out.config;
  c["architectures"] = {out.hf_arch};
  c["attention_bias"] = m.has_tensor("blk.0.attn_q.bias");
  c["attention_dropout"] = 0.0;
  c["bos_token_id"] = id_or_null(token_id(m.g, "bos"));
  c["dtype"] = dtype;
  c["eos_token_id"] = id_or_null(token_id(m.g, "eos"));
  c["head_dim"] = head_dim;
  c["hidden_act"] = "silu";
  c["hidden_size"] = n_embd;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = m.req("feed_forward_length");
  c["max_position_embeddings"] = m.u("context_length").value_or(4096);
  c["mlp_bias"] = m.has_tensor("blk.0.ffn_up.bias");
  c["model_type"] = "llama";
  c["num_attention_heads"] = n_head;
  c["num_hidden_layers"] = m.req("block_count");
  c["num_key_value_heads"] = n_kv;
  c["pad_token_id"] = id_or_null(token_id(m.g, "padding"));
  c["pretraining_tp"] = 1;
  c["rms_norm_eps"] = m.f("attention.layer_norm_rms_epsilon").value_or(1e-5);
  c["rope_parameters"] = rope;
  c["tie_word_embeddings"] = !m.has_tensor("output.weight");
  c["use_cache"] = true;
  c["vocab_size"] = rows_of(m.g, "token_embd.weight");
  return out;
}

// Gemma 3 / 4: sliding-window layers as a per-layer bool list (true = sliding).
std::vector<bool> sliding_layers(const Meta& m, std::uint64_t n_layers, HfConfigFiles& out) {
  std::vector<bool> swa(n_layers, false);
  if (const auto pattern = meta_int_list(m.g, m.key("attention.sliding_window_pattern"))) {
    if (pattern->size() == n_layers) {
      for (std::size_t i = 0; i < n_layers; ++i) swa[i] = (*pattern)[i] != 0;
      return swa;
    }
    if (pattern->size() == 1 && (*pattern)[0] > 0) {  // "every Nth layer is global"
      const auto n = static_cast<std::uint64_t>((*pattern)[0]);
      for (std::uint64_t i = 0; i < n_layers; ++i) swa[i] = (i + 1) % n != 0;
      return swa;
    }
    fail("{}: {} has {} entries for {} layers", m.g.path(), m.key("attention.sliding_window_pattern"),
         pattern->size(), n_layers);
  }
  if (!m.u("attention.sliding_window")) return swa;  // no sliding window: all global
  // llama.cpp's Gemma 3 loader: every 6th layer is global.
  for (std::uint64_t i = 0; i < n_layers; ++i) swa[i] = (i + 1) % 6 != 0;
  out.notes.push_back("layer_types: no sliding_window_pattern key; used Gemma 3's 5 sliding : 1 "
                      "global pattern (as llama.cpp does)");
  return swa;
}

Json layer_types(const std::vector<bool>& swa) {
  Json a = Json::array();
  for (bool s : swa) a.push_back(s ? "sliding_attention" : "full_attention");
  return a;
}

void gemma_common(const Meta& m, const std::string& dtype, HfConfigFiles& out) {
  Json& c = out.config;
  c["architectures"] = {out.hf_arch};
  c["attention_bias"] = false;
  c["attention_dropout"] = 0.0;
  c["bos_token_id"] = id_or_null(token_id(m.g, "bos"));
  c["dtype"] = dtype;
  c["eos_token_id"] = id_or_null(token_id(m.g, "eos"));
  c["final_logit_softcapping"] = m.f("final_logit_softcapping") ? Json(*m.f("final_logit_softcapping")) : Json(nullptr);
  c["hidden_activation"] = "gelu_pytorch_tanh";
  c["hidden_size"] = m.req("embedding_length");
  c["initializer_range"] = 0.02;
}

HfConfigFiles gemma3_config(const Meta& m, const std::string& dtype) {
  HfConfigFiles out;
  out.hf_arch = "Gemma3ForCausalLM";
  const std::uint64_t n_layers = m.req("block_count");
  const std::uint64_t n_embd = m.req("embedding_length");
  const std::uint64_t n_head = m.u("attention.head_count").value_or(8);
  const std::uint64_t head_dim = m.u("attention.key_length").value_or(256);
  const std::vector<bool> swa = sliding_layers(m, n_layers, out);
  std::uint64_t qpas = head_dim;  // an int in transformers' Gemma3TextConfig
  if (const auto scale = m.f("attention.scale"); scale && *scale > 0) {
    qpas = static_cast<std::uint64_t>(std::llround(1.0 / (*scale * *scale)));
  } else if (n_layers == 62 && n_head > 0) {
    qpas = n_embd / n_head;  // Gemma 3 27B (llama.cpp's special case)
  } else {
    out.notes.push_back(fmt::format("query_pre_attn_scalar: not in the GGUF; {} (head_dim, as "
                                    "llama.cpp assumes)",
                                    head_dim));
  }
  gemma_common(m, dtype, out);
  Json& c = out.config;
  c["attn_logit_softcapping"] = nullptr;
  c["head_dim"] = head_dim;
  c["intermediate_size"] = m.req("feed_forward_length");
  c["layer_types"] = layer_types(swa);
  c["max_position_embeddings"] = m.u("context_length").value_or(131072);
  c["model_type"] = "gemma3_text";
  c["num_attention_heads"] = n_head;
  c["num_hidden_layers"] = n_layers;
  c["num_key_value_heads"] = m.u("attention.head_count_kv").value_or(4);
  c["pad_token_id"] = id_or_null(token_id(m.g, "padding"));
  c["query_pre_attn_scalar"] = qpas;
  c["rms_norm_eps"] = m.f("attention.layer_norm_rms_epsilon").value_or(1e-6);
  c["rope_parameters"] = {
      {"full_attention", {{"rope_theta", m.f("rope.freq_base").value_or(1e6)}, {"rope_type", "default"}}},
      {"sliding_attention",
       {{"rope_theta", m.f("rope.freq_base_swa").value_or(10000.0)}, {"rope_type", "default"}}}};
  if (const auto type = meta_string(m.g, m.key("rope.scaling.type")); type && *type == "linear")
    c["rope_parameters"]["full_attention"] = {{"rope_theta", m.f("rope.freq_base").value_or(1e6)},
                                              {"rope_type", "linear"},
                                              {"factor", m.f("rope.scaling.factor").value_or(1.0)}};
  c["sliding_window"] = m.u("attention.sliding_window") ? Json(*m.u("attention.sliding_window")) : Json(nullptr);
  c["tie_word_embeddings"] = !m.has_tensor("output.weight");
  c["use_bidirectional_attention"] = false;
  c["use_cache"] = true;
  c["vocab_size"] = rows_of(m.g, "token_embd.weight");
  return out;
}

HfConfigFiles gemma4_config(const Meta& m, const std::string& dtype) {
  HfConfigFiles out;
  out.hf_arch = "Gemma4ForCausalLM";
  const std::uint64_t n_layers = m.req("block_count");
  const std::vector<bool> swa = sliding_layers(m, n_layers, out);
  const std::uint64_t n_shared = m.u("attention.shared_kv_layers").value_or(0);
  const auto kv = meta_int_list(m.g, m.key("attention.head_count_kv"));
  std::optional<std::uint64_t> kv_swa, kv_full;
  if (kv && kv->size() == 1) kv_swa = static_cast<std::uint64_t>((*kv)[0]);
  if (kv && kv->size() == n_layers) {
    for (std::size_t i = 0; i < n_layers; ++i) {
      auto& slot = swa[i] ? kv_swa : kv_full;
      if (!slot) slot = static_cast<std::uint64_t>((*kv)[i]);
    }
  }
  const auto ff = meta_int_list(m.g, m.key("feed_forward_length"));
  if (!ff || ff->empty()) fail("{}: {} is missing", m.g.path(), m.key("feed_forward_length"));
  const bool double_wide = ff->size() == n_layers && n_shared > 0 && ff->back() == 2 * ff->front();
  // K = V on full-attention layers: a full layer that computes its own K has no V weight.
  bool k_eq_v = false;
  for (std::uint64_t i = 0; i + n_shared < n_layers; ++i)
    if (!swa[i] && m.has_tensor(fmt::format("blk.{}.attn_k.weight", i)) &&
        !m.has_tensor(fmt::format("blk.{}.attn_v.weight", i)))
      k_eq_v = true;
  const auto n_expert = m.u("expert_count");

  Json full{{"rope_theta", m.f("rope.freq_base").value_or(1e6)}, {"rope_type", "default"}};
  if (const GgufTensorInfo* rf = m.g.find_tensor("rope_freqs.weight")) {
    // Proportional RoPE: factor 1 for rotated pairs, 1e30 for the rest.
    const auto table = f32_tensor_values(m.g, *rf);
    const auto rotated = std::count(table.begin(), table.end(), 1.0f);
    full = {{"partial_rotary_factor", tidy_float(static_cast<double>(rotated) / static_cast<double>(table.size()))},
            {"rope_theta", m.f("rope.freq_base").value_or(1e6)},
            {"rope_type", "proportional"}};
  }
  Json sliding{{"rope_theta", m.f("rope.freq_base_swa").value_or(10000.0)}, {"rope_type", "default"}};
  const auto key_swa = m.u("attention.key_length_swa");
  const auto rot_swa = m.u("rope.dimension_count_swa");
  if (key_swa && rot_swa && *rot_swa != *key_swa && *key_swa > 0)
    sliding = {{"partial_rotary_factor", tidy_float(static_cast<double>(*rot_swa) / static_cast<double>(*key_swa))},
               {"rope_theta", m.f("rope.freq_base_swa").value_or(10000.0)},
               {"rope_type", "default"}};

  gemma_common(m, dtype, out);
  Json& c = out.config;
  c["attention_k_eq_v"] = k_eq_v;
  c["enable_moe_block"] = n_expert.has_value() && *n_expert > 0;
  c["head_dim"] = key_swa.value_or(m.u("attention.key_length").value_or(256));
  c["hidden_size_per_layer_input"] = m.u("embedding_length_per_layer_input").value_or(0);
  c["intermediate_size"] = ff->front();
  c["layer_types"] = layer_types(swa);
  c["max_position_embeddings"] = m.u("context_length").value_or(131072);
  c["model_type"] = "gemma4_text";
  c["moe_intermediate_size"] = id_or_null(m.u("expert_feed_forward_length"));
  c["num_attention_heads"] = m.u("attention.head_count").value_or(8);
  c["num_experts"] = id_or_null(n_expert);
  c["num_hidden_layers"] = n_layers;
  c["num_key_value_heads"] = id_or_null(kv_swa ? kv_swa : kv_full);
  c["num_kv_shared_layers"] = n_shared;
  c["pad_token_id"] = id_or_null(token_id(m.g, "padding"));
  c["rms_norm_eps"] = m.f("attention.layer_norm_rms_epsilon").value_or(1e-6);
  c["rope_parameters"] = {{"full_attention", full}, {"sliding_attention", sliding}};
  c["sliding_window"] = m.u("attention.sliding_window") ? Json(*m.u("attention.sliding_window")) : Json(nullptr);
  c["tie_word_embeddings"] = !m.has_tensor("output.weight");
  c["top_k_experts"] = id_or_null(m.u("expert_used_count"));
  c["use_bidirectional_attention"] = nullptr;
  c["use_cache"] = true;
  c["use_double_wide_mlp"] = double_wide;
  c["vocab_size"] = rows_of(m.g, "token_embd.weight");
  if (m.has_tensor("per_layer_token_embd.weight"))
    c["vocab_size_per_layer_input"] = rows_of(m.g, "per_layer_token_embd.weight");
  c["global_head_dim"] = m.u("attention.key_length").value_or(256);
  if (kv_full && kv_full != kv_swa) c["num_global_key_value_heads"] = *kv_full;
  return out;
}

}  // namespace

HfConfigFiles hf_config_from_gguf(const GgufReader& g, const std::string& torch_dtype) {
  const std::string arch = g.architecture();
  const Meta m{g, arch};
  HfConfigFiles out;
  if (arch == "llama") {
    out = llama_config(m, torch_dtype);
  } else if (arch == "gemma3") {
    out = gemma3_config(m, torch_dtype);
  } else if (arch == "gemma4") {
    out = gemma4_config(m, torch_dtype);
  } else {
    fail("{}: general.architecture '{}' is not supported by export-hf (llama, gemma3, gemma4)",
         g.path(), arch.empty() ? "(none)" : arch);
  }
  Json& gen = out.generation_config;
  gen["bos_token_id"] = id_or_null(token_id(g, "bos"));
  Json eos = Json::array();
  if (const auto e = token_id(g, "eos")) eos.push_back(*e);
  if (const auto eot = end_of_turn(g); eot && (eos.empty() || eos[0] != *eot)) eos.push_back(*eot);
  gen["eos_token_id"] = eos;
  if (const auto pad = token_id(g, "padding")) gen["pad_token_id"] = *pad;
  return out;
}

}  // namespace qforge
