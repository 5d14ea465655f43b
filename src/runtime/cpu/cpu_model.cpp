#include "runtime/cpu/cpu_model.h"

#include <algorithm>

#include "core/error.h"
#include "quant/blocks.h"
#include "runtime/cpu/attention.h"
#include "runtime/cpu/kernels.h"
#include "runtime/cpu/kv_cache.h"

namespace qforge::cpu {
namespace {

void add_in_place(std::span<float> x, std::span<const float> y) {
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
}

// Rotates every head of `rows` ([n_tokens x n_heads*head_dim]) with the per-token tables.
void rope_rows(std::span<float> rows, std::size_t n_tokens, int head_dim, int n_rot,
               RopeStyle style, std::span<const float> cos, std::span<const float> sin) {
  const auto dim = static_cast<std::size_t>(head_dim);
  const auto half = static_cast<std::size_t>(n_rot / 2);
  const std::size_t per_token = rows.size() / n_tokens;
  for (std::size_t t = 0; t < n_tokens; ++t) {
    for (std::size_t off = 0; off < per_token; off += dim) {
      apply_rope(rows.subspan(t * per_token + off, dim), n_rot, style, cos.subspan(t * half, half),
                 sin.subspan(t * half, half));
    }
  }
}

}  // namespace

CpuModel::CpuModel(std::unique_ptr<GgufReader> gguf, ModelConfig config)
    : gguf_(std::move(gguf)), config_(std::move(config)), weights_(bind_weights(*gguf_, config_)) {}

std::unique_ptr<KvCache> CpuModel::new_cache(int n_ctx, KvType type) const {
  return std::make_unique<CpuKvCache>(config_, n_ctx, type);
}

std::vector<float> CpuModel::forward(std::span<const std::int32_t> tokens, int pos0,
                                     KvCache& cache_base, const ForwardOptions& options) {
  auto* cache = dynamic_cast<CpuKvCache*>(&cache_base);
  if (cache == nullptr) fail("forward: the KV cache was not created by the CPU backend");
  const ModelConfig& c = config_;
  const std::size_t n = tokens.size();
  if (n == 0) fail("forward: no tokens to process");
  if (pos0 < 0 || pos0 > cache->n_filled()) {
    fail("forward: start position {} is not in [0, {}] (positions cached so far)", pos0,
         cache->n_filled());
  }
  if (static_cast<std::size_t>(pos0) + n > static_cast<std::size_t>(cache->n_ctx())) {
    fail("context overflow: positions {}..{} do not fit a context of {} tokens (use a larger --ctx)",
         pos0, static_cast<std::size_t>(pos0) + n - 1, cache->n_ctx());
  }
  for (std::size_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab) {
      fail("forward: token id {} at index {} is outside the vocabulary [0, {})", tokens[t], t,
           c.n_vocab);
    }
  }
  cache->set_filled(pos0);  // entries past pos0 are about to be overwritten

  const auto embd = static_cast<std::size_t>(c.n_embd);
  const auto q_dim = static_cast<std::size_t>(c.n_head * c.head_dim_k);
  const auto k_dim = static_cast<std::size_t>(c.n_head_kv * c.head_dim_k);
  const auto v_dim = static_cast<std::size_t>(c.n_head_kv * c.head_dim_v);
  const auto o_dim = static_cast<std::size_t>(c.n_head * c.head_dim_v);
  const auto ff = static_cast<std::size_t>(c.n_ff);
  const auto half_rot = static_cast<std::size_t>(c.n_rot / 2);

  // Residual stream: scaled token embeddings.
  std::vector<float> x(n * embd);
  for (std::size_t t = 0; t < n; ++t) {
    const std::span<float> row = std::span(x).subspan(t * embd, embd);
    dequantize_row(weights_.token_embd.type,
                   weights_.token_embd.row(static_cast<std::size_t>(tokens[t])), row);
    if (c.embed_scale != 1.0f) {
      for (float& v : row) v *= c.embed_scale;
    }
  }

  // Rotary tables for the positions of this batch: global layers and sliding layers may differ.
  std::vector<float> cos_global(n * half_rot), sin_global(n * half_rot);
  std::vector<float> cos_local(n * half_rot), sin_local(n * half_rot);
  rope_tables(pos0, n, c.n_rot, c.rope_global, weights_.rope_freqs, cos_global, sin_global);
  rope_tables(pos0, n, c.n_rot, c.rope_local, weights_.rope_freqs, cos_local, sin_local);

  std::vector<float> h(n * embd), q(n * q_dim), k(n * k_dim), v(n * v_dim), att(n * o_dim);
  std::vector<float> o(n * embd), gate(n * ff), up(n * ff);

  for (int il = 0; il < c.n_layer; ++il) {
    const LayerWeights& lw = weights_.layers[static_cast<std::size_t>(il)];
    const bool sliding = c.is_sliding(il);

    // Attention block.
    h = x;
    rms_norm_rows(h, lw.attn_norm, c.norm_eps);
    matmul(lw.wq, h, n, q);
    matmul(lw.wk, h, n, k);
    matmul(lw.wv, h, n, v);
    if (c.qk_norm) {
      rms_norm_rows(q, lw.q_norm, c.norm_eps);  // per head: rows of head_dim_k
      rms_norm_rows(k, lw.k_norm, c.norm_eps);
    }
    const std::span<const float> rc = sliding ? cos_local : cos_global;
    const std::span<const float> rs = sliding ? sin_local : sin_global;
    rope_rows(q, n, c.head_dim_k, c.n_rot, c.rope_style, rc, rs);
    rope_rows(k, n, c.head_dim_k, c.n_rot, c.rope_style, rc, rs);
    for (std::size_t t = 0; t < n; ++t) {
      cache->store(il, pos0 + static_cast<int>(t), std::span(k).subspan(t * k_dim, k_dim),
                   std::span(v).subspan(t * v_dim, v_dim));
    }
    const AttentionParams ap{c.n_head,     c.n_head_kv,    c.head_dim_k,
                             c.head_dim_v, c.attn_scale,   c.attn_softcap,
                             sliding ? c.sliding_window : 0};
    attention(*cache, il, pos0, n, q, ap, att);
    matmul(lw.wo, att, n, o);
    if (c.post_norms) rms_norm_rows(o, lw.post_attn_norm, c.norm_eps);
    add_in_place(x, o);

    // Feed-forward block.
    h = x;
    rms_norm_rows(h, lw.ffn_norm, c.norm_eps);
    matmul(lw.ffn_gate, h, n, gate);
    matmul(lw.ffn_up, h, n, up);
    glu(c.ffn_act, gate, up);
    matmul(lw.ffn_down, gate, n, o);
    if (c.post_norms) rms_norm_rows(o, lw.post_ffn_norm, c.norm_eps);
    add_in_place(x, o);
  }
  cache->set_filled(pos0 + static_cast<int>(n));

  // Output head on the requested rows only.
  const std::size_t n_out = options.all_logits ? n : 1;
  std::vector<float> final_rows(x.end() - static_cast<std::ptrdiff_t>(n_out * embd), x.end());
  rms_norm_rows(final_rows, weights_.output_norm, c.norm_eps);
  std::vector<float> logits(n_out * static_cast<std::size_t>(c.n_vocab));
  matmul(weights_.output, final_rows, n_out, logits);
  softcap(logits, c.final_softcap);
  return logits;
}

}  // namespace qforge::cpu
