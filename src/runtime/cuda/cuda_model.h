// The CUDA implementation of Model: the forward pass of src/runtime/cpu/cpu_model.cpp on the GPU,
// steered by the same ModelConfig. Weights stay resident in their stored types (cuda_weights.h),
// activations and accumulation are F32, the KV cache is BF16 or F32. Everything a token needs is
// enqueued on one stream without host round trips; a one-token step (decode) is captured once per
// KV cache as a CUDA graph and replayed. Prompts run in chunks of up to kMaxBatch tokens through
// the batched GEMV, or through the tensor-core GEMM (gemm_tc.h) for chunks of at least
// kGemmMinTokens tokens unless the environment sets QFORGE_GEMM=off. Large chunks let the GEMM
// read each weight once per 512 tokens; the LM head runs on at most kLogitsRows rows at a time,
// so the logits buffer stays small for 262144-token vocabularies.
//
// Gemma 4: per-layer head geometry and RoPE, value norm, V = K layers, KV-sharing layers, layer
// output scales, per-layer embeddings (E models) and MoE blocks. MoE routing runs on the GPU and
// only the chosen experts are computed (moe.h), so decode steps stay inside the graph.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "formats/gguf.h"
#include "model/model.h"
#include "model/weights.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/cuda_kv_cache.h"
#include "runtime/cuda/cuda_weights.h"
#include "runtime/cuda/decode_persistent.h"
#include "runtime/cuda/graph.h"
#include "runtime/cuda/moe_gemm.h"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// See CudaModel::set_gemv_norms. kPostNorm: only updates whose block output takes a norm of
// its own first (Gemma's post norms; Llama has none), where the separate kernel does two
// reductions, and only before products of at least kPostNormMinCols columns. H200 tg128, norms
// in the GEMVs / apart (docs/benchmarks.md, twelfth pass): Gemma 4 31B 139.8-140.9 /
// 134.0-134.5, Llama-3-8B 454.6-456.7 / 468.1-470.1: a norm kernel between two GEMVs also lets
// the second one's weight stream start early, and in the Llama timelines the normed GEMVs'
// streams ran that much slower. kAll: every update, at any width (tests).
enum class GemvNorms { kOff, kPostNorm, kAll };

// The narrowest rows whose post-norm updates kPostNorm takes into the GEMV. H200 tg128, norms
// inside / apart (twenty-second pass, docs/benchmarks.md): Gemma 3 4B (2560 columns) 545.3-550.3
// / 561.6-564.3, Gemma 4 E4B (2560) 397.8-399.8 / 399.2-400.1, Gemma 4 31B (5376) 144.3-144.9 /
// 139.8-140.2. A short product gains more from streaming its first stages while the norm kernel
// runs than it loses to the launch boundary. QFORGE_GEMV_NORM_MIN_COLS for measurements.
constexpr std::size_t kPostNormMinCols = 4096;

// The shape of one layer's attention and FFN, from the per-layer accessors of ModelConfig.
struct LayerPlan {
  int dk = 0, dv = 0, n_kv = 0, n_rot = 0;
  bool swa = false;       // sliding-type layer: its geometry and RoPE tables
  bool window = false;    // the sliding window limits its attention
  bool has_kv = true;     // computes and stores its own K/V
  bool v_from_k = false;  // no attn_v: V is K before K's norm
  int kv_source = 0;      // layer whose cache it attends to
  std::size_t q_dim = 0, k_dim = 0, v_dim = 0, qkv_dim = 0, ff = 0;
};

class CudaModel final : public Model {
 public:
  static constexpr int kMaxBatch = 512;      // tokens per prompt chunk
  static constexpr int kGemvMaxTokens = 64;  // the batched GEMV takes at most this many at once
  static constexpr int kLogitsRows = 64;     // logits computed per LM-head pass
  static constexpr int kGemmMinTokens = 16;

  CudaModel(std::unique_ptr<GgufReader> gguf, ModelConfig config);

  const ModelConfig& config() const override { return config_; }
  std::unique_ptr<KvCache> new_cache(int n_ctx, KvType type) const override;
  std::span<const float> decode_step(std::int32_t token, int pos, KvCache& cache) override;
  std::vector<float> forward(std::span<const std::int32_t> tokens, int pos0, KvCache& cache,
                             const ForwardOptions& options = {}) override;

  std::size_t weight_bytes() const { return weights_.bytes(); }
  // Prompt chunks of >= kGemmMinTokens tokens through the tensor-core GEMM (BF16 operands) or
  // the F32 GEMV. Initially on, unless QFORGE_GEMM=off.
  void set_prefill_gemm(bool on) { use_gemm_ = on; }
  // Attention through the flash kernels where they support the layer's shape (decode: F32;
  // prompt chunks that also take the GEMM: tensor cores, Q and P rounded to BF16) or through
  // batch_attention everywhere (F32). Initially on, unless QFORGE_FLASH=off.
  void set_flash_attention(bool on) {
    use_flash_ = on;
    decode_graph_caches_.fill(0);  // the decode graphs are captured again with the new choice
  }
  // Which residual updates and norms before a Q/K/V or gate/up product a decode step computes
  // inside that product's GEMV (Q4_0x8 matrices; gemv_q4_0x8_normed in q4_0x8.h) instead of in a
  // kernel of their own. Initially GemvNorms::kPostNorm; QFORGE_GEMV_NORM=0 / all: kOff / kAll.
  void set_gemv_norms(GemvNorms which) {
    gemv_norms_ = which;
    decode_graph_caches_.fill(0);
  }
  // Why a decode step on this cache cannot run as one persistent kernel (decode_persistent.h);
  // empty: it can, and does where decode_persistent_mode() says so.
  std::string persistent_unsupported(const CudaKvCache& cache) const;

 private:
  // Enqueues one chunk of n tokens whose ids and start position are already in tokens_/pos_;
  // leaves the final-normed rows in h_. persistent (n = 1, persistent_step said so): through the
  // persistent kernel. positions: those the attention must serve (a decode graph's depth bucket),
  // 0 for all of the cache's.
  void record_chunk(int n, CudaKvCache& cache, bool persistent = false, int positions = 0);
  // logits_ = soft-capped LM head of n_rows (<= kLogitsRows) final-normed rows.
  void record_logits(const float* rows, int n_rows);
  // One token through the decode graph (captured on first use per cache), its logits copied into
  // step_logits_; returns once they are there.
  void run_decode_graph(std::int32_t token, int pos, CudaKvCache& cache);
  // The cache as the CUDA backend's, after forward()'s input checks (check_forward_inputs and the
  // per-layer embedding table's rows); `what` names the caller in the errors.
  CudaKvCache& checked_cache(const char* what, std::span<const std::int32_t> tokens, int pos0,
                             KvCache& cache_base) const;
  // positions: the most the step's attention reads (decode: flash decoding from kFlashDecodeMinCtx,
  // with splits for that many).
  void attention_block(int il, int n, CudaKvCache& cache, int splits, int positions);
  // Whether a decode step at position pos on the cache runs as the persistent kernel (as
  // decode_persistent_mode() says, where supported); if so, makes sure persistent_ serves this
  // cache (allocating: not while a stream captures).
  bool persistent_step(CudaKvCache& cache, int pos);
  // The model's geometry as the persistent step takes it, with the cache's element type.
  PersistentShape persistent_shape(const CudaKvCache& cache) const;
  // Records a decode step through persistent_; leaves the final-normed row in h_.
  void record_persistent_step();
  // The FFN of h_, then the residual update: x_ and h_ (the next_norm of x_) as the layer leaves
  // them.
  void ffn_block(int il, int n, const float* next_norm);
  void residual_update(int il, int n, const float* next_norm);  // from the FFN output in o_
  void dense_ffn(int il, int n, StreamHandle s);  // the gated FFN of h_ into o_, on stream s
  void moe_block(int il, int n);                  // leaves the k slot outputs per token in exp_out_
  void moe_experts(int il, int n);                // moe_block after the routing
  void per_layer_inputs(int n);
  // x += post_norm(o) [then x *= scale], h = next_norm(x) (add_and_norm / residual_scale_norm),
  // or, with defer, left in pending_norm_ for the next product's GEMV to compute.
  void residual_norm(int n, const float* o, const float* o_norm, float scale,
                     const float* next_norm, bool defer);
  // Whether a decode step's Q/K/V (resp. gate/up) product of layer il takes the update and norm
  // before it, whose block output norm is o_norm (null: none), as pending_norm_.
  bool normed_qkv(int il, int n, const float* o_norm) const;
  bool normed_gate_up(int il, int n, const float* o_norm) const;
  bool norm_in_gemv(const float* o_norm, std::size_t n_cols) const;
  // A decode step's product by m that can take the update and norm: a single Q4_0x8 matrix.
  bool normed_product(const DeviceMatrix& m, int n, const float* o_norm) const;
  // pending_norm_ as the input of the GEMV that takes it (cleared), with the updated residual
  // written to the other residual buffer, which becomes x_cur_.
  ResidualNormInput take_pending_norm();
  void matmul(const DeviceMatrix& m, const float* x, float* y, std::size_t ldy, int n) {
    matmul(m, x, y, ldy, n, stream_.get());
  }
  void matmul(const DeviceMatrix& m, const float* x, float* y, std::size_t ldy, int n,
              StreamHandle s);
  void gemv_pieces(GgmlType type, const void* w, std::size_t rows, std::size_t cols, const float* x,
                   float* y, std::size_t ldy, int n, StreamHandle s);
  int prefill_splits(int n_tokens, int decode_splits) const;
  // A chunk of n tokens takes the tensor-core (BF16-operand) prompt kernels: GEMM, MoE GEMM,
  // flash prefill. Smaller chunks and decode steps stay on the F32 GEMV paths.
  bool tensor_core_chunk(int n) const { return use_gemm_ && n >= kGemmMinTokens; }

  std::unique_ptr<GgufReader> gguf_;
  ModelConfig config_;
  ModelWeights host_weights_;
  std::vector<LayerPlan> layers_;
  int sm_count_ = 0;
  std::size_t embd_;
  std::size_t per_layer_width_ = 0;  // E models: n_layer (of the file) * n_embd_per_layer
  bool any_swa_ = false;
  bool use_gemm_ = true;
  bool use_flash_ = true;  // flash attention kernels (flash_attention.h); QFORGE_FLASH=off: not
  DeviceWeights weights_;
  Stream stream_;
  // MoE layers run the dense FFN on side_stream_ beside the routed experts on stream_
  // (ffn_block); fork_ and join_ order the two. QFORGE_MOE_FORK=0: one stream. (Either stream at
  // the device's highest priority measured slower, ninth pass.)
  Stream side_stream_;
  Event fork_{false}, join_{false};
  bool fork_moe_ = true;
  bool fuse_moe_combine_ = true;  // moe_combine with the residual update; QFORGE_MOE_COMBINE_FUSED
  bool early_down_ = true;    // down experts' weights before the PDL wait; QFORGE_MOE_DOWN_EARLY
  bool early_planes_ = true;  // expert gate/up planes before the wait; QFORGE_MOE_PLANES_EARLY
  bool fuse_router_ = true;   // moe_router_route for F32 routers; QFORGE_MOE_ROUTER_FUSED
  GemvNorms gemv_norms_ = GemvNorms::kPostNorm;  // set_gemv_norms; QFORGE_GEMV_NORM

  DeviceBuffer<float> x_, h_, qkv_, att_, o_, gate_up_, act_, part_, flash_part_, logits_;
  // The residual stream is in x_cur_: x_, or on decode steps one row of x_alt_ after a GEMV that
  // took a pending norm (its CTA 0 writes the updated row while every CTA reads the old one, so
  // the two alternate). Both only while a chunk is recorded.
  DeviceBuffer<float> x_alt_;
  float* x_cur_ = nullptr;
  std::optional<ResidualNormInput> pending_norm_;
  DeviceBuffer<float> cos_global_, sin_global_, cos_local_, sin_local_;
  // MoE scratch: router input and logits, routing, per-slot expert activations.
  DeviceBuffer<float> router_in_, expert_in_, router_logits_, route_weights_;
  DeviceBuffer<float> exp_gate_up_, exp_act_, exp_out_;
  DeviceBuffer<int> expert_ids_;
  DeviceBuffer<unsigned> route_counters_;  // moe_router_route's per-token CTA counters
  MoeGemmScratch moe_scratch_;             // prompt chunks: expert-grouped products
  // Per-layer embeddings: [n x width] inputs, token rows, gate activations.
  DeviceBuffer<float> per_layer_, per_layer_tok_, per_layer_gate_;
  DeviceBuffer<std::int32_t> tokens_;
  DeviceBuffer<int> pos_;
  // A decode step's token id and position, and its logits, on the host side of the step's copies.
  PinnedBuffer<std::int32_t> step_in_;
  PinnedBuffer<float> step_logits_;
  DeviceBuffer<int> attn_counters_;  // batch_attention's per (token, head) split counters

  // The persistent decode step of the cache persistent_cache_ (its layer table holds the cache).
  std::unique_ptr<PersistentDecode> persistent_;
  std::uint64_t persistent_cache_ = 0;

  // Decode steps on the ordinary kernels, one graph per depth bucket (cuda_model.cpp,
  // decode_bucket; index ceil(log2(bucket))), with the id of the cache each was captured for.
  std::array<Graph, 32> decode_graphs_;
  std::array<std::uint64_t, 32> decode_graph_caches_{};
  Graph persistent_graph_;  // a decode step through persistent_
  std::uint64_t persistent_graph_cache_ = 0;
};

}  // namespace qforge::cuda
