// Gemma4ForCausalLM and the text part of Gemma4ForConditionalGeneration -> GGUF "gemma4".
// Facts from llama.cpp's converter (conversion/gemma.py, Gemma4Model) and its loader
// (src/models/gemma4.cpp): norms are stored as is (no +1, unlike Gemma 3); full-attention layers
// may share K and V (no v_proj); the last num_kv_shared_layers layers reuse earlier KV (no k/v
// weights); MoE experts stay fused as ffn_gate_up_exps / ffn_down_exps; the router projection and
// its scales are F32; proportional RoPE is expressed as a rope_freqs table (1 for rotated pairs,
// 1e30 for the unrotated ones) used by the full-attention layers.
#include <fmt/format.h>

#include "convert/arch_common.h"
#include "core/error.h"

namespace qforge {

using namespace convert_detail;

namespace {

std::map<std::string, std::string> gemma4_layer_map() {
  auto m = gemma3_layer_map();
  m.insert({
      {"pre_feedforward_layernorm_2.weight", "pre_ffw_norm_2.weight"},
      {"post_feedforward_layernorm_1.weight", "post_ffw_norm_1.weight"},
      {"post_feedforward_layernorm_2.weight", "post_ffw_norm_2.weight"},
      {"experts.gate_up_proj", "ffn_gate_up_exps.weight"},
      {"experts.down_proj", "ffn_down_exps.weight"},
      {"router.proj.weight", "ffn_gate_inp.weight"},
      {"router.scale", "ffn_gate_inp.scale"},
      {"router.per_expert_scale", "ffn_down_exps.scale"},
      {"layer_scalar", "layer_output_scale.weight"},
      {"per_layer_input_gate.weight", "inp_gate.weight"},
      {"per_layer_projection.weight", "proj.weight"},
      {"post_per_layer_input_norm.weight", "post_norm.weight"},
  });
  return m;
}

std::map<std::string, std::string> gemma4_global_map() {
  auto m = gemma3_global_map();
  m.insert({
      {"embed_tokens_per_layer.weight", "per_layer_token_embd.weight"},
      {"per_layer_model_projection.weight", "per_layer_model_proj.weight"},
      {"per_layer_projection_norm.weight", "per_layer_proj_norm.weight"},
  });
  return m;
}

}  // namespace

ArchPlan plan_gemma4(const HfCheckpoint& checkpoint, const PlanInputs& inputs) {
  const Hparams hp(checkpoint);
  ArchPlan plan;
  plan.arch = "gemma4";
  plan.hf_arch = checkpoint.architecture();
  plan.n_layers = static_cast<int>(hp.integer("num_hidden_layers"));
  const int n_layers = plan.n_layers;
  if (n_layers <= 0) fail("{}: num_hidden_layers must be positive", hp.where());

  // ---- per-layer structure
  const auto* layer_types = hp.find({"layer_types"});
  if (layer_types == nullptr || !layer_types->is_array() ||
      layer_types->size() != static_cast<std::size_t>(n_layers))
    fail("{}: layer_types must list one attention type per layer ({} layers)", hp.where(),
         n_layers);
  std::vector<bool> swa(static_cast<std::size_t>(n_layers));
  for (int il = 0; il < n_layers; ++il) {
    const auto& v = (*layer_types)[static_cast<std::size_t>(il)];
    if (!v.is_string() || (v != "sliding_attention" && v != "full_attention"))
      fail("{}: layer_types[{}] is {}, expected \"sliding_attention\" or \"full_attention\"",
           hp.where(), il, v.dump());
    swa[static_cast<std::size_t>(il)] = v == "sliding_attention";
  }
  const auto n_embd = static_cast<std::uint64_t>(hp.integer("hidden_size"));
  const auto n_head = static_cast<std::uint64_t>(hp.integer_or("num_attention_heads", 8));
  const auto head_dim_swa = static_cast<std::uint64_t>(hp.integer("head_dim"));
  const auto head_dim_full = static_cast<std::uint64_t>(hp.integer("global_head_dim"));
  const auto n_kv_swa = static_cast<std::uint64_t>(hp.integer_or("num_key_value_heads", 4));
  const auto n_kv_full_opt = hp.opt_integer({"num_global_key_value_heads"});
  const std::uint64_t n_kv_full =
      n_kv_full_opt ? static_cast<std::uint64_t>(*n_kv_full_opt) : n_kv_swa;
  const auto n_shared = hp.integer("num_kv_shared_layers");
  if (n_shared < 0 || n_shared > n_layers)
    fail("{}: num_kv_shared_layers {} is outside [0, {}]", hp.where(), n_shared, n_layers);
  const int first_shared = n_layers - static_cast<int>(n_shared);
  const auto n_ff = static_cast<std::uint64_t>(hp.integer("intermediate_size"));
  const bool double_wide = hp.find({"use_double_wide_mlp"}) &&
                           hp.find({"use_double_wide_mlp"})->is_boolean() &&
                           hp.find({"use_double_wide_mlp"})->get<bool>();
  const auto n_ff_of = [&](int il) { return double_wide && il >= first_shared ? 2 * n_ff : n_ff; };

  // ---- metadata
  add_general_header(plan.kvs, plan.arch, checkpoint);
  add_gemma3_params(plan.kvs, plan.arch, hp, n_layers);
  const std::string p = "gemma4.";
  plan.kvs.set(p + "attention.shared_kv_layers", u32(static_cast<std::uint64_t>(n_shared)));
  plan.kvs.set(
      p + "embedding_length_per_layer_input",
      u32(static_cast<std::uint64_t>(hp.opt_integer({"hidden_size_per_layer_input"}).value_or(0))));
  plan.kvs.set(p + "attention.sliding_window_pattern", bool_array(swa));
  plan.kvs.set(p + "attention.key_length", u32(head_dim_full));
  plan.kvs.set(p + "attention.value_length", u32(head_dim_full));
  plan.kvs.set(p + "attention.key_length_swa", u32(head_dim_swa));
  plan.kvs.set(p + "attention.value_length_swa", u32(head_dim_swa));
  if (auto v = hp.opt_integer({"expert_intermediate_size", "moe_intermediate_size"}))
    plan.kvs.set(p + "expert_feed_forward_length", u32(static_cast<std::uint64_t>(*v)));
  if (double_wide) {
    std::vector<std::int64_t> ff;
    for (int il = 0; il < n_layers; ++il) ff.push_back(static_cast<std::int64_t>(n_ff_of(il)));
    plan.kvs.set(p + "feed_forward_length", i32_array(ff));
  }
  if (n_kv_full_opt && hp.has("num_key_value_heads")) {
    std::vector<std::int64_t> kv;
    for (bool s : swa) kv.push_back(static_cast<std::int64_t>(s ? n_kv_swa : n_kv_full));
    plan.kvs.set(p + "attention.head_count_kv", i32_array(kv));
  }
  const auto prf_it = hp.rope().find("partial_rotary_factor");
  const double prf_swa =
      prf_it != hp.rope().end() && prf_it->is_number() ? prf_it->get<double>() : 1.0;
  plan.kvs.set(p + "rope.dimension_count", u32(head_dim_full));
  plan.kvs.set(p + "rope.dimension_count_swa",
               u32(static_cast<std::uint64_t>(static_cast<double>(head_dim_swa) * prf_swa)));

  // ---- tensors
  map_tensors(checkpoint, gemma4_global_map(), gemma4_layer_map(), {"rotary_emb.inv_freq"}, plan);

  const nlohmann::json& full = hp.rope_full();
  const auto type = full.find("rope_type");
  if (type != full.end() && type->is_string() && *type == "proportional") {
    const auto f = full.find("partial_rotary_factor");
    const double prf_full = f != full.end() && f->is_number() ? f->get<double>() : 1.0;
    const auto n_rot = static_cast<std::size_t>(static_cast<double>(head_dim_full) * prf_full / 2);
    const std::size_t n_pairs = static_cast<std::size_t>(head_dim_full / 2);
    if (n_rot > n_pairs) fail("{}: partial_rotary_factor {} exceeds 1", hp.where(), prf_full);
    TensorPlan freqs;
    freqs.name = "rope_freqs.weight";
    freqs.source.generated.assign(n_pairs, 1e30f);
    std::fill_n(freqs.source.generated.begin(), n_rot, 1.0f);
    freqs.ne = {n_pairs};
    freqs.role = TensorRole::kFloat32;
    freqs.source_name = "(generated: proportional RoPE factors)";
    plan.tensors.insert(plan.tensors.begin(), std::move(freqs));
  }

  // ---- checks against the config
  require_tensor(plan, "token_embd.weight", "model.embed_tokens.weight");
  require_tensor(plan, "output_norm.weight", "model.norm.weight");
  if (hp.has("vocab_size"))
    expect_shape(plan, "token_embd.weight",
                 {n_embd, static_cast<std::uint64_t>(hp.integer("vocab_size"))},
                 "vocab_size x hidden_size");
  const std::optional<std::int64_t> n_expert = hp.opt_integer({"num_experts"});
  const std::optional<std::int64_t> moe_ff =
      hp.opt_integer({"expert_intermediate_size", "moe_intermediate_size"});
  for (int il = 0; il < n_layers; ++il) {
    const bool s = swa[static_cast<std::size_t>(il)];
    const std::uint64_t hd = s ? head_dim_swa : head_dim_full;
    const std::uint64_t kvh = s ? n_kv_swa : n_kv_full;
    const auto n = [&](const char* suffix) { return fmt::format("blk.{}.{}", il, suffix); };
    const std::string heads = fmt::format("num_attention_heads {} x {} head dim {}", n_head,
                                          s ? "sliding" : "global", hd);
    const std::string kv_heads = fmt::format("{} KV heads x head dim {}", kvh, hd);
    for (const char* suffix : {"attn_norm.weight", "attn_q.weight", "attn_output.weight",
                               "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"})
      require_tensor(plan, n(suffix), fmt::format("layer {} of {}", il, n_layers));
    if (il < first_shared)
      require_tensor(plan, n("attn_k.weight"), fmt::format("layer {} computes its own KV", il));
    expect_shape(plan, n("attn_q.weight"), {n_embd, n_head * hd}, heads);
    expect_shape(plan, n("attn_k.weight"), {n_embd, kvh * hd}, kv_heads);
    expect_shape(plan, n("attn_v.weight"), {n_embd, kvh * hd}, kv_heads);
    expect_shape(plan, n("attn_output.weight"), {n_head * hd, n_embd}, heads);
    expect_shape(plan, n("attn_q_norm.weight"), {hd}, "head dim");
    expect_shape(plan, n("attn_k_norm.weight"), {hd}, "head dim");
    const std::uint64_t ff = n_ff_of(il);
    expect_shape(plan, n("ffn_gate.weight"), {n_embd, ff}, "intermediate_size");
    expect_shape(plan, n("ffn_up.weight"), {n_embd, ff}, "intermediate_size");
    expect_shape(plan, n("ffn_down.weight"), {ff, n_embd}, "intermediate_size");
    if (n_expert && moe_ff) {
      const auto e = static_cast<std::uint64_t>(*n_expert);
      const auto f = static_cast<std::uint64_t>(*moe_ff);
      expect_shape(plan, n("ffn_gate_up_exps.weight"), {n_embd, 2 * f, e},
                   "num_experts x 2*moe_intermediate_size x hidden_size");
      expect_shape(plan, n("ffn_down_exps.weight"), {f, n_embd, e},
                   "num_experts x hidden_size x moe_intermediate_size");
      expect_shape(plan, n("ffn_gate_inp.weight"), {n_embd, e}, "num_experts x hidden_size");
    }
  }
  truncate_vocab_rows(plan, inputs);
  plan.tied_embeddings = find_plan(plan, "output.weight") == nullptr;
  plan.kvs.set("general.size_label", str(size_label(plan.tensors)));
  return plan;
}

}  // namespace qforge
