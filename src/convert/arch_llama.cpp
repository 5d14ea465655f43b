// LlamaForCausalLM -> GGUF "llama". Facts (keys, names, the Q/K row permutation that turns HF's
// half-split rotary layout into llama.cpp's interleaved pairs, the llama3 rope_freqs table) follow
// llama.cpp's converter (conversion/llama.py, gguf-py/gguf/tensor_mapping.py).
#include <cmath>
#include <numbers>

#include <fmt/format.h>

#include "convert/arch_common.h"
#include "core/error.h"

namespace qforge {

using namespace convert_detail;

namespace {

// rope_type "llama3": per-frequency scaling factors stored as the rope_freqs tensor.
std::vector<float> llama3_rope_factors(const nlohmann::json& rope, std::uint64_t dim) {
  const auto num = [&](const char* key, double fallback) {
    const auto it = rope.find(key);
    return it != rope.end() && it->is_number() ? it->get<double>() : fallback;
  };
  const float base = static_cast<float>(num("rope_theta", 10000.0));
  const float factor = static_cast<float>(num("factor", 8.0));
  const float low = static_cast<float>(num("low_freq_factor", 1.0));
  const float high = static_cast<float>(num("high_freq_factor", 4.0));
  const float old_ctx = static_cast<float>(num("original_max_position_embeddings", 8192));
  const float low_wavelen = old_ctx / low;
  const float high_wavelen = old_ctx / high;
  std::vector<float> out;
  for (std::uint64_t i = 0; i < dim; i += 2) {
    const float freq = 1.0f / std::pow(base, static_cast<float>(i) / static_cast<float>(dim));
    const float wavelen = 2.0f * std::numbers::pi_v<float> / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(factor);
    } else {
      const float smooth = (old_ctx / wavelen - low) / (high - low);
      out.push_back(1.0f / ((1.0f - smooth) / factor + smooth));
    }
  }
  return out;
}

}  // namespace

ArchPlan plan_llama(const HfCheckpoint& checkpoint, const PlanInputs& /*inputs*/) {
  const Hparams hp(checkpoint);
  ArchPlan plan;
  plan.arch = "llama";
  plan.hf_arch = checkpoint.architecture();
  plan.n_layers = static_cast<int>(hp.integer("num_hidden_layers"));
  if (plan.n_layers <= 0) fail("{}: num_hidden_layers must be positive", hp.where());

  const std::uint64_t n_embd = static_cast<std::uint64_t>(hp.integer("hidden_size"));
  const std::uint64_t n_head = static_cast<std::uint64_t>(hp.integer("num_attention_heads"));
  const std::uint64_t n_kv = static_cast<std::uint64_t>(
      hp.integer_or("num_key_value_heads", static_cast<std::int64_t>(n_head)));
  const std::uint64_t n_ff = static_cast<std::uint64_t>(hp.integer("intermediate_size"));
  const std::uint64_t n_vocab = static_cast<std::uint64_t>(hp.integer("vocab_size"));
  if (n_head == 0 || n_kv == 0) fail("{}: attention head counts must be positive", hp.where());
  const std::uint64_t head_dim =
      hp.has("head_dim") ? static_cast<std::uint64_t>(hp.integer("head_dim")) : n_embd / n_head;
  if (head_dim == 0 || head_dim % 2 != 0)
    fail("{}: head_dim {} must be positive and even (rotary pairs)", hp.where(), head_dim);

  // ---- metadata (TextModel keys, then Llama's)
  add_general_header(plan.kvs, plan.arch, checkpoint);
  add_text_model_params(plan.kvs, plan.arch, hp, plan.n_layers);
  plan.kvs.set("llama.vocab_size", u32(n_vocab));
  plan.kvs.set("llama.rope.dimension_count", u32(head_dim));

  // ---- tensors
  const std::map<std::string, std::string> globals = {
      {"embed_tokens.weight", "token_embd.weight"},
      {"norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  std::map<std::string, std::string> layer = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
  };
  for (const auto& [hf, gg] : {std::pair{"q_proj", "attn_q"}, std::pair{"k_proj", "attn_k"},
                               std::pair{"v_proj", "attn_v"}, std::pair{"o_proj", "attn_output"}})
    for (const char* kind : {".weight", ".bias"})
      layer[fmt::format("self_attn.{}{}", hf, kind)] = fmt::format("{}{}", gg, kind);
  for (const auto& [hf, gg] : {std::pair{"gate_proj", "ffn_gate"}, std::pair{"up_proj", "ffn_up"},
                               std::pair{"down_proj", "ffn_down"}})
    for (const char* kind : {".weight", ".bias"})
      layer[fmt::format("mlp.{}{}", hf, kind)] = fmt::format("{}{}", gg, kind);
  map_tensors(checkpoint, globals, layer, {"rotary_emb.inv_freq"}, plan);

  for (auto& t : plan.tensors) {
    if (t.name.find(".attn_q.") != std::string::npos)
      t.source.permute_heads = static_cast<std::uint32_t>(n_head);
    if (t.name.find(".attn_k.") != std::string::npos)
      t.source.permute_heads = static_cast<std::uint32_t>(n_kv);
  }

  // llama3 RoPE frequency factors come first, as llama.cpp writes generated tensors first.
  const nlohmann::json& rope = hp.rope_full();
  if (const auto type = rope.find("rope_type"); type != rope.end() && type->is_string()) {
    std::string t = type->get<std::string>();
    for (char& c : t) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (t == "llama3") {
      TensorPlan freqs;
      freqs.name = "rope_freqs.weight";
      freqs.source.generated = llama3_rope_factors(rope, head_dim);
      freqs.ne = {freqs.source.generated.size()};
      freqs.role = TensorRole::kFloat32;
      freqs.source_name = "(generated: llama3 rope factors)";
      plan.tensors.insert(plan.tensors.begin(), std::move(freqs));
    }
  }

  // ---- checks against the config
  const std::string heads = fmt::format("num_attention_heads {} x head_dim {}", n_head, head_dim);
  const std::string kv_heads = fmt::format("num_key_value_heads {} x head_dim {}", n_kv, head_dim);
  require_tensor(plan, "token_embd.weight", "model.embed_tokens.weight");
  require_tensor(plan, "output_norm.weight", "model.norm.weight");
  expect_shape(plan, "token_embd.weight", {n_embd, n_vocab}, "vocab_size x hidden_size");
  expect_shape(plan, "output.weight", {n_embd, n_vocab}, "vocab_size x hidden_size");
  expect_shape(plan, "output_norm.weight", {n_embd}, "hidden_size");
  for (int il = 0; il < plan.n_layers; ++il) {
    const auto n = [&](const char* s) { return fmt::format("blk.{}.{}", il, s); };
    for (const char* s : {"attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                          "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight",
                          "ffn_up.weight", "ffn_down.weight"})
      require_tensor(plan, n(s), fmt::format("layer {} of {}", il, plan.n_layers));
    expect_shape(plan, n("attn_q.weight"), {n_embd, n_head * head_dim}, heads);
    expect_shape(plan, n("attn_k.weight"), {n_embd, n_kv * head_dim}, kv_heads);
    expect_shape(plan, n("attn_v.weight"), {n_embd, n_kv * head_dim}, kv_heads);
    expect_shape(plan, n("attn_output.weight"), {n_head * head_dim, n_embd}, heads);
    expect_shape(plan, n("ffn_gate.weight"), {n_embd, n_ff}, "intermediate_size");
    expect_shape(plan, n("ffn_up.weight"), {n_embd, n_ff}, "intermediate_size");
    expect_shape(plan, n("ffn_down.weight"), {n_ff, n_embd}, "intermediate_size");
    expect_shape(plan, n("attn_norm.weight"), {n_embd}, "hidden_size");
    expect_shape(plan, n("ffn_norm.weight"), {n_embd}, "hidden_size");
  }
  plan.tied_embeddings = find_plan(plan, "output.weight") == nullptr;
  plan.kvs.set("general.size_label", str(size_label(plan.tensors)));
  return plan;
}

}  // namespace qforge
