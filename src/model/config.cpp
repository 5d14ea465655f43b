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
      fail("{}: metadata key '{}' is a per-layer array; only a single value is supported", gguf_.path(),
           k);
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
  c.n_ff = md.require_int("feed_forward_length");
  c.n_head = md.require_int("attention.head_count");
  c.n_head_kv = md.optional_int("attention.head_count_kv", c.n_head);
  c.n_ctx_train = md.optional_int("context_length", 0);
  c.norm_eps = static_cast<float>(md.optional_double("attention.layer_norm_rms_epsilon", 1e-5));
  if (c.n_embd <= 0 || c.n_layer <= 0 || c.n_ff <= 0 || c.n_head <= 0 || c.n_head_kv <= 0) {
    fail("{}: embedding_length, block_count, feed_forward_length and head counts must be > 0",
         gguf.path());
  }
  if (c.n_head % c.n_head_kv != 0) {
    fail("{}: attention.head_count {} is not a multiple of head_count_kv {}", gguf.path(), c.n_head,
         c.n_head_kv);
  }
  const int default_head_dim = c.n_embd / c.n_head;
  c.head_dim_k = md.optional_int("attention.key_length", default_head_dim);
  c.head_dim_v = md.optional_int("attention.value_length", default_head_dim);
  c.n_rot = md.optional_int("rope.dimension_count", c.head_dim_k);
  if (c.head_dim_k <= 0 || c.head_dim_v <= 0 || c.n_rot <= 0 || c.n_rot > c.head_dim_k ||
      c.n_rot % 2 != 0) {
    fail("{}: bad head geometry (key_length {}, value_length {}, rope.dimension_count {})",
         gguf.path(), c.head_dim_k, c.head_dim_v, c.n_rot);
  }
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

void configure_gemma3(const GgufReader& gguf, const MetadataReader& md, ModelConfig& c) {
  c.rope_style = RopeStyle::kHalves;
  // Global layers use rope.freq_base (and any linear scaling); sliding layers use Gemma 3's fixed
  // local base of 10000 without scaling (transformers: rope_local_base_freq).
  c.rope_global = read_rope(md, gguf.path(), 1000000.0);
  c.rope_local = RopeParams{10000.0, 1.0};
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
  int period = 6;  // every 6th layer is global
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

}  // namespace

bool is_supported_architecture(const std::string& arch) {
  return arch == "llama" || arch == "gemma3";
}

ModelConfig read_model_config(const GgufReader& gguf) {
  ModelConfig c;
  c.arch = gguf.architecture();
  if (c.arch.empty()) fail("{}: metadata key 'general.architecture' is missing", gguf.path());
  if (!is_supported_architecture(c.arch)) {
    fail("{}: unsupported architecture '{}' (supported: llama, gemma3)", gguf.path(), c.arch);
  }
  const MetadataReader md(gguf, c.arch);
  read_common(gguf, md, c);
  if (c.arch == "llama") {
    configure_llama(gguf, md, c);
  } else {
    configure_gemma3(gguf, md, c);
  }
  const GgufTensorInfo* embd = gguf.find_tensor("token_embd.weight");
  if (embd == nullptr) fail("{}: tensor 'token_embd.weight' is missing", gguf.path());
  if (embd->shape.size() != 2 || embd->shape[1] == 0 || embd->shape[1] > (1u << 30)) {
    fail("{}: tensor 'token_embd.weight' must be 2-D [n_embd, n_vocab]", gguf.path());
  }
  c.n_vocab = static_cast<int>(embd->shape[1]);
  return c;
}

}  // namespace qforge
