// The persistent decode step (decode_persistent.h).
//
// One CTA of 16 warps per SM, all resident at once (a cooperative launch). A layer is five
// steps:
//   qkv    tasks of 2 rows of [Q; K; V] x rms_norm(x) * attn_norm, dealt to the grid's warps
//   attn   (Q head, split) tasks dealt to CTAs: rotary embedding of the query and of the new
//          position's K, its K / V into the cache, softmax over the positions, values
//   out    2 rows of Wo x attn per task; x_mid = x + those rows
//   gateup a gate row and its up row per task; silu(gate) * up
//   down   2 rows of W_down x act per task; x_out = x_mid + those rows
// Warp tasks go to global warp g = warp * grid + CTA, task g + k * (16 * grid), so a step's last,
// partial round is spread over all SMs. Each step waits, CTA by CTA, for a counter in global
// memory that the step before completes, then builds x's integer planes in shared memory
// (q4_0x8_planes.cuh; the norm first where the step has one). The weights never wait: each warp
// walks the rows of all its tasks of all steps and layers in order, S - 1 stages ahead of its
// products, by bulk copies into its ring, so the next matrix is already streaming while a counter
// is awaited. A stage holds 64 blocks of each of the task's two rows, two per lane: the products
// are bound by the warps' instruction latency (ncu: half the issue slots used), and a stage's
// fixed work (copies, barrier wait, loop) then serves twice the weights.
//
// Memory ordering: a warp stores, meets at a warp barrier, and its lane 0 adds to a counter with
// an acq_rel atomic; a CTA sees a count by an acquire load in one thread and a CTA barrier, and
// reads what the step before wrote through L2 (ld.global.cg), never through the non-coherent L1
// paths.
//
// The matrices are Q4_0x8 or GGUF Q4_K (a kernel template parameter): both are 576 bytes per 1024
// columns, so the ring and its copies serve either, and lane l's block of a 32-block step covers
// the same 32 columns (Q4_K: sub-block l & 7 of super-block l >> 3, q4_0x8_planes.cuh). In the
// mixed form (PersistentWeights::kMixed, llama-quantize's Q4_K_M) a matrix may be GGUF Q6_K: 840
// bytes per 1024 columns, so a stage of both rows of a task would not fit a slot; a Q6_K task
// streams its rows one per ring item instead (2048 columns, 1680 bytes: row 0's stage k, then row
// 1's), and lane l takes sub-block l & 7 of super-block l >> 3 as well. (Slots sized for two Q6_K
// rows made the whole step 3.6% slower on an all-Q4_K Llama-3-8B.)
//
// Measured on an H200 (docs/benchmarks.md, sixteenth pass): Llama-3-8B tg128 535-538 tokens/s
// against 479-480 with the ordinary kernels (one block per lane and stage: 491-493). Where a
// layer's ~54 us go (roofline 29 us) is in docs/cuda.md ("The persistent decode step").
#include "runtime/cuda/check.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <type_traits>

#include "runtime/cuda/bulk_copy.cuh"
#include "runtime/cuda/cache_element.cuh"
#include "runtime/cuda/decode_persistent.h"
#include "runtime/cuda/device_attrs.h"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/glu.cuh"
#include "runtime/cuda/prefetch.cuh"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/q4_0x8_planes.cuh"
#include "runtime/cuda/reduce.cuh"
#include "runtime/cuda_device.h"

namespace qforge::cuda {
namespace {

constexpr int kWarps = 16, kThreads = 32 * kWarps;
constexpr int kRows = 2;                           // rows per task (one gate/up pair)
constexpr int kStepBytes = 576;                    // 32 blocks of a row: 4 groups of 144 bytes
constexpr int kQ6StepBytes = 840;                  // the same 1024 columns in Q6_K: 4 x 210 bytes

// A Q6_K row of n_cols columns (a multiple of 256): 210-byte super-blocks.
__host__ __device__ constexpr std::size_t q6_k_row_bytes(int n_cols) {
  return static_cast<std::size_t>(n_cols / 256) * 210;
}
// A ring stage holds kSpan steps (32 kSpan blocks) of each of a task's two rows: each lane takes
// kSpan blocks of every row per stage, so the per-stage work (the copies' issue, the barrier wait,
// the loop) is spread over kSpan times the weights.
__host__ __device__ constexpr int slot_bytes(int span) {
  return kRows * span * kStepBytes;
}
// Ring shapes (steps per stage, stages), the default first; QFORGE_PERSISTENT_SPAN=1 picks the
// other for measurements. H200 tg128 Llama-3-8B (docs/benchmarks.md, sixteenth pass): 2 x 3
// 536-538, 2 x 4 533-535, 2 x 5 527-530, 4 x 2 509-511, 1 x 6 (the fifteenth pass's) 491-493.
using RingShape = PersistentRing;
constexpr RingShape kRingShapes[] = {{2, 3}, {1, 6}};
constexpr int kMaxHeadDim = 128;                   // 4 dimensions per lane
constexpr int kChunk = 16;                         // attention positions per warp chunk
constexpr int kMaxSplits = 64;                     // attention CTAs per head
constexpr int kMaxNormedWidth = 2 * 8 * kThreads;  // two 8-element chunks per thread
// Per-warp shared slice of the attention step: the rotated query, the new position's K and V, then
// the warp's running softmax (max, sum of weights, value sums) for the CTA's merge.
constexpr int kWarpSlice = 4 * kMaxHeadDim + 4;  // float4-aligned slices

enum Step { kQkv, kAttn, kOut, kGateUp, kDown, kNumSteps };

// Counters of a layer: splits done per Q head, then one per step whose completion the next step
// awaits (tasks done; heads for kAttnReady).
enum Done { kQkvDone, kAttnReady, kOutDone, kGateUpDone, kDownDone, kNumDone };

struct Params {
  const PersistentLayer* layers;
  int n_layer, n_embd, n_head, n_kv, head_dim, n_ff, q_dim, qkv_dim;
  float eps, attn_scale;
  bool adjacent;  // rope pairs (2i, 2i + 1), else (i, i + head_dim / 2)
  const int* pos;
  const float* cos;
  const float* sin;
  const float* x0;
  float*
      acts;  // per layer: qkv [qkv_dim], attn [q_dim], x_mid [n_embd], act [n_ff], x_out [n_embd]
  std::size_t layer_floats;
  float* part;  // [n_head][max_splits][head_dim + 2]: a split's value sums, max, sum of weights
  int max_splits;
  int* counters;  // per layer: layer_counters ints, zero at the start of the step
  int layer_counters;
  // Measurements only (QFORGE_PERSISTENT_PROBE / _TRACE): probe bit 0 skips the waits for the
  // step before (wrong results: the weight stream alone), bit 1 the attention's work, bit 2 the
  // products (the ring still waits for each stage), bit 3 the planes of x and bit 4 their
  // quantization, not their loads (bits 2-4 in the exact all-Q4_0x8 kernel of span 2 only, a
  // separate instantiation); trace, if
  // not null, takes per (layer, step, CTA) 6 times: arrival, wait done, planes done (for attn:
  // merged and signalled), then for the attention's first warp: rotations done, first chunk
  // scored, values done.
  int probe;
  unsigned long long* trace;
  unsigned poll_sleep_ns;  // between two polls of a counter (QFORGE_PERSISTENT_POLL_NS, default 32)
};

// Shared memory of the planes: those of the widest input, and at least each warp's query slice
// (the attention step uses the room between the products that read planes).
__host__ __device__ constexpr std::size_t planes_bytes(int max_cols) {
  const std::size_t x = q4_0x8::token_bytes(max_cols / 32);
  const std::size_t q = static_cast<std::size_t>(kWarps) * kWarpSlice * sizeof(float);
  return x > q ? x : q;
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

struct LayerActs {
  float *qkv, *attn, *x_mid, *act, *x_out;
};

__device__ __forceinline__ LayerActs layer_acts(const Params& p, int l) {
  float* base = p.acts + static_cast<std::size_t>(l) * p.layer_floats;
  LayerActs a;
  a.qkv = base;
  a.attn = a.qkv + p.qkv_dim;
  a.x_mid = a.attn + p.q_dim;
  a.act = a.x_mid + p.n_embd;
  a.x_out = a.act + p.n_ff;
  return a;
}

__device__ __forceinline__ int* layer_counters(const Params& p, int l) {
  return p.counters + static_cast<std::size_t>(l) * p.layer_counters;
}
__device__ __forceinline__ int* done_counter(const Params& p, int l, Done d) {
  return layer_counters(p, l) + p.n_head + d;
}

__device__ __forceinline__ int load_acquire(const int* c) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(c) : "memory");
  return v;
}

// The whole CTA waits until *c >= target (thread 0 polls; the barrier passes its acquire on).
__device__ __forceinline__ void wait_count(const Params& p, const int* c, int target,
                                           unsigned long long* stamps) {
  if (threadIdx.x == 0) {
    if (stamps != nullptr) stamps[0] = global_ns();
    if (c != nullptr && (p.probe & 1) == 0) {
      while (load_acquire(c) < target) {
        if (p.poll_sleep_ns > 0) __nanosleep(p.poll_sleep_ns);
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0 && stamps != nullptr) stamps[1] = global_ns();
}

// Adds n to *c after every lane's stores before it (the warp barrier orders them before lane 0's
// release); returns the old value in every lane, with acquire semantics (the warp that completes
// a count reads what the others wrote).
__device__ __forceinline__ int signal(int* c, int n) {
  __syncwarp();
  int old = 0;
  if ((threadIdx.x & 31) == 0) {
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], %2;"
                 : "=r"(old)
                 : "l"(c), "r"(n)
                 : "memory");
  }
  old = __shfl_sync(0xffffffffu, old, 0);
  return old;
}

// ---- a matrix step's geometry and the warp's walk over its weight rows ------------------------

struct MatStep {
  const std::uint8_t* w = nullptr;
  int n_tasks = 0, n_cols = 0, n_steps = 0, n_ff = 0;
  std::size_t row_bytes = 0;
  bool glu = false;
  // The mixed form: the PersistentLayer::q6_k bits of this step's matrices (Q, K and V in the Q/K/V
  // step, three matrices there: w is Q's). (Only this: every register the cursor holds across the
  // kernel costs spills in its loops.)
  unsigned q6 = 0;
};

template <int kSpan, bool kMixed>
__device__ __forceinline__ MatStep mat_step(const Params& p, int l, int step) {
  const PersistentLayer& L = p.layers[l];
  MatStep m;
  unsigned matrices = 0;  // this step's PersistentMatrix bits
  switch (step) {
    case kQkv:
      m.w = kMixed ? L.wq : L.qkv, m.n_tasks = p.qkv_dim / kRows, m.n_cols = p.n_embd;
      matrices = kPersistentQ | kPersistentK | kPersistentV;
      break;
    case kOut:
      m.w = L.wo, m.n_tasks = p.n_embd / kRows, m.n_cols = p.q_dim;
      matrices = kPersistentO;
      break;
    case kGateUp:
      m.w = L.gate_up, m.n_tasks = p.n_ff, m.n_cols = p.n_embd, m.glu = true, m.n_ff = p.n_ff;
      matrices = kPersistentGateUp;
      break;
    default:
      m.w = L.down, m.n_tasks = p.n_embd / kRows, m.n_cols = p.n_ff;
      matrices = kPersistentDown;
      break;
  }
  m.n_steps = (m.n_cols / 32 + 32 * kSpan - 1) / (32 * kSpan);  // ring stages per task
  m.row_bytes = q4_0x8_row_bytes(static_cast<std::size_t>(m.n_cols));
  if constexpr (kMixed) m.q6 = L.q6_k & matrices;
  return m;
}

// Where task's rows lie: its matrix (one of Q, K, V in the mixed form's Q/K/V step), the task
// within it, and whether that matrix is Q6_K.
struct TaskRows {
  const std::uint8_t* w;
  int task;
  bool q6;
};

// The mixed form's Q/K/V step: its first K task and first V task.
__device__ __forceinline__ int k_task(const Params& p) {
  return p.q_dim / kRows;
}
__device__ __forceinline__ int v_task(const Params& p) {
  return (p.q_dim + p.qkv_dim) / (2 * kRows);
}

// Whether task's matrix in step (layer l) is Q6_K.
template <bool kMixed>
__device__ __forceinline__ bool task_q6(const Params& p, int step, const MatStep& m, int task) {
  if constexpr (!kMixed) {
    return false;
  } else {
    if (step != kQkv) return m.q6 != 0;
    const unsigned matrix = task < k_task(p)   ? kPersistentQ
                            : task < v_task(p) ? kPersistentK
                                               : kPersistentV;
    return (m.q6 & matrix) != 0;
  }
}

template <bool kMixed>
__device__ __forceinline__ TaskRows task_rows(const Params& p, int l, int step, const MatStep& m,
                                              int task) {
  const bool q6 = task_q6<kMixed>(p, step, m, task);
  if constexpr (kMixed) {
    if (step == kQkv && task >= k_task(p)) {  // K or V: its own matrix
      const PersistentLayer& L = p.layers[l];
      if (task < v_task(p)) return {L.wk, task - k_task(p), q6};
      return {L.wv, task - v_task(p), q6};
    }
  }
  return {m.w, task, q6};
}

__device__ __forceinline__ const std::uint8_t* task_row(const MatStep& m, const TaskRows& t,
                                                        int r) {
  const int row = m.glu ? (r == 0 ? t.task : m.n_ff + t.task) : kRows * t.task + r;
  const std::size_t row_bytes = t.q6 ? q6_k_row_bytes(m.n_cols) : m.row_bytes;
  return t.w + static_cast<std::size_t>(row) * row_bytes;
}

// Position of a warp's weight stream: (layer, step, task, ring item of the task: its rows' stage
// k, or for a Q6_K task (task_q6) row k & 1's stage k >> 1).
struct Cursor {
  int l = 0, step = kQkv, task = 0, k = 0;
  MatStep m;
};

// From (l, step) on, the first matrix step with a task for warp g.
template <int kSpan, bool kMixed>
__device__ __forceinline__ void enter(Cursor& c, const Params& p, int g) {
  while (c.l < p.n_layer) {
    if (c.step != kAttn) {
      c.m = mat_step<kSpan, kMixed>(p, c.l, c.step);
      if (g < c.m.n_tasks) {
        c.task = g, c.k = 0;
        return;
      }
    }
    if (++c.step == kNumSteps) c.step = kQkv, ++c.l;
  }
}

template <int kSpan, bool kMixed>
__device__ __forceinline__ void advance(Cursor& c, const Params& p, int g, int n_warps) {
  const bool q6 = task_q6<kMixed>(p, c.step, c.m, c.task);
  if (++c.k < (q6 ? 2 * c.m.n_steps : c.m.n_steps)) return;
  c.k = 0;
  c.task += n_warps;
  if (c.task < c.m.n_tasks) return;
  if (++c.step == kNumSteps) c.step = kQkv, ++c.l;
  enter<kSpan, kMixed>(c, p, g);
}

// ---- x as planes -------------------------------------------------------------------------------

__device__ __forceinline__ void load8_cg(const float* src, float* v) {
  const float4 a = __ldcg(reinterpret_cast<const float4*>(src));
  const float4 b = __ldcg(reinterpret_cast<const float4*>(src + 4));
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// The planes of x (n floats, written in this step) into `planes`: the loads of up to four rounds
// of chunks issued together (one L2 round trip for n <= 16384). !kQuantize: the loads alone, no
// planes (probe bit 4, measurements only).
template <int kPlanes, bool kQuantize = true>
__device__ void build_planes(const float* x, int n, std::uint8_t* planes) {
  constexpr int kBatch = 4;
  const int chunks = n / 8, n_blocks = n / 32;
  for (int base = 0; base < chunks; base += kBatch * kThreads) {
    float v[kBatch][8];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = base + j * kThreads + static_cast<int>(threadIdx.x);
#pragma unroll
      for (int k = 0; k < 8; ++k) v[j][k] = 0.0f;
      if (i < chunks) load8_cg(x + 8 * i, v[j]);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      if (base + j * kThreads >= chunks) break;  // uniform
      if constexpr (!kQuantize) {
        if (v[j][0] == 1.5f) planes[threadIdx.x] = 1;  // keeps the loads
      } else {
        q4_0x8::store_chunk_planes<false, kPlanes>(
            v[j], base + j * kThreads + static_cast<int>(threadIdx.x), chunks, chunks, n_blocks,
            planes);
      }
    }
  }
}

// A thread's norm weights (its two 8-element chunks), loaded before the wait for x: they are
// constants, so their HBM round trip overlaps the wait.
struct NormWeights {
  float v[2][8];
};

__device__ __forceinline__ NormWeights load_norm(const float* w, int n) {
  NormWeights r;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int i = static_cast<int>(threadIdx.x) + c * kThreads;
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f), b = a;
    if (8 * i < n) {
      a = __ldg(reinterpret_cast<const float4*>(w + 8 * i));
      b = __ldg(reinterpret_cast<const float4*>(w + 8 * i + 4));
    }
    r.v[c][0] = a.x, r.v[c][1] = a.y, r.v[c][2] = a.z, r.v[c][3] = a.w;
    r.v[c][4] = b.x, r.v[c][5] = b.y, r.v[c][6] = b.z, r.v[c][7] = b.w;
  }
  return r;
}

// The planes of rms_norm(x) * w (n <= kMaxNormedWidth), in the order of add_norm_kernel.
template <int kPlanes, bool kQuantize = true>
__device__ void build_planes_normed(const float* x, const NormWeights& w, int n, float eps,
                                    std::uint8_t* planes, float* scratch) {
  const int chunks = n / 8, n_blocks = n / 32;
  float v[2][8] = {};
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int i = static_cast<int>(threadIdx.x) + c * kThreads;
    if (i < chunks) load8_cg(x + 8 * i, v[c]);
#pragma unroll
    for (int k = 0; k < 8; ++k) ss = fmaf(v[c][k], v[c][k], ss);
  }
  const float r = 1.0f / sqrtf(block_reduce<false>(ss, scratch) / static_cast<float>(n) + eps);
  if constexpr (!kQuantize) {  // the loads and the norm's sum alone (probe bit 4)
    if (r == 1.5f) planes[threadIdx.x] = 1;
  } else {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int i = static_cast<int>(threadIdx.x) + c * kThreads;
      if (c * kThreads >= chunks) break;  // uniform
#pragma unroll
      for (int k = 0; k < 8; ++k) v[c][k] = v[c][k] * r * w.v[c][k];
      q4_0x8::store_chunk_planes<false, kPlanes>(v[c], i, chunks, chunks, n_blocks, planes);
    }
  }
}

// Dimensions [4 * lane, 4 * lane + 4) of a cache row, through L2 (lanes with 4 * lane >= head_dim
// take zeros without loading): one load per lane, the same code for every head size, so that a
// run of them issues back to back.
template <typename T>
struct Dims4 {
  std::uint32_t w[sizeof(T) == 2 ? 2 : 4];
};

template <typename T>
__device__ __forceinline__ Dims4<T> load_dims4(const T* row, bool active) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  Dims4<T> r{};
  if constexpr (sizeof(T) == 2) {
    const uint2 v = active ? __ldcg(reinterpret_cast<const uint2*>(row) + lane) : make_uint2(0, 0);
    r.w[0] = v.x, r.w[1] = v.y;
  } else {
    const uint4 v =
        active ? __ldcg(reinterpret_cast<const uint4*>(row) + lane) : make_uint4(0, 0, 0, 0);
    r.w[0] = v.x, r.w[1] = v.y, r.w[2] = v.z, r.w[3] = v.w;
  }
  return r;
}

template <typename T>
__device__ __forceinline__ void unpack_dims4(const Dims4<T>& r, float* out) {
  if constexpr (sizeof(T) == 2) {
#pragma unroll
    for (int d = 0; d < 4; ++d) out[d] = __uint_as_float((r.w[d / 2] >> (16 * (d % 2))) << 16);
  } else {
#pragma unroll
    for (int d = 0; d < 4; ++d) out[d] = __uint_as_float(r.w[d]);
  }
}

// ---- attention ----------------------------------------------------------------------------------
// A CTA takes (Q head, split) tasks; its warps take the split's 16-position chunks in turn, each
// keeping a running softmax (max, sum of weights, weighted value sums), and meet in shared memory.
// A head of several splits (long contexts) merges them through global memory: the last split's
// CTA does it. The rotary embedding happens here, not in the Q/K/V step: each warp rotates its
// query itself, and the warp whose chunk holds the new position rotates that position's K (and
// takes its V) from the Q/K/V outputs, rounded to the cache type as a cache read would give them;
// for Q heads that are first of their KV group it also stores them into the cache for later steps.

// Rotates the head_dim values at v in place (pairs as p.adjacent says), rounded through the
// cache type T when `round` (the values a cache read would give), then scaled by `scale`. The
// warp's lanes share v (shared memory): barriers before and after.
template <typename T>
__device__ __forceinline__ void rotate_head(const Params& p, float* v, float scale, bool round) {
  const int lane = static_cast<int>(threadIdx.x & 31), half = p.head_dim / 2;
  __syncwarp();
  for (int i = lane; i < half; i += 32) {
    const int a = p.adjacent ? 2 * i : i, b = p.adjacent ? 2 * i + 1 : i + half;
    const float x0 = v[a], x1 = v[b];
    const float c = p.cos[i], sn = p.sin[i];
    float y0 = x0 * c - x1 * sn, y1 = x0 * sn + x1 * c;
    if (round) y0 = from_cache(to_cache<T>(y0)), y1 = from_cache(to_cache<T>(y1));
    v[a] = y0 * scale, v[b] = y1 * scale;
  }
  __syncwarp();
}

// The warp's chunks {c0 + k * stride} below c1 of Q head h: its running softmax into `out`
// (max, sum of weights, then head_dim value sums). qs: the warp's slice.
template <typename T>
__device__ void attend_chunks(const Params& p, int l, const float* qkv, int h, int c0, int c1,
                              int stride, int n_pos, float* qs, float* out,
                              unsigned long long* marks) {
  const int lane = static_cast<int>(threadIdx.x & 31), hd = p.head_dim;
  const bool mine = 4 * lane < hd;  // the lane's 4 dimensions of the value sums
  const int group = p.n_head / p.n_kv, hk = h / group;
  const PersistentLayer& L = p.layers[l];
  float m = -INFINITY, sum = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (c0 < c1) {
    float* k_new = qs + kMaxHeadDim;
    float* v_new = k_new + kMaxHeadDim;
    const int last = (n_pos - 1) / kChunk;  // the chunk of the new position
    const bool has_new = c0 <= last && (last - c0) % stride == 0 && last < c1;
    // The raw query, and where the warp scores the new position its K and V: loads issued together
    // (one round trip), then rotated in shared memory.
    {
      const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      const float* q_src = qkv + static_cast<std::size_t>(h) * hd;
      const float* k_src = qkv + p.q_dim + static_cast<std::size_t>(hk) * hd;
      const float* v_src = qkv + p.q_dim + static_cast<std::size_t>(p.n_kv + hk) * hd;
      const float4 qv = mine ? __ldcg(reinterpret_cast<const float4*>(q_src) + lane) : zero;
      const float4 kv =
          mine && has_new ? __ldcg(reinterpret_cast<const float4*>(k_src) + lane) : zero;
      const float4 vv =
          mine && has_new ? __ldcg(reinterpret_cast<const float4*>(v_src) + lane) : zero;
      if (mine) {
        reinterpret_cast<float4*>(qs)[lane] = qv;
        reinterpret_cast<float4*>(k_new)[lane] = kv;
        reinterpret_cast<float4*>(v_new)[lane] =
            make_float4(from_cache(to_cache<T>(vv.x)), from_cache(to_cache<T>(vv.y)),
                        from_cache(to_cache<T>(vv.z)), from_cache(to_cache<T>(vv.w)));
      }
    }
    rotate_head<T>(p, qs, p.attn_scale, false);
    if (has_new) {
      rotate_head<T>(p, k_new, 1.0f, true);
      if (h % group == 0) {  // one store per KV head
        const std::size_t at = (static_cast<std::size_t>(n_pos - 1) * p.n_kv + hk) * hd;
        T* kd = static_cast<T*>(L.k_cache) + at;
        T* vd = static_cast<T*>(L.v_cache) + at;
        for (int i = lane; i < hd; i += 32)
          kd[i] = to_cache<T>(k_new[i]), vd[i] = to_cache<T>(v_new[i]);
      }
    }
    __syncwarp();
    if (marks != nullptr && (threadIdx.x & 31) == 0) marks[0] = global_ns();
    const T* kc = static_cast<const T*>(L.k_cache) + static_cast<std::size_t>(hk) * hd;
    const T* vc = static_cast<const T*>(L.v_cache) + static_cast<std::size_t>(hk) * hd;
    const std::size_t pos_stride = static_cast<std::size_t>(p.n_kv) * hd;
    constexpr int kPerWord = 16 / sizeof(T);  // cache elements per 16-byte load
    const int row_words = hd / kPerWord;
    // Lanes 2j and 2j + 1 score position j of a chunk, each over half of the key row: half a
    // row is at most 8 loads of 16 bytes for BF16 heads of 128, issued together.
    const int j_lane = lane >> 1, half = lane & 1, half_words = row_words / 2;
    for (int c = c0; c < c1; c += stride) {
      const int base = kChunk * c, valid = min(kChunk, n_pos - base);
      const int position = base + j_lane;
      float score = -INFINITY;
      if (c == last) {  // the new position's K is not in the cache yet: the warp scores it together
        float dot = 0.0f;
        for (int i = lane; i < hd; i += 32) dot = fmaf(qs[i], k_new[i], dot);
        dot = warp_sum(dot);
        if (position == n_pos - 1) score = dot;
      }
      if (j_lane < valid && position != n_pos - 1) {
        const auto* row =
            reinterpret_cast<const uint4*>(kc + static_cast<std::size_t>(position) * pos_stride) +
            half * half_words;
        const float* q_half = qs + half * half_words * kPerWord;
        float dot = 0.0f;
        for (int w0 = 0; w0 < half_words; w0 += 8) {
          uint4 words[8];
#pragma unroll
          for (int i = 0; i < 8; ++i)
            words[i] = w0 + i < half_words ? __ldcg(row + w0 + i) : make_uint4(0, 0, 0, 0);
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            if (w0 + i >= half_words) break;
            const std::uint32_t u[4] = {words[i].x, words[i].y, words[i].z, words[i].w};
            const float* qw = q_half + (w0 + i) * kPerWord;
            if constexpr (sizeof(T) == 2) {
#pragma unroll
              for (int k = 0; k < 4; ++k) {
                dot = fmaf(qw[2 * k], __uint_as_float(u[k] << 16), dot);
                dot = fmaf(qw[2 * k + 1], __uint_as_float(u[k] & 0xffff0000u), dot);
              }
            } else {
#pragma unroll
              for (int k = 0; k < 4; ++k) dot = fmaf(qw[k], __uint_as_float(u[k]), dot);
            }
          }
        }
        score = dot;
      }
      // The pair's halves meet (both lanes of a pair took the same branch above).
      const float other = __shfl_xor_sync(0xffffffffu, score, 1);
      if (j_lane < valid && position != n_pos - 1) score += other;
      const float m_new = fmaxf(m, warp_max(score));
      // Weight of position j_lane, in both lanes of its pair; counted once in the sum.
      const float w = j_lane < valid ? expf(score - m_new) : 0.0f;
      const float corr = expf(m - m_new);
      sum = sum * corr + warp_sum(half == 0 ? w : 0.0f);
#pragma unroll
      for (int d = 0; d < 4; ++d) acc[d] *= corr;
      m = m_new;
      if (marks != nullptr && lane == 0 && c == c0) marks[1] = global_ns();
      // The chunk's value rows, their loads issued together (only rows before the new position
      // are in the cache); the new position's row from v_new.
      Dims4<T> rows[kChunk];
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        rows[j] = load_dims4(vc + static_cast<std::size_t>(base + j) * pos_stride,
                             mine && base + j < n_pos - 1);
      }
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        float vv[4];
        unpack_dims4<T>(rows[j], vv);
        if (base + j == n_pos - 1) {
#pragma unroll
          for (int d = 0; d < 4; ++d) vv[d] = mine ? v_new[4 * lane + d] : 0.0f;
        }
        const float wj = __shfl_sync(0xffffffffu, w, 2 * j);  // 0 beyond the valid positions
#pragma unroll
        for (int d = 0; d < 4; ++d) acc[d] = fmaf(wj, vv[d], acc[d]);
      }
    }
  }
  if (mine) {
#pragma unroll
    for (int d = 0; d < 4; ++d) out[2 + 4 * lane + d] = acc[d];
  }
  if (lane == 0) out[0] = m, out[1] = sum;
  if (marks != nullptr && lane == 0) marks[2] = global_ns();
}

// The CTA's warps' running softmaxes (slices of kWarpSlice floats, at offset 3 * kMaxHeadDim)
// merged: unnormalized sums, max and weight sum into row (head_dim + 2 floats: sums, max, sum),
// or normalized into out when row is null.
__device__ void merge_warps(const Params& p, const float* slices, float* row, float* out) {
  const int hd = p.head_dim;
  float m = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m = fmaxf(m, slices[w * kWarpSlice + 3 * kMaxHeadDim]);
  for (int d = static_cast<int>(threadIdx.x); d < hd + 1; d += kThreads) {
    float total = 0.0f, acc = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float* s = slices + w * kWarpSlice + 3 * kMaxHeadDim;
      const float f = s[0] == -INFINITY ? 0.0f : expf(s[0] - m);
      total = fmaf(f, s[1], total);
      if (d < hd) acc = fmaf(f, s[2 + d], acc);
    }
    if (row == nullptr) {
      if (d < hd) out[d] = acc / total;
    } else if (d < hd) {
      row[d] = acc;
    } else {
      row[hd] = m, row[hd + 1] = total;
    }
  }
}

// Head h's splits (all written) merged into attn.
__device__ void merge_splits(const Params& p, int h, int n_splits, float* attn) {
  const int lane = static_cast<int>(threadIdx.x & 31), hd = p.head_dim, dpl = hd / 32;
  const float* rows = p.part + static_cast<std::size_t>(h) * p.max_splits * (hd + 2);
  float m = -INFINITY;
  for (int s = lane; s < n_splits; s += 32) m = fmaxf(m, __ldcg(rows + s * (hd + 2) + hd));
  m = warp_max(m);
  float total = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 8
  for (int s = 0; s < n_splits; ++s) {
    const float* row = rows + s * (hd + 2);
    const float w = expf(__ldcg(row + hd) - m);
    total = fmaf(w, __ldcg(row + hd + 1), total);
    for (int d = 0; d < dpl; ++d) acc[d] = fmaf(w, __ldcg(row + lane * dpl + d), acc[d]);
  }
  for (int d = 0; d < dpl; ++d)
    attn[static_cast<std::size_t>(h) * hd + lane * dpl + d] = acc[d] / total;
}

// ---- the kernel --------------------------------------------------------------------------------

// kPlanes: the planes of x the products take, 3 or with DecodeX::kInt8 (cuda_device.h) 1 (a
// separate instantiation: a branch in the loop cost registers and ~1.5% of tg128). kW: the form of
// every matrix (a separate instantiation too: a per-matrix branch, both forms in one kernel, raised
// its spills), or kMixed: each matrix Q4_K or Q6_K (the branch per task, in this instantiation
// only; kSpan 2, so that a Q6_K stage, 1680 bytes, stays 16-byte aligned). kBare: the
// instantiation for the measurement-only probe bits 2-4 (Params::probe), so that the default
// kernels' code does not change with them.
template <typename T, int kSpan, int kStages, int kPlanes, PersistentWeights kW, bool kBare = false>
__global__ void __launch_bounds__(kThreads, 1) decode_persistent_kernel(Params p) {
  constexpr bool kMixed = kW == PersistentWeights::kMixed;
  static_assert(!kMixed || kSpan == 2);
  constexpr int kSlot = slot_bytes(kSpan), kSpanBytes = kSpan * kStepBytes;
  constexpr int kQ6SpanBytes = kSpan * kQ6StepBytes;  // <= kSlot: one row per ring item
  extern __shared__ uint4 smem_words[];
  auto* smem = reinterpret_cast<std::uint8_t*>(smem_words);
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int n_warps = static_cast<int>(gridDim.x) * kWarps;
  const int g = warp * static_cast<int>(gridDim.x) + static_cast<int>(blockIdx.x);
  std::uint8_t* ring = smem + static_cast<std::size_t>(warp) * kStages * kSlot;
  std::uint8_t* planes = smem + static_cast<std::size_t>(kWarps) * kStages * kSlot;
  const int max_cols = max(max(p.n_embd, p.q_dim), p.n_ff);
  auto* bars = reinterpret_cast<std::uint64_t*>(planes + planes_bytes(max_cols)) + kStages * warp;
  auto* scratch = reinterpret_cast<float*>(bars - kStages * warp + kStages * kWarps);

  if (lane == 0) {
    for (int k = 0; k < kStages; ++k) mbar_init(bars + k);
    mbar_init_fence();
  }
  __syncwarp();

  const unsigned long long policy = l2_stream_policy(true);
  Cursor issue_at;
  enter<kSpan, kMixed>(issue_at, p, g);
  int issue_slot = 0;
  auto issue = [&] {
    if (issue_at.l < p.n_layer) {
      if (lane == 0) {
        const MatStep& m = issue_at.m;
        const TaskRows t = task_rows<kMixed>(p, issue_at.l, issue_at.step, m, issue_at.task);
        std::uint8_t* stage = ring + issue_slot * kSlot;
        if (t.q6) {  // row k & 1's stage k >> 1
          const std::size_t off = static_cast<std::size_t>(issue_at.k >> 1) * kQ6SpanBytes;
          const auto bytes = static_cast<std::uint32_t>(
              min(std::size_t{kQ6SpanBytes}, q6_k_row_bytes(m.n_cols) - off));
          mbar_expect(bars + issue_slot, bytes);
          bulk_copy(stage, task_row(m, t, issue_at.k & 1) + off, bytes, bars + issue_slot, policy);
        } else {
          const std::size_t off = static_cast<std::size_t>(issue_at.k) * kSpanBytes;
          const auto bytes =
              static_cast<std::uint32_t>(min(std::size_t{kSpanBytes}, m.row_bytes - off));
          mbar_expect(bars + issue_slot, kRows * bytes);
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            bulk_copy(stage + r * kSpanBytes, task_row(m, t, r) + off, bytes, bars + issue_slot,
                      policy);
          }
        }
      }
      advance<kSpan, kMixed>(issue_at, p, g, n_warps);
    }
    if (++issue_slot == kStages) issue_slot = 0;
  };
#pragma unroll 1
  for (int k = 0; k < kStages - 1; ++k) issue();

  const int pos = *p.pos, n_pos = pos + 1;
  const int lane_codes = 144 * (lane >> 3) + 16 + 16 * (lane & 7);
  const int lane_scale = 144 * (lane >> 3) + 2 * (lane & 7);
  int slot = 0;
  std::uint32_t phase = 0;
  auto stamps = [&](int l, int step) -> unsigned long long* {
    if (p.trace == nullptr) return nullptr;
    return p.trace +
           ((static_cast<std::size_t>(l) * kNumSteps + step) * gridDim.x + blockIdx.x) * 6;
  };
  // Probe bits 2, 3 and 4 (kBare only): no products, no planes, planes' loads but no quantization.
  const bool skip_products = kBare && (p.probe & 4) != 0;
  const bool skip_planes = kBare && (p.probe & 8) != 0;
  const bool skip_quantize = kBare && (p.probe & 16) != 0;
  auto planes_of = [&](const float* x, int n) {
    if (skip_planes) return;
    if (skip_quantize) return build_planes<kPlanes, false>(x, n, planes);
    build_planes<kPlanes>(x, n, planes);
  };
  auto planes_normed = [&](const float* x, const NormWeights& w) {
    if (skip_planes) return;
    if (skip_quantize)
      return build_planes_normed<kPlanes, false>(x, w, p.n_embd, p.eps, planes, scratch);
    build_planes_normed<kPlanes>(x, w, p.n_embd, p.eps, planes, scratch);
  };
  auto planes_done = [&](int l, int step) {
    __syncthreads();
    if (threadIdx.x == 0 && p.trace != nullptr) stamps(l, step)[2] = global_ns();
  };

  // One task's ring items: its two row sums into acc. A Q6_K task (kQ6, the mixed form) streams
  // its rows one per item (row k & 1 of stage k >> 1), each item against the planes of its stage.
  auto stream_task = [&](auto q6_tag, const MatStep& m, float(&acc)[kRows]) {
    constexpr bool kQ6 = decltype(q6_tag)::value;
    const int n_blocks = m.n_cols / 32;
    const uint4* tok = reinterpret_cast<const uint4*>(planes);
    const int n_items = kQ6 ? 2 * m.n_steps : m.n_steps;
    for (int k = 0; k < n_items; ++k) {
      issue();
      mbar_wait(bars + slot, phase);
      const std::uint8_t* stage = ring + slot * kSlot;
      const int stage_k = kQ6 ? k >> 1 : k;
#pragma unroll
      for (int h = 0; h < kSpan; ++h) {
        const int b = 32 * (kSpan * stage_k + h) + lane;
        if (b < n_blocks && !skip_products) {
          if constexpr (kQ6) {
            const float v = q4_0x8::q6_k_dot<kPlanes>(stage + h * kQ6StepBytes + 210 * (lane >> 3),
                                                      lane & 7, tok, n_blocks, b);
            if ((k & 1) == 0) {
              acc[0] += v;
            } else {
              acc[1] += v;
            }
          } else {
            uint4 pl[6];
            const float2 xb = q4_0x8::block_planes<kPlanes>(tok, n_blocks, b, pl);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
              const std::uint8_t* part = stage + r * kSpanBytes + h * kStepBytes;
              if constexpr (kW != PersistentWeights::kQ4_0x8) {
                const float2 f = q4_0x8::q4_k_factors(
                    *reinterpret_cast<const uint4*>(part + q4_0x8::q4_k_header_at(lane)), lane);
                const auto* codes =
                    reinterpret_cast<const uint4*>(part + q4_0x8::q4_k_codes_at(lane));
                const std::uint32_t mask = (lane & 1) != 0 ? 0xf0f0f0f0u : 0x0f0f0f0fu;
                const float dot = q4_0x8::q4_k_dot<kPlanes>(codes[0], codes[1], mask, pl);
                acc[r] = fmaf(f.x, dot * xb.x, fmaf(-f.y, xb.y, acc[r]));
              } else {
                const uint4 codes = *reinterpret_cast<const uint4*>(part + lane_codes);
                const float d = __half2float(*reinterpret_cast<const __half*>(part + lane_scale));
                acc[r] = fmaf(d, q4_0x8::block_dot<kPlanes>(codes, pl, xb), acc[r]);
              }
            }
          }
        }
      }
      if (++slot == kStages) slot = 0, phase ^= 1u;
      __syncwarp();  // every lane has read the stage before the next issue() refills it
    }
  };

  // The warp's tasks of matrix step m; epilogue(task, v0, v1) takes each task's two sums.
  auto run_matrix = [&](int step, const MatStep& m, auto&& epilogue) {
    int done = 0;
    for (int task = g; task < m.n_tasks; task += n_warps, ++done) {
      float acc[kRows] = {0.0f, 0.0f};
      if (task_q6<kMixed>(p, step, m, task)) {  // uniform per task; false unless kMixed
        stream_task(std::true_type{}, m, acc);
      } else {
        stream_task(std::false_type{}, m, acc);
      }
      epilogue(task, warp_sum(acc[0]), warp_sum(acc[1]));
    }
    return done;
  };

  // The attention's split of the positions: (head, split) tasks for CTAs, 16-position chunks for
  // their warps.
  const int n_chunks = (n_pos + kChunk - 1) / kChunk;
  const int cta_splits = max(1, min(static_cast<int>(gridDim.x) / p.n_head,
                                    min(p.max_splits, (n_chunks + kWarps - 1) / kWarps)));
  const int per_split = (n_chunks + cta_splits - 1) / cta_splits;
  const int n_splits = (n_chunks + per_split - 1) / per_split;

  // The epilogue of the output and down products: out = base + the task's two row sums.
  auto residual_rows = [&](float* out, const float* base) {
    return [=](int task, float v0, float v1) {
      const int row = kRows * task;
      if (lane == 0) {
        out[row] = __ldcg(base + row) + v0;
        out[row + 1] = __ldcg(base + row + 1) + v1;
      }
    };
  };

  for (int l = 0; l < p.n_layer; ++l) {
    const PersistentLayer& L = p.layers[l];
    const LayerActs a = layer_acts(p, l);
    const float* x_in = l == 0 ? p.x0 : layer_acts(p, l - 1).x_out;
    int* splits_done = layer_counters(p, l);

    // The cache rows this CTA's attention tasks will read (earlier steps wrote them) into L2
    // while the layer's first products run.
    for (int t = static_cast<int>(blockIdx.x); t < p.n_head * n_splits;
         t += static_cast<int>(gridDim.x)) {
      const int h = t / n_splits, sp = t - h * n_splits;
      prefetch_kv_rows_l2(static_cast<const T*>(L.k_cache), static_cast<const T*>(L.v_cache),
                          kChunk * sp * per_split, min(n_pos - 1, kChunk * (sp + 1) * per_split),
                          p.n_kv, h / (p.n_head / p.n_kv), p.head_dim, p.head_dim);
    }

    // qkv
    NormWeights norm = load_norm(L.attn_norm, p.n_embd);
    wait_count(p, l > 0 ? done_counter(p, l - 1, kDownDone) : nullptr, l > 0 ? p.n_embd / kRows : 0,
               stamps(l, kQkv));
    planes_normed(x_in, norm);
    planes_done(l, kQkv);
    int done =
        run_matrix(kQkv, mat_step<kSpan, kMixed>(p, l, kQkv), [&](int task, float v0, float v1) {
          const int row = kRows * task;
          if (lane == 0) a.qkv[row] = v0, a.qkv[row + 1] = v1;
        });
    if (done > 0) signal(done_counter(p, l, kQkvDone), done);

    // attn: the planes' room holds the warps' slices (free until the output projection's planes)
    wait_count(p, done_counter(p, l, kQkvDone), p.qkv_dim / kRows, stamps(l, kAttn));
    {
      float* slices = reinterpret_cast<float*>(planes);
      float* mine = slices + warp * kWarpSlice;
      for (int t = static_cast<int>(blockIdx.x); t < p.n_head * n_splits;
           t += static_cast<int>(gridDim.x)) {
        const int h = t / n_splits, sp = t - h * n_splits;
        if ((p.probe & 2) == 0) {
          unsigned long long* marks =
              warp == 0 && t == static_cast<int>(blockIdx.x) && p.trace != nullptr
                  ? stamps(l, kAttn) + 3
                  : nullptr;
          attend_chunks<T>(p, l, a.qkv, h, sp * per_split + warp,
                           min(n_chunks, (sp + 1) * per_split), kWarps, n_pos, mine,
                           mine + 3 * kMaxHeadDim, marks);
        }
        __syncthreads();
        if (n_splits == 1) {
          if ((p.probe & 2) == 0)
            merge_warps(p, slices, nullptr, a.attn + static_cast<std::size_t>(h) * p.head_dim);
          __syncthreads();
          if (warp == 0) signal(done_counter(p, l, kAttnReady), 1);
          if (threadIdx.x == 0 && p.trace != nullptr) stamps(l, kAttn)[2] = global_ns();
        } else {
          float* row =
              p.part + (static_cast<std::size_t>(h) * p.max_splits + sp) * (p.head_dim + 2);
          merge_warps(p, slices, row, nullptr);
          __syncthreads();
          int* last = reinterpret_cast<int*>(scratch);
          if (warp == 0) {
            const int old = signal(splits_done + h, 1);
            if (lane == 0) *last = old + 1 == n_splits;
          }
          __syncthreads();
          if (*last != 0 && warp == 0) {
            __threadfence();
            merge_splits(p, h, n_splits, a.attn);
            signal(done_counter(p, l, kAttnReady), 1);
          }
        }
        __syncthreads();  // the slices are free for the CTA's next task
      }
    }

    // out
    wait_count(p, done_counter(p, l, kAttnReady), p.n_head, stamps(l, kOut));
    planes_of(a.attn, p.q_dim);
    planes_done(l, kOut);
    done = run_matrix(kOut, mat_step<kSpan, kMixed>(p, l, kOut), residual_rows(a.x_mid, x_in));
    if (done > 0) signal(done_counter(p, l, kOutDone), done);

    // gateup
    norm = load_norm(L.ffn_norm, p.n_embd);
    wait_count(p, done_counter(p, l, kOutDone), p.n_embd / kRows, stamps(l, kGateUp));
    planes_normed(a.x_mid, norm);
    planes_done(l, kGateUp);
    done = run_matrix(kGateUp, mat_step<kSpan, kMixed>(p, l, kGateUp),
                      [&](int task, float gate, float up) {
                        if (lane == 0) a.act[task] = silu(gate) * up;
                      });
    if (done > 0) signal(done_counter(p, l, kGateUpDone), done);

    // down
    wait_count(p, done_counter(p, l, kGateUpDone), p.n_ff, stamps(l, kDown));
    planes_of(a.act, p.n_ff);
    planes_done(l, kDown);
    done = run_matrix(kDown, mat_step<kSpan, kMixed>(p, l, kDown), residual_rows(a.x_out, a.x_mid));
    if (done > 0) signal(done_counter(p, l, kDownDone), done);
  }
}

std::size_t smem_bytes_for(const PersistentShape& s, RingShape ring) {
  const int max_cols = std::max(s.n_embd, std::max(s.n_head * s.head_dim, s.n_ff));
  const int stages = ring.stages;
  return static_cast<std::size_t>(kWarps) * stages * slot_bytes(ring.span) +
         planes_bytes(max_cols) + static_cast<std::size_t>(kWarps) * stages * 8 +
         32 * sizeof(float);
}

std::atomic<PersistentMode>& persistent_choice() {
  static std::atomic<PersistentMode> mode{[] {
    const long v = env_number("QFORGE_DECODE_PERSISTENT", 1);
    return v == 0   ? PersistentMode::kOff
           : v == 2 ? PersistentMode::kAlways
                    : PersistentMode::kShallowSteps;
  }()};
  return mode;
}

template <typename T, int kSpan, int kStages, int kPlanes, PersistentWeights kW, bool kBare = false>
void launch(const Params& p, int grid, std::size_t smem, StreamHandle stream) {
  static std::atomic<bool> configured{false};
  if (!configured.exchange(true)) {
    QFORGE_CUDA_CHECK(
        cudaFuncSetAttribute(decode_persistent_kernel<T, kSpan, kStages, kPlanes, kW, kBare>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(current_max_smem_per_block())));
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeCooperative;  // every CTA resident: they wait for each other
  attribute.val.cooperative = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  QFORGE_CUDA_CHECK(cudaLaunchKernelEx(
      &config, decode_persistent_kernel<T, kSpan, kStages, kPlanes, kW, kBare>, p));
}

template <typename T, PersistentWeights kW>
void launch_ring(RingShape ring, const Params& p, int grid, std::size_t smem, StreamHandle stream) {
  const bool int8 = decode_x() == DecodeX::kInt8;
  if constexpr (kW == PersistentWeights::kQ4_0x8) {  // probe bits 2-4: this ring only
    if ((p.probe & 28) != 0 && ring.span == 2 && !int8) {
      return launch<T, 2, 3, 3, kW, true>(p, grid, smem, stream);
    }
  }
  if constexpr (kW != PersistentWeights::kMixed) {  // the mixed form: span 2 only (ring_fits)
    if (ring.span == 1) {
      if (int8) return launch<T, 1, 6, 1, kW>(p, grid, smem, stream);
      return launch<T, 1, 6, 3, kW>(p, grid, smem, stream);
    }
  }
  if (int8) return launch<T, 2, 3, 1, kW>(p, grid, smem, stream);
  return launch<T, 2, 3, 3, kW>(p, grid, smem, stream);
}

template <typename T>
void launch_weights(PersistentWeights weights, RingShape ring, const Params& p, int grid,
                    std::size_t smem, StreamHandle stream) {
  switch (weights) {
    case PersistentWeights::kQ4_K:
      return launch_ring<T, PersistentWeights::kQ4_K>(ring, p, grid, smem, stream);
    case PersistentWeights::kMixed:
      return launch_ring<T, PersistentWeights::kMixed>(ring, p, grid, smem, stream);
    default:
      return launch_ring<T, PersistentWeights::kQ4_0x8>(ring, p, grid, smem, stream);
  }
}

// Whether ring shape r serves s (the mixed form's Q6_K stages need span 2) and fits.
bool ring_fits(const PersistentShape& s, RingShape r) {
  if (s.weights == PersistentWeights::kMixed && r.span != 2) return false;
  return smem_bytes_for(s, r) <= current_max_smem_per_block();
}

// The preferred ring shape that fits, or none (stages 0).
RingShape fitting_ring(const PersistentShape& s) {
  for (const RingShape r : kRingShapes) {
    if (ring_fits(s, r)) return r;
  }
  return {0, 0};
}

}  // namespace

PersistentMode decode_persistent_mode() {
  return persistent_choice().load();
}

void set_decode_persistent_mode(PersistentMode mode) {
  persistent_choice().store(mode);
}

std::string PersistentDecode::unsupported(const PersistentShape& s) {
  if (current_cc_major() < 9) return "needs compute capability 9.0 (bulk copies)";
  if (s.n_layer <= 0 || s.n_head <= 0 || s.n_head_kv <= 0 || s.n_head % s.n_head_kv != 0) {
    return "needs a whole number of query heads per KV head";
  }
  if (s.head_dim % 32 != 0 || s.head_dim > kMaxHeadDim) return "needs a head size of 32..128 (x32)";
  if (s.n_embd % 256 != 0 || s.n_ff % 256 != 0 || (s.n_head * s.head_dim) % 256 != 0) {
    return "needs widths that are multiples of 256 (Q4_0x8, Q4_K)";
  }
  if (s.n_embd > kMaxNormedWidth) return "needs an embedding of at most 8192";
  if (fitting_ring(s).stages == 0) return "needs more shared memory";
  return {};
}

PersistentDecode::PersistentDecode(const PersistentShape& shape,
                                   const std::vector<PersistentLayer>& layers)
    : shape_(shape) {
  if (const std::string why = unsupported(shape); !why.empty()) {
    cuda_fail("CUDA persistent decode: ", why);
  }
  if (layers.size() != static_cast<std::size_t>(shape.n_layer)) {
    cuda_fail("CUDA persistent decode: ", layers.size(), " layer entries for ", shape.n_layer,
              " layers");
  }
  // The ring's shape: the preferred one that fits, or one of kRingShapes picked by
  // QFORGE_PERSISTENT_SPAN for measurements (where it fits).
  ring_ = fitting_ring(shape);
  const long span = env_number("QFORGE_PERSISTENT_SPAN", ring_.span);
  for (const RingShape r : kRingShapes) {
    if (r.span == span && ring_fits(shape, r)) {
      ring_ = r;
      break;
    }
  }
  smem_bytes_ = smem_bytes_for(shape, ring_);
  probe_ = static_cast<int>(env_number("QFORGE_PERSISTENT_PROBE", 0));
  poll_ns_ = std::clamp(static_cast<int>(env_number("QFORGE_PERSISTENT_POLL_NS", 32)), 0, 10000);
  if (const char* path = std::getenv("QFORGE_PERSISTENT_TRACE"); path != nullptr && *path != 0) {
    trace_path_ = path;
  }
  grid_ = current_sm_count();  // one CTA per SM: its shared memory admits no second one
  const int q_dim = shape.n_head * shape.head_dim;
  const int qkv_dim = q_dim + 2 * shape.n_head_kv * shape.head_dim;
  max_splits_ = std::clamp(grid_ * kWarps / shape.n_head, 1, kMaxSplits);
  layer_floats_ = static_cast<std::size_t>(qkv_dim + q_dim + 2 * shape.n_embd + shape.n_ff);
  layer_floats_ = (layer_floats_ + 31) / 32 * 32;
  layer_counters_ = static_cast<std::size_t>(shape.n_head + kNumDone);
  layers_ =
      DeviceBuffer<PersistentLayer>(std::span<const PersistentLayer>(layers.data(), layers.size()));
  acts_ = DeviceBuffer<float>(layer_floats_ * static_cast<std::size_t>(shape.n_layer));
  part_ = DeviceBuffer<float>(static_cast<std::size_t>(shape.n_head) * max_splits_ *
                              (shape.head_dim + 2));
  counters_ = DeviceBuffer<int>(layer_counters_ * static_cast<std::size_t>(shape.n_layer));
  if (!trace_path_.empty()) {
    trace_ = DeviceBuffer<unsigned long long>(static_cast<std::size_t>(shape.n_layer) * kNumSteps *
                                              static_cast<std::size_t>(grid_) * 6);
    trace_.fill_bytes(0);
  }
}

// The last step's trace, for measurements: n_layer, steps, grid (int32 each), then the stamps.
PersistentDecode::~PersistentDecode() {
  if (trace_path_.empty()) return;
  try {
    const std::vector<unsigned long long> stamps = trace_.to_host();
    std::ofstream out(trace_path_, std::ios::binary);
    const int header[3] = {shape_.n_layer, kNumSteps, grid_};
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    out.write(reinterpret_cast<const char*>(stamps.data()),
              static_cast<std::streamsize>(stamps.size() * sizeof(stamps[0])));
  } catch (...) {  // a measurement aid: never let it throw from a destructor
  }
}

float* PersistentDecode::record(const float* x, const int* pos, const float* cos, const float* sin,
                                StreamHandle stream) {
  const PersistentShape& s = shape_;
  Params p{};
  p.layers = layers_.data();
  p.n_layer = s.n_layer;
  p.n_embd = s.n_embd;
  p.n_head = s.n_head;
  p.n_kv = s.n_head_kv;
  p.head_dim = s.head_dim;
  p.n_ff = s.n_ff;
  p.q_dim = s.n_head * s.head_dim;
  p.qkv_dim = p.q_dim + 2 * s.n_head_kv * s.head_dim;
  p.eps = s.eps;
  p.attn_scale = s.attn_scale;
  p.adjacent = s.rope_style == RopeStyle::kAdjacentPairs;
  p.pos = pos;
  p.cos = cos;
  p.sin = sin;
  p.x0 = x;
  p.acts = acts_.data();
  p.layer_floats = layer_floats_;
  p.part = part_.data();
  p.max_splits = max_splits_;
  p.counters = counters_.data();
  p.layer_counters = static_cast<int>(layer_counters_);
  p.probe = probe_;
  p.poll_sleep_ns = static_cast<unsigned>(poll_ns_);
  p.trace = trace_.empty() ? nullptr : trace_.data();
  counters_.fill_bytes(0, stream);
  if (s.cache_bf16) {
    launch_weights<std::uint16_t>(s.weights, ring_, p, grid_, smem_bytes_, stream);
  } else {
    launch_weights<float>(s.weights, ring_, p, grid_, smem_bytes_, stream);
  }
  return acts_.data() + layer_floats_ * static_cast<std::size_t>(s.n_layer - 1) +
         static_cast<std::size_t>(p.qkv_dim + p.q_dim + s.n_embd + s.n_ff);
}

}  // namespace qforge::cuda
