// Gemma3ForCausalLM and the text part of Gemma3ForConditionalGeneration -> GGUF "gemma3".
// Facts from llama.cpp's converter (conversion/gemma.py): Gemma 3's RMSNorm computes
// x * (1 + w), and llama.cpp stores 1 + w (in F32) for every "*norm.weight"; token-embedding rows
// beyond the tokenizer's vocabulary are dropped; no rope.dimension_count or vocab_size key.
#include <fmt/format.h>

#include <cmath>

#include "convert/arch_common.h"
#include "core/error.h"

namespace qforge {

using namespace convert_detail;

namespace convert_detail {

void add_gemma3_params(KvList& kvs, const std::string& arch, const Hparams& hp, int block_count) {
  add_text_model_params(kvs, arch, hp, block_count);
  const std::string p = arch + ".";
  kvs.set(p + "context_length",
          u32(static_cast<std::uint64_t>(hp.integer_or("max_position_embeddings", 131072))));
  kvs.set(p + "attention.head_count",
          u32(static_cast<std::uint64_t>(hp.integer_or("num_attention_heads", 8))));
  kvs.set(p + "attention.layer_norm_rms_epsilon", f32(hp.number_or("rms_norm_eps", 1e-6)));
  const auto head_dim = static_cast<std::uint64_t>(hp.integer_or("head_dim", 256));
  kvs.set(p + "attention.key_length", u32(head_dim));
  kvs.set(p + "attention.value_length", u32(head_dim));
  const nlohmann::json& rope = hp.rope_full();
  const auto theta = rope.find("rope_theta");
  kvs.set(p + "rope.freq_base",
          f32(theta != rope.end() && theta->is_number() ? theta->get<double>() : 1e6));
  if (hp.has("attn_logit_softcapping"))
    fail("{}: attn_logit_softcapping is set, which Gemma 3 does not use", hp.where());
  if (auto cap = hp.opt_number({"final_logit_softcapping"}); cap && *cap != 0.0)
    kvs.set(p + "final_logit_softcapping", f32(*cap));
  const auto pattern = hp.opt_integer({"sliding_window_pattern"});
  if (!pattern || *pattern != 1)
    kvs.set(p + "attention.sliding_window",
            u32(static_cast<std::uint64_t>(hp.integer("sliding_window"))));
  kvs.set(p + "attention.head_count_kv",
          u32(static_cast<std::uint64_t>(hp.integer_or("num_key_value_heads", 4))));
  // llama.cpp's converter drops query_pre_attn_scalar and its runtime assumes head_dim (or
  // hidden / heads for the 62-layer 27B). Where the checkpoint says otherwise, record the exact
  // attention scale so that runtimes reading the key (qforge does) compute the model as trained.
  if (auto qpas = hp.opt_number({"query_pre_attn_scalar"})) {
    const double n_head = static_cast<double>(hp.integer_or("num_attention_heads", 8));
    const double assumed = block_count == 62
                               ? static_cast<double>(hp.integer("hidden_size")) / n_head
                               : static_cast<double>(head_dim);
    if (*qpas <= 0) fail("{}: query_pre_attn_scalar must be positive", hp.where());
    if (*qpas != assumed) kvs.set(p + "attention.scale", f32(1.0 / std::sqrt(*qpas)));
  }
}

std::map<std::string, std::string> gemma3_global_map() {
  return {
      {"embed_tokens.weight", "token_embd.weight"},
      {"norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
}

std::map<std::string, std::string> gemma3_layer_map() {
  return {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"post_attention_layernorm.weight", "post_attention_norm.weight"},
      {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
      {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
}

void truncate_vocab_rows(ArchPlan& plan, const PlanInputs& inputs) {
  if (!inputs.n_vocab_real) return;
  if (TensorPlan* embd = find_plan(plan, "token_embd.weight"); embd && embd->ne.size() == 2)
    embd->ne[1] = std::min<std::uint64_t>(embd->ne[1], *inputs.n_vocab_real);
}

}  // namespace convert_detail

ArchPlan plan_gemma3(const HfCheckpoint& checkpoint, const PlanInputs& inputs) {
  const Hparams hp(checkpoint);
  ArchPlan plan;
  plan.arch = "gemma3";
  plan.hf_arch = checkpoint.architecture();
  plan.n_layers = static_cast<int>(hp.integer("num_hidden_layers"));
  if (plan.n_layers <= 0) fail("{}: num_hidden_layers must be positive", hp.where());
  add_general_header(plan.kvs, plan.arch, checkpoint);
  add_gemma3_params(plan.kvs, plan.arch, hp, plan.n_layers);

  map_tensors(checkpoint, gemma3_global_map(), gemma3_layer_map(), {"rotary_emb.inv_freq"}, plan);
  for (auto& t : plan.tensors)
    if (t.source_name.ends_with("norm.weight")) t.source.add = 1.0f;

  const auto n_embd = static_cast<std::uint64_t>(hp.integer("hidden_size"));
  const auto n_head = static_cast<std::uint64_t>(hp.integer_or("num_attention_heads", 8));
  const auto n_kv = static_cast<std::uint64_t>(hp.integer_or("num_key_value_heads", 4));
  const auto head_dim = static_cast<std::uint64_t>(hp.integer_or("head_dim", 256));
  const auto n_ff = static_cast<std::uint64_t>(hp.integer("intermediate_size"));
  require_tensor(plan, "token_embd.weight", "model.embed_tokens.weight");
  require_tensor(plan, "output_norm.weight", "model.norm.weight");
  if (hp.has("vocab_size"))
    expect_shape(plan, "token_embd.weight",
                 {n_embd, static_cast<std::uint64_t>(hp.integer("vocab_size"))},
                 "vocab_size x hidden_size");
  const std::string heads = fmt::format("num_attention_heads {} x head_dim {}", n_head, head_dim);
  const std::string kv_heads = fmt::format("num_key_value_heads {} x head_dim {}", n_kv, head_dim);
  for (int il = 0; il < plan.n_layers; ++il) {
    const auto n = [&](const char* s) { return fmt::format("blk.{}.{}", il, s); };
    for (const char* s :
         {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
          "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"})
      require_tensor(plan, n(s), fmt::format("layer {} of {}", il, plan.n_layers));
    expect_shape(plan, n("attn_q.weight"), {n_embd, n_head * head_dim}, heads);
    expect_shape(plan, n("attn_k.weight"), {n_embd, n_kv * head_dim}, kv_heads);
    expect_shape(plan, n("attn_v.weight"), {n_embd, n_kv * head_dim}, kv_heads);
    expect_shape(plan, n("attn_output.weight"), {n_head * head_dim, n_embd}, heads);
    expect_shape(plan, n("attn_q_norm.weight"), {head_dim}, "head_dim");
    expect_shape(plan, n("attn_k_norm.weight"), {head_dim}, "head_dim");
    expect_shape(plan, n("ffn_gate.weight"), {n_embd, n_ff}, "intermediate_size");
    expect_shape(plan, n("ffn_up.weight"), {n_embd, n_ff}, "intermediate_size");
    expect_shape(plan, n("ffn_down.weight"), {n_ff, n_embd}, "intermediate_size");
  }
  truncate_vocab_rows(plan, inputs);
  plan.tied_embeddings = find_plan(plan, "output.weight") == nullptr;
  plan.kvs.set("general.size_label", str(size_label(plan.tensors)));
  return plan;
}

}  // namespace qforge
