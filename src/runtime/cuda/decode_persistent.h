// A whole Llama-style decode step in one persistent kernel (decode_persistent.cu): every layer's
// Q/K/V, rotary embedding and cache store, attention, output projection, gated FFN and residual
// updates, without kernel boundaries between them.
//
// Why: a decode step as separate launches pays, per launch, a ramp of the weight stream, a last
// wave and the planes of x built again on every SM (docs/cuda.md, "Not done yet"): per Llama-3-8B
// layer ~17 us of gaps against a ~29 us roofline. Here each warp streams the weight rows of all
// its tasks, across matrices and layers, through one ring of shared memory, so the stream runs
// on while the activations the next matrix needs are still being produced; the steps of a layer
// meet at counters in global memory instead of kernel ends.
//
// Scope: dense layers without QK-norm, post norms, sliding windows, soft-capping or per-layer
// inputs (Llama and its relatives), every matrix Q4_0x8 (q4_0x8.h), or every matrix GGUF Q4_K as
// stored, or each matrix Q4_K or Q6_K (llama-quantize's Q4_K_M mixes), one token, rotary embedding
// over the whole head. PersistentDecode::unsupported says why a model does not qualify.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// The forms of a step's matrices (PersistentShape::weights).
enum class PersistentWeights {
  kQ4_0x8,  // all Q4_0x8
  kQ4_K,    // all Q4_K
  kMixed,   // each Q4_K or Q6_K (PersistentLayer::q6_k); Q6_K rows a multiple of 2048 columns
};

// Bits of PersistentLayer::q6_k: which matrices are Q6_K in a kMixed step.
enum PersistentMatrix : unsigned {
  kPersistentQ = 1,
  kPersistentK = 2,
  kPersistentV = 4,
  kPersistentO = 8,
  kPersistentGateUp = 16,
  kPersistentDown = 32,
};

// One layer's weights (in PersistentShape::weights' forms) and cache.
struct PersistentLayer {
  const std::uint8_t* qkv = nullptr;      // [q_dim + 2 * kv_dim x n_embd]: Q, K, V rows
  // The same three matrices apart (kMixed: they may differ in form, so need not be stacked).
  const std::uint8_t *wq = nullptr, *wk = nullptr, *wv = nullptr;
  const std::uint8_t* wo = nullptr;       // [n_embd x q_dim]
  const std::uint8_t* gate_up = nullptr;  // [2 * n_ff x n_embd]: gate rows, then up rows
  const std::uint8_t* down = nullptr;     // [n_embd x n_ff]
  const float* attn_norm = nullptr;       // [n_embd]
  const float* ffn_norm = nullptr;        // [n_embd]
  void* k_cache = nullptr;                // [n_ctx x n_head_kv x head_dim], BF16 or F32
  void* v_cache = nullptr;
  unsigned q6_k = 0;  // kMixed: PersistentMatrix bits of the Q6_K matrices
};

struct PersistentShape {
  int n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
  float eps = 0.0f, attn_scale = 1.0f;
  RopeStyle rope_style = RopeStyle::kAdjacentPairs;
  bool cache_bf16 = true;
  // The matrices' forms: Q4_0x8 or Q4_K rows are 576 bytes per 1024 columns, Q6_K rows 840.
  PersistentWeights weights = PersistentWeights::kQ4_0x8;
};

// The weight ring of each warp: steps of 32 blocks per row per stage, and stages.
struct PersistentRing {
  int span = 0, stages = 0;
};

class PersistentDecode {
 public:
  // Why the shape cannot run here (empty: it can), before any allocation.
  static std::string unsupported(const PersistentShape& shape);

  // Allocates the step's scratch and uploads the layer table (n_layer entries).
  PersistentDecode(const PersistentShape& shape, const std::vector<PersistentLayer>& layers);
  ~PersistentDecode();
  PersistentDecode(const PersistentDecode&) = delete;
  PersistentDecode& operator=(const PersistentDecode&) = delete;

  // Enqueues one step: x (n_embd floats) is the token's embedding, *pos its position, cos / sin
  // its rotary tables (head_dim / 2 floats each, as rope_tables writes them). Returns the residual
  // after the last layer (n_embd floats, owned here, valid until the next step).
  float* record(const float* x, const int* pos, const float* cos, const float* sin,
                StreamHandle stream);

 private:
  PersistentShape shape_;
  int grid_ = 0, max_splits_ = 0, probe_ = 0, poll_ns_ = 32;
  PersistentRing ring_;
  std::string trace_path_;
  DeviceBuffer<unsigned long long> trace_;
  std::size_t layer_floats_ = 0, layer_counters_ = 0, smem_bytes_ = 0;
  DeviceBuffer<PersistentLayer> layers_;
  DeviceBuffer<float> acts_, part_;
  DeviceBuffer<int> counters_;
};

// Where decode steps take the persistent kernel (for models that qualify): at positions below
// kPersistentMaxCtx, whatever the cache's size (the default; QFORGE_DECODE_PERSISTENT=1), at every
// position (=2; tests), or nowhere (=0). Its attention is a plain split over the CTAs, so at depth
// the ordinary kernels' flash decoding is ahead. H200, Llama-3-8B tg128 at depth 256 / 512 / 1024
// / 2048 (docs/benchmarks.md, sixteenth pass): persistent 488 / 478 / 437 / 397, ordinary 447 /
// 420 / 439 / 444 tokens/s.
enum class PersistentMode { kOff, kShallowSteps, kAlways };
inline constexpr int kPersistentMaxCtx = 1024;
PersistentMode decode_persistent_mode();
void set_decode_persistent_mode(PersistentMode mode);

}  // namespace qforge::cuda
