// The CUDA implementation of Model: the forward pass of src/runtime/cpu/cpu_model.cpp on the GPU,
// steered by the same ModelConfig. Weights stay resident in their stored types (cuda_weights.h),
// activations and accumulation are F32, the KV cache is BF16 or F32. Everything a token needs is
// enqueued on one stream without host round trips; a one-token step (decode) is captured once per
// KV cache as a CUDA graph and replayed. Prompts run in chunks of up to kMaxBatch tokens through
// the batched GEMV.
#pragma once

#include <cstdint>
#include <memory>

#include "formats/gguf.h"
#include "model/model.h"
#include "model/weights.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/cuda_kv_cache.h"
#include "runtime/cuda/cuda_weights.h"
#include "runtime/cuda/graph.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

class CudaModel final : public Model {
 public:
  static constexpr int kMaxBatch = 64;

  CudaModel(std::unique_ptr<GgufReader> gguf, ModelConfig config);

  const ModelConfig& config() const override { return config_; }
  std::unique_ptr<KvCache> new_cache(int n_ctx, KvType type) const override;
  std::vector<float> forward(std::span<const std::int32_t> tokens, int pos0, KvCache& cache,
                             const ForwardOptions& options = {}) override;

  std::size_t weight_bytes() const { return weights_.bytes(); }

 private:
  // Enqueues one chunk of n tokens whose ids and start position are already in tokens_/pos_.
  // Logits of the last row (or of every row with all_rows) go to logits_ when `logits` is set.
  void record_chunk(int n, CudaKvCache& cache, bool logits, bool all_rows);
  int prefill_splits(int n_tokens, int decode_splits) const;

  std::unique_ptr<GgufReader> gguf_;
  ModelConfig config_;
  ModelWeights host_weights_;
  int sm_count_ = 0;
  std::size_t q_dim_, k_dim_, v_dim_, o_dim_, qkv_dim_, ff_, embd_;
  bool any_sliding_ = false;
  DeviceWeights weights_;
  Stream stream_;

  DeviceBuffer<float> x_, h_, qkv_, att_, o_, gate_up_, act_, part_, logits_;
  DeviceBuffer<float> cos_global_, sin_global_, cos_local_, sin_local_;
  DeviceBuffer<std::int32_t> tokens_;
  DeviceBuffer<int> pos_;

  Graph decode_graph_;
  std::uint64_t decode_graph_cache_ = 0;  // id of the cache the graph was captured for
};

}  // namespace qforge::cuda
