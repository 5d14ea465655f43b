// Tensor lists and `<arch>.*` metadata for `qforge synth`, as llama.cpp's convert_hf_to_gguf.py
// writes them for Llama, Gemma 3 and Gemma 4 (checked against the converter's listings in
// tests/data/fixtures/llamacpp/). Key order follows the converter; shapes are in ggml order.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "formats/size_label.h"
#include "model/synth_internal.h"

namespace qforge::synth {

std::uint64_t SynthTensor::n_elements() const {
  std::uint64_t n = 1;
  for (std::uint64_t d : ne) n *= d;
  return n;
}

std::uint64_t SynthTensor::n_bytes() const {
  return n_elements() / block_size(type) * type_size(type);
}

std::uint64_t SynthPlan::total_bytes() const {
  std::uint64_t n = 0;
  for (const auto& t : tensors) n += t.n_bytes();
  return n;
}

namespace detail {

SynthTensor matrix(std::string name, std::vector<std::uint64_t> ne, SynthRole role) {
  SynthTensor t;
  t.name = std::move(name);
  t.ne = std::move(ne);
  t.role = role;
  t.fill = SynthFill::kMatrix;
  // Values with std 1/sqrt(fan_in) keep every projection's output at the scale of its input.
  t.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(t.ne[0])));
  return t;
}

SynthTensor vec_near_one(std::string name, std::vector<std::uint64_t> ne) {
  SynthTensor t;
  t.name = std::move(name);
  t.ne = std::move(ne);
  t.role = SynthRole::kFloat32;
  t.fill = SynthFill::kNearOne;
  return t;
}

std::string blk(std::size_t layer, std::string_view rest) {
  return fmt::format("blk.{}.{}", layer, rest);
}

std::string size_label(const std::vector<SynthTensor>& tensors) { return gguf_size_label(tensors); }

namespace {

// Hyper-parameters every architecture has.
struct Common {
  std::uint64_t n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab;
  std::optional<std::uint64_t> n_ctx;
  double rms_eps;
  bool tied;
};

Common read_common(const ConfigReader& cfg, double default_eps, bool default_tied) {
  Common c{};
  c.n_layer = cfg.count("num_hidden_layers");
  c.n_embd = cfg.count("hidden_size");
  c.n_head = cfg.count("num_attention_heads");
  c.n_head_kv = cfg.count_or("num_key_value_heads", c.n_head);
  c.head_dim = cfg.count_or("head_dim", c.n_embd / c.n_head);
  c.n_ff = cfg.count("intermediate_size");
  c.n_vocab = cfg.count("vocab_size");
  c.n_ctx = cfg.opt_count({"max_position_embeddings", "n_ctx", "n_positions"});
  c.rms_eps = cfg.number_or("rms_norm_eps", default_eps);
  c.tied = cfg.flag_or("tie_word_embeddings", default_tied);
  if (c.n_layer > 4096) cfg.bad("num_hidden_layers", "at most 4096 layers");
  if (c.n_head % c.n_head_kv != 0)
    cfg.bad("num_key_value_heads", fmt::format("a divisor of num_attention_heads ({})", c.n_head));
  return c;
}

void add_general(KvBuilder& kvs, SynthArch arch, const std::string& name) {
  kvs.set("general.architecture", str(std::string(synth_arch_name(arch))));
  kvs.set("general.type", str("model"));
  kvs.set("general.name", str(name));
  kvs.set("general.size_label", str(""));  // set once the tensors are known
}

// TextModel.set_gguf_parameters: the keys every text model gets, in the converter's order.
void add_text_params(KvBuilder& kvs, const std::string& p, const Common& c,
                     const RopeConfig& rope) {
  kvs.set(p + "block_count", u32(c.n_layer));
  if (c.n_ctx) kvs.set(p + "context_length", u32(*c.n_ctx));
  kvs.set(p + "embedding_length", u32(c.n_embd));
  kvs.set(p + "feed_forward_length", u32(c.n_ff));
  kvs.set(p + "attention.head_count", u32(c.n_head));
  kvs.set(p + "attention.head_count_kv", u32(c.n_head_kv));
  if (rope.full.type == "linear" && rope.full.factor) {
    kvs.set(p + "rope.scaling.type", str("linear"));
    kvs.set(p + "rope.scaling.factor", f32(*rope.full.factor));
  }
  kvs.set(p + "rope.freq_base", f32(rope.full.theta));
  if (rope.sliding) kvs.set(p + "rope.freq_base_swa", f32(rope.sliding->theta));
  kvs.set(p + "attention.layer_norm_rms_epsilon", f32(c.rms_eps));
}

// The two keys written after the architecture's own (file_type's value is set by the caller).
void add_head_dims_and_file_type(KvBuilder& kvs, const std::string& p, std::uint64_t head_dim) {
  kvs.set(p + "attention.key_length", u32(head_dim));
  kvs.set(p + "attention.value_length", u32(head_dim));
  kvs.set("general.file_type", u32(0));
}

void check_rope_supported(const ConfigReader& cfg, const RopeSpec& rope, bool allow_proportional) {
  if (rope.type == "default" || rope.type == "linear") return;
  if (allow_proportional && rope.type == "proportional") return;
  fail("{}: RoPE type '{}' is not supported by qforge synth (supported: default, linear{})",
       cfg.where(), rope.type, allow_proportional ? ", proportional" : "");
}

// ---------------------------------------------------------------- Llama

void plan_llama(const ConfigReader& cfg, SynthPlan& plan, KvBuilder& kvs) {
  const Common c = read_common(cfg, 1e-5, false);
  const RopeConfig rope = read_rope(cfg, 10000.0, std::nullopt);
  check_rope_supported(cfg, rope.full, false);
  const std::string p = "llama.";
  add_text_params(kvs, p, c, rope);
  add_head_dims_and_file_type(kvs, p, c.head_dim);
  kvs.set(p + "vocab_size", u32(c.n_vocab));
  kvs.set(p + "rope.dimension_count", u32(c.head_dim));

  auto& t = plan.tensors;
  t.push_back(matrix("token_embd.weight", {c.n_embd, c.n_vocab}, SynthRole::kTokenEmbd));
  for (std::size_t i = 0; i < c.n_layer; ++i) {
    t.push_back(vec_near_one(blk(i, "attn_norm.weight"), {c.n_embd}));
    t.push_back(matrix(blk(i, "attn_q.weight"), {c.n_embd, c.n_head * c.head_dim}));
    t.push_back(matrix(blk(i, "attn_k.weight"), {c.n_embd, c.n_head_kv * c.head_dim}));
    t.push_back(matrix(blk(i, "attn_v.weight"), {c.n_embd, c.n_head_kv * c.head_dim}));
    t.push_back(matrix(blk(i, "attn_output.weight"), {c.n_head * c.head_dim, c.n_embd}));
    t.push_back(vec_near_one(blk(i, "ffn_norm.weight"), {c.n_embd}));
    t.push_back(matrix(blk(i, "ffn_gate.weight"), {c.n_embd, c.n_ff}));
    t.push_back(matrix(blk(i, "ffn_up.weight"), {c.n_embd, c.n_ff}));
    t.push_back(matrix(blk(i, "ffn_down.weight"), {c.n_ff, c.n_embd}));
  }
  t.push_back(vec_near_one("output_norm.weight", {c.n_embd}));
  if (!c.tied) t.push_back(matrix("output.weight", {c.n_embd, c.n_vocab}, SynthRole::kOutput));
}

// ---------------------------------------------------------------- Gemma 3

void plan_gemma3(const ConfigReader& cfg, SynthPlan& plan, KvBuilder& kvs) {
  Common c = read_common(cfg, 1e-6, true);
  // Gemma3Model.set_gguf_parameters' defaults for keys a config may omit.
  if (!c.n_ctx) c.n_ctx = 131072;
  c.head_dim = cfg.count_or("head_dim", 256);
  const RopeConfig rope = read_rope(cfg, 1'000'000.0, 10000.0);
  check_rope_supported(cfg, rope.full, false);
  const std::string p = "gemma3.";
  add_text_params(kvs, p, c, rope);
  kvs.set(p + "context_length", u32(*c.n_ctx));
  add_head_dims_and_file_type(kvs, p, c.head_dim);
  if (auto cap = cfg.opt_number({"final_logit_softcapping"}); cap && *cap != 0.0)
    kvs.set(p + "final_logit_softcapping", f32(*cap));
  kvs.set(p + "attention.sliding_window", u32(cfg.count("sliding_window")));

  auto& t = plan.tensors;
  t.push_back(matrix("token_embd.weight", {c.n_embd, c.n_vocab}, SynthRole::kTokenEmbd));
  for (std::size_t i = 0; i < c.n_layer; ++i) {
    t.push_back(vec_near_one(blk(i, "attn_norm.weight"), {c.n_embd}));
    t.push_back(matrix(blk(i, "attn_q.weight"), {c.n_embd, c.n_head * c.head_dim}));
    t.push_back(matrix(blk(i, "attn_k.weight"), {c.n_embd, c.n_head_kv * c.head_dim}));
    t.push_back(matrix(blk(i, "attn_v.weight"), {c.n_embd, c.n_head_kv * c.head_dim}));
    t.push_back(vec_near_one(blk(i, "attn_q_norm.weight"), {c.head_dim}));
    t.push_back(vec_near_one(blk(i, "attn_k_norm.weight"), {c.head_dim}));
    t.push_back(matrix(blk(i, "attn_output.weight"), {c.n_head * c.head_dim, c.n_embd}));
    t.push_back(vec_near_one(blk(i, "post_attention_norm.weight"), {c.n_embd}));
    t.push_back(vec_near_one(blk(i, "ffn_norm.weight"), {c.n_embd}));
    t.push_back(matrix(blk(i, "ffn_gate.weight"), {c.n_embd, c.n_ff}));
    t.push_back(matrix(blk(i, "ffn_up.weight"), {c.n_embd, c.n_ff}));
    t.push_back(matrix(blk(i, "ffn_down.weight"), {c.n_ff, c.n_embd}));
    t.push_back(vec_near_one(blk(i, "post_ffw_norm.weight"), {c.n_embd}));
  }
  t.push_back(vec_near_one("output_norm.weight", {c.n_embd}));
  if (!c.tied) t.push_back(matrix("output.weight", {c.n_embd, c.n_vocab}, SynthRole::kOutput));
}

// ---------------------------------------------------------------- Gemma 4

struct Gemma4Layer {
  bool sliding = true;
  bool has_kv = true;  // false on the last num_kv_shared_layers layers (they reuse earlier K/V)
  bool has_v = true;   // false on full-attention layers when attention_k_eq_v (V = K)
  std::uint64_t head_dim = 0, n_head_kv = 0, n_ff = 0;
};

void plan_gemma4(const ConfigReader& cfg, SynthPlan& plan, KvBuilder& kvs) {
  const Common c = read_common(cfg, 1e-6, true);
  const std::uint64_t head_dim_swa = cfg.count("head_dim");
  const std::uint64_t head_dim_full = cfg.count("global_head_dim");
  const auto n_head_kv_full = cfg.opt_count({"num_global_key_value_heads"});
  const std::uint64_t n_kv_shared = cfg.size_or("num_kv_shared_layers", 0);
  const bool k_eq_v = cfg.flag_or("attention_k_eq_v", false);
  const bool double_wide = cfg.flag_or("use_double_wide_mlp", false);
  const bool moe = cfg.flag_or("enable_moe_block", false);
  const std::uint64_t n_ple = cfg.size_or("hidden_size_per_layer_input", 0);
  if (n_kv_shared >= c.n_layer)
    cfg.bad("num_kv_shared_layers", fmt::format("fewer than num_hidden_layers ({})", c.n_layer));
  std::vector<bool> sliding = cfg.sliding_layers(c.n_layer);
  if (sliding.empty()) fail("{}: required key 'layer_types' is missing", cfg.where());

  const RopeConfig rope = read_rope(cfg, 1'000'000.0, 10000.0);
  const bool any_full = std::find(sliding.begin(), sliding.end(), false) != sliding.end();
  if (any_full && rope.full.type != "proportional")
    fail(
        "{}: rope_parameters.full_attention.rope_type must be \"proportional\" for Gemma 4 "
        "(llama.cpp's converter asserts it), got \"{}\"",
        cfg.where(), rope.full.type);

  std::vector<Gemma4Layer> layers(c.n_layer);
  const std::uint64_t first_shared = c.n_layer - n_kv_shared;
  for (std::size_t i = 0; i < c.n_layer; ++i) {
    Gemma4Layer& l = layers[i];
    l.sliding = sliding[i];
    l.has_kv = i < first_shared;
    l.has_v = l.sliding || !k_eq_v;
    l.head_dim = l.sliding ? head_dim_swa : head_dim_full;
    l.n_head_kv = l.sliding ? c.n_head_kv : n_head_kv_full.value_or(c.n_head_kv);
    l.n_ff = double_wide && i >= first_shared ? 2 * c.n_ff : c.n_ff;
  }

  std::optional<std::uint64_t> n_expert, n_expert_used, n_ff_exp;
  if (moe) {
    n_expert = cfg.count("num_experts");
    n_expert_used = cfg.count("top_k_experts");
    n_ff_exp = cfg.count("moe_intermediate_size");
  }

  const std::string p = "gemma4.";
  add_text_params(kvs, p, c, rope);
  if (n_expert) kvs.set(p + "expert_count", u32(*n_expert));
  if (n_expert_used) kvs.set(p + "expert_used_count", u32(*n_expert_used));
  add_head_dims_and_file_type(kvs, p, c.head_dim);
  // Gemma3Model's overrides, then Gemma4Model's.
  kvs.set(p + "context_length", u32(c.n_ctx.value_or(131072)));
  if (auto cap = cfg.opt_number({"final_logit_softcapping"}); cap && *cap != 0.0)
    kvs.set(p + "final_logit_softcapping", f32(*cap));
  kvs.set(p + "attention.sliding_window", u32(cfg.count("sliding_window")));
  kvs.set(p + "attention.shared_kv_layers", u32(n_kv_shared));
  kvs.set(p + "embedding_length_per_layer_input", u32(n_ple));
  kvs.set(p + "attention.sliding_window_pattern", bool_array(sliding));
  kvs.set(p + "attention.key_length", u32(head_dim_full));
  kvs.set(p + "attention.value_length", u32(head_dim_full));
  kvs.set(p + "attention.key_length_swa", u32(head_dim_swa));
  kvs.set(p + "attention.value_length_swa", u32(head_dim_swa));
  if (n_ff_exp) kvs.set(p + "expert_feed_forward_length", u32(*n_ff_exp));
  if (double_wide) {
    std::vector<std::uint64_t> ff;
    for (const auto& l : layers) ff.push_back(l.n_ff);
    kvs.set(p + "feed_forward_length", i32_array(ff));
  }
  if (n_head_kv_full) {
    std::vector<std::uint64_t> kv;
    for (const auto& l : layers) kv.push_back(l.n_head_kv);
    kvs.set(p + "attention.head_count_kv", i32_array(kv));
  }
  const double partial_swa = rope.sliding ? rope.sliding->partial_rotary_factor : 1.0;
  kvs.set(p + "rope.dimension_count", u32(head_dim_full));
  kvs.set(p + "rope.dimension_count_swa",
          u32(static_cast<std::uint64_t>(static_cast<double>(head_dim_swa) * partial_swa)));

  auto& t = plan.tensors;
  if (any_full) {
    // Proportional RoPE on full layers: ggml's NeoX rope rotates the first dims, so the unrotated
    // frequency pairs get a huge divisor (1e30) that makes their rotation angle zero.
    const auto n_rot = static_cast<std::uint64_t>(static_cast<double>(head_dim_full) *
                                                  rope.full.partial_rotary_factor / 2);
    SynthTensor freqs;
    freqs.name = "rope_freqs.weight";
    freqs.ne = {head_dim_full / 2};
    freqs.role = SynthRole::kFloat32;
    freqs.fill = SynthFill::kExact;
    freqs.values.assign(head_dim_full / 2, 1e30f);
    std::fill_n(freqs.values.begin(), std::min(n_rot, head_dim_full / 2), 1.0f);
    t.push_back(std::move(freqs));
  }
  t.push_back(matrix("token_embd.weight", {c.n_embd, c.n_vocab}, SynthRole::kTokenEmbd));
  if (n_ple > 0) {
    const std::uint64_t n_vocab_ple = cfg.count_or("vocab_size_per_layer_input", c.n_vocab);
    t.push_back(matrix("per_layer_token_embd.weight", {n_ple * c.n_layer, n_vocab_ple},
                       SynthRole::kTokenEmbd));
    t.push_back(matrix("per_layer_model_proj.weight", {c.n_embd, n_ple * c.n_layer},
                       SynthRole::kKeepSource));
    t.push_back(vec_near_one("per_layer_proj_norm.weight", {n_ple}));
  }
  for (std::size_t i = 0; i < c.n_layer; ++i) {
    const Gemma4Layer& l = layers[i];
    t.push_back(vec_near_one(blk(i, "attn_norm.weight"), {c.n_embd}));
    t.push_back(matrix(blk(i, "attn_q.weight"), {c.n_embd, c.n_head * l.head_dim}));
    if (l.has_kv) {
      t.push_back(matrix(blk(i, "attn_k.weight"), {c.n_embd, l.n_head_kv * l.head_dim}));
      if (l.has_v)
        t.push_back(matrix(blk(i, "attn_v.weight"), {c.n_embd, l.n_head_kv * l.head_dim}));
    }
    t.push_back(vec_near_one(blk(i, "attn_q_norm.weight"), {l.head_dim}));
    if (l.has_kv) t.push_back(vec_near_one(blk(i, "attn_k_norm.weight"), {l.head_dim}));
    t.push_back(matrix(blk(i, "attn_output.weight"), {c.n_head * l.head_dim, c.n_embd}));
    t.push_back(vec_near_one(blk(i, "post_attention_norm.weight"), {c.n_embd}));
    t.push_back(vec_near_one(blk(i, "ffn_norm.weight"), {c.n_embd}));
    t.push_back(matrix(blk(i, "ffn_gate.weight"), {c.n_embd, l.n_ff}));
    t.push_back(matrix(blk(i, "ffn_up.weight"), {c.n_embd, l.n_ff}));
    t.push_back(matrix(blk(i, "ffn_down.weight"), {l.n_ff, c.n_embd}));
    t.push_back(vec_near_one(blk(i, "post_ffw_norm.weight"), {c.n_embd}));
    if (moe) {
      // The router is F32 in the converter's output and llama-quantize leaves it so.
      SynthTensor router =
          matrix(blk(i, "ffn_gate_inp.weight"), {c.n_embd, *n_expert}, SynthRole::kFloat32);
      t.push_back(std::move(router));
      t.push_back(vec_near_one(blk(i, "ffn_gate_inp.scale"), {c.n_embd}));
      t.push_back(matrix(blk(i, "ffn_gate_up_exps.weight"), {c.n_embd, 2 * *n_ff_exp, *n_expert}));
      t.push_back(matrix(blk(i, "ffn_down_exps.weight"), {*n_ff_exp, c.n_embd, *n_expert}));
      t.push_back(vec_near_one(blk(i, "ffn_down_exps.scale"), {*n_expert}));
      t.push_back(vec_near_one(blk(i, "pre_ffw_norm_2.weight"), {c.n_embd}));
      t.push_back(vec_near_one(blk(i, "post_ffw_norm_1.weight"), {c.n_embd}));
      t.push_back(vec_near_one(blk(i, "post_ffw_norm_2.weight"), {c.n_embd}));
    }
    if (n_ple > 0) {
      t.push_back(matrix(blk(i, "inp_gate.weight"), {c.n_embd, n_ple}));
      t.push_back(matrix(blk(i, "proj.weight"), {n_ple, c.n_embd}));
      t.push_back(vec_near_one(blk(i, "post_norm.weight"), {c.n_embd}));
    }
    t.push_back(vec_near_one(blk(i, "layer_output_scale.weight"), {1}));
  }
  t.push_back(vec_near_one("output_norm.weight", {c.n_embd}));
  if (!c.tied) t.push_back(matrix("output.weight", {c.n_embd, c.n_vocab}, SynthRole::kOutput));
}

}  // namespace
}  // namespace detail

SynthPlan plan_synth_model(SynthArch arch, const SynthConfig& config, const SynthTypeOptions& types,
                           const std::string& model_name) {
  using namespace detail;
  const ConfigReader cfg(config);
  SynthPlan plan;
  plan.arch = arch;
  KvBuilder kvs;
  add_general(kvs, arch, model_name);
  switch (arch) {
    case SynthArch::kLlama:
      plan_llama(cfg, plan, kvs);
      break;
    case SynthArch::kGemma3:
      plan_gemma3(cfg, plan, kvs);
      break;
    case SynthArch::kGemma4:
      plan_gemma4(cfg, plan, kvs);
      break;
  }
  const bool tied = std::none_of(plan.tensors.begin(), plan.tensors.end(),
                                 [](const SynthTensor& t) { return t.name == "output.weight"; });
  assign_types(plan.tensors, types, tied, plan.notes);
  kvs.set("general.size_label", str(size_label(plan.tensors)));
  kvs.set("general.file_type", u32(types.file_type.value_or(file_type_for(types.type))));
  kvs.set("general.quantization_version", u32(2));
  add_vocab(kvs, arch, cfg, cfg.count("vocab_size"));
  plan.kvs = kvs.take();
  return plan;
}

}  // namespace qforge::synth
