// The persistent decode step (decode_persistent.h).
//
// One CTA of 16 warps per SM, all resident at once (a cooperative launch). A layer is five
// steps, each a set of tasks dealt to the grid's warps (global warp g = warp * grid + CTA, so a
// step's last, partial round is spread over all SMs):
//   qkv    2 rows of [Q; K; V] x rms_norm(x) * attn_norm; the warp that completes a head applies
//          the rotary embedding and stores K / V into the cache (a counter per head says which)
//   attn   (head, split) pairs over the positions; the last split of a head merges them
//   out    2 rows of Wo x attn; x_mid = x + those rows
//   gateup a gate row and its up row; silu(gate) * up
//   down   2 rows of W_down x act; x_out = x_mid + those rows
// Each step waits, CTA by CTA, for a counter in global memory that the step before it completes,
// then builds x's integer planes in shared memory (q4_0x8_planes.cuh; the norm first where the
// step has one). The weights never wait: each warp walks the rows of all its tasks of all steps
// and layers in order, S - 1 stages ahead of its products, by bulk copies into its ring, so the
// next matrix is already streaming while a counter is awaited.
//
// Memory ordering: a writer stores, fences (__threadfence) and then adds to a counter; a reader
// sees the count by an acquire load in one thread and a CTA barrier, and reads what the step
// before wrote through L2 (ld.global.cg), never through the non-coherent L1 paths.
#include "runtime/cuda/check.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "runtime/cuda/bulk_copy.cuh"
#include "runtime/cuda/decode_persistent.h"
#include "runtime/cuda/device_attrs.h"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/glu.cuh"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/q4_0x8_planes.cuh"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {
namespace {

constexpr int kWarps = 16, kThreads = 32 * kWarps;
constexpr int kRows = 2;                          // rows per task (one gate/up pair)
constexpr int kStages = 8;                        // ring stages per warp
constexpr int kStepBytes = 576;                   // 32 blocks of a row: 4 groups of 144 bytes
constexpr int kSlotBytes = kRows * kStepBytes;    // one stage
constexpr int kMaxHeadDim = 128;                  // 4 dimensions per lane
constexpr int kMaxSplits = 64;                    // attention splits per head
constexpr int kMaxNormedWidth = 2 * 8 * kThreads;  // two 8-element chunks per thread

enum Step { kQkv, kAttn, kOut, kGateUp, kDown, kNumSteps };

// Counters of a layer: rows done per head (Q, K, V heads), splits done per Q head, then one per
// step whose completion the next step awaits.
enum Done { kQkvReady, kAttnReady, kOutDone, kGateUpDone, kDownDone, kNumDone };

struct Params {
  const PersistentLayer* layers;
  int n_layer, n_embd, n_head, n_kv, head_dim, n_ff, q_dim, qkv_dim;
  float eps, attn_scale;
  bool adjacent;  // rope pairs (2i, 2i + 1), else (i, i + head_dim / 2)
  const int* pos;
  const float* cos;
  const float* sin;
  const float* x0;
  float* acts;  // per layer: qkv [qkv_dim], attn [q_dim], x_mid [n_embd], act [n_ff], x_out [n_embd]
  std::size_t layer_floats;
  float* part;  // [n_head][max_splits][head_dim + 2]: split sums, then max and sum of weights
  int max_splits;
  int* counters;  // per layer: layer_counters ints, zero at the start of the step
  int layer_counters;
};

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
  return layer_counters(p, l) + p.n_head + 2 * p.n_kv + p.n_head + d;
}

__device__ __forceinline__ int load_acquire(const int* c) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(c) : "memory");
  return v;
}

// The whole CTA waits until *c >= target (thread 0 polls; the barrier passes its acquire on).
__device__ __forceinline__ void wait_count(const int* c, int target) {
  if (threadIdx.x == 0) {
    while (load_acquire(c) < target) __nanosleep(32);
  }
  __syncthreads();
}

// Adds n to *c once every lane's stores before it are visible device-wide; returns the old value
// (in every lane).
__device__ __forceinline__ int signal(int* c, int n) {
  __threadfence();
  __syncwarp();
  int old = 0;
  if ((threadIdx.x & 31) == 0) old = atomicAdd(c, n);
  return __shfl_sync(0xffffffffu, old, 0);
}

// ---- a matrix step's geometry and the warp's walk over its weight rows ------------------------

struct MatStep {
  const std::uint8_t* w = nullptr;
  int n_tasks = 0, n_cols = 0, n_steps = 0, n_ff = 0;
  std::size_t row_bytes = 0;
  bool glu = false;
};

__device__ __forceinline__ MatStep mat_step(const Params& p, int l, int step) {
  const PersistentLayer& L = p.layers[l];
  MatStep m;
  switch (step) {
    case kQkv: m.w = L.qkv, m.n_tasks = p.qkv_dim / kRows, m.n_cols = p.n_embd; break;
    case kOut: m.w = L.wo, m.n_tasks = p.n_embd / kRows, m.n_cols = p.q_dim; break;
    case kGateUp:
      m.w = L.gate_up, m.n_tasks = p.n_ff, m.n_cols = p.n_embd, m.glu = true, m.n_ff = p.n_ff;
      break;
    default: m.w = L.down, m.n_tasks = p.n_embd / kRows, m.n_cols = p.n_ff; break;
  }
  m.n_steps = (m.n_cols / 32 + 31) / 32;
  m.row_bytes = q4_0x8_row_bytes(static_cast<std::size_t>(m.n_cols));
  return m;
}

__device__ __forceinline__ const std::uint8_t* task_row(const MatStep& m, int task, int r) {
  const int row = m.glu ? (r == 0 ? task : m.n_ff + task) : kRows * task + r;
  return m.w + static_cast<std::size_t>(row) * m.row_bytes;
}

// Position of a warp's weight stream: (layer, step, task, 32-block step of the task's rows).
struct Cursor {
  int l = 0, step = kQkv, task = 0, k = 0;
  MatStep m;
};

// From (l, step) on, the first matrix step with a task for warp g.
__device__ __forceinline__ void enter(Cursor& c, const Params& p, int g) {
  while (c.l < p.n_layer) {
    if (c.step != kAttn) {
      c.m = mat_step(p, c.l, c.step);
      if (g < c.m.n_tasks) {
        c.task = g, c.k = 0;
        return;
      }
    }
    if (++c.step == kNumSteps) c.step = kQkv, ++c.l;
  }
}

__device__ __forceinline__ void advance(Cursor& c, const Params& p, int g, int n_warps) {
  if (++c.k < c.m.n_steps) return;
  c.k = 0;
  c.task += n_warps;
  if (c.task < c.m.n_tasks) return;
  if (++c.step == kNumSteps) c.step = kQkv, ++c.l;
  enter(c, p, g);
}

// ---- x as planes -------------------------------------------------------------------------------

__device__ __forceinline__ void load8_cg(const float* src, float* v) {
  const float4 a = __ldcg(reinterpret_cast<const float4*>(src));
  const float4 b = __ldcg(reinterpret_cast<const float4*>(src + 4));
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// The planes of x (n floats, written in this step) into `planes`.
__device__ void build_planes(const float* x, int n, std::uint8_t* planes) {
  const int chunks = n / 8, n_blocks = n / 32;
  for (int base = 0; base < chunks; base += kThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    float v[8] = {};
    if (i < chunks) load8_cg(x + 8 * i, v);
    q4_0x8::store_chunk_planes(v, i, chunks, chunks, n_blocks, planes);
  }
}

// The planes of rms_norm(x) * w (n <= kMaxNormedWidth), in the order of add_norm_kernel.
__device__ void build_planes_normed(const float* x, const float* w, int n, float eps,
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
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int i = static_cast<int>(threadIdx.x) + c * kThreads;
    if (c * kThreads >= chunks) break;  // uniform
    if (i < chunks) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(w + 8 * i));
      const float4 b = __ldg(reinterpret_cast<const float4*>(w + 8 * i + 4));
      const float wv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
      for (int k = 0; k < 8; ++k) v[c][k] = v[c][k] * r * wv[k];
    }
    q4_0x8::store_chunk_planes(v[c], i, chunks, chunks, n_blocks, planes);
  }
}

// ---- the KV cache's element type ---------------------------------------------------------------
template <typename T>
__device__ __forceinline__ T to_cache(float v);
template <>
__device__ __forceinline__ std::uint16_t to_cache<std::uint16_t>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
template <>
__device__ __forceinline__ float to_cache<float>(float v) {
  return v;
}
__device__ __forceinline__ float from_cache(std::uint16_t v) {
  return __uint_as_float(static_cast<std::uint32_t>(v) << 16);
}

// Lane's D consecutive elements of a cache row (D = head_dim / 32 <= 4), through L2.
template <typename T>
__device__ __forceinline__ void load_row(const T* row, int lane, int d_per_lane, float* out) {
  if constexpr (sizeof(T) == 2) {
    const auto* r = reinterpret_cast<const unsigned short*>(row) + lane * d_per_lane;
#pragma unroll
    for (int d = 0; d < 4; ++d) out[d] = d < d_per_lane ? from_cache(__ldcg(r + d)) : 0.0f;
  } else {
#pragma unroll
    for (int d = 0; d < 4; ++d) out[d] = d < d_per_lane ? __ldcg(row + lane * d_per_lane + d) : 0.0f;
  }
}

// ---- Q/K/V head: rotary embedding and cache store ----------------------------------------------
// Head hh of [Q; K; V] (all its rows written): a Q head rotated in place, a K head rotated into
// the cache, a V head copied into the cache, at position pos.
template <typename T>
__device__ void prepare_head(const Params& p, int l, float* qkv, int hh, int pos) {
  const int lane = static_cast<int>(threadIdx.x & 31), hd = p.head_dim, half = hd / 2;
  const PersistentLayer& L = p.layers[l];
  float* src = qkv + static_cast<std::size_t>(hh) * hd;
  if (hh >= p.n_head + p.n_kv) {
    T* dst = static_cast<T*>(L.v_cache) +
             (static_cast<std::size_t>(pos) * p.n_kv + (hh - p.n_head - p.n_kv)) * hd;
    for (int i = lane; i < hd; i += 32) dst[i] = to_cache<T>(__ldcg(src + i));
    return;
  }
  T* dst = hh < p.n_head ? nullptr
                         : static_cast<T*>(L.k_cache) +
                               (static_cast<std::size_t>(pos) * p.n_kv + (hh - p.n_head)) * hd;
  for (int i = lane; i < half; i += 32) {
    const int a = p.adjacent ? 2 * i : i, b = p.adjacent ? 2 * i + 1 : i + half;
    const float x0 = __ldcg(src + a), x1 = __ldcg(src + b);
    const float c = p.cos[i], s = p.sin[i];
    const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
    if (dst == nullptr) {
      src[a] = y0, src[b] = y1;
    } else {
      dst[a] = to_cache<T>(y0), dst[b] = to_cache<T>(y1);
    }
  }
}

// ---- attention of one (head, split) ------------------------------------------------------------

// In every lane j: the sum over lanes of a[j] (a butterfly that halves the array at each step).
__device__ __forceinline__ float transpose_sum(float (&a)[32]) {
  const int lane = static_cast<int>(threadIdx.x & 31);
#pragma unroll
  for (int o = 16; o >= 1; o >>= 1) {
    const bool upper = (lane & o) != 0;
#pragma unroll
    for (int i = 0; i < o; ++i) {
      const float send = upper ? a[i] : a[i + o];
      const float keep = upper ? a[i + o] : a[i];
      a[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
  }
  return a[0];
}

// Positions [c0 * 32, min(c1 * 32, n_pos)) of Q head h against its KV head: the softmax-weighted
// value sums (unnormalized), their max score and sum of weights, into part row (h, split).
template <typename T>
__device__ void attend_split(const Params& p, const PersistentLayer& L, const float* q, int h,
                             int split, int c0, int c1, int n_pos) {
  const int lane = static_cast<int>(threadIdx.x & 31), hd = p.head_dim, dpl = hd / 32;
  const int hk = h / (p.n_head / p.n_kv);
  float qv[4];
#pragma unroll
  for (int d = 0; d < 4; ++d) {
    qv[d] = d < dpl ? __ldcg(q + static_cast<std::size_t>(h) * hd + lane * dpl + d) * p.attn_scale
                    : 0.0f;
  }
  const T* kc = static_cast<const T*>(L.k_cache) + static_cast<std::size_t>(hk) * hd;
  const T* vc = static_cast<const T*>(L.v_cache) + static_cast<std::size_t>(hk) * hd;
  const std::size_t pos_stride = static_cast<std::size_t>(p.n_kv) * hd;
  float m = -INFINITY, sum = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int c = c0; c < c1; ++c) {
    const int base = 32 * c, valid = min(32, n_pos - base);
    float a[32];
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      float kv[4];
      load_row(kc + static_cast<std::size_t>(min(base + j, n_pos - 1)) * pos_stride, lane, dpl, kv);
      a[j] = qv[0] * kv[0] + qv[1] * kv[1] + qv[2] * kv[2] + qv[3] * kv[3];
    }
    const float sum_j = transpose_sum(a);  // every lane takes part in the shuffles
    const float s = lane < valid ? sum_j : -INFINITY;
    const float m_new = fmaxf(m, warp_max(s));
    const float w = lane < valid ? expf(s - m_new) : 0.0f;
    const float corr = expf(m - m_new);
    sum = sum * corr + warp_sum(w);
#pragma unroll
    for (int d = 0; d < 4; ++d) acc[d] *= corr;
    m = m_new;
    for (int j = 0; j < valid; ++j) {
      float vv[4];
      load_row(vc + static_cast<std::size_t>(base + j) * pos_stride, lane, dpl, vv);
      const float wj = __shfl_sync(0xffffffffu, w, j);
#pragma unroll
      for (int d = 0; d < 4; ++d) acc[d] = fmaf(wj, vv[d], acc[d]);
    }
  }
  float* row = p.part + (static_cast<std::size_t>(h) * p.max_splits + split) * (hd + 2);
  for (int d = 0; d < dpl; ++d) row[lane * dpl + d] = acc[d];
  if (lane == 0) row[hd] = m, row[hd + 1] = sum;
}

// Head h's splits (all written) merged into attn.
__device__ void merge_splits(const Params& p, int h, int n_splits, float* attn) {
  const int lane = static_cast<int>(threadIdx.x & 31), hd = p.head_dim, dpl = hd / 32;
  const float* rows = p.part + static_cast<std::size_t>(h) * p.max_splits * (hd + 2);
  float m = -INFINITY;
  for (int s = lane; s < n_splits; s += 32) m = fmaxf(m, __ldcg(rows + s * (hd + 2) + hd));
  m = warp_max(m);
  float total = 0.0f, acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int s = 0; s < n_splits; ++s) {
    const float* row = rows + s * (hd + 2);
    const float w = expf(__ldcg(row + hd) - m);
    total = fmaf(w, __ldcg(row + hd + 1), total);
    for (int d = 0; d < dpl; ++d) acc[d] = fmaf(w, __ldcg(row + lane * dpl + d), acc[d]);
  }
  for (int d = 0; d < dpl; ++d) attn[static_cast<std::size_t>(h) * hd + lane * dpl + d] = acc[d] / total;
}

// ---- the kernel --------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) decode_persistent_kernel(Params p) {
  extern __shared__ uint4 smem_words[];
  auto* smem = reinterpret_cast<std::uint8_t*>(smem_words);
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int n_warps = static_cast<int>(gridDim.x) * kWarps;
  const int g = warp * static_cast<int>(gridDim.x) + static_cast<int>(blockIdx.x);
  std::uint8_t* ring = smem + static_cast<std::size_t>(warp) * kStages * kSlotBytes;
  std::uint8_t* planes = smem + static_cast<std::size_t>(kWarps) * kStages * kSlotBytes;
  const int max_cols = max(max(p.n_embd, p.q_dim), p.n_ff);
  auto* bars = reinterpret_cast<std::uint64_t*>(planes + q4_0x8::token_bytes(max_cols / 32)) +
               kStages * warp;
  auto* scratch = reinterpret_cast<float*>(bars - kStages * warp + kStages * kWarps);

  if (lane == 0) {
    for (int k = 0; k < kStages; ++k) mbar_init(bars + k);
    mbar_init_fence();
  }
  __syncwarp();

  const unsigned long long policy = l2_stream_policy(true);
  Cursor issue_at;
  enter(issue_at, p, g);
  int issue_slot = 0;
  auto issue = [&] {
    if (issue_at.l < p.n_layer) {
      if (lane == 0) {
        const MatStep& m = issue_at.m;
        const std::size_t off = static_cast<std::size_t>(issue_at.k) * kStepBytes;
        const auto bytes = static_cast<std::uint32_t>(min(std::size_t{kStepBytes}, m.row_bytes - off));
        std::uint8_t* stage = ring + issue_slot * kSlotBytes;
        mbar_expect(bars + issue_slot, kRows * bytes);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          bulk_copy(stage + r * kStepBytes, task_row(m, issue_at.task, r) + off, bytes,
                    bars + issue_slot, policy);
        }
      }
      advance(issue_at, p, g, n_warps);
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

  // The warp's tasks of matrix step m; epilogue(task, v0, v1) takes each task's two sums.
  auto run_matrix = [&](const MatStep& m, auto&& epilogue) {
    const int n_blocks = m.n_cols / 32;
    const uint4* tok = reinterpret_cast<const uint4*>(planes);
    int done = 0;
    for (int task = g; task < m.n_tasks; task += n_warps, ++done) {
      float acc[kRows] = {0.0f, 0.0f};
      for (int k = 0; k < m.n_steps; ++k) {
        issue();
        mbar_wait(bars + slot, phase);
        const int b = 32 * k + lane;
        const std::uint8_t* stage = ring + slot * kSlotBytes;
        if (b < n_blocks) {
          uint4 pl[6];
#pragma unroll
          for (int c = 0; c < 6; ++c) pl[c] = tok[c * n_blocks + b];
          const float2 xb = reinterpret_cast<const float2*>(tok + 6 * n_blocks)[b];
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            const uint4 codes = *reinterpret_cast<const uint4*>(stage + r * kStepBytes + lane_codes);
            const float d =
                __half2float(*reinterpret_cast<const __half*>(stage + r * kStepBytes + lane_scale));
            acc[r] = fmaf(d, q4_0x8::block_dot(codes, pl, xb), acc[r]);
          }
        }
        if (++slot == kStages) slot = 0, phase ^= 1u;
        __syncwarp();  // every lane has read the stage before the next issue() refills it
      }
      epilogue(task, warp_sum(acc[0]), warp_sum(acc[1]));
    }
    return done;
  };

  for (int l = 0; l < p.n_layer; ++l) {
    const PersistentLayer& L = p.layers[l];
    const LayerActs a = layer_acts(p, l);
    const float* x_in = l == 0 ? p.x0 : layer_acts(p, l - 1).x_out;
    int* head_rows = layer_counters(p, l);
    int* splits_done = head_rows + p.n_head + 2 * p.n_kv;

    // qkv
    if (l > 0) wait_count(done_counter(p, l - 1, kDownDone), p.n_embd / kRows);
    build_planes_normed(x_in, L.attn_norm, p.n_embd, p.eps, planes, scratch);
    __syncthreads();
    run_matrix(mat_step(p, l, kQkv), [&](int task, float v0, float v1) {
      const int row = kRows * task, hh = row / p.head_dim;
      if (lane == 0) a.qkv[row] = v0, a.qkv[row + 1] = v1;
      if (signal(head_rows + hh, kRows) + kRows == p.head_dim) {
        __threadfence();
        prepare_head<T>(p, l, a.qkv, hh, pos);
        signal(done_counter(p, l, kQkvReady), 1);
      }
    });

    // attn
    wait_count(done_counter(p, l, kQkvReady), p.n_head + 2 * p.n_kv);
    {
      const int n_chunks = (n_pos + 31) / 32;
      const int per_split = (n_chunks + p.max_splits - 1) / p.max_splits;
      const int n_splits = (n_chunks + per_split - 1) / per_split;
      for (int t = g; t < p.n_head * n_splits; t += n_warps) {
        const int h = t / n_splits, s = t - h * n_splits;
        attend_split<T>(p, L, a.qkv, h, s, s * per_split, min(n_chunks, (s + 1) * per_split),
                        n_pos);
        if (signal(splits_done + h, 1) + 1 == n_splits) {
          __threadfence();
          merge_splits(p, h, n_splits, a.attn);
          signal(done_counter(p, l, kAttnReady), 1);
        }
      }
    }

    // out
    wait_count(done_counter(p, l, kAttnReady), p.n_head);
    build_planes(a.attn, p.q_dim, planes);
    __syncthreads();
    int done = run_matrix(mat_step(p, l, kOut), [&](int task, float v0, float v1) {
      const int row = kRows * task;
      if (lane == 0) {
        a.x_mid[row] = __ldcg(x_in + row) + v0;
        a.x_mid[row + 1] = __ldcg(x_in + row + 1) + v1;
      }
    });
    if (done > 0) signal(done_counter(p, l, kOutDone), done);

    // gateup
    wait_count(done_counter(p, l, kOutDone), p.n_embd / kRows);
    build_planes_normed(a.x_mid, L.ffn_norm, p.n_embd, p.eps, planes, scratch);
    __syncthreads();
    done = run_matrix(mat_step(p, l, kGateUp), [&](int task, float gate, float up) {
      if (lane == 0) a.act[task] = silu(gate) * up;
    });
    if (done > 0) signal(done_counter(p, l, kGateUpDone), done);

    // down
    wait_count(done_counter(p, l, kGateUpDone), p.n_ff);
    build_planes(a.act, p.n_ff, planes);
    __syncthreads();
    done = run_matrix(mat_step(p, l, kDown), [&](int task, float v0, float v1) {
      const int row = kRows * task;
      if (lane == 0) {
        a.x_out[row] = __ldcg(a.x_mid + row) + v0;
        a.x_out[row + 1] = __ldcg(a.x_mid + row + 1) + v1;
      }
    });
    if (done > 0) signal(done_counter(p, l, kDownDone), done);
  }
}

std::size_t smem_bytes_for(const PersistentShape& s) {
  const int max_cols = std::max(s.n_embd, std::max(s.n_head * s.head_dim, s.n_ff));
  return static_cast<std::size_t>(kWarps) * kStages * kSlotBytes +
         q4_0x8::token_bytes(max_cols / 32) + static_cast<std::size_t>(kWarps) * kStages * 8 +
         32 * sizeof(float);
}

std::atomic<bool>& persistent_choice() {
  static std::atomic<bool> on{env_number("QFORGE_DECODE_PERSISTENT", 0) != 0};
  return on;
}

template <typename T>
void launch(const Params& p, int grid, std::size_t smem, StreamHandle stream) {
  static std::atomic<bool> configured{false};
  if (!configured.exchange(true)) {
    QFORGE_CUDA_CHECK(cudaFuncSetAttribute(decode_persistent_kernel<T>,
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
  QFORGE_CUDA_CHECK(cudaLaunchKernelEx(&config, decode_persistent_kernel<T>, p));
}

}  // namespace

bool decode_persistent_chosen() {
  return persistent_choice().load();
}

void set_decode_persistent(bool on) {
  persistent_choice().store(on);
}

std::string PersistentDecode::unsupported(const PersistentShape& s) {
  if (current_cc_major() < 9) return "needs compute capability 9.0 (bulk copies)";
  if (s.n_layer <= 0 || s.n_head <= 0 || s.n_head_kv <= 0 || s.n_head % s.n_head_kv != 0) {
    return "needs a whole number of query heads per KV head";
  }
  if (s.head_dim % 32 != 0 || s.head_dim > kMaxHeadDim) return "needs a head size of 32..128 (x32)";
  if (s.n_embd % 256 != 0 || s.n_ff % 256 != 0 || (s.n_head * s.head_dim) % 256 != 0) {
    return "needs widths that are multiples of 256 (Q4_0x8)";
  }
  if (s.n_embd > kMaxNormedWidth) return "needs an embedding of at most 8192";
  if (smem_bytes_for(s) > current_max_smem_per_block()) return "needs more shared memory";
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
  smem_bytes_ = smem_bytes_for(shape);
  grid_ = current_sm_count();  // one CTA per SM: its shared memory admits no second one
  const int q_dim = shape.n_head * shape.head_dim;
  const int qkv_dim = q_dim + 2 * shape.n_head_kv * shape.head_dim;
  max_splits_ = std::clamp(grid_ * kWarps / shape.n_head, 1, kMaxSplits);
  layer_floats_ = static_cast<std::size_t>(qkv_dim + q_dim + 2 * shape.n_embd + shape.n_ff);
  layer_floats_ = (layer_floats_ + 31) / 32 * 32;
  layer_counters_ = static_cast<std::size_t>(2 * shape.n_head + 2 * shape.n_head_kv + kNumDone);
  layers_ = DeviceBuffer<PersistentLayer>(std::span<const PersistentLayer>(layers.data(), layers.size()));
  acts_ = DeviceBuffer<float>(layer_floats_ * static_cast<std::size_t>(shape.n_layer));
  part_ = DeviceBuffer<float>(static_cast<std::size_t>(shape.n_head) * max_splits_ *
                              (shape.head_dim + 2));
  counters_ = DeviceBuffer<int>(layer_counters_ * static_cast<std::size_t>(shape.n_layer));
}

float* PersistentDecode::record(const float* x, const int* pos, const float* cos,
                                const float* sin, StreamHandle stream) {
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
  counters_.fill_bytes(0, stream);
  if (s.cache_bf16) {
    launch<std::uint16_t>(p, grid_, smem_bytes_, stream);
  } else {
    launch<float>(p, grid_, smem_bytes_, stream);
  }
  return acts_.data() + layer_floats_ * static_cast<std::size_t>(s.n_layer - 1) +
         static_cast<std::size_t>(p.qkv_dim + p.q_dim + s.n_embd + s.n_ff);
}

}  // namespace qforge::cuda
