#include "runtime/cpu/cpu_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

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

void scale_in_place(std::span<float> x, float s) {
  for (float& v : x) v *= s;
}

// cos/sin of every (position, rotated pair) for one kind of layer.
struct RopeTable {
  int n_rot = 0;
  std::vector<float> cos, sin;  // [n_tokens x n_rot/2]

  RopeTable(int pos0, std::size_t n, int rot, const RopeParams& params,
            std::span<const float> freq_factors)
      : n_rot(rot), cos(n * static_cast<std::size_t>(rot / 2)), sin(cos.size()) {
    rope_tables(pos0, n, n_rot, params, freq_factors, cos, sin);
  }
};

// Rotates every head of `rows` ([n_tokens x n_heads*head_dim]) with the per-token tables.
void rope_rows(std::span<float> rows, std::size_t n_tokens, int head_dim, RopeStyle style,
               const RopeTable& table) {
  const auto dim = static_cast<std::size_t>(head_dim);
  const auto half = static_cast<std::size_t>(table.n_rot / 2);
  const std::size_t per_token = rows.size() / n_tokens;
  for (std::size_t t = 0; t < n_tokens; ++t) {
    for (std::size_t off = 0; off < per_token; off += dim) {
      apply_rope(rows.subspan(t * per_token + off, dim), table.n_rot, style,
                 std::span(table.cos).subspan(t * half, half),
                 std::span(table.sin).subspan(t * half, half));
    }
  }
}

float activate(FfnActivation act, float v) {
  return act == FfnActivation::kSiluGlu ? silu(v) : gelu_tanh(v);
}

// y = W x for every token: a new [n_tokens x w.rows] array.
std::vector<float> linear(const WeightMatrix& w, std::span<const float> x, std::size_t n_tokens) {
  std::vector<float> y(n_tokens * w.rows);
  matmul(w, x, n_tokens, y);
  return y;
}

// Gated FFN: down(act(gate(x)) * up(x)).
std::vector<float> gated_ffn(FfnActivation act, const WeightMatrix& gate, const WeightMatrix& up,
                             const WeightMatrix& down, std::span<const float> x, std::size_t n) {
  std::vector<float> g = linear(gate, x, n);
  glu(act, g, linear(up, x, n));
  return linear(down, g, n);
}

// The experts picked for one token and their weights.
struct Routing {
  std::vector<int> experts;
  std::vector<float> weights;
};

// Softmax over the router logits, the top k, renormalised to sum 1, times each expert's scale
// (transformers' Gemma4TextRouter).
Routing route(std::span<float> logits, int k, std::span<const float> expert_scale) {
  softmax(logits);
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  // Highest probability first; ties go to the lower expert index.
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return logits[static_cast<std::size_t>(a)] > logits[static_cast<std::size_t>(b)];
  });
  Routing r;
  r.experts.assign(order.begin(), order.begin() + k);
  float sum = 0.0f;
  for (const int e : r.experts) sum += logits[static_cast<std::size_t>(e)];
  for (const int e : r.experts) {
    const auto i = static_cast<std::size_t>(e);
    r.weights.push_back(logits[i] / sum * expert_scale[i]);
  }
  return r;
}

}  // namespace

struct CpuModel::Batch {
  std::size_t n = 0;  // tokens in this call
  int pos0 = 0;       // position of the first one
  RopeTable rope_full;
  RopeTable rope_swa;
  std::vector<float> per_layer_in;  // E models: [n x per-layer width], see per_layer_inputs()

  const RopeTable& rope_of(const ModelConfig& c, int il) const {
    return c.is_swa_layer(il) ? rope_swa : rope_full;
  }
};

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
  check_forward_inputs(tokens, pos0, *cache, c.n_vocab);
  if (pos0 < cache->n_filled()) cache->check_restart(pos0);
  // A sliding-window ring holds 2 * window positions: longer batches run in pieces of `window`.
  const auto max_batch = static_cast<std::size_t>(cache->max_batch());
  if (n > max_batch) {
    std::vector<float> logits;
    for (std::size_t t0 = 0; t0 < n; t0 += max_batch) {
      const std::size_t m = std::min(max_batch, n - t0);
      std::vector<float> part =
          forward(tokens.subspan(t0, m), pos0 + static_cast<int>(t0), *cache, options);
      if (options.all_logits || t0 + m == n) logits.insert(logits.end(), part.begin(), part.end());
    }
    return logits;
  }
  cache->set_filled(pos0);  // entries past pos0 are about to be overwritten

  const auto embd = static_cast<std::size_t>(c.n_embd);

  // Residual stream: scaled token embeddings.
  std::vector<float> x(n * embd);
  for (std::size_t t = 0; t < n; ++t) {
    const std::span<float> row = std::span(x).subspan(t * embd, embd);
    dequantize_row(weights_.token_embd.type,
                   weights_.token_embd.row(static_cast<std::size_t>(tokens[t])), row);
    if (c.embed_scale != 1.0f) scale_in_place(row, c.embed_scale);
  }

  // Rotary tables for the positions of this batch: full and sliding layers may differ in base,
  // rotated dimensions and frequency factors.
  const std::span<const float> freqs = weights_.rope_freqs;
  const int rot_swa = c.n_rot_swa > 0 ? c.n_rot_swa : c.n_rot;
  Batch b{n,
          pos0,
          RopeTable(pos0, n, c.n_rot, c.rope_global, freqs),
          RopeTable(pos0, n, rot_swa, c.rope_local,
                    c.rope_freqs_full_only ? std::span<const float>{} : freqs),
          {}};
  if (c.n_embd_per_layer > 0) b.per_layer_in = per_layer_inputs(tokens, x);

  for (int il = 0; il < c.n_layer; ++il) {
    attention_block(il, b, *cache, x);
    ffn_block(il, b, x);
    if (c.n_embd_per_layer > 0) per_layer_input_block(il, b, x);
    const float scale = weights_.layers[static_cast<std::size_t>(il)].output_scale;
    if (scale != 1.0f) scale_in_place(x, scale);
  }
  cache->set_filled(pos0 + static_cast<int>(n));

  // Output head on the requested rows only.
  const std::size_t n_out = options.all_logits ? n : 1;
  std::vector<float> final_rows(x.end() - static_cast<std::ptrdiff_t>(n_out * embd), x.end());
  rms_norm_rows(final_rows, weights_.output_norm, c.norm_eps);
  std::vector<float> logits = linear(weights_.output, final_rows, n_out);
  softcap(logits, c.final_softcap);
  return logits;
}

// x += post_norm(Wo · attention(rope(q_norm(Wq h)), rope(k_norm(Wk h)), v_norm(Wv h))),
// h = attn_norm(x). A KV-sharing layer skips K/V and attends to its source layer's cache.
void CpuModel::attention_block(int il, const Batch& b, CpuKvCache& cache,
                               std::vector<float>& x) const {
  const ModelConfig& c = config_;
  const LayerWeights& lw = weights_.layers[static_cast<std::size_t>(il)];
  const std::size_t n = b.n;
  const int dk = c.head_dim_k_of(il);
  const int dv = c.head_dim_v_of(il);
  const RopeTable& rope = b.rope_of(c, il);

  std::vector<float> h = x;
  rms_norm_rows(h, lw.attn_norm, c.norm_eps);

  std::vector<float> q = linear(lw.wq, h, n);
  if (c.qk_norm) rms_norm_rows(q, lw.q_norm, c.norm_eps);  // per head: rows of head_dim_k
  rope_rows(q, n, dk, c.rope_style, rope);

  if (c.has_kv(il)) {
    std::vector<float> k = linear(lw.wk, h, n);
    std::vector<float> v = lw.wv.present() ? linear(lw.wv, h, n) : k;  // V = K before its norm
    if (c.qk_norm) rms_norm_rows(k, lw.k_norm, c.norm_eps);
    if (c.value_norm) rms_norm_rows(v, static_cast<std::size_t>(dv), c.norm_eps);
    rope_rows(k, n, dk, c.rope_style, rope);
    const std::size_t k_dim = k.size() / n;
    const std::size_t v_dim = v.size() / n;
    for (std::size_t t = 0; t < n; ++t) {
      cache.store(il, b.pos0 + static_cast<int>(t), std::span(k).subspan(t * k_dim, k_dim),
                  std::span(v).subspan(t * v_dim, v_dim));
    }
  }

  std::vector<float> att(n * static_cast<std::size_t>(c.n_head * dv));
  const AttentionParams ap{c.n_head,
                           c.n_head_kv_of(il),
                           dk,
                           dv,
                           c.attn_scale,
                           c.attn_softcap,
                           c.is_sliding(il) ? c.sliding_window : 0};
  attention(cache, c.kv_source(il), b.pos0, n, q, ap, att);
  std::vector<float> o = linear(lw.wo, att, n);
  if (c.post_norms) rms_norm_rows(o, lw.post_attn_norm, c.norm_eps);
  add_in_place(x, o);
}

// x += post_ffn_norm(FFN(ffn_norm(x))); with MoE (Gemma 4) the FFN output is
// post_norm_1(dense FFN) + post_norm_2(experts), the experts reading the same x.
void CpuModel::ffn_block(int il, const Batch& b, std::vector<float>& x) const {
  const ModelConfig& c = config_;
  const LayerWeights& lw = weights_.layers[static_cast<std::size_t>(il)];
  std::vector<float> h = x;
  rms_norm_rows(h, lw.ffn_norm, c.norm_eps);
  std::vector<float> out = gated_ffn(c.ffn_act, lw.ffn_gate, lw.ffn_up, lw.ffn_down, h, b.n);
  if (lw.moe) {
    rms_norm_rows(out, lw.moe->post_norm_dense, c.norm_eps);
    std::vector<float> experts = moe_block(*lw.moe, b, x);
    rms_norm_rows(experts, lw.moe->post_norm_moe, c.norm_eps);
    add_in_place(out, experts);
  }
  if (c.post_norms) rms_norm_rows(out, lw.post_ffn_norm, c.norm_eps);
  add_in_place(x, out);
}

// Router: logits = W_r (rms_norm(x) * router_scale / sqrt(n_embd)), see route(). Each chosen
// expert e computes down_e(act(gate_e(h)) * up_e(h)) on h = pre_norm(x); the results are summed
// with the routing weights.
std::vector<float> CpuModel::moe_block(const MoeWeights& w, const Batch& b,
                                       std::span<const float> x) const {
  const ModelConfig& c = config_;
  const std::size_t n = b.n;
  const auto embd = static_cast<std::size_t>(c.n_embd);
  const auto ff = static_cast<std::size_t>(c.n_ff_exp);

  std::vector<float> r(x.begin(), x.end());
  rms_norm_rows(r, embd, c.norm_eps);
  const float root = 1.0f / std::sqrt(static_cast<float>(c.n_embd));
  for (std::size_t i = 0; i < r.size(); ++i) r[i] = r[i] * w.router_scale[i % embd] * root;
  std::vector<float> logits = linear(w.router, r, n);

  // Tokens of each expert, with their weights.
  std::vector<std::vector<std::size_t>> tokens_of(static_cast<std::size_t>(c.n_expert));
  std::vector<std::vector<float>> weights_of(tokens_of.size());
  for (std::size_t t = 0; t < n; ++t) {
    const auto n_expert = static_cast<std::size_t>(c.n_expert);
    const Routing routing =
        route(std::span(logits).subspan(t * n_expert, n_expert), c.n_expert_used, w.expert_scale);
    for (std::size_t j = 0; j < routing.experts.size(); ++j) {
      const auto e = static_cast<std::size_t>(routing.experts[j]);
      tokens_of[e].push_back(t);
      weights_of[e].push_back(routing.weights[j]);
    }
  }

  std::vector<float> h(x.begin(), x.end());
  rms_norm_rows(h, w.pre_norm, c.norm_eps);
  std::vector<float> out(n * embd, 0.0f);
  for (std::size_t e = 0; e < tokens_of.size(); ++e) {
    const std::vector<std::size_t>& ts = tokens_of[e];
    if (ts.empty()) continue;
    std::vector<float> in(ts.size() * embd);
    for (std::size_t i = 0; i < ts.size(); ++i) {
      std::copy_n(h.begin() + static_cast<std::ptrdiff_t>(ts[i] * embd), embd,
                  in.begin() + static_cast<std::ptrdiff_t>(i * embd));
    }
    const std::vector<float> gate_up = linear(w.gate_up[e], in, ts.size());  // [m x 2ff]
    std::vector<float> act(ts.size() * ff);
    for (std::size_t i = 0; i < ts.size(); ++i) {
      const float* gate = gate_up.data() + i * 2 * ff;
      const float* up = gate + ff;
      for (std::size_t j = 0; j < ff; ++j) act[i * ff + j] = activate(c.ffn_act, gate[j]) * up[j];
    }
    const std::vector<float> y = linear(w.down[e], act, ts.size());
    for (std::size_t i = 0; i < ts.size(); ++i) {
      for (std::size_t j = 0; j < embd; ++j) {
        out[ts[i] * embd + j] += weights_of[e][i] * y[i * embd + j];
      }
    }
  }
  return out;
}

// Per-layer embeddings of E models, for every token and layer at once:
//   (rms_norm_pl(P x / sqrt(n_embd)) + E_pl[token] * sqrt(n_pl)) / sqrt(2),
// x being the scaled token embeddings and rms_norm_pl acting on each layer's slice of n_pl.
std::vector<float> CpuModel::per_layer_inputs(std::span<const std::int32_t> tokens,
                                              std::span<const float> x) const {
  const ModelConfig& c = config_;
  const WeightMatrix& table = weights_.per_layer_token_embd;
  const std::size_t width = table.cols;  // n_layer (of the file) * n_pl
  const std::size_t n = tokens.size();
  const auto n_pl = static_cast<std::size_t>(c.n_embd_per_layer);

  std::vector<float> proj = linear(weights_.per_layer_model_proj, x, n);
  scale_in_place(proj, 1.0f / std::sqrt(static_cast<float>(c.n_embd)));
  rms_norm_rows(proj, weights_.per_layer_proj_norm, c.norm_eps);

  std::vector<float> row(width);
  const float token_scale = std::sqrt(static_cast<float>(n_pl));
  const float mix_scale = 1.0f / std::sqrt(2.0f);
  for (std::size_t t = 0; t < n; ++t) {
    const auto id = static_cast<std::size_t>(tokens[t]);
    if (id >= table.rows) {
      fail("forward: token id {} is outside the per-layer embedding table ({} rows)", id,
           table.rows);
    }
    dequantize_row(table.type, table.row(id), row);
    for (std::size_t i = 0; i < width; ++i) {
      float& p = proj[t * width + i];
      p = (p + row[i] * token_scale) * mix_scale;
    }
  }
  return proj;
}

// x += post_norm(proj(act(gate(x)) * per_layer_input[layer])).
void CpuModel::per_layer_input_block(int il, const Batch& b, std::vector<float>& x) const {
  const ModelConfig& c = config_;
  const PerLayerInputWeights& w = *weights_.layers[static_cast<std::size_t>(il)].per_layer_input;
  const auto n_pl = static_cast<std::size_t>(c.n_embd_per_layer);
  const std::size_t width = b.per_layer_in.size() / b.n;
  std::vector<float> g = linear(w.gate, x, b.n);
  for (std::size_t t = 0; t < b.n; ++t) {
    for (std::size_t i = 0; i < n_pl; ++i) {
      float& v = g[t * n_pl + i];
      v = activate(c.ffn_act, v) *
          b.per_layer_in[t * width + static_cast<std::size_t>(il) * n_pl + i];
    }
  }
  std::vector<float> y = linear(w.proj, g, b.n);
  rms_norm_rows(y, w.post_norm, c.norm_eps);
  add_in_place(x, y);
}

}  // namespace qforge::cpu
