#include "model/config.h"

#include <cmath>
#include <string_view>

#include "core/error.h"
#include "formats/gguf.h"

namespace qforge {
namespace {

class MetadataReader {
 public:
  MetadataReader(const GgufReader& gguf, std::string arch) : gguf_(gguf), arch_(std::move(arch)) {}

  std::string key(std::string_view suffix) const { return fmt::format("{}.{}", arch_, suffix); }

  const GgufValue* find(std::string_view suffix) const { return gguf_.find(key(suffix)); }

  int require_int(std::string_view suffix) const {
    const std::string k = key(suffix);
    const GgufValue* v = gguf_.find(k);
    if (v == nullptr) {
      fail("{}: missing metadata key '{}' (needed for architecture '{}')", gguf_.path(), k, arch_);
    }
    return checked_int(*v, k);
  }

  // A value that is either one integer for every layer or an array with one entry per layer.
  // Returns the per-layer values (empty for a single value, which goes to `scalar`).
  std::vector<int> scalar_or_per_layer(std::string_view suffix, int n_layer, int& scalar) const {
    const std::string k = key(suffix);
    const GgufValue* v = gguf_.find(k);
    if (v == nullptr) {
      fail("{}: missing metadata key '{}' (needed for architecture '{}')", gguf_.path(), k, arch_);
    }
    if (v->type() != GgufValueType::ARRAY) {
      scalar = checked_int(*v, k);
      return {};
    }
    const GgufArray& items = v->as_array(k);
    if (items.items.size() != static_cast<std::size_t>(n_layer)) {
      fail("{}: '{}' has {} entries, expected block_count {}", gguf_.path(), k, items.items.size(),
           n_layer);
    }
    std::vector<int> out;
    for (const GgufValue& item : items.items) out.push_back(checked_int(item, k));
    scalar = out.front();
    return out;
  }

  int optional_int(std::string_view suffix, int fallback) const {
    const GgufValue* v = find(suffix);
    return v == nullptr ? fallback : checked_int(*v, key(suffix));
  }

  double optional_double(std::string_view suffix, double fallback) const {
    const GgufValue* v = find(suffix);
    return v == nullptr ? fallback : v->as_double(key(suffix));
  }

  std::int32_t token_id(std::string_view full_key) const {
    const GgufValue* v = gguf_.find(full_key);
    if (v == nullptr) return -1;
    const std::int64_t id = v->as_int(full_key);
    return id >= 0 && id < (std::int64_t{1} << 31) ? static_cast<std::int32_t>(id) : -1;
  }

 private:
  int checked_int(const GgufValue& v, const std::string& k) const {
    if (v.type() == GgufValueType::ARRAY) {
      fail("{}: metadata key '{}' is a per-layer array; only a single value is supported",
           gguf_.path(), k);
    }
    const std::uint64_t x = v.as_uint(k);
    if (x > (1u << 30)) fail("{}: metadata key '{}' = {} is out of range", gguf_.path(), k, x);
    return static_cast<int>(x);
  }

  const GgufReader& gguf_;
  std::string arch_;
};

RopeParams read_rope(const MetadataReader& md, const std::string& path, double default_base) {
  RopeParams rope;
  rope.freq_base = md.optional_double("rope.freq_base", default_base);
  if (const GgufValue* type = md.find("rope.scaling.type")) {
    const std::string_view name = type->as_string(md.key("rope.scaling.type"));
    if (name == "linear") {
      const double factor = md.optional_double("rope.scaling.factor", 1.0);
      if (!(factor > 0)) fail("{}: '{}' must be > 0", path, md.key("rope.scaling.factor"));
      rope.freq_scale = 1.0 / factor;
    } else if (name != "none") {
      fail("{}: rope scaling type '{}' ({}) is not supported (only linear)", path, name,
           md.key("rope.scaling.type"));
    }
  }
  if (!(rope.freq_base > 0)) fail("{}: '{}' must be > 0", path, md.key("rope.freq_base"));
  return rope;
}

void read_common(const GgufReader& gguf, const MetadataReader& md, ModelConfig& c) {
  c.n_embd = md.require_int("embedding_length");
  c.n_layer = md.require_int("block_count");
  if (c.n_layer <= 0 || c.n_layer > 100000) fail("{}: bad block_count {}", gguf.path(), c.n_layer);
  c.layer_n_ff = md.scalar_or_per_layer("feed_forward_length", c.n_layer, c.n_ff);
  c.n_head = md.require_int("attention.head_count");
  c.n_head_kv = c.n_head;
  if (md.find("attention.head_count_kv") != nullptr) {
    c.layer_n_head_kv = md.scalar_or_per_layer("attention.head_count_kv", c.n_layer, c.n_head_kv);
  }
  c.n_ctx_train = md.optional_int("context_length", 0);
  c.norm_eps = static_cast<float>(md.optional_double("attention.layer_norm_rms_epsilon", 1e-5));
  if (c.n_embd <= 0 || c.n_head <= 0) {
    fail("{}: embedding_length and attention.head_count must be > 0", gguf.path());
  }
  const int default_head_dim = c.n_embd / c.n_head;
  c.head_dim_k = md.optional_int("attention.key_length", default_head_dim);
  c.head_dim_v = md.optional_int("attention.value_length", default_head_dim);
  c.n_rot = md.optional_int("rope.dimension_count", c.head_dim_k);
  if (const GgufValue* scale = md.find("attention.scale")) {
    c.attn_scale = static_cast<float>(scale->as_double(md.key("attention.scale")));
  } else {
    c.attn_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim_k)));
  }
  c.attn_softcap = static_cast<float>(md.optional_double("attn_logit_softcapping", 0.0));
  c.final_softcap = static_cast<float>(md.optional_double("final_logit_softcapping", 0.0));
  c.layer_sliding.assign(static_cast<std::size_t>(c.n_layer), false);
  c.bos_token = md.token_id("tokenizer.ggml.bos_token_id");
  c.eos_token = md.token_id("tokenizer.ggml.eos_token_id");
}

void configure_llama(const GgufReader& gguf, const MetadataReader& md, ModelConfig& c) {
  c.rope_style = RopeStyle::kAdjacentPairs;
  c.rope_global = read_rope(md, gguf.path(), 10000.0);
  c.rope_local = c.rope_global;
  c.ffn_act = FfnActivation::kSiluGlu;
}

// Which layers use the sliding window: `attention.sliding_window_pattern` is either one bool per
// layer or a period (every period-th layer is global); absent, the period is 6.
void read_sliding_pattern(const GgufReader& gguf, const MetadataReader& md, ModelConfig& c) {
  int period = 6;
  if (const GgufValue* pattern = md.find("attention.sliding_window_pattern")) {
    const std::string key = md.key("attention.sliding_window_pattern");
    if (pattern->type() == GgufValueType::ARRAY) {
      const GgufArray& items = pattern->as_array(key);
      if (items.items.size() != static_cast<std::size_t>(c.n_layer)) {
        fail("{}: '{}' has {} entries, expected block_count {}", gguf.path(), key,
             items.items.size(), c.n_layer);
      }
      for (int il = 0; il < c.n_layer; ++il) {
        c.layer_sliding[static_cast<std::size_t>(il)] =
            items.items[static_cast<std::size_t>(il)].as_bool(key);
      }
      return;
    }
    period = static_cast<int>(pattern->as_uint(key));
    if (period <= 0) fail("{}: '{}' must be > 0", gguf.path(), key);
  }
  for (int il = 0; il < c.n_layer; ++il) {
    c.layer_sliding[static_cast<std::size_t>(il)] = (il + 1) % period != 0;
  }
}

// Sliding layers' RoPE: rope.freq_base_swa, without scaling (transformers: the
// "sliding_attention" rope parameters, formerly rope_local_base_freq); 10000 when absent.
RopeParams read_rope_swa(const GgufReader& gguf, const MetadataReader& md) {
  const RopeParams rope{md.optional_double("rope.freq_base_swa", 10000.0), 1.0};
  if (!(rope.freq_base > 0))
    fail("{}: '{}' must be > 0", gguf.path(), md.key("rope.freq_base_swa"));
  return rope;
}

void configure_gemma3(const GgufReader& gguf, const MetadataReader& md, ModelConfig& c) {
  c.rope_style = RopeStyle::kHalves;
  // Global layers use rope.freq_base (and any linear scaling); sliding layers their own base.
  c.rope_global = read_rope(md, gguf.path(), 1000000.0);
  c.rope_local = read_rope_swa(gguf, md);
  c.ffn_act = FfnActivation::kGeluTanhGlu;
  // Gemma multiplies the embeddings by sqrt(hidden_size). We keep the F32 value (as llama.cpp and
  // transformers in float32 do); transformers in bf16 would round it to the embedding dtype.
  c.embed_scale = std::sqrt(static_cast<float>(c.n_embd));
  c.qk_norm = true;
  c.post_norms = true;
  if (md.find("attention.scale") == nullptr && c.n_layer == 62) {
    // Gemma 3 27B: query_pre_attn_scalar = hidden_size / num_heads instead of head_dim.
    c.attn_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.n_embd / c.n_head)));
  }
  c.sliding_window = md.optional_int("attention.sliding_window", 0);
  read_sliding_pattern(gguf, md, c);
}

// Gemma 4 (transformers' Gemma4TextModel): Gemma 3's block plus value norm, unscaled attention
// (QK-norm makes 1/sqrt(d) unnecessary), per-type head geometry and RoPE (full layers: larger
// heads, "proportional" RoPE through rope_freqs), KV sharing, per-layer embeddings, MoE and layer
// scalars.
void configure_gemma4(const GgufReader& gguf, const MetadataReader& md, ModelConfig& c) {
  c.rope_style = RopeStyle::kHalves;
  c.rope_global = read_rope(md, gguf.path(), 1000000.0);
  c.rope_local = read_rope_swa(gguf, md);
  c.rope_freqs_full_only = true;
  c.ffn_act = FfnActivation::kGeluTanhGlu;
  c.embed_scale = std::sqrt(static_cast<float>(c.n_embd));
  c.qk_norm = true;
  c.post_norms = true;
  c.value_norm = true;
  if (md.find("attention.scale") == nullptr) c.attn_scale = 1.0f;
  c.sliding_window = md.optional_int("attention.sliding_window", 0);
  read_sliding_pattern(gguf, md, c);
  c.head_dim_k_swa = md.optional_int("attention.key_length_swa", c.head_dim_k);
  c.head_dim_v_swa = md.optional_int("attention.value_length_swa", c.head_dim_k_swa);
  c.n_rot_swa = md.optional_int("rope.dimension_count_swa", c.head_dim_k_swa);
  const int n_shared = md.optional_int("attention.shared_kv_layers", 0);
  if (n_shared >= c.n_layer) {
    fail("{}: '{}' = {} leaves no layer with its own KV ({} layers)", gguf.path(),
         md.key("attention.shared_kv_layers"), n_shared, c.n_layer);
  }
  c.n_layer_kv = c.n_layer - n_shared;
  c.n_embd_per_layer = md.optional_int("embedding_length_per_layer_input", 0);
  c.n_expert = md.optional_int("expert_count", 0);
  if (c.n_expert > 0) {
    c.n_expert_used = md.require_int("expert_used_count");
    c.n_ff_exp = md.require_int("expert_feed_forward_length");
  }
}

}  // namespace

void validate_model_config(const ModelConfig& c, const std::string& where) {
  const auto n_layer = static_cast<std::size_t>(c.n_layer);
  if (c.n_layer <= 0 || c.layer_sliding.size() != n_layer) {
    fail("{}: {} layer_sliding entries for {} layers", where, c.layer_sliding.size(), c.n_layer);
  }
  if ((!c.layer_n_ff.empty() && c.layer_n_ff.size() < n_layer) ||
      (!c.layer_n_head_kv.empty() && c.layer_n_head_kv.size() < n_layer)) {
    fail("{}: per-layer feed_forward_length / head_count_kv lists are shorter than {} layers",
         where, c.n_layer);
  }
  if (c.n_embd <= 0 || c.n_head <= 0)
    fail("{}: embedding_length and head_count must be > 0", where);
  for (int il = 0; il < c.n_layer; ++il) {
    const int dk = c.head_dim_k_of(il);
    const int dv = c.head_dim_v_of(il);
    const int rot = c.n_rot_of(il);
    const int kv = c.n_head_kv_of(il);
    if (dk <= 0 || dv <= 0 || rot <= 0 || rot > dk || rot % 2 != 0) {
      fail("{}: layer {}: bad head geometry (key length {}, value length {}, rotated dims {})",
           where, il, dk, dv, rot);
    }
    if (kv <= 0 || c.n_head % kv != 0) {
      fail("{}: layer {}: head_count {} is not a multiple of head_count_kv {}", where, il, c.n_head,
           kv);
    }
    if (c.n_ff_of(il) <= 0) fail("{}: layer {}: feed_forward_length must be > 0", where, il);
    const int src = c.kv_source(il);
    if (src < 0) {
      fail("{}: layer {} shares KV, but no earlier layer of its type has its own", where, il);
    }
    if (c.n_head_kv_of(src) != kv || c.head_dim_k_of(src) != dk || c.head_dim_v_of(src) != dv) {
      fail("{}: layer {} shares the KV of layer {}, whose head geometry differs", where, il, src);
    }
  }
  if (c.n_expert > 0 && (c.n_expert_used <= 0 || c.n_expert_used > c.n_expert || c.n_ff_exp <= 0)) {
    fail("{}: bad MoE geometry ({} experts, {} used, expert FFN {})", where, c.n_expert,
         c.n_expert_used, c.n_ff_exp);
  }
}

bool is_supported_architecture(const std::string& arch) {
  return arch == "llama" || arch == "gemma3" || arch == "gemma4";
}

ModelConfig read_model_config(const GgufReader& gguf) {
  ModelConfig c;
  c.arch = gguf.architecture();
  if (c.arch.empty()) fail("{}: metadata key 'general.architecture' is missing", gguf.path());
  if (!is_supported_architecture(c.arch)) {
    fail("{}: unsupported architecture '{}' (supported: llama, gemma3, gemma4)", gguf.path(),
         c.arch);
  }
  const MetadataReader md(gguf, c.arch);
  read_common(gguf, md, c);
  if (c.arch == "llama") {
    configure_llama(gguf, md, c);
  } else if (c.arch == "gemma3") {
    configure_gemma3(gguf, md, c);
  } else {
    configure_gemma4(gguf, md, c);
  }
  const GgufTensorInfo* embd = gguf.find_tensor("token_embd.weight");
  if (embd == nullptr) fail("{}: tensor 'token_embd.weight' is missing", gguf.path());
  if (embd->shape.size() != 2 || embd->shape[1] == 0 || embd->shape[1] > (1u << 30)) {
    fail("{}: tensor 'token_embd.weight' must be 2-D [n_embd, n_vocab]", gguf.path());
  }
  c.n_vocab = static_cast<int>(embd->shape[1]);
  validate_model_config(c, gguf.path());
  return c;
}

}  // namespace qforge
