#include "runtime/cuda/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "core/error.h"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/flash_attention.h"
#include "runtime/cuda/gemm_f32.h"
#include "runtime/cuda/gemm_tc.h"
#include "runtime/cuda/gemma4_ops.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/moe_gemm.h"
#include "runtime/cuda/ops.h"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/weight_layout.h"
#include "runtime/cuda_device.h"
#include "runtime/cuda_model.h"

namespace qforge::cuda {
namespace {

// The weight form in which the integer-plane decode GEMVs (q4_0x8.h) take m, if they take it:
// Q4_0 regrouped at load, or Q4_K, Q8_0 or Q5_K as stored.
std::optional<PlaneWeights> plane_weights(const DeviceMatrix& m) {
  if (m.empty()) return std::nullopt;
  if (m.layout == WeightLayout::kQ4_0x8) return PlaneWeights::kQ4_0x8;
  if (m.layout == WeightLayout::kGguf) return gguf_plane_weights(m.type, m.cols);
  return std::nullopt;
}

// The form in which the persistent decode step (decode_persistent.h) takes every layer's
// matrices, if it takes them: all Q4_0x8 or all Q4_K with Q/K/V and gate/up stacked, or each Q4_K
// or Q6_K of whole 2048-column groups (llama-quantize's Q4_K_M) with gate/up stacked, where most
// of the bytes are Q4_K. The step streams a Q6_K task's rows one per ring item, half the bytes
// per item of the ordinary Q6_K GEMV: H200 tg128 of Llama-3-8B Q4_K_M 377 -> 415 tokens/s with
// the step, of an all-Q6_K file 333 -> 296 (docs/benchmarks.md, twentieth pass).
std::optional<PersistentWeights> persistent_form(const std::vector<DeviceLayer>& layers) {
  if (layers.empty()) return std::nullopt;
  bool x8 = true, k = true, mixed = true;
  std::size_t q4_k_bytes = 0, q6_k_bytes = 0;
  for (const DeviceLayer& l : layers) {
    if (l.gate_up.empty()) return std::nullopt;
    x8 = x8 && !l.qkv.empty();
    k = k && !l.qkv.empty();
    for (const DeviceMatrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate_up, &l.down}) {
      const std::optional<PlaneWeights> form = plane_weights(*m);
      const bool q6_k = !m->empty() && m->layout == WeightLayout::kGguf &&
                        m->type == GgmlType::Q6_K && m->cols % 2048 == 0;
      x8 = x8 && form == PlaneWeights::kQ4_0x8;
      k = k && form == PlaneWeights::kQ4_K;
      mixed = mixed && (form == PlaneWeights::kQ4_K || q6_k);
      if (!m->empty()) {
        (q6_k ? q6_k_bytes : q4_k_bytes) += m->rows * stored_row_bytes(m->type, m->cols, m->layout);
      }
    }
  }
  if (x8) return PersistentWeights::kQ4_0x8;
  if (k) return PersistentWeights::kQ4_K;
  if (mixed && q6_k_bytes < q4_k_bytes) return PersistentWeights::kMixed;
  return std::nullopt;
}

// PersistentLayer::q6_k of a layer in the mixed form.
unsigned persistent_q6_k(const DeviceLayer& l) {
  const std::pair<const DeviceMatrix*, unsigned> bits[] = {
      {&l.wq, kPersistentQ}, {&l.wk, kPersistentK},           {&l.wv, kPersistentV},
      {&l.wo, kPersistentO}, {&l.gate_up, kPersistentGateUp}, {&l.down, kPersistentDown}};
  unsigned q6_k = 0;
  for (const auto& [m, bit] : bits) {
    if (m->type == GgmlType::Q6_K) q6_k |= bit;
  }
  return q6_k;
}

std::size_t sz(int v) {
  return static_cast<std::size_t>(v);
}

// QFORGE_GEMV_NORM: "0" none, "all" every update a GEMV can take, else (unset) post norms only.
GemvNorms gemv_norms_by_env() {
  const char* v = std::getenv("QFORGE_GEMV_NORM");
  if (v == nullptr) return GemvNorms::kPostNorm;
  if (std::strcmp(v, "0") == 0) return GemvNorms::kOff;
  if (std::strcmp(v, "all") == 0) return GemvNorms::kAll;
  return GemvNorms::kPostNorm;
}

int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

std::vector<LayerPlan> plan_layers(const ModelConfig& c, const ModelWeights& w) {
  std::vector<LayerPlan> out(sz(c.n_layer));
  for (int il = 0; il < c.n_layer; ++il) {
    LayerPlan& p = out[sz(il)];
    p.dk = c.head_dim_k_of(il);
    p.dv = c.head_dim_v_of(il);
    p.n_kv = c.n_head_kv_of(il);
    p.n_rot = c.n_rot_of(il);
    p.swa = c.is_swa_layer(il);
    p.window = c.is_sliding(il);
    p.has_kv = c.has_kv(il);
    p.v_from_k = p.has_kv && !w.layers[sz(il)].wv.present();
    p.kv_source = c.kv_source(il);
    p.q_dim = sz(c.n_head * p.dk);
    p.k_dim = p.has_kv ? sz(p.n_kv * p.dk) : 0;
    p.v_dim = p.has_kv ? sz(p.n_kv * p.dv) : 0;
    p.qkv_dim = p.q_dim + p.k_dim + p.v_dim;
    p.ff = sz(c.n_ff_of(il));
    if (p.kv_source < 0) fail("CUDA backend: layer {} shares KV but has no source layer", il);
  }
  return out;
}

// The most any layer needs of each geometry field.
struct MaxGeometry {
  int dk = 0, dv = 0, n_kv = 0, n_rot = 0;
  std::size_t qkv_dim = 0, ff = 0;
};

MaxGeometry max_geometry(const std::vector<LayerPlan>& layers) {
  MaxGeometry m;
  for (const LayerPlan& p : layers) {
    m.dk = std::max(m.dk, p.dk);
    m.dv = std::max(m.dv, p.dv);
    m.n_kv = std::max(m.n_kv, p.n_kv);
    m.n_rot = std::max(m.n_rot, p.n_rot);
    m.qkv_dim = std::max(m.qkv_dim, p.qkv_dim);
    m.ff = std::max(m.ff, p.ff);
  }
  return m;
}

// CTAs per head for a one-token step: enough (token, head, split) CTAs to fill the device twice.
int max_decode_splits(const ModelConfig& c, int sm_count) {
  return std::clamp(ceil_div(2 * sm_count, c.n_head), 1, 64);
}

// Checks what the GPU kernels need and returns the device's multiprocessor count.
int checked_sm_count(const ModelConfig& c, const std::vector<LayerPlan>& layers) {
  for (std::size_t il = 0; il < layers.size(); ++il) {
    const LayerPlan& p = layers[il];
    if (!batch_attention_supported(p.dk, p.dv)) {
      fail(
          "CUDA backend: layer {}: head sizes {} (key) / {} (value) are not supported (each <= "
          "512 and in the same power-of-two bucket)",
          il, p.dk, p.dv);
    }
  }
  if (c.n_expert > 0 && (c.n_expert > 4096 || c.n_expert_used * CudaModel::kMaxBatch > 65535)) {
    fail("CUDA backend: {} experts ({} used per token) are more than the MoE kernels support",
         c.n_expert, c.n_expert_used);
  }
  return current_device().sm_count;
}

// Rows of split results the attention scratch must hold for any batch of 1..kMaxBatch tokens.
std::size_t part_rows(const ModelConfig& c, int sm_count, int max_dv) {
  const int s_max = max_decode_splits(c, sm_count);
  std::size_t rows = sz(s_max);
  for (int n = 2; n <= CudaModel::kMaxBatch; ++n) {
    const int splits = std::clamp(ceil_div(2 * sm_count, n * c.n_head), 1, s_max);
    rows = std::max(rows, sz(n * splits));
  }
  return rows * sz(c.n_head) * sz(max_dv + 2);
}

// Positions per split of a decode step's batch_attention (at most the cache's decode_splits).
// H200 tg128 with a cache of 4096 positions, 1 (the cache's splits, as before) / 16 / 32 / 64
// (twenty-second pass, docs/benchmarks.md): Gemma 3 4B 543.5 / 561.0 / 568.2 / 549.3, Gemma 4 E4B
// 377.8 / 396.3 / 401.2 / 387.3, 26B-A4B 455.1 / 461.9 / 468.7 / 456.1, 31B 144.8 / 145.1 /
// 146.0 / 143.7.
constexpr long kDecodeSplitPositions = 32;

// The most splits flash_decode_splits returns (flash_attention.h).
constexpr int kMaxFlashSplits = 256;
// Decode steps take flash_decode where the positions their graph serves reach this many. On short
// contexts batch_attention's per-warp splits have less fixed cost per step (Llama-3-8B tg128 from
// depth 0, H200: 285 vs 272 tokens/s); at depth 4096 flash_decode is far ahead (250 vs 143).
constexpr int kFlashDecodeMinCtx = 1024;

// The positions the decode graph of a step at `pos` serves: a power of two (at least 256) above
// pos, within the cache. Each bucket has its own graph, so the attention kernel and its splits
// follow the depth, not the cache's size: with a cache of 8192 positions, flash decoding's splits
// for all of them cost Gemma 4 26B-A4B 4% at depth 0 (docs/benchmarks.md, sixteenth pass).
int decode_bucket(int pos, int n_ctx) {
  int b = 256;
  while (b <= pos && b < n_ctx) b *= 2;
  return std::min(b, n_ctx);
}

// Index of a bucket among a cache's buckets (ceil(log2(b))): the capped last one stays apart.
int bucket_index(int bucket) {
  int i = 0;
  while ((1 << i) < bucket) ++i;
  return i;
}

struct ScratchSizes {
  std::size_t x, qkv, att, gate_up, act, part, attn_counters, flash_part, logits, rope;
  // MoE: per token (router_in, expert_in: x; router logits) and per slot.
  std::size_t router_logits, slots, exp_gate_up, exp_act, exp_out;
  std::size_t exp_x_bf16;                 // moe_gemm's BF16 copy of the slots' inputs
  std::size_t per_layer, per_layer_gate;  // E models
  std::size_t total_bytes() const {
    const std::size_t floats = 3 * x + x / CudaModel::kMaxBatch + qkv + att + gate_up + act + part +
                               attn_counters + flash_part + logits + 4 * rope +
                               (router_logits > 0 ? 2 * x : 0) + router_logits + 2 * slots +
                               exp_gate_up + exp_act + exp_out + exp_x_bf16 / 2 + 2 * per_layer +
                               per_layer_gate;
    return 4 * floats + (1u << 26);
  }
};

ScratchSizes scratch_sizes(const ModelConfig& c, const std::vector<LayerPlan>& layers,
                           std::size_t per_layer_width, int sm_count) {
  const MaxGeometry g = max_geometry(layers);
  const std::size_t b = CudaModel::kMaxBatch;
  ScratchSizes s{};
  s.x = b * sz(c.n_embd);
  s.qkv = b * g.qkv_dim;
  s.att = b * sz(c.n_head * g.dv);
  s.gate_up = b * 2 * g.ff;
  s.act = b * g.ff;
  s.part = part_rows(c, sm_count, g.dv);
  s.attn_counters = b * sz(c.n_head);
  s.flash_part = sz(c.n_head) * sz(kMaxFlashSplits) * sz(g.dv + 2);
  s.logits = sz(CudaModel::kLogitsRows) * sz(c.n_vocab);
  // The full-layer table is computed with n_rot even if every layer is a sliding one.
  s.rope = b * sz(std::max(g.n_rot, c.n_rot) / 2);
  if (c.n_expert > 0) {
    s.router_logits = b * sz(c.n_expert);
    s.slots = b * sz(c.n_expert_used);
    s.exp_gate_up = s.slots * 2 * sz(c.n_ff_exp);
    s.exp_act = s.slots * sz(c.n_ff_exp);
    s.exp_out = s.slots * sz(c.n_embd);
    s.exp_x_bf16 = s.slots * std::max(sz(c.n_embd), sz(c.n_ff_exp));
  }
  if (c.n_embd_per_layer > 0) {
    s.per_layer = b * per_layer_width;
    s.per_layer_gate = b * sz(c.n_embd_per_layer);
  }
  return s;
}

bool flash_enabled_by_env() {
  const char* env = std::getenv("QFORGE_FLASH");
  return env == nullptr || (std::strcmp(env, "off") != 0 && std::strcmp(env, "0") != 0);
}

bool gemm_enabled_by_env() {
  const char* env = std::getenv("QFORGE_GEMM");
  return env == nullptr || (std::strcmp(env, "off") != 0 && std::strcmp(env, "OFF") != 0 &&
                            std::strcmp(env, "0") != 0);
}

}  // namespace

CudaModel::CudaModel(std::unique_ptr<GgufReader> gguf, ModelConfig config)
    : gguf_(std::move(gguf)),
      config_(std::move(config)),
      host_weights_(bind_weights(*gguf_, config_)),
      layers_(plan_layers(config_, host_weights_)),
      sm_count_(checked_sm_count(config_, layers_)),
      embd_(sz(config_.n_embd)),
      per_layer_width_(host_weights_.per_layer_token_embd.cols),
      any_swa_(
          std::any_of(layers_.begin(), layers_.end(), [](const LayerPlan& p) { return p.swa; })),
      use_gemm_(gemm_enabled_by_env()),
      use_flash_(flash_enabled_by_env()),
      weights_(host_weights_, config_,
               scratch_sizes(config_, layers_, per_layer_width_, sm_count_).total_bytes()) {
  const ScratchSizes s = scratch_sizes(config_, layers_, per_layer_width_, sm_count_);
  fork_moe_ = switch_on("QFORGE_MOE_FORK");
  fuse_moe_combine_ = switch_on("QFORGE_MOE_COMBINE_FUSED");
  fuse_router_ = switch_on("QFORGE_MOE_ROUTER_FUSED");
  early_down_ = switch_on("QFORGE_MOE_DOWN_EARLY");
  early_planes_ = switch_on("QFORGE_MOE_PLANES_EARLY");
  gemv_norms_ = gemv_norms_by_env();
  x_ = DeviceBuffer<float>(s.x);
  x_alt_ = DeviceBuffer<float>(embd_);
  h_ = DeviceBuffer<float>(s.x);
  o_ = DeviceBuffer<float>(s.x);
  qkv_ = DeviceBuffer<float>(s.qkv);
  att_ = DeviceBuffer<float>(s.att);
  gate_up_ = DeviceBuffer<float>(s.gate_up);
  act_ = DeviceBuffer<float>(s.act);
  part_ = DeviceBuffer<float>(s.part);
  attn_counters_ = DeviceBuffer<int>(s.attn_counters);
  attn_counters_.fill_bytes(0);  // batch_attention leaves them zero after every call
  flash_part_ = DeviceBuffer<float>(s.flash_part);
  logits_ = DeviceBuffer<float>(s.logits);
  cos_global_ = DeviceBuffer<float>(s.rope);
  sin_global_ = DeviceBuffer<float>(s.rope);
  cos_local_ = DeviceBuffer<float>(s.rope);
  sin_local_ = DeviceBuffer<float>(s.rope);
  if (config_.n_expert > 0) {
    router_in_ = DeviceBuffer<float>(s.x);
    expert_in_ = DeviceBuffer<float>(s.x);
    router_logits_ = DeviceBuffer<float>(s.router_logits);
    route_weights_ = DeviceBuffer<float>(s.slots);
    expert_ids_ = DeviceBuffer<int>(s.slots);
    route_counters_ = DeviceBuffer<unsigned>(sz(kMaxBatch));
    route_counters_.fill_bytes(0);  // moe_router_route leaves them zero after every call
    exp_gate_up_ = DeviceBuffer<float>(s.exp_gate_up);
    exp_act_ = DeviceBuffer<float>(s.exp_act);
    exp_out_ = DeviceBuffer<float>(s.exp_out);
    moe_scratch_ = make_moe_gemm_scratch(static_cast<int>(s.slots),
                                         std::max(embd_, sz(config_.n_ff_exp)), config_.n_expert);
  }
  if (config_.n_embd_per_layer > 0) {
    per_layer_ = DeviceBuffer<float>(s.per_layer);
    per_layer_tok_ = DeviceBuffer<float>(s.per_layer);
    per_layer_gate_ = DeviceBuffer<float>(s.per_layer_gate);
  }
  tokens_ = DeviceBuffer<std::int32_t>(sz(kMaxBatch));
  pos_ = DeviceBuffer<int>(1);
  step_in_ = PinnedBuffer<std::int32_t>(2);
  step_logits_ = PinnedBuffer<float>(sz(config_.n_vocab));
}

std::unique_ptr<KvCache> CudaModel::new_cache(int n_ctx, KvType type) const {
  // Split the positions of a decode step over enough CTAs to fill the device, but not into
  // pieces of fewer than ~16 positions at full context.
  const int splits =
      std::clamp(std::min(max_decode_splits(config_, sm_count_), ceil_div(n_ctx, 16)), 1, 64);
  // The cache gives every layer room for the largest layer geometry (Gemma 4's sliding and full
  // layers differ); each layer then uses its own layout inside its slot.
  const MaxGeometry g = max_geometry(layers_);
  ModelConfig sizing = config_;
  sizing.n_head_kv = g.n_kv;
  sizing.head_dim_k = g.dk;
  sizing.head_dim_v = g.dv;
  return std::make_unique<CudaKvCache>(sizing, n_ctx, type, splits);
}

int CudaModel::prefill_splits(int n_tokens, int decode_splits) const {
  return std::clamp(ceil_div(2 * sm_count_, n_tokens * config_.n_head), 1, decode_splits);
}

void CudaModel::matmul(const DeviceMatrix& m, const float* x, float* y, std::size_t ldy, int n,
                       StreamHandle s) {
  if (const auto planes = plane_weights(m); planes && !tensor_core_chunk(n)) {
    gemv_q4_0x8(m.data, m.rows, m.cols, x, y, ldy, n, s, *planes);
    return;
  }
  if (m.layout == WeightLayout::kQ4_0x8) {  // a prompt chunk
    gemm(m.type, m.data, m.rows, m.cols, x, y, ldy, n, s, m.layout);
    return;
  }
  if (tensor_core_chunk(n) && gemm_supported(m.type) && m.cols % 8 == 0 &&
      m.cols % block_size(m.type) == 0) {
    gemm(m.type, m.data, m.rows, m.cols, x, y, ldy, n, s);
    return;
  }
  gemv_pieces(m.type, m.data, m.rows, m.cols, x, y, ldy, n, s);
}

// The batched GEMV over n tokens in launches of at most kGemvMaxTokens.
void CudaModel::gemv_pieces(GgmlType type, const void* w, std::size_t rows, std::size_t cols,
                            const float* x, float* y, std::size_t ldy, int n, StreamHandle s) {
  for (int t = 0; t < n; t += kGemvMaxTokens) {
    gemv_ld(type, w, rows, cols, x + sz(t) * cols, y + sz(t) * ldy, ldy,
            std::min(kGemvMaxTokens, n - t), s);
  }
}

// Per-layer embeddings of E models for the whole chunk (see CpuModel::per_layer_inputs); x_ holds
// the scaled token embeddings.
void CudaModel::per_layer_inputs(int n) {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  const DeviceMatrix& table = weights_.per_layer_token_embd;
  matmul(weights_.per_layer_model_proj, x_cur_, per_layer_.data(), per_layer_width_, n);
  embed_tokens(table.type, table.data, per_layer_width_, tokens_.data(), n,
               std::sqrt(static_cast<float>(c.n_embd_per_layer)), per_layer_tok_.data(), s);
  per_layer_combine(per_layer_.data(), per_layer_tok_.data(), weights_.per_layer_proj_norm, n,
                    per_layer_width_, c.n_embd_per_layer,
                    1.0f / std::sqrt(static_cast<float>(c.n_embd)), 1.0f / std::sqrt(2.0f),
                    c.norm_eps, s);
}

// x += post_norm(Wo · attention(...)) and h = ffn_norm(x); see CpuModel::attention_block.
void CudaModel::attention_block(int il, int n, CudaKvCache& cache, int splits, int positions) {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  const float eps = c.norm_eps;
  const DeviceLayer& l = weights_.layers[sz(il)];
  const LayerPlan& g = layers_[sz(il)];
  const std::size_t ld = g.qkv_dim;
  float* qkv = qkv_.data();

  // Q/K/V into the interleaved qkv buffer: per token [q | k | v].
  if (pending_norm_) {  // normed_qkv: the norm before it runs inside the GEMV
    gemv_q4_0x8_normed(l.qkv.data, l.qkv.rows, l.qkv.cols, take_pending_norm(), qkv, s,
                       *plane_weights(l.qkv));
  } else if (!l.qkv.empty()) {
    matmul(l.qkv, h_.data(), qkv, ld, n);
  } else if (!l.qk.empty() && g.has_kv) {  // Q and K in one launch, V in its own type
    matmul(l.qk, h_.data(), qkv, ld, n);
    matmul(l.wv, h_.data(), qkv + g.q_dim + g.k_dim, ld, n);
  } else {
    matmul(l.wq, h_.data(), qkv, ld, n);
    if (g.has_kv) {
      matmul(l.wk, h_.data(), qkv + g.q_dim, ld, n);
      if (!l.wv.empty()) matmul(l.wv, h_.data(), qkv + g.q_dim + g.k_dim, ld, n);
    }
  }
  QkPrepare qp;
  qp.n_head = c.n_head;
  qp.n_head_kv = g.has_kv ? g.n_kv : 0;  // a KV-sharing layer prepares only its queries
  qp.head_dim = g.dk;
  qp.n_rot = g.n_rot;
  qp.token_stride = ld;
  qp.k_offset = g.q_dim;
  qp.q_norm = l.q_norm;
  qp.k_norm = g.has_kv ? l.k_norm : nullptr;
  qp.eps = eps;
  qp.style = c.rope_style;
  const KvLayout kv{g.n_kv, g.dk, g.dv, cache.layout().bf16};
  if (g.has_kv) {  // K and V (V = K before K's norm, the value norm) into the cache
    qp.v_offset = g.q_dim + g.k_dim;
    qp.head_dim_v = g.dv;
    qp.v_from_k = g.v_from_k;
    qp.v_norm = c.value_norm;
    qp.k_cache = cache.k(il);
    qp.v_cache = cache.v(il);
    qp.pos0 = pos_.data();
    qp.cache_bf16 = kv.bf16;
  }
  qk_prepare(qkv, n, qp, g.swa ? cos_local_.data() : cos_global_.data(),
             g.swa ? sin_local_.data() : sin_global_.data(), s);
  BatchAttention ap;
  ap.n_head = c.n_head;
  ap.kv = kv;
  ap.scale = c.attn_scale;
  ap.softcap = c.attn_softcap;
  ap.window = g.window ? c.sliding_window : 0;
  ap.q_stride = ld;
  const void* k_cache = cache.k(g.kv_source);
  const void* v_cache = cache.v(g.kv_source);
  if (use_flash_ && n == 1 && positions >= kFlashDecodeMinCtx && flash_decode_supported(ap)) {
    const int flash_splits = flash_decode_splits(ap, 1, sm_count_, positions);
    flash_decode(qkv, k_cache, v_cache, pos_.data(), 1, ap, flash_splits, flash_part_.data(),
                 att_.data(), s);
  } else if (use_flash_ && tensor_core_chunk(n) && flash_prefill_supported(ap)) {
    // Tensor cores like the prefill GEMM (and off with it: the tight CPU comparisons run both
    // in F32).
    flash_prefill(qkv, k_cache, v_cache, pos_.data(), n, ap, att_.data(), s);
  } else {
    batch_attention(qkv, k_cache, v_cache, pos_.data(), n, ap, splits, part_.data(),
                    attn_counters_.data(), att_.data(), s);
  }
  matmul(l.wo, att_.data(), o_.data(), embd_, n);
  // A MoE layer's router and expert inputs come from the same normalized residual as h.
  MoeInputs moe_in;
  if (l.has_moe) {
    moe_in.router_scale = l.moe.router_scale;
    moe_in.pre_norm = l.moe.pre_norm;
    moe_in.router_in = router_in_.data();
    moe_in.expert_in = expert_in_.data();
  }
  if (normed_gate_up(il, n, l.post_attn_norm)) {  // a dense layer: no MoE inputs
    residual_norm(n, o_.data(), l.post_attn_norm, 1.0f, l.ffn_norm, true);
    return;
  }
  add_and_norm(x_cur_, o_.data(), l.post_attn_norm, l.ffn_norm, h_.data(), n, embd_, eps, s,
               moe_in);
}

// The FFN of h_ and the residual update after it: x = (x + post_ffn_norm(FFN)) * output scale,
// h = next_norm(x) (see residual_update). MoE layers: FFN = post_norm_1(dense) +
// post_norm_2(experts); see CpuModel::ffn_block.
void CudaModel::ffn_block(int il, int n, const float* next_norm) {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  const DeviceLayer& l = weights_.layers[sz(il)];
  if (!l.has_moe) {
    dense_ffn(il, n, s);
    residual_update(il, n, next_norm);
    return;
  }
  // The dense FFN and the routed experts read their own inputs (h_; router_in_, expert_in_) and
  // write their own buffers until moe_combine, so the dense one runs on a second stream beside
  // the other (a fork and a join, in the captured graph of a decode step too). On a decode step
  // both are chains of short, latency-bound launches; in a prompt chunk the expert grouping and
  // the small per-expert GEMM tiles leave room beside them. H200, Gemma 4 26B-A4B: tg128 385.4
  // -> 424.4 tokens/s, pp512 11086 -> 11982 (docs/benchmarks.md, eighth pass).
  // Only the dense chain may call gemm(), whose BF16 copy of x is one buffer per device; the
  // routed chain's kernels (gemm_f32, moe_gemm, the GEMVs) use no shared scratch.
  if (fork_moe_) {
    fork_.record(s);
    fork_.wait_in(side_stream_.get());
  }
  dense_ffn(il, n, fork_moe_ ? side_stream_.get() : s);
  moe_block(il, n);
  if (fork_moe_) {
    join_.record(side_stream_.get());
    join_.wait_in(s);
  }
  if (fuse_moe_combine_ && !l.has_per_layer_input) {
    // The mix and the residual update in one kernel (add_and_norm is the scale 1 case).
    const ResidualNorm r{x_cur_, l.post_ffn_norm, l.output_scale, next_norm, h_.data()};
    moe_combine(o_.data(), exp_out_.data(), route_weights_.data(), c.n_expert_used,
                l.moe.post_norm_dense, l.moe.post_norm_moe, n, embd_, c.norm_eps, s, &r);
    return;
  }
  moe_combine(o_.data(), exp_out_.data(), route_weights_.data(), c.n_expert_used,
              l.moe.post_norm_dense, l.moe.post_norm_moe, n, embd_, c.norm_eps, s);
  residual_update(il, n, next_norm);
}

// x += post_ffn_norm(o) [+ per-layer input block], x *= output scale, h = next_norm(x).
void CudaModel::residual_update(int il, int n, const float* next_norm) {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  const float eps = c.norm_eps;
  const DeviceLayer& l = weights_.layers[sz(il)];
  if (l.has_per_layer_input) {
    residual_scale_norm(x_cur_, o_.data(), l.post_ffn_norm, 1.0f, nullptr, nullptr, n, embd_, eps,
                        s);
    const auto n_pl = sz(c.n_embd_per_layer);
    matmul(l.per_layer_input.gate, x_cur_, per_layer_gate_.data(), n_pl, n);
    per_layer_gate(c.ffn_act, per_layer_gate_.data(), per_layer_.data(), n, c.n_embd_per_layer,
                   per_layer_width_, sz(il) * n_pl, s);
    matmul(l.per_layer_input.proj, per_layer_gate_.data(), o_.data(), embd_, n);
    residual_scale_norm(x_cur_, o_.data(), l.per_layer_input.post_norm, l.output_scale, next_norm,
                        h_.data(), n, embd_, eps, s);
  } else {
    const bool defer = il + 1 < c.n_layer && normed_qkv(il + 1, n, l.post_ffn_norm);
    residual_norm(n, o_.data(), l.post_ffn_norm, l.output_scale, next_norm, defer);
  }
}

void CudaModel::residual_norm(int n, const float* o, const float* o_norm, float scale,
                              const float* next_norm, bool defer) {
  const float eps = config_.norm_eps;
  if (defer) {
    pending_norm_ = ResidualNormInput{x_cur_, o, o_norm, scale, next_norm, nullptr, eps};
  } else if (scale != 1.0f) {
    residual_scale_norm(x_cur_, o, o_norm, scale, next_norm, h_.data(), n, embd_, eps,
                        stream_.get());
  } else {
    add_and_norm(x_cur_, o, o_norm, next_norm, h_.data(), n, embd_, eps, stream_.get());
  }
}

// The normed GEMVs take one token of up to kMaxNormedCols columns (q4_0x8.h); the product must
// be a single Q4_0x8 matrix (a fused Q/K/V, a fused gate/up), and a layer's MoE inputs come from
// add_and_norm, so MoE layers keep it. H200 tg128: docs/benchmarks.md, twelfth pass.
bool CudaModel::norm_in_gemv(const float* o_norm, std::size_t n_cols) const {
  static const auto min_cols = static_cast<std::size_t>(
      std::max(0L, env_number("QFORGE_GEMV_NORM_MIN_COLS", static_cast<long>(kPostNormMinCols))));
  return gemv_norms_ == GemvNorms::kAll ||
         (gemv_norms_ == GemvNorms::kPostNorm && o_norm != nullptr && n_cols >= min_cols);
}

bool CudaModel::normed_product(const DeviceMatrix& m, int n, const float* o_norm) const {
  const std::optional<PlaneWeights> planes = plane_weights(m);
  return norm_in_gemv(o_norm, m.cols) && n == 1 && planes.has_value() &&
         gemv_q4_0x8_normed_applies(m.cols, *planes);
}

bool CudaModel::normed_qkv(int il, int n, const float* o_norm) const {
  return normed_product(weights_.layers[sz(il)].qkv, n, o_norm);
}

bool CudaModel::normed_gate_up(int il, int n, const float* o_norm) const {
  const DeviceLayer& l = weights_.layers[sz(il)];
  return !l.has_moe && normed_product(l.gate_up, n, o_norm);
}

ResidualNormInput CudaModel::take_pending_norm() {
  ResidualNormInput in = *pending_norm_;
  pending_norm_.reset();
  if (in.o != nullptr || in.scale != 1.0f) {  // the residual changes: into the other buffer
    float* other = x_cur_ == x_.data() ? x_alt_.data() : x_.data();
    in.x_out = other;
    x_cur_ = other;
  }
  return in;
}

void CudaModel::dense_ffn(int il, int n, StreamHandle s) {
  const ModelConfig& c = config_;
  const DeviceLayer& l = weights_.layers[sz(il)];
  const std::size_t ff = layers_[sz(il)].ff;
  if (pending_norm_) {  // normed_gate_up: the norm before it runs inside the GEMV
    gemv_q4_0x8_glu_normed(c.ffn_act, l.gate_up.data, l.gate_up.rows, l.gate_up.cols,
                           take_pending_norm(), act_.data(), s, *plane_weights(l.gate_up));
  } else if (const auto planes = plane_weights(l.gate_up); planes && !tensor_core_chunk(n)) {
    // Gate and up rows summed by the same warp, the activation applied on the spot.
    gemv_q4_0x8_glu(c.ffn_act, l.gate_up.data, l.gate_up.rows, l.gate_up.cols, h_.data(),
                    act_.data(), ff, n, s, *planes);
  } else {
    if (!l.gate_up.empty()) {
      matmul(l.gate_up, h_.data(), gate_up_.data(), 2 * ff, n, s);
    } else {
      matmul(l.gate, h_.data(), gate_up_.data(), 2 * ff, n, s);
      matmul(l.up, h_.data(), gate_up_.data() + ff, 2 * ff, n, s);
    }
    glu_rows(c.ffn_act, gate_up_.data(), act_.data(), n, ff, s);
  }
  matmul(l.down, act_.data(), o_.data(), embd_, n, s);
}

// Routing and the chosen experts on the device (moe.h), from router_in_ and expert_in_ (made by
// attention_block's add_and_norm).
void CudaModel::moe_block(int il, int n) {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  const DeviceMoe& m = weights_.layers[sz(il)].moe;
  const int k = c.n_expert_used;
  // The router never takes the BF16 tensor-core GEMM: its rounding could change which experts
  // are chosen. F32 routers of prompt chunks go through the F32 GEMM (one launch).
  const bool f32_router = m.router.type == GgmlType::F32;
  // Decode steps and small chunks with an F32 router: the logits and the routing in one launch.
  const bool fused = f32_router && n < kGemmMinTokens && m.router.cols % 4 == 0 &&
                     reinterpret_cast<std::uintptr_t>(m.router.data) % 16 == 0 && fuse_router_;
  if (fused) {
    moe_router_route(static_cast<const float*>(m.router.data), static_cast<int>(m.router.cols),
                     router_in_.data(), n, c.n_expert, k, m.expert_scale, router_logits_.data(),
                     expert_ids_.data(), route_weights_.data(), route_counters_.data(), s);
  } else {
    if (f32_router && n >= kGemmMinTokens) {
      gemm_f32(static_cast<const float*>(m.router.data), m.router.rows, m.router.cols,
               router_in_.data(), router_logits_.data(), sz(c.n_expert), n, s);
    } else {
      gemv_pieces(m.router.type, m.router.data, m.router.rows, m.router.cols, router_in_.data(),
                  router_logits_.data(), sz(c.n_expert), n, s);
    }
    moe_route(router_logits_.data(), n, c.n_expert, k, m.expert_scale, expert_ids_.data(),
              route_weights_.data(), s);
  }
  moe_experts(il, n);
}

// The chosen experts' FFNs of every slot into exp_out_, from expert_in_ and the routing.
void CudaModel::moe_experts(int il, int n) {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  const DeviceMoe& m = weights_.layers[sz(il)].moe;
  const int k = c.n_expert_used;
  const auto ff_exp = sz(c.n_ff_exp);
  const int slots = n * k;
  // Prompt chunks: experts grouped on the device, each expert's weights read once per tile of
  // its tokens, on tensor cores. Decode: one GEMV per chosen expert.
  const bool grouped = tensor_core_chunk(n) && moe_gemm_supported(m.gate_up.type) &&
                       moe_gemm_supported(m.down.type) && m.gate_up.cols % 8 == 0 &&
                       m.down.cols % 8 == 0;
  const bool gate_up_x8 = !grouped && (m.gate_up.layout == WeightLayout::kQ4_0x8 ||
                                       (m.gate_up.layout == WeightLayout::kGguf &&
                                        gguf_plane_weights(m.gate_up.type, m.gate_up.cols) &&
                                        m.gate_up.expert_bytes % 16 == 0));
  if (gate_up_x8) {
    // Per token, its k experts' gate and up rows in one launch, the activation applied on the
    // spot (q4_0x8.h). The routing launch before it triggers after its wait and add_and_norm
    // wrote expert_in_ before that: the planes of x are built while the routing runs.
    for (int t = 0; t < n; ++t) {
      moe_gemv_q4_0x8_glu(c.ffn_act, m.gate_up, expert_ids_.data() + t * k, k,
                          expert_in_.data() + sz(t) * embd_, exp_act_.data() + sz(t * k) * ff_exp,
                          ff_exp, s, early_planes_);
    }
  } else {
    if (grouped) {
      moe_gemm(m.gate_up, expert_ids_.data(), slots, k, expert_in_.data(), exp_gate_up_.data(),
               2 * ff_exp, moe_scratch_, s);
    } else {
      moe_gemv(m.gate_up, expert_ids_.data(), slots, k, expert_in_.data(), exp_gate_up_.data(),
               2 * ff_exp, s);
    }
    glu_rows(c.ffn_act, exp_gate_up_.data(), exp_act_.data(), slots, ff_exp, s);
  }
  if (grouped) {
    moe_gemm(m.down, expert_ids_.data(), slots, 1, exp_act_.data(), exp_out_.data(), embd_,
             moe_scratch_, s);
  } else if (m.down.layout == WeightLayout::kQ4_0x8 || expert_down_plane_weights(m.down)) {
    // Each slot's own activation row against its expert (q4_0x8.h): Q4_0x8, or the Q8_0 / Q5_0 /
    // Q5_1 rows llama-quantize writes for K-quant down stacks of 704 columns. After the gate/up
    // GEMV of the integer-plane form, which waits before it triggers, the routing that wrote the
    // ids is two launches back: the down experts' weights stream while the gate/up GEMV runs.
    // H200, Gemma 4 26B-A4B: see docs/benchmarks.md, ninth and twenty-first passes.
    moe_gemv_q4_0x8(m.down, expert_ids_.data(), slots, exp_act_.data(), exp_out_.data(), embd_, s,
                    gate_up_x8 && early_down_);
  } else {
    moe_gemv(m.down, expert_ids_.data(), slots, 1, exp_act_.data(), exp_out_.data(), embd_, s);
  }
}

std::string CudaModel::persistent_unsupported(const CudaKvCache& cache) const {
  const ModelConfig& c = config_;
  if (c.n_expert > 0 || c.n_embd_per_layer > 0 || c.qk_norm || c.post_norms || c.value_norm ||
      c.attn_softcap != 0.0f || c.ffn_act != FfnActivation::kSiluGlu || any_swa_) {
    return "the architecture has more than Llama's layers";
  }
  if (c.n_layer_kv > 0) return "layers share KV";
  if (!persistent_form(weights_.layers)) {
    return "the layers' matrices are not all Q4_0x8, all Q4_K, or each Q4_K or Q6_K";
  }
  for (int il = 0; il < c.n_layer; ++il) {
    const LayerPlan& g = layers_[sz(il)];
    const DeviceLayer& l = weights_.layers[sz(il)];
    if (g.dk != c.head_dim_k || g.dv != g.dk || g.n_rot != g.dk || g.n_kv != c.n_head_kv ||
        g.ff != sz(c.n_ff) || g.v_from_k || l.output_scale != 1.0f) {
      return fmt::format("layer {} differs from the others", il);
    }
  }
  return PersistentDecode::unsupported(persistent_shape(cache));
}

PersistentShape CudaModel::persistent_shape(const CudaKvCache& cache) const {
  const ModelConfig& c = config_;
  PersistentShape shape;
  shape.n_layer = c.n_layer;
  shape.n_embd = c.n_embd;
  shape.n_head = c.n_head;
  shape.n_head_kv = c.n_head_kv;
  shape.head_dim = c.head_dim_k;
  shape.n_ff = c.n_ff;
  shape.eps = c.norm_eps;
  shape.attn_scale = c.attn_scale;
  shape.rope_style = c.rope_style;
  shape.cache_bf16 = cache.layout().bf16;
  shape.weights = persistent_form(weights_.layers).value_or(PersistentWeights::kQ4_0x8);
  return shape;
}

bool CudaModel::persistent_step(CudaKvCache& cache, int pos) {
  const PersistentMode mode = decode_persistent_mode();
  if (mode == PersistentMode::kOff ||
      (mode == PersistentMode::kShallowSteps && pos >= kPersistentMaxCtx) ||
      !persistent_unsupported(cache).empty()) {
    return false;
  }
  const ModelConfig& c = config_;
  if (!persistent_ || persistent_cache_ != cache.id()) {
    std::vector<PersistentLayer> table(sz(c.n_layer));
    for (int il = 0; il < c.n_layer; ++il) {
      const DeviceLayer& l = weights_.layers[sz(il)];
      PersistentLayer& t = table[sz(il)];
      t.qkv = static_cast<const std::uint8_t*>(l.qkv.data);
      t.wq = static_cast<const std::uint8_t*>(l.wq.data);
      t.wk = static_cast<const std::uint8_t*>(l.wk.data);
      t.wv = static_cast<const std::uint8_t*>(l.wv.data);
      t.q6_k = persistent_q6_k(l);
      t.wo = static_cast<const std::uint8_t*>(l.wo.data);
      t.gate_up = static_cast<const std::uint8_t*>(l.gate_up.data);
      t.down = static_cast<const std::uint8_t*>(l.down.data);
      t.attn_norm = l.attn_norm;
      t.ffn_norm = l.ffn_norm;
      t.k_cache = cache.k(il);
      t.v_cache = cache.v(il);
    }
    persistent_.reset();  // the old one's memory first
    persistent_ = std::make_unique<PersistentDecode>(persistent_shape(cache), table);
    persistent_cache_ = cache.id();
  }
  return true;
}

void CudaModel::record_persistent_step() {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  embed_tokens(weights_.token_embd.type, weights_.token_embd.data, embd_, tokens_.data(), 1,
               c.embed_scale, x_.data(), s);
  rope_tables(pos_.data(), 1, c.n_rot, c.rope_global, weights_.rope_freqs, cos_global_.data(),
              sin_global_.data(), s);
  float* x = persistent_->record(x_.data(), pos_.data(), cos_global_.data(), sin_global_.data(), s);
  add_and_norm(x, nullptr, nullptr, weights_.output_norm, h_.data(), 1, embd_, c.norm_eps, s);
}

void CudaModel::record_chunk(int n, CudaKvCache& cache, bool persistent, int positions) {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  if (persistent) {
    record_persistent_step();
    return;
  }
  embed_tokens(weights_.token_embd.type, weights_.token_embd.data, embd_, tokens_.data(), n,
               c.embed_scale, x_.data(), s);
  x_cur_ = x_.data();
  pending_norm_.reset();
  // Rotary tables: full and sliding layers may differ in base, rotated dimensions and frequency
  // factors (Gemma 4 applies rope_freqs to full layers only).
  rope_tables(pos_.data(), n, c.n_rot, c.rope_global, weights_.rope_freqs, cos_global_.data(),
              sin_global_.data(), s);
  if (any_swa_) {
    const int rot_swa = c.n_rot_swa > 0 ? c.n_rot_swa : c.n_rot;
    rope_tables(pos_.data(), n, rot_swa, c.rope_local,
                c.rope_freqs_full_only ? nullptr : weights_.rope_freqs, cos_local_.data(),
                sin_local_.data(), s);
  }
  if (c.n_embd_per_layer > 0) per_layer_inputs(n);
  // A decode step splits the positions its graph serves (its depth bucket), not the whole cache:
  // at depth 0 in a cache of 4096 positions, the cache's splits left most CTAs nothing to read
  // and the merge many empty partials to combine. QFORGE_DECODE_SPLIT_POSITIONS for
  // measurements (1: the cache's splits).
  const int span = positions > 0 ? std::min(positions, cache.n_ctx()) : cache.n_ctx();
  static const int per_split = static_cast<int>(
      std::clamp(env_number("QFORGE_DECODE_SPLIT_POSITIONS", kDecodeSplitPositions), 1L, 4096L));
  const int splits = n == 1 ? std::clamp(ceil_div(span, per_split), 1, cache.decode_splits())
                            : prefill_splits(n, cache.decode_splits());
  const auto n_layer = sz(c.n_layer);

  for (std::size_t il = 0; il < n_layer; ++il) {
    const DeviceLayer& l = weights_.layers[il];
    if (il == 0) residual_norm(n, nullptr, nullptr, 1.0f, l.attn_norm, normed_qkv(0, n, nullptr));
    attention_block(static_cast<int>(il), n, cache, splits,
                    positions > 0 ? positions : cache.n_ctx());
    const float* next_norm =
        il + 1 < n_layer ? weights_.layers[il + 1].attn_norm : weights_.output_norm;
    ffn_block(static_cast<int>(il), n, next_norm);
  }
  if (pending_norm_) fail("CUDA backend: a deferred norm was left without its GEMV");
}

void CudaModel::record_logits(const float* rows, int n_rows) {
  const auto vocab = sz(config_.n_vocab);
  matmul(weights_.output, rows, logits_.data(), vocab, n_rows);
  softcap(logits_.data(), sz(n_rows) * vocab, config_.final_softcap, stream_.get());
}

// The graph reads the token and position from device memory. Both copies go through page-locked
// memory: from pageable memory the driver stages them, and a device-to-host copy is synchronous
// (measured on an H200: tg128 Llama-3-8B 425 -> 449 tokens/s, Gemma 4 26B-A4B 326 -> 351).
void CudaModel::run_decode_graph(std::int32_t token, int pos, CudaKvCache& cache) {
  const StreamHandle s = stream_.get();
  const std::span<std::int32_t> in = step_in_.span();
  in[0] = token;
  in[1] = pos;
  tokens_.upload(in.first(1), 0, s);
  pos_.upload(in.subspan(1, 1), 0, s);
  // The persistent step's graph (shallow positions), or the ordinary kernels' graph of the
  // position's depth bucket. The persistent step's scratch is allocated here, not while the
  // stream captures.
  const bool persistent = persistent_step(cache, pos);
  const int bucket = decode_bucket(pos, cache.n_ctx());
  const auto index = static_cast<std::size_t>(bucket_index(bucket));
  Graph& graph = persistent ? persistent_graph_ : decode_graphs_[index];
  std::uint64_t& graph_cache = persistent ? persistent_graph_cache_ : decode_graph_caches_[index];
  if (!graph.ready() || graph_cache != cache.id()) {
    graph.capture(s, [&] {
      record_chunk(1, cache, persistent, bucket);
      record_logits(h_.data(), 1);
    });
    graph_cache = cache.id();
  }
  graph.launch(s);
  logits_.download(step_logits_.span(), 0, s);
  stream_.synchronize();
}

CudaKvCache& CudaModel::checked_cache(const char* what, std::span<const std::int32_t> tokens,
                                      int pos0, KvCache& cache_base) const {
  auto* cache = dynamic_cast<CudaKvCache*>(&cache_base);
  if (cache == nullptr) fail("{}: the KV cache was not created by the CUDA backend", what);
  check_forward_inputs(tokens, pos0, *cache, config_.n_vocab);
  if (config_.n_embd_per_layer > 0) {
    const std::size_t rows = weights_.per_layer_token_embd.rows;
    for (const std::int32_t id : tokens) {
      if (static_cast<std::size_t>(id) >= rows) {
        fail("{}: token id {} is outside the per-layer embedding table ({} rows)", what, id, rows);
      }
    }
  }
  return *cache;
}

std::span<const float> CudaModel::decode_step(std::int32_t token, int pos, KvCache& cache_base) {
  CudaKvCache& cache = checked_cache("decode_step", {&token, 1}, pos, cache_base);
  cache.set_filled(pos);
  run_decode_graph(token, pos, cache);
  cache.set_filled(pos + 1);
  return step_logits_.span();
}

std::vector<float> CudaModel::forward(std::span<const std::int32_t> tokens, int pos0,
                                      KvCache& cache_base, const ForwardOptions& options) {
  CudaKvCache* cache = &checked_cache("forward", tokens, pos0, cache_base);
  const ModelConfig& c = config_;
  const std::size_t n = tokens.size();
  cache->set_filled(pos0);

  const auto vocab = sz(c.n_vocab);
  std::vector<float> out((options.all_logits ? n : 1) * vocab);
  const StreamHandle s = stream_.get();
  for (std::size_t c0 = 0; c0 < n; c0 += kMaxBatch) {
    const int m = static_cast<int>(std::min<std::size_t>(kMaxBatch, n - c0));
    const bool last = c0 + static_cast<std::size_t>(m) == n;
    const int pos = pos0 + static_cast<int>(c0);
    if (m == 1 && last && !options.all_logits) {
      run_decode_graph(tokens[c0], pos, *cache);
      std::copy_n(step_logits_.span().data(), vocab, out.data());
      continue;
    }
    tokens_.upload(tokens.subspan(c0, static_cast<std::size_t>(m)), 0, s);
    pos_.upload(std::span<const int>(&pos, 1), 0, s);
    record_chunk(m, *cache);
    if (options.all_logits) {
      for (int r = 0; r < m; r += kLogitsRows) {
        const int rows = std::min(kLogitsRows, m - r);
        record_logits(h_.data() + sz(r) * embd_, rows);
        logits_.download(std::span(out).subspan((c0 + sz(r)) * vocab, sz(rows) * vocab), 0, s);
      }
    } else if (last) {
      record_logits(h_.data() + sz(m - 1) * embd_, 1);
      logits_.download(std::span(out).first(vocab), 0, s);
    }
  }
  stream_.synchronize();
  cache->set_filled(pos0 + static_cast<int>(n));
  return out;
}

}  // namespace qforge::cuda

namespace qforge {

std::unique_ptr<Model> make_cuda_model(std::unique_ptr<GgufReader> gguf, ModelConfig config) {
  if (!cuda::available()) fail("CUDA backend: no CUDA device is available");
  return std::make_unique<cuda::CudaModel>(std::move(gguf), std::move(config));
}

}  // namespace qforge
