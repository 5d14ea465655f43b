#include "runtime/cuda/cuda_model.h"

#include <algorithm>

#include "core/error.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/ops.h"
#include "runtime/cuda_device.h"
#include "runtime/cuda_model.h"

namespace qforge::cuda {
namespace {

std::size_t sz(int v) {
  return static_cast<std::size_t>(v);
}

int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

// CTAs per head for a one-token step: enough (token, head, split) CTAs to fill the device twice.
int max_decode_splits(const ModelConfig& c, int sm_count) {
  return std::clamp(ceil_div(2 * sm_count, c.n_head), 1, 64);
}

// Checks what the GPU kernels need and returns the device's multiprocessor count.
int checked_sm_count(const ModelConfig& c) {
  if (!batch_attention_supported(c.head_dim_k, c.head_dim_v)) {
    fail(
        "CUDA backend: head sizes {} (key) / {} (value) are not supported (each <= 512 and in "
        "the same power-of-two bucket)",
        c.head_dim_k, c.head_dim_v);
  }
  return current_device().sm_count;
}

// Rows of split results the attention scratch must hold for any batch of 1..kMaxBatch tokens.
std::size_t part_rows(const ModelConfig& c, int sm_count) {
  const int s_max = max_decode_splits(c, sm_count);
  std::size_t rows = sz(s_max);
  for (int n = 2; n <= CudaModel::kMaxBatch; ++n) {
    const int splits = std::clamp(ceil_div(2 * sm_count, n * c.n_head), 1, s_max);
    rows = std::max(rows, sz(n * splits));
  }
  return rows * sz(c.n_head) * sz(c.head_dim_v + 2);
}

struct ScratchSizes {
  std::size_t x, qkv, att, gate_up, act, part, logits, rope;
  std::size_t total_bytes() const {
    return 4 * (3 * x + qkv + att + gate_up + act + part + logits + 4 * rope) + (1u << 26);
  }
};

ScratchSizes scratch_sizes(const ModelConfig& c, int sm_count) {
  const std::size_t b = CudaModel::kMaxBatch;
  ScratchSizes s{};
  s.x = b * sz(c.n_embd);
  s.qkv = b * sz(c.n_head * c.head_dim_k + c.n_head_kv * (c.head_dim_k + c.head_dim_v));
  s.att = b * sz(c.n_head * c.head_dim_v);
  s.gate_up = b * 2 * sz(c.n_ff);
  s.act = b * sz(c.n_ff);
  s.part = part_rows(c, sm_count);
  s.logits = b * sz(c.n_vocab);
  s.rope = b * sz(c.n_rot / 2);
  return s;
}

void matmul(const DeviceMatrix& m, const float* x, float* y, std::size_t ldy, int n,
            StreamHandle stream) {
  gemv_ld(m.type, m.data, m.rows, m.cols, x, y, ldy, n, stream);
}

}  // namespace

CudaModel::CudaModel(std::unique_ptr<GgufReader> gguf, ModelConfig config)
    : gguf_(std::move(gguf)),
      config_(std::move(config)),
      host_weights_(bind_weights(*gguf_, config_)),
      sm_count_(checked_sm_count(config_)),
      q_dim_(sz(config_.n_head * config_.head_dim_k)),
      k_dim_(sz(config_.n_head_kv * config_.head_dim_k)),
      v_dim_(sz(config_.n_head_kv * config_.head_dim_v)),
      o_dim_(sz(config_.n_head * config_.head_dim_v)),
      qkv_dim_(q_dim_ + k_dim_ + v_dim_),
      ff_(sz(config_.n_ff)),
      embd_(sz(config_.n_embd)),
      any_sliding_(std::any_of(config_.layer_sliding.begin(), config_.layer_sliding.end(),
                               [](bool b) { return b; }) &&
                   config_.sliding_window > 0),
      weights_(host_weights_, config_, scratch_sizes(config_, sm_count_).total_bytes()) {
  const ScratchSizes s = scratch_sizes(config_, sm_count_);
  x_ = DeviceBuffer<float>(s.x);
  h_ = DeviceBuffer<float>(s.x);
  o_ = DeviceBuffer<float>(s.x);
  qkv_ = DeviceBuffer<float>(s.qkv);
  att_ = DeviceBuffer<float>(s.att);
  gate_up_ = DeviceBuffer<float>(s.gate_up);
  act_ = DeviceBuffer<float>(s.act);
  part_ = DeviceBuffer<float>(s.part);
  logits_ = DeviceBuffer<float>(s.logits);
  cos_global_ = DeviceBuffer<float>(s.rope);
  sin_global_ = DeviceBuffer<float>(s.rope);
  cos_local_ = DeviceBuffer<float>(s.rope);
  sin_local_ = DeviceBuffer<float>(s.rope);
  tokens_ = DeviceBuffer<std::int32_t>(sz(kMaxBatch));
  pos_ = DeviceBuffer<int>(1);
}

std::unique_ptr<KvCache> CudaModel::new_cache(int n_ctx, KvType type) const {
  // Split the positions of a decode step over enough CTAs to fill the device, but not into
  // pieces of fewer than ~16 positions at full context.
  const int splits =
      std::clamp(std::min(max_decode_splits(config_, sm_count_), ceil_div(n_ctx, 16)), 1, 64);
  return std::make_unique<CudaKvCache>(config_, n_ctx, type, splits);
}

int CudaModel::prefill_splits(int n_tokens, int decode_splits) const {
  return std::clamp(ceil_div(2 * sm_count_, n_tokens * config_.n_head), 1, decode_splits);
}

void CudaModel::record_chunk(int n, CudaKvCache& cache, bool logits, bool all_rows) {
  const ModelConfig& c = config_;
  const StreamHandle s = stream_.get();
  const float eps = c.norm_eps;
  embed_tokens(weights_.token_embd.type, weights_.token_embd.data, embd_, tokens_.data(), n,
               c.embed_scale, x_.data(), s);
  rope_tables(pos_.data(), n, c.n_rot, c.rope_global, weights_.rope_freqs, cos_global_.data(),
              sin_global_.data(), s);
  if (any_sliding_) {
    rope_tables(pos_.data(), n, c.n_rot, c.rope_local, weights_.rope_freqs, cos_local_.data(),
                sin_local_.data(), s);
  }
  const int splits = n == 1 ? cache.decode_splits() : prefill_splits(n, cache.decode_splits());
  const auto n_layer = static_cast<std::size_t>(c.n_layer);

  for (std::size_t il = 0; il < n_layer; ++il) {
    const DeviceLayer& l = weights_.layers[il];
    const bool sliding = c.is_sliding(static_cast<int>(il));
    if (il == 0)
      add_and_norm(x_.data(), nullptr, nullptr, l.attn_norm, h_.data(), n, embd_, eps, s);

    // Attention block: Q/K/V into the interleaved qkv buffer.
    if (!l.qkv.empty()) {
      matmul(l.qkv, h_.data(), qkv_.data(), qkv_dim_, n, s);
    } else {
      matmul(l.wq, h_.data(), qkv_.data(), qkv_dim_, n, s);
      matmul(l.wk, h_.data(), qkv_.data() + q_dim_, qkv_dim_, n, s);
      matmul(l.wv, h_.data(), qkv_.data() + q_dim_ + k_dim_, qkv_dim_, n, s);
    }
    QkPrepare qp;
    qp.n_head = c.n_head;
    qp.n_head_kv = c.n_head_kv;
    qp.head_dim = c.head_dim_k;
    qp.n_rot = c.n_rot;
    qp.token_stride = qkv_dim_;
    qp.k_offset = q_dim_;
    qp.q_norm = l.q_norm;
    qp.k_norm = l.k_norm;
    qp.eps = eps;
    qp.style = c.rope_style;
    qk_prepare(qkv_.data(), n, qp, sliding ? cos_local_.data() : cos_global_.data(),
               sliding ? sin_local_.data() : sin_global_.data(), s);
    store_kv(qkv_.data(), qkv_dim_, q_dim_, q_dim_ + k_dim_, n, pos_.data(), cache.layout(),
             cache.k(static_cast<int>(il)), cache.v(static_cast<int>(il)), s);
    BatchAttention ap;
    ap.n_head = c.n_head;
    ap.kv = cache.layout();
    ap.scale = c.attn_scale;
    ap.softcap = c.attn_softcap;
    ap.window = sliding ? c.sliding_window : 0;
    ap.q_stride = qkv_dim_;
    batch_attention(qkv_.data(), cache.k(static_cast<int>(il)), cache.v(static_cast<int>(il)),
                    pos_.data(), n, ap, splits, part_.data(), att_.data(), s);
    matmul(l.wo, att_.data(), o_.data(), embd_, n, s);
    add_and_norm(x_.data(), o_.data(), l.post_attn_norm, l.ffn_norm, h_.data(), n, embd_, eps, s);

    // Feed-forward block.
    if (!l.gate_up.empty()) {
      matmul(l.gate_up, h_.data(), gate_up_.data(), 2 * ff_, n, s);
    } else {
      matmul(l.gate, h_.data(), gate_up_.data(), 2 * ff_, n, s);
      matmul(l.up, h_.data(), gate_up_.data() + ff_, 2 * ff_, n, s);
    }
    glu_rows(c.ffn_act, gate_up_.data(), act_.data(), n, ff_, s);
    matmul(l.down, act_.data(), o_.data(), embd_, n, s);
    const float* next_norm =
        il + 1 < n_layer ? weights_.layers[il + 1].attn_norm : weights_.output_norm;
    add_and_norm(x_.data(), o_.data(), l.post_ffn_norm, next_norm, h_.data(), n, embd_, eps, s);
  }

  if (logits) {
    // h now holds the final-normed rows.
    const int rows = all_rows ? n : 1;
    const float* last = h_.data() + (all_rows ? 0 : sz(n - 1) * embd_);
    const auto vocab = sz(c.n_vocab);
    matmul(weights_.output, last, logits_.data(), vocab, rows, s);
    softcap(logits_.data(), sz(rows) * vocab, c.final_softcap, s);
  }
}

std::vector<float> CudaModel::forward(std::span<const std::int32_t> tokens, int pos0,
                                      KvCache& cache_base, const ForwardOptions& options) {
  auto* cache = dynamic_cast<CudaKvCache*>(&cache_base);
  if (cache == nullptr) fail("forward: the KV cache was not created by the CUDA backend");
  const ModelConfig& c = config_;
  const std::size_t n = tokens.size();
  check_forward_inputs(tokens, pos0, *cache, c.n_vocab);
  cache->set_filled(pos0);

  const auto vocab = sz(c.n_vocab);
  std::vector<float> out((options.all_logits ? n : 1) * vocab);
  const StreamHandle s = stream_.get();
  for (std::size_t c0 = 0; c0 < n; c0 += kMaxBatch) {
    const int m = static_cast<int>(std::min<std::size_t>(kMaxBatch, n - c0));
    const bool last = c0 + static_cast<std::size_t>(m) == n;
    const int pos = pos0 + static_cast<int>(c0);
    tokens_.upload(tokens.subspan(c0, static_cast<std::size_t>(m)), 0, s);
    pos_.upload(std::span<const int>(&pos, 1), 0, s);
    if (m == 1 && last && !options.all_logits) {
      // Decode step: the graph reads the token and position from device memory.
      if (!decode_graph_.ready() || decode_graph_cache_ != cache->id()) {
        decode_graph_.capture(s, [&] { record_chunk(1, *cache, true, false); });
        decode_graph_cache_ = cache->id();
      }
      decode_graph_.launch(s);
    } else {
      record_chunk(m, *cache, last || options.all_logits, options.all_logits);
    }
    if (options.all_logits) {
      logits_.download(std::span(out).subspan(c0 * vocab, sz(m) * vocab), 0, s);
    } else if (last) {
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
