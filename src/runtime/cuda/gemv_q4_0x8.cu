// Decode GEMV over Q4_0x8 weights (q4_0x8.h) with integer dot products.
//
// Each CTA first writes every 32-column block of x, for each token, into shared memory as three
// int8 planes p0, p1, p2 and two floats (q4_0x8.h gives the representation): then
//   sum_k (code_k - 8) * x_k = s * (P0 + P1 / 254 + P2 / 254^2) - 8 * sum_k x_k,
// where Pi = sum_k code_k * pi_k is an exact integer from 4 dp4a per 16 codes. Per 32 weights a
// lane spends one 16-byte code load, one 2-byte scale load, 8 mask operations, 24 dp4a (one
// token) and a handful of F32 operations: about a third of the instructions of the F32 GEMV
// (gemv_tiled.cu), which is what limited it.
//
// Work split: a warp takes R rows at a time and walks their blocks with lane = block (32 blocks,
// 576 contiguous bytes per step and row), so each plane load from shared memory serves R rows;
// the lanes' sums meet in a shuffle reduction. One CTA of 16 warps per SM loops over the warp
// tasks, so the planes are built once per SM, not once per R rows; on sm_90, for wide one-row
// inputs, CTAs go in cluster pairs that each quantize half of x into both CTAs' shared memory
// (build_planes_cluster), which halves the time from the PDL wait to the first dot product. Wide
// matrices (>= 6144 columns) split each row group's columns over P = 2 or 4 warps of one CTA, whose
// sums meet in shared memory at a named barrier (split-K inside the CTA, added in a fixed order):
// shorter tasks, and a full last round where two-row groups would leave it mostly empty (5376 rows
// = 2688 tasks on 2112 warps: the second round 27% full). Each warp streams its weights through a
// ring of stages in shared memory (S - 1 steps in flight, across task boundaries), filled by bulk
// copies on sm_90 (one per row and step, issued by lane 0, landing counted on a barrier per stage:
// +2% tg128 over cp.async's 16 bytes per thread, which older devices use); the first stages are
// issued before waiting for the previous kernel (programmatic dependent launch, pdl.cuh), since
// weights never depend on it, and the kernels before a GEMV trigger early, so that this happens
// while they run. The stream's copies carry an L2 evict_first policy: a launch streams 10-70 MB,
// more than L2 holds, and without the hint it evicts the activations, norm weights and KV rows that
// the one-CTA kernels between the GEMVs then fetch from HBM on the token's critical path (+10%
// tg128 on Llama-3-8B and Gemma 4 31B).
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include <algorithm>
#include <atomic>
#include <optional>
#include <type_traits>

#include "runtime/cuda/block_decode.cuh"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/bulk_copy.cuh"
#include "runtime/cuda/cluster.cuh"
#include "runtime/cuda/cp_async.cuh"
#include "runtime/cuda/device_attrs.h"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/glu.cuh"
#include "runtime/cuda/int8_planes.cuh"
#include "runtime/cuda/kernel_trace.cuh"
#include "runtime/cuda/prefetch.cuh"
#include "runtime/cuda/q4_0x8.cuh"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/q4_0x8_planes.cuh"
#include "runtime/cuda/reduce.cuh"
#include "runtime/cuda_device.h"

namespace qforge::cuda {
namespace {

using planes::dp4a_us;
using planes::kStep;
using planes::pack_bytes;
using q4_0x8::block_dot;
using q4_0x8::store_chunk_planes;
using q4_0x8::token_bytes;

constexpr int kWarps = 16, kThreads = 32 * kWarps;

__device__ __forceinline__ void load8(const float* __restrict__ src, float* v) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(src));
  const float4 c = __ldg(reinterpret_cast<const float4*>(src + 4));
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = c.x, v[5] = c.y, v[6] = c.z, v[7] = c.w;
}

// Chunks [begin, end) of x (multiples of 4: whole blocks) as planes, four threads per (token,
// block), 8 consecutive elements each; the x loads of kBatch rounds are issued together (one L2
// round trip for up to kBatch * kThreads / 4 blocks).
template <int kBatch, bool kCluster, int kPlanes>
__device__ __forceinline__ void build_chunk_planes(const float* __restrict__ x, int begin, int end,
                                                   int n_cols, int n_blocks, std::uint8_t* smem,
                                                   int n_ranks) {
  const int per_token = 4 * n_blocks;
  for (int base = begin; base < end; base += kBatch * kThreads) {  // uniform: shuffles below
    float v[kBatch][8];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int i = base + j * kThreads + static_cast<int>(threadIdx.x);
#pragma unroll
      for (int k = 0; k < 8; ++k) v[j][k] = 0.0f;
      if (i < end) {
        const int t = i / per_token, b = (i - t * per_token) >> 2, q = i & 3;
        load8(x + static_cast<std::size_t>(t) * n_cols + 32 * b + 8 * q, v[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      store_chunk_planes<kCluster, kPlanes>(v[j],
                                            base + j * kThreads + static_cast<int>(threadIdx.x),
                                            end, per_token, n_blocks, smem, n_ranks);
    }
  }
}

// The planes of n_x rows of x, all built by this CTA (kPlanes: the kernel's).
template <int kPlanes>
__device__ void build_planes(const float* __restrict__ x, int n_x, int n_cols, int n_blocks,
                             std::uint8_t* smem) {
  build_chunk_planes<4, false, kPlanes>(x, 0, n_x * (4 * n_blocks), n_cols, n_blocks, smem, 1);
}

// ---- Planes shared by a cluster of CTAs (the kCluster form of the kernel) ----------------------
// CTA `rank` of a cluster of n_ranks quantizes its share of the blocks of x (two rounds of loads
// at once, since a share is short) and stores each block into the planes of every CTA of the
// cluster, so each SM builds 1 / n_ranks of the planes.
template <int kPlanes>
__device__ __forceinline__ void build_planes_cluster(const float* __restrict__ x, int n_x,
                                                     int n_cols, int n_blocks, std::uint8_t* smem,
                                                     int rank, int n_ranks) {
  const int all_blocks = n_x * n_blocks;
  const int share = (all_blocks + n_ranks - 1) / n_ranks;
  build_chunk_planes<2, true, kPlanes>(x, 4 * min(all_blocks, rank * share),
                              4 * min(all_blocks, (rank + 1) * share), n_cols, n_blocks, smem,
                              n_ranks);
}

// ---- A GEMV input made from the residual update and RMSNorm before it (ResidualNormInput) ------
// Each CTA computes the normalized row itself, with the operations of add_norm_kernel /
// residual_scale_norm_kernel in the same order, so the one-CTA kernel between two GEMVs and its
// launch boundary go away. Thread i owns chunks i and i + kThreads (8 elements each) of the row.
//
// What this can cost is time before the planes are ready, while HBM idles for the SM, and
// registers. Measured on an H200 (docs/benchmarks.md, twelfth pass): with the norm weights and
// o copied into shared memory by cp.async and waited for, a Llama-3-8B gate/up launch took 4.1 us
// from its release to its planes (1.5 us with a separate norm kernel); with plain loads, 2.5 us.
// Held in registers across the PDL wait, the weights raised the register count of every launch
// of the kernel, and the whole token slowed (26B-A4B -6.5%, which never takes this form; likely
// because fewer of the small kernels between GEMVs then fit beside a CTA). So the weights are
// loaded before the wait
// (where the thread would wait anyway) into shared memory, each thread reading back only what it
// wrote, and this form is a separate instantiation: the other launches keep their registers.
constexpr int kNormChunks = 2;
static_assert(kNormChunks * 8 * kThreads >= static_cast<int>(kMaxNormedCols));

// Shared-memory bytes of a normed launch's norm weights: norm, then o_norm.
__host__ __device__ constexpr std::size_t norm_row_bytes(int n_cols) {
  return 2 * static_cast<std::size_t>(n_cols) * sizeof(float);
}

__device__ __forceinline__ void store8_shared(float* dst, const float* v) {
  *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
  *reinterpret_cast<float4*>(dst + 4) = make_float4(v[4], v[5], v[6], v[7]);
}

__device__ __forceinline__ void load8_shared(const float* src, float* v) {
  const float4 a = *reinterpret_cast<const float4*>(src);
  const float4 c = *reinterpret_cast<const float4*>(src + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = c.x, v[5] = c.y, v[6] = c.z, v[7] = c.w;
}

// The norm weights of this thread's chunks into rows, before the PDL wait: no kernel writes them
// (pdl.cuh), and since a whole token's weights have passed through L2 since their last use, they
// come from HBM.
__device__ __forceinline__ void stage_norm_weights(const ResidualNormInput& in, int n_cols,
                                                   float* rows) {
#pragma unroll
  for (int c = 0; c < kNormChunks; ++c) {
    const int i = static_cast<int>(threadIdx.x) + c * kThreads;
    if (8 * i >= n_cols) break;
    float v[8];
    load8(in.norm + 8 * i, v);
    store8_shared(rows + 8 * i, v);
    if (in.o_norm != nullptr) {
      load8(in.o_norm + 8 * i, v);
      store8_shared(rows + n_cols + 8 * i, v);
    }
  }
}

// x' = (x + [rms_norm(o) * o_norm | o]) * scale, CTA 0 stores it to x_out, and the planes hold
// rms_norm(x') * norm; rows as stage_norm_weights left them. The reductions' scratch is the start
// of the planes, written after them.
template <int kPlanes>
__device__ void build_planes_normed(const ResidualNormInput& in, const float* rows, int n_cols,
                                    int n_blocks, std::uint8_t* smem) {
  auto* scratch = reinterpret_cast<float*>(smem);
  const float n = static_cast<float>(n_cols);
  float xv[kNormChunks][8], ov[kNormChunks][8];
#pragma unroll
  for (int c = 0; c < kNormChunks; ++c) {
    const int i = static_cast<int>(threadIdx.x) + c * kThreads;
#pragma unroll
    for (int k = 0; k < 8; ++k) xv[c][k] = 0.0f, ov[c][k] = 0.0f;
    if (8 * i >= n_cols) continue;
    load8(in.x + 8 * i, xv[c]);
    if (in.o != nullptr) load8(in.o + 8 * i, ov[c]);
  }
  if (in.o != nullptr && in.o_norm != nullptr) {
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < kNormChunks; ++c) {
#pragma unroll
      for (int k = 0; k < 8; ++k) ss = fmaf(ov[c][k], ov[c][k], ss);
    }
    const float r = 1.0f / sqrtf(block_reduce<false>(ss, scratch) / n + in.eps);
#pragma unroll
    for (int c = 0; c < kNormChunks; ++c) {
      const int i = static_cast<int>(threadIdx.x) + c * kThreads;
      if (8 * i >= n_cols) continue;
      float wo[8];
      load8_shared(rows + n_cols + 8 * i, wo);
#pragma unroll
      for (int k = 0; k < 8; ++k) ov[c][k] = ov[c][k] * r * wo[k];
    }
  }
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < kNormChunks; ++c) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      xv[c][k] = (xv[c][k] + ov[c][k]) * in.scale;
      ss = fmaf(xv[c][k], xv[c][k], ss);
    }
  }
  const float r = 1.0f / sqrtf(block_reduce<false>(ss, scratch) / n + in.eps);
#pragma unroll
  for (int c = 0; c < kNormChunks; ++c) {
    const int i = static_cast<int>(threadIdx.x) + c * kThreads;
    if (8 * i < n_cols) {
      if (in.x_out != nullptr && blockIdx.x == 0) {
        auto* out = reinterpret_cast<float4*>(in.x_out + 8 * i);
        out[0] = make_float4(xv[c][0], xv[c][1], xv[c][2], xv[c][3]);
        out[1] = make_float4(xv[c][4], xv[c][5], xv[c][6], xv[c][7]);
      }
      float wn[8];
      load8_shared(rows + 8 * i, wn);
#pragma unroll
      for (int k = 0; k < 8; ++k) xv[c][k] = xv[c][k] * r * wn[k];
    }
    store_chunk_planes<false, kPlanes>(xv[c], i, n_cols / 8, n_cols / 8, n_blocks, smem);
  }
}

// What one step of a row is in each weight form: kBlocks 32-column blocks, kBytes contiguous
// bytes of the row (all multiples of 16). Q4_0x8: the 32 lanes' code arrays (512 bytes) and the 4
// group headers (8 scales each) of 32 blocks; Q4_K: 4 super-blocks of 144 bytes, a lane per
// sub-block; Q5_K: 4 super-blocks of 176 bytes, a lane per sub-block; Q8_0: 16 blocks of 34 bytes,
// a lane per half block (16 codes), so that a step carries about as many bytes as Q4's.
// The expert down forms of rows at any 4-byte boundary (kAnyRow: Q8_0 as above, Q5_0 and Q5_1 a
// lane per block) copy each row's step from the 16-byte boundary below it, so a stage's row has
// 16 bytes of room for the lead, and a lane finds its block lead bytes into the row's stage.
template <PlaneWeights kW>
struct Form {
  static constexpr bool kAnyRow = kW == PlaneWeights::kQ8_0Rows || kW == PlaneWeights::kQ5_0Rows ||
                                  kW == PlaneWeights::kQ5_1Rows;
  static constexpr bool kQ8 = kW == PlaneWeights::kQ8_0 || kW == PlaneWeights::kQ8_0Rows;
  // Bytes of a 32-column block of the GGUF 32-column forms (0: the others).
  static constexpr int kBlockBytes = kQ8                             ? 34
                                     : kW == PlaneWeights::kQ5_0Rows ? 22
                                     : kW == PlaneWeights::kQ5_1Rows ? 24
                                                                     : 0;
  static constexpr int kBlocks = kQ8 ? 16 : 32;
  static constexpr int kBytes = kBlockBytes != 0            ? kBlocks * kBlockBytes
                                : kW == PlaneWeights::kQ5_K ? 4 * 176
                                                            : 576;
  static constexpr int kRowRoom = kAnyRow ? kBytes + 16 : kBytes;  // a stage's room per row
  // Bytes of a row of n_cols columns (a multiple of 256, or of 32 for Q4_0x8 and kAnyRow:
  // q4_0x8.h).
  static __host__ __device__ constexpr std::size_t row_bytes(std::size_t n_cols) {
    return kBlockBytes != 0            ? n_cols / 32 * kBlockBytes
           : kW == PlaneWeights::kQ5_K ? n_cols / 256 * 176
                                       : q4_0x8_row_bytes(n_cols);
  }
  static __host__ __device__ constexpr int steps(int n_blocks) {
    return (n_blocks + kBlocks - 1) / kBlocks;
  }
};

// One pipeline stage of a warp: one step of each of its R rows.
template <int R, PlaneWeights kW = PlaneWeights::kQ4_0x8>
struct Stage {
  static constexpr int kRowBytes = Form<kW>::kRowRoom;
  static constexpr int kBytes = R * kRowBytes;
};

// Stages per warp: enough that (stages - 1) * R * 512 bytes (~3.5-4 KiB per warp, ~60 KiB per SM)
// are in flight while a stage is computed; fewer for two tokens, whose planes take twice the room.
template <int R, int kTokens>
constexpr int stages() {
  if constexpr (kTokens == 2) return 3;
  return R == 1 ? 8 : R == 2 ? 5 : 3;
}

template <int R, int kTokens, PlaneWeights kW = PlaneWeights::kQ4_0x8>
__host__ __device__ constexpr std::size_t ring_bytes() {
  return static_cast<std::size_t>(kWarps) * stages<R, kTokens>() * Stage<R, kW>::kBytes;
}

// What a task's sums become: one output per row, or (a gated FFN's gate/up matrix, gate rows
// then up rows) act(gate row j) * (up row j) per pair j, as glu_rows computes it: a task then
// holds R / 2 gate rows and the R / 2 matching up rows.
enum Output { kRows, kSiluGlu, kGeluGlu };

template <int R, int kOut>
__host__ __device__ constexpr int task_count(int n_rows) {
  return kOut == kRows ? (n_rows + R - 1) / R : (n_rows / 2 + R / 2 - 1) / (R / 2);
}

// The expert form: slot s multiplies expert ids[s] (at w + ids[s] * expert_bytes, n_rows rows
// each) into y + s * ldy; a slot's tasks follow each other (task = slot * slot_tasks + t). The
// slots share x, or with x_per_slot (one token's down products) slot s reads x + s * n_cols.
struct Experts {
  const int* ids = nullptr;  // null: a plain product
  std::size_t expert_bytes = 0;
  int n_experts = 0, n_slots = 1;
  bool x_per_slot = false;
  bool ids_settled = false;  // written two or more launches back: readable before the PDL wait
  bool x_settled = false;    // the same for x: its planes are built before the wait
};

// Rows of x whose planes a launch builds.
template <int kTokens>
__host__ __device__ int x_rows(const Experts& ex) {
  return ex.x_per_slot ? ex.n_slots : kTokens;
}

// Bytes of the split-K partial sums: two rounds (parity) x warps x rows x tokens.
template <int R, int kTokens, int P>
__host__ __device__ constexpr std::size_t partial_bytes() {
  return P == 1 ? 0 : static_cast<std::size_t>(2 * kWarps * R * kTokens) * sizeof(float);
}

// Bytes of the ring's barriers (bulk copies): one per stage and warp.
template <int R, int kTokens, bool kBulk>
__host__ __device__ constexpr std::size_t barrier_bytes() {
  return kBulk ? static_cast<std::size_t>(kWarps) * stages<R, kTokens>() * 8 : 0;
}

__device__ __forceinline__ void named_barrier(int id, int n_threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n_threads) : "memory");
}

// The warp's work is a sequence of items (task, 32-block step); item k goes to stage k % S, and
// S - 1 items are always in flight, across task boundaries (a 4096-column row is only 4 steps).
// With P > 1 a warp task is (row group, part): warps 16c + w with the same w / P share a group
// (the task stride is a multiple of P), and part w % P covers steps [part * n / P, (part+1) n / P).
// kNormed: one token whose x is a ResidualNormInput's GEMV input (a separate instantiation, so
// that the other launches keep their register counts: see above kNormChunks).
// Register budget: the one-token kernels of 1-2 rows per task fit 64 registers per thread (half
// the register file for a CTA). The cluster form (kCluster) keeps them there only when told: its
// share of build_planes took them to 80 otherwise, and compiled into every launch that cost 7% of
// tg128 on Llama-3-8B (H200, fourteenth pass), likely because fewer of the small kernels between
// the GEMVs then fit beside a CTA. Hence also a separate instantiation.
template <int R, int kTokens, bool kCluster>
constexpr int min_ctas_per_sm() {
  return kCluster && R <= 2 && kTokens == 1 ? 2 : 0;  // 0: no bound, as before
}

template <int R, int kTokens, int kOut, int P, bool kBulk, bool kNormed, bool kCluster = false,
          int kPlanes = 3, PlaneWeights kW = PlaneWeights::kQ4_0x8>
__global__ void __launch_bounds__(kThreads, min_ctas_per_sm<R, kTokens, kCluster>())
    gemv_q4_0x8_kernel(const std::uint8_t* __restrict__ w, int n_rows, int n_cols,
                       const float* __restrict__ x, float* __restrict__ y, std::size_t ldy,
                       Experts ex, ResidualNormInput norm_in, int prefetch_tasks,
                       bool evict_first) {
  constexpr int S = stages<R, kTokens>();
  constexpr bool kGlu = kOut != kRows;
  constexpr bool kQ4K = kW == PlaneWeights::kQ4_K;
  using F = Form<kW>;
  using St = Stage<R, kW>;
  constexpr int kPairs = R / 2;
  static_assert(!kGlu || R % 2 == 0);
  static_assert(kWarps % P == 0);
  static_assert(!kNormed || kTokens == 1);
  static_assert(!F::kAnyRow || (!kNormed && !kGlu && kTokens == 1 && P == 1));
  TraceStamps trace;
  trace.begin();
  extern __shared__ uint4 smem_words[];
  auto* smem = reinterpret_cast<std::uint8_t*>(smem_words);
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int n_blocks = n_cols / 32, n_steps = F::steps(n_blocks);
  const std::size_t row_bytes = F::row_bytes(static_cast<std::size_t>(n_cols));
  const int slot_tasks = task_count<R, kOut>(n_rows), n_pairs = n_rows / 2;
  const int n_tasks = slot_tasks * ex.n_slots * P;
  const int first_task = static_cast<int>(blockIdx.x) * kWarps + warp;
  const int task_stride = static_cast<int>(gridDim.x) * kWarps;
  const int my_tasks =
      first_task < n_tasks ? (n_tasks - first_task + task_stride - 1) / task_stride : 0;
  const int part = warp % P;
  const int step_begin = part * n_steps / P, step_end = (part + 1) * n_steps / P;
  const int n_items = my_tasks * (step_end - step_begin);
  std::uint8_t* ring = smem + ring_bytes<R, kTokens, kW>() / kWarps * warp;
  std::uint8_t* planes = smem + ring_bytes<R, kTokens, kW>();
  auto* partials = reinterpret_cast<float*>(planes + x_rows<kTokens>(ex) * token_bytes(n_blocks));
  // Bulk form: stage k of the warp is complete when its barrier's phase (k / S) & 1 is.
  auto* bars = reinterpret_cast<std::uint64_t*>(reinterpret_cast<std::uint8_t*>(partials) +
                                                partial_bytes<R, kTokens, P>()) +
               S * warp;
  // A normed launch's row arrays (norm_row_bytes), after the barriers.
  auto* norm_w =
      reinterpret_cast<float*>(reinterpret_cast<std::uint8_t*>(partials) +
                               partial_bytes<R, kTokens, P>() + barrier_bytes<R, kTokens, kBulk>());

  if constexpr (kBulk) {
    if (lane == 0) {
      for (int k = 0; k < S; ++k) mbar_init(bars + k);
      mbar_init_fence();
    }
    __syncwarp();
  }

  // Offsets of this lane's block inside a 32-block step of a row (4 groups of 144 bytes).
  const int lane_codes = 144 * (lane >> 3) + 16 + 16 * (lane & 7), lane_header = 144 * (lane >> 3);
  // Expert form: the slot of a task, its task within the slot and its expert's matrix (expert 0
  // for an id out of range, whose sums are then discarded).
  auto task_rows = [&](int task, const std::uint8_t** rows) {
    task /= P;  // the row group
    const std::uint8_t* base = w;
    if (ex.ids != nullptr) {
      const int slot = min(task / slot_tasks, ex.n_slots - 1);
      const int e = ex.ids[slot];
      task -= slot * slot_tasks;
      if (e >= 0 && e < ex.n_experts) base += static_cast<std::size_t>(e) * ex.expert_bytes;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int row = min(task * R + r, n_rows - 1);
      if constexpr (kGlu) {
        const int pair = min(task * kPairs + r % kPairs, n_pairs - 1);
        row = r < kPairs ? pair : n_pairs + pair;
      }
      rows[r] = base + static_cast<std::size_t>(row) * row_bytes;
    }
  };

  // Issue side: the next item's (task, step), its stage, and the rows of its task. Counters
  // instead of k / n_steps and k % S: integer division costs ~20 instructions.
  int issued = 0, issue_step = step_begin, issue_task = first_task, issue_slot = 0;
  const unsigned long long policy = l2_stream_policy(evict_first);
  const std::uint8_t* issue_rows[R];
  auto issue = [&] {
    if (issued < n_items) {
      std::uint8_t* stage = ring + issue_slot * St::kBytes;
      const std::size_t step_off = static_cast<std::size_t>(issue_step) * F::kBytes;
      const std::size_t step_bytes = min(std::size_t{F::kBytes}, row_bytes - step_off);
      if constexpr (F::kAnyRow) {  // from the 16-byte boundary below, in whole 16-byte words
        std::uint32_t lead[R], bytes[R], total = 0;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          lead[r] = static_cast<std::uint32_t>(
              reinterpret_cast<std::uintptr_t>(issue_rows[r] + step_off) & 15u);
          bytes[r] = (lead[r] + static_cast<std::uint32_t>(step_bytes) + 15u) & ~15u;
          total += bytes[r];
        }
        if constexpr (kBulk) {
          if (lane == 0) {
            mbar_expect(bars + issue_slot, total);
#pragma unroll
            for (int r = 0; r < R; ++r) {
              bulk_copy(stage + r * St::kRowBytes, issue_rows[r] + step_off - lead[r], bytes[r],
                        bars + issue_slot, policy);
            }
          }
        } else {
#pragma unroll
          for (int r = 0; r < R; ++r) {
            std::uint8_t* dst = stage + r * St::kRowBytes;
            const std::uint8_t* src = issue_rows[r] + step_off - lead[r];
            for (int c = lane; 16 * c < static_cast<int>(bytes[r]); c += 32) {
              cp_async16(dst + 16 * c, src + 16 * c, policy);
            }
          }
        }
      } else if constexpr (kBulk) {  // a row's step is contiguous: one copy per row, by lane 0
        if (lane == 0) {
          const auto bytes = static_cast<std::uint32_t>(step_bytes);
          mbar_expect(bars + issue_slot, R * bytes);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            bulk_copy(stage + r * St::kRowBytes, issue_rows[r] + step_off, bytes, bars + issue_slot,
                      policy);
          }
        }
      } else if constexpr (kW != PlaneWeights::kQ4_0x8) {  // the row's bytes as they are
        const auto bytes = static_cast<int>(step_bytes);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          std::uint8_t* dst = stage + r * St::kRowBytes;
          const std::uint8_t* src = issue_rows[r] + step_off;
          for (int c = lane; 16 * c < bytes; c += 32) {
            if constexpr (kNormed) {  // no L2 policy: as below
              cp_async16(dst + 16 * c, src + 16 * c);
            } else {
              cp_async16(dst + 16 * c, src + 16 * c, policy);
            }
          }
        }
      } else if (issue_step * 32 + lane < n_blocks) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          std::uint8_t* dst = stage + r * St::kRowBytes;
          const std::uint8_t* src = issue_rows[r] + step_off;
          if constexpr (kNormed) {
            // No L2 policy here: ptxas 13.0 gave these copies of the normed one-row variants a
            // policy descriptor in an odd register (docs/cuda.md, "A ptxas 13.0 miscompile").
            // This form only runs where bulk copies do not (before sm_90, QFORGE_GEMV_BULK=0).
            cp_async16(dst + 16 * lane, src + lane_codes);
            if ((lane & 7) == 0) cp_async16(dst + 512 + 2 * lane, src + lane_header);
          } else {
            cp_async16(dst + 16 * lane, src + lane_codes, policy);
            if ((lane & 7) == 0) cp_async16(dst + 512 + 2 * lane, src + lane_header, policy);
          }
        }
      }
      ++issued;
      if (++issue_step == step_end) {
        issue_step = step_begin;
        issue_task += task_stride;
        task_rows(issue_task, issue_rows);
      }
    }
    if constexpr (!kBulk) cp_async_commit();
    if (++issue_slot == S) issue_slot = 0;
  };

  // The kCluster form shares the planes' work among the CTAs of a cluster, which first must all
  // have started before one writes into another's shared memory.
  static_assert(!kCluster || (kBulk && !kNormed));
  if constexpr (kCluster) {
    cluster::arrive_relaxed();
    if (ex.x_settled) {
      cluster::wait();
      build_planes_cluster<kPlanes>(x, x_rows<kTokens>(ex), n_cols, n_blocks, planes,
                                    cluster::rank(), cluster::size());
    }
  } else {
    if (ex.x_settled) build_planes<kPlanes>(x, x_rows<kTokens>(ex), n_cols, n_blocks, planes);
  }
  // The weights do not depend on the previous kernel: start streaming them before waiting for it
  // (except in the expert form where the previous kernel writes the expert ids).
  if (ex.ids != nullptr && !ex.ids_settled) pdl_wait();
  {  // the rows of the warp's first prefetch_tasks tasks into L2 (none by default)
    const std::size_t end = min(row_bytes, static_cast<std::size_t>(step_end) * F::kBytes);
    for (int k = 0, t = first_task; k < prefetch_tasks && t < n_tasks; ++k, t += task_stride) {
      task_rows(t, issue_rows);
      for (int r = 0; r < R; ++r) {
        for (std::size_t off = static_cast<std::size_t>(step_begin) * F::kBytes + 128 * lane;
             off < end; off += 32 * 128) {
          prefetch_l2(issue_rows[r] + off);
        }
      }
    }
  }
  task_rows(issue_task, issue_rows);
#pragma unroll
  for (int k = 0; k < S - 1; ++k) issue();
  if constexpr (kNormed) stage_norm_weights(norm_in, n_cols, norm_w);
  pdl_wait();
  trace.mark(1);
  pdl_trigger();
  if constexpr (kNormed) {
    build_planes_normed<kPlanes>(norm_in, norm_w, n_cols, n_blocks, planes);
  } else if (!ex.x_settled) {
    if constexpr (kCluster) {
      cluster::wait();
      build_planes_cluster<kPlanes>(x, x_rows<kTokens>(ex), n_cols, n_blocks, planes,
                                    cluster::rank(), cluster::size());
    } else {
      build_planes<kPlanes>(x, x_rows<kTokens>(ex), n_cols, n_blocks, planes);
    }
  }
  if constexpr (kCluster) {  // every CTA's share of the planes is in every CTA's shared memory
    cluster::arrive();
    cluster::wait();
  } else {
    __syncthreads();
  }
  trace.mark(2);

  const std::size_t tb = token_bytes(n_blocks);
  // The planes of the current task's x: per-slot x (ex.x_per_slot, kTokens = 1) or shared.
  auto task_planes = [&](int t) {
    const int slot = min(t / P / slot_tasks, ex.n_slots - 1);
    return ex.x_per_slot ? planes + static_cast<std::size_t>(slot) * tb : planes;
  };
  const std::uint8_t* x_planes = task_planes(first_task);
  float acc[R][kTokens];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) acc[r][t] = 0.0f;
  }
  int step = step_begin, task = first_task, slot = 0, round = 0;
  std::uint32_t phase = 0;  // bulk form: parity of the current pass over the ring
  // kAnyRow: where each row of the current task starts in its stage (issue() copies from the
  // 16-byte boundary below it). The base and the expert stride are multiples of 16 bytes, so the
  // row's index within its expert says: the task within its slot, kept as tasks advance.
  int lead[R] = {}, slot_task = 0;
  auto row_leads = [&] {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const auto row = static_cast<std::size_t>(min(slot_task * R + r, n_rows - 1));
      lead[r] = static_cast<int>((row * row_bytes) & 15u);
    }
  };
  if constexpr (F::kAnyRow) {
    slot_task = task % slot_tasks;
    row_leads();
  }
  // Where a lane's codes and scale sit in a stage's row: the bulk form copies the global layout
  // (per group of 8 blocks, 8 scales then 8 code arrays), cp.async regroups codes then scales.
  const int code_at = kBulk ? lane_codes : 16 * lane;
  const int scale_at =
      kBulk ? lane_header + 2 * (lane & 7) : 512 + 16 * (lane >> 3) + 2 * (lane & 7);
  // The same for a Q4_K row (the stage holds its bytes as they are in both copy forms).
  const int k_header_at = q4_0x8::q4_k_header_at(lane), k_codes_at = q4_0x8::q4_k_codes_at(lane);
  const std::uint32_t k_mask = (lane & 1) != 0 ? 0xf0f0f0f0u : 0x0f0f0f0fu;
  // A Q5_K row: lane's super-block header (then its 32 qh bytes) and its sub-block's code bytes.
  const int q5_header_at = 176 * (lane >> 3), q5_codes_off = 48 + 32 * ((lane & 7) >> 1);
  for (int k = 0; k < n_items; ++k) {
    issue();
    if constexpr (kBulk) {
      mbar_wait(bars + slot, phase);  // item k has landed
    } else {
      cp_async_wait<S - 1>();  // item k has landed (this lane's copies) ...
      __syncwarp();            // ... and so have the headers other lanes copied
    }
    const int b = step * 32 + lane;
    const std::uint8_t* stage = ring + slot * St::kBytes;
    if constexpr (kQ4K) {
      if (b < n_blocks) {
        // Both copy forms keep the row's bytes (q4_0x8_planes.cuh: lane = sub-block lane & 7
        // of super-block lane >> 3).
        float2 f[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          f[r] = q4_0x8::q4_k_factors(
              *reinterpret_cast<const uint4*>(stage + r * St::kRowBytes + k_header_at), lane);
        }
#pragma unroll
        for (int t = 0; t < kTokens; ++t) {
          const uint4* tok =
              reinterpret_cast<const uint4*>(x_planes + static_cast<std::size_t>(t) * tb);
          uint4 pl[6];
          const float2 xb = q4_0x8::block_planes<kPlanes>(tok, n_blocks, b, pl);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const auto* codes =
                reinterpret_cast<const uint4*>(stage + r * St::kRowBytes + k_codes_at);
            const float dot = q4_0x8::q4_k_dot<kPlanes>(codes[0], codes[1], k_mask, pl);
            acc[r][t] = fmaf(f[r].x, dot * xb.x, fmaf(-f[r].y, xb.y, acc[r][t]));
          }
        }
      }
    } else if constexpr (kW == PlaneWeights::kQ5_K) {
      if (b < n_blocks) {  // lane = sub-block lane & 7 of super-block lane >> 3, as for Q4_K
        float2 f[R];
        uint4 qs[R][2], qh[R][2];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const std::uint8_t* sb = stage + r * St::kRowBytes + q5_header_at;
          f[r] = q4_0x8::q4_k_factors<true>(*reinterpret_cast<const uint4*>(sb), lane);
          const auto* h = reinterpret_cast<const uint4*>(sb + 16);
          const auto* c = reinterpret_cast<const uint4*>(sb + q5_codes_off);
          qh[r][0] = h[0], qh[r][1] = h[1], qs[r][0] = c[0], qs[r][1] = c[1];
        }
#pragma unroll
        for (int t = 0; t < kTokens; ++t) {
          const uint4* tok =
              reinterpret_cast<const uint4*>(x_planes + static_cast<std::size_t>(t) * tb);
          uint4 pl[6];
          const float2 xb = q4_0x8::block_planes<kPlanes>(tok, n_blocks, b, pl);
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const float dot = q4_0x8::q5_k_dot<kPlanes>(qs[r], qh[r], lane & 7, pl);
            acc[r][t] = fmaf(f[r].x, dot * xb.x, fmaf(-f[r].y, xb.y, acc[r][t]));
          }
        }
      }
    } else if constexpr (F::kQ8) {
      const int half = lane & 1, b8 = step * 16 + (lane >> 1);
      if (b8 < n_blocks) {  // lane = half (lane & 1) of block lane >> 1
        std::uint32_t codes[R][4];
        float d[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const std::uint8_t* blk = stage + r * St::kRowBytes + lead[r] + 34 * (lane >> 1);
          d[r] = __half2float(*reinterpret_cast<const __half*>(blk));
          q4_0x8::load16_at2(blk + 2 + 16 * half, codes[r]);
        }
#pragma unroll
        for (int t = 0; t < kTokens; ++t) {
          const uint4* tok =
              reinterpret_cast<const uint4*>(x_planes + static_cast<std::size_t>(t) * tb);
          uint4 pl[3];
#pragma unroll
          for (int plane = 0; plane < kPlanes; ++plane) {
            pl[plane] = tok[(2 * plane + half) * n_blocks + b8];
          }
          const float xs = reinterpret_cast<const float2*>(tok + 6 * n_blocks)[b8].x;
#pragma unroll
          for (int r = 0; r < R; ++r) {
            acc[r][t] = fmaf(d[r] * xs, q4_0x8::q8_0_dot<kPlanes>(codes[r], pl), acc[r][t]);
          }
        }
      }
    } else if constexpr (kW == PlaneWeights::kQ5_0Rows || kW == PlaneWeights::kQ5_1Rows) {
      if (b < n_blocks) {  // lane = block (one token)
        const uint4* tok = reinterpret_cast<const uint4*>(x_planes);
        uint4 pl[6];
        const float2 xb = q4_0x8::block_planes<kPlanes>(tok, n_blocks, b, pl);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const std::uint8_t* blk = stage + r * St::kRowBytes + lead[r] + F::kBlockBytes * lane;
          std::uint32_t qw[5];                            // qh, then the 16 code bytes
          if constexpr (kW == PlaneWeights::kQ5_0Rows) {  // d, qh, qs: 2-byte aligned
            const float d = __half2float(*reinterpret_cast<const __half*>(blk));
            q4_0x8::load_words_at2<5>(blk + 2, qw);
            const float dot = q4_0x8::q5_0_dot<kPlanes>(qw, pl);
            acc[r][0] = fmaf(d, fmaf(16.0f * dot, xb.x, -2.0f * xb.y), acc[r][0]);
          } else {  // d, m, qh, qs: 8-byte aligned (rows of 24-byte blocks, leads 0 or 8)
            const auto* w2 = reinterpret_cast<const uint2*>(blk);
            const uint2 head = w2[0], c0 = w2[1], c1 = w2[2];
            qw[0] = head.y, qw[1] = c0.x, qw[2] = c0.y, qw[3] = c1.x, qw[4] = c1.y;
            const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(head.x)));
            const float m =
                __half2float(__ushort_as_half(static_cast<unsigned short>(head.x >> 16)));
            const float dot = q4_0x8::q5_0_dot<kPlanes>(qw, pl);
            acc[r][0] = fmaf(d * 16.0f * dot, xb.x, fmaf(m * 0.125f, xb.y, acc[r][0]));
          }
        }
      }
    } else if (b < n_blocks) {
      uint4 codes[R];
      float d[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        codes[r] = *reinterpret_cast<const uint4*>(stage + r * St::kRowBytes + code_at);
        d[r] = __half2float(*reinterpret_cast<const __half*>(stage + r * St::kRowBytes + scale_at));
      }
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const uint4* tok =
            reinterpret_cast<const uint4*>(x_planes + static_cast<std::size_t>(t) * tb);
        uint4 pl[6];
        const float2 xb = q4_0x8::block_planes<kPlanes>(tok, n_blocks, b, pl);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          acc[r][t] = fmaf(d[r], block_dot<kPlanes>(codes[r], pl, xb), acc[r][t]);
        }
      }
    }
    if (++step == step_end) {
      int out_task = task / P;  // the row group within its slot
      float* y_task = y;
      bool zero = false;  // an expert id out of range
      if (ex.ids != nullptr) {
        const int slot = out_task / slot_tasks, e = ex.ids[slot];
        out_task -= slot * slot_tasks;
        y_task += static_cast<std::size_t>(slot) * ldy;
        zero = e < 0 || e >= ex.n_experts;
      }
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        float v[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          v[r] = warp_sum(acc[r][t]);
          acc[r][t] = 0.0f;
        }
        if constexpr (P > 1) {  // the group's parts meet; its first warp adds them in order
          float* mine = partials + ((round & 1) * kWarps + warp) * R * kTokens + t * R;
          if (lane == 0) {
#pragma unroll
            for (int r = 0; r < R; ++r) mine[r] = v[r];
          }
          named_barrier(1 + warp / P, 32 * P);
          if (part != 0) continue;
#pragma unroll
          for (int q = 1; q < P; ++q) {
#pragma unroll
            for (int r = 0; r < R; ++r) v[r] += mine[q * R * kTokens + r];
          }
        }
        if (lane == 0) {
          float* yt = y_task + static_cast<std::size_t>(t) * ldy;
#pragma unroll
          for (int r = 0; r < (kGlu ? kPairs : R); ++r) {
            if constexpr (kGlu) {
              const int pair = out_task * kPairs + r;
              const float g = v[r], u = v[r + kPairs];
              const float out = zero ? 0.0f : (kOut == kSiluGlu ? silu(g) : gelu_tanh(g)) * u;
              if (pair < n_pairs) yt[pair] = out;
            } else if (out_task * R + r < n_rows) {
              yt[out_task * R + r] = zero ? 0.0f : v[r];
            }
          }
        }
      }
      step = step_begin;
      task += task_stride;
      x_planes = task_planes(task);
      ++round;
      if constexpr (F::kAnyRow) {
        for (slot_task += task_stride; slot_task >= slot_tasks;) slot_task -= slot_tasks;
        row_leads();
      }
    }
    if (++slot == S) slot = 0, phase ^= 1u;
    __syncwarp();  // every lane has read this stage before the next issue() refills it
  }
  if constexpr (!kBulk) cp_async_wait<0>();
  trace.commit(w, n_rows * ex.n_slots, n_cols);
}

// Forced shapes (0: chosen per matrix): the test setters, or QFORGE_GEMV_ROWS / QFORGE_GEMV_PARTS
// for measurements (invalid values read as 0).
int env_choice(const char* variable) {
  const long v = env_number(variable, 0);
  return v == 1 || v == 2 || v == 4 ? static_cast<int>(v) : 0;
}

std::atomic<int>& rows_choice() {
  static std::atomic<int> rows{env_choice("QFORGE_GEMV_ROWS")};
  return rows;
}

std::atomic<int>& parts_choice() {
  static std::atomic<int> parts{env_choice("QFORGE_GEMV_PARTS")};
  return parts;
}

// Tasks per warp whose rows a launch prefetches into L2 before its wait: none, or
// QFORGE_GEMV_PREFETCH_TASKS for measurements. The first task's rows used to be prefetched; since
// the kernels before a GEMV trigger early (pdl.cuh), its cp.async stages start during their run
// and the L2 prefetch only competes with them. H100 tg128 with none / one task / 16-48 MiB per
// launch: Llama-3-8B 377.5 / 366.8 / 330-356, Gemma 4 31B 109.8 / 109.4 / 99-108 tokens/s.
int prefetch_task_count() {
  static const int tasks =
      std::clamp(static_cast<int>(env_number("QFORGE_GEMV_PREFETCH_TASKS", 0)), 0, 16);
  return tasks;
}

// Whether the weight stream is marked evict_first in L2 (cp_async.cuh): yes, unless
// QFORGE_L2_EVICT_FIRST=0 (for measurements). H200 tg128, evict_normal / evict_first, same
// session: Llama-3-8B 381.4 / 420.4, Gemma 4 31B 111.7 / 123.7, 26B-A4B 320.8 / 326.8 tokens/s.
bool stream_evict_first() {
  static const bool on = env_number("QFORGE_L2_EVICT_FIRST", 1) != 0;
  return on;
}

// Whether the weight stream uses bulk copies (bulk_copy.cuh) on compute capability 9.0 and newer:
// yes, unless QFORGE_GEMV_BULK=0 or set_gemv_q4_0x8_bulk(false). H200 tg128 bulk / cp.async
// (eleventh pass, docs/benchmarks.md): Llama-3-8B 467.7 / 459.8 and 468.0 / 459.9, Gemma 4
// 26B-A4B 464.5 / 455.8, Gemma 4 31B 134.7 / 134.6 and 134.3 / 134.2.
std::atomic<bool>& bulk_choice() {
  static std::atomic<bool> on{env_number("QFORGE_GEMV_BULK", 1) != 0};
  return on;
}

bool bulk_copies() {
  return bulk_choice().load() && current_cc_major() >= 9;
}

std::size_t max_smem() {
  return current_max_smem_per_block();
}

int sm_count() {
  return current_sm_count();
}

// CTAs per cluster that share the planes of x (build_planes_cluster): chosen per launch (0, the
// default), or forced to 1 (none), 2 or 4 by set_gemv_q4_0x8_cluster or QFORGE_GEMV_CLUSTER.
std::atomic<int>& cluster_choice() {
  static std::atomic<int> size{[] {
    const long v = env_number("QFORGE_GEMV_CLUSTER", 0);
    return v == 1 || v == 2 || v == 4 ? static_cast<int>(v) : 0;
  }()};
  return size;
}

// Pairs of CTAs share the planes where x is one row of at least kClusterMinCols columns shared by
// every task. H200 tg128, one CTA / pairs / clusters of 4 for every launch (fourteenth pass,
// docs/benchmarks.md): Llama-3-8B 469 / 478 / 442, Gemma 4 31B 140.5 / 144.7 / 145.2, 26B-A4B
// 465 / 455 / 443. The MoE model loses with pairs everywhere (its expert launches, on two
// streams, have short inputs), so expert launches and short rows keep one CTA per SM.
constexpr int kClusterMinCols = 4096;

int plane_cluster_size(int n_cols, int n_x, bool experts) {
  if (current_cc_major() < 9) return 1;
  if (const int forced = cluster_choice().load(); forced != 0) return forced;
  return !experts && n_x == 1 && n_cols >= kClusterMinCols ? 2 : 1;
}

// How many clusters of `size` CTAs of one per SM the device holds at once (its SMs in groups,
// GPCs, of uneven sizes: some SMs may be left out). Asked once per size and process: every
// launch of this kernel holds one CTA per SM (one_cta_per_sm_smem), so the answer is the same.
template <typename Kernel>
int max_resident_clusters(Kernel* kernel, std::size_t smem, int size) {
  static std::atomic<int> known[5]{};
  int n = known[size].load();
  if (n == 0) {
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(static_cast<unsigned>(sm_count() / size * size));
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = smem;
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = static_cast<unsigned>(size);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    QFORGE_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, kernel, &config));
    if (n <= 0) cuda_fail("CUDA gemv (Q4_0x8): no cluster of ", size, " CTAs fits the device");
    known[size].store(n);
  }
  return n;
}

// Warps of one launch's CTAs when every SM holds one (a launch's first round of tasks).
long long resident_warps() {
  return static_cast<long long>(kWarps) * sm_count();
}

template <int R, int kTokens, int kOut, int P, bool kNormed, int kPlanes, PlaneWeights kW>
void launch_planes(const void* w, int n_rows, int n_cols, const float* x, float* y, std::size_t ldy,
                   StreamHandle stream, Experts ex, const ResidualNormInput& norm_in) {
  auto* kernel = gemv_q4_0x8_kernel<R, kTokens, kOut, P, false, kNormed, false, kPlanes, kW>;
  std::size_t smem = ring_bytes<R, kTokens, kW>() + x_rows<kTokens>(ex) * token_bytes(n_cols / 32) +
                     partial_bytes<R, kTokens, P>();
  if (bulk_copies()) {
    kernel = gemv_q4_0x8_kernel<R, kTokens, kOut, P, true, kNormed, false, kPlanes, kW>;
    smem += barrier_bytes<R, kTokens, true>();
  }
  if constexpr (kNormed) smem += norm_row_bytes(n_cols);
  const int cluster_size =
      kNormed || !bulk_copies()
          ? 1
          : plane_cluster_size(n_cols, static_cast<int>(x_rows<kTokens>(ex)), ex.ids != nullptr);
  if constexpr (!kNormed) {
    if (cluster_size > 1) {
      kernel = gemv_q4_0x8_kernel<R, kTokens, kOut, P, true, false, true, kPlanes, kW>;
    }
  }
  if (smem > max_smem()) {
    cuda_fail("CUDA gemv (Q4_0x8): ", n_cols, " columns x ", kTokens, " tokens need ", smem,
              " bytes of shared memory, the device has ", max_smem());
  }
  smem = one_cta_per_sm_smem(smem);  // each CTA owns a fixed stride of the tasks
  if (smem > 48 * 1024) {  // per device and kernel; a host-side call, also during graph capture
    QFORGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
  }
  // One CTA per SM: the planes are built once per SM, or once per cluster of SMs.
  const long long n_tasks = static_cast<long long>(task_count<R, kOut>(n_rows)) * ex.n_slots * P;
  auto grid = static_cast<int>(
      std::min<long long>((n_tasks + kWarps - 1) / kWarps, static_cast<long long>(sm_count())));
  if (cluster_size > 1) {  // whole clusters, no more than fit at once
    grid = std::min((grid + cluster_size - 1) / cluster_size * cluster_size,
                    max_resident_clusters(kernel, smem, cluster_size) * cluster_size);
  }
  const int prefetch_tasks = prefetch_task_count();
  launch_pdl_clustered("gemv_q4_0x8_kernel", kernel, static_cast<unsigned>(grid), kThreads, smem,
                       stream, static_cast<unsigned>(cluster_size),
                       static_cast<const std::uint8_t*>(w), n_rows, n_cols, x, y, ldy, ex, norm_in,
                       prefetch_tasks, stream_evict_first());
  QFORGE_CUDA_CHECK_LAUNCH("gemv_q4_0x8_kernel");
}

// The kernel of the planes the current DecodeX takes (cuda_device.h): all three, or with kInt8
// plane 0 alone (separate instantiations: a branch in the loop took the usual 64 registers of
// the one-token kernels to 78 and cost 1-3% of tg128).
template <int R, int kTokens, int kOut, int P = 1, bool kNormed = false,
          PlaneWeights kW = PlaneWeights::kQ4_0x8>
void launch(const void* w, int n_rows, int n_cols, const float* x, float* y, std::size_t ldy,
            StreamHandle stream, Experts ex = {}, const ResidualNormInput& norm_in = {}) {
  if (decode_x() == DecodeX::kInt8) {
    launch_planes<R, kTokens, kOut, P, kNormed, 1, kW>(w, n_rows, n_cols, x, y, ldy, stream, ex,
                                                       norm_in);
  } else {
    launch_planes<R, kTokens, kOut, P, kNormed, 3, kW>(w, n_rows, n_cols, x, y, ldy, stream, ex,
                                                       norm_in);
  }
}

// Rows per warp task: 2, or 1 for matrices too short to give every resident warp a 2-row task.
// Measured on an H100 (bench_cuda.cpp, one token, us for R = 1 / 2 / 4): 14336 x 4096 18.5 /
// 14.3 / 16.3, 4096 x 14336 19.2 / 18.9 / 21.4, 6144 x 4096 10.4 / 8.0 / 8.1, 5376 x 5376 12.3 /
// 9.7 / 10.0, 4096 x 4096 6.7 / 6.8 / 6.5: two rows share each plane load from shared memory,
// four leave too few tasks for an even last round.
int pick_rows(int n_rows, int n_tokens, bool glu, PlaneWeights weights) {
  if (const int forced = rows_choice().load(); forced != 0) {
    return n_tokens == 2 ? std::min(forced, 2) : forced;
  }
  // One-token Q8_0 tasks take four rows wherever two would do: a Q8_0 row is twice the steps of a
  // Q4 row, so an emptier last round weighs less against what four rows share (each step's plane
  // loads, barrier wait and copy issue). H200 tg128 Llama-3-8B Q8_0 (twentieth pass,
  // docs/benchmarks.md), 1 / 2 / 4 rows everywhere: 265.9 / 313.1 / 324.1.
  if (weights == PlaneWeights::kQ8_0 && n_tokens == 1 && n_rows >= resident_warps()) return 4;
  // Gated matrices with at least 8 rounds of one-pair tasks take two pairs per task: the planes
  // loaded from shared memory then serve four rows, and with that many rounds the emptier last
  // round costs less than they save. H200 tg128 (eleventh pass, docs/benchmarks.md), Gemma 4 31B
  // (43008 x 5376, 10.2 rounds) 130.1 -> 132.6; Llama-3-8B (28672 x 4096, 6.8 rounds) 462.9 ->
  // 461.0 if it applied there too.
  const long long warps = resident_warps();
  if (glu && n_tokens == 1 && n_rows / 2 >= 8 * warps) return 4;
  return n_rows >= warps ? 2 : 1;
}

// Column parts per row group: the most of 1, 2 and 4 that leave every part >= 3 steps of 1024
// columns. Measured on an H100 (bench_cuda.cpp, one token, us for 1 / 2 / 4 parts): 5376 x 21504
// 40.6 / 33.6 / 31.0, 4096 x 14336 18.9 / 17.2 / 16.4, 5376 x 8192 14.1 / 11.8 / 12.5, 16384 x
// 5376 22.1 / 21.2 / 23.0, 5376 x 5376 9.85 / 9.53 / 10.7, 14336 x 4096 14.3 / 14.7 / 15.2,
// 6144 x 4096 8.17 / 8.35 / 8.80. Parts fill the last round of tasks where two-row groups leave
// it mostly empty (5376 rows), and shorten the tasks of wide matrices even where they do not.
// Then a last round of warp tasks (row_tasks x parts over all resident warps) under 25% full
// takes half the parts where that fills it at least half (Gemma 4 31B 5376 x 21504 and 5376 x
// 16384: 9% -> 55%; spans in the decode graph 26.98 -> 26.45 and 21.24 -> 20.14 us, docs/
// benchmarks.md, eleventh pass). The converse, twice the parts where that fills the last round
// (Llama-3-8B 6144 x 4096: 45% -> 91%, span 7.50 -> 6.82 us), made the whole token 2% slower.
int pick_parts(int n_steps, long long row_tasks) {
  if (const int forced = parts_choice().load(); forced != 0) return std::min(forced, n_steps);
  const int parts = n_steps >= 12 ? 4 : n_steps >= 6 ? 2 : 1;
  const long long warps = resident_warps();
  // Share of the warps busy in the last round (1 for a round that is exactly full).
  auto fill = [&](int p) {
    const long long tasks = row_tasks * p, rem = tasks % warps;
    return rem == 0 ? 1.0 : static_cast<double>(rem) / static_cast<double>(warps);
  };
  if (parts > 1 && fill(parts) < 0.25 && fill(parts / 2) >= 0.5) return parts / 2;
  return parts;
}

template <int R, int kTokens, int kOut, bool kNormed, PlaneWeights kW>
void launch_parts(const void* w, int n_rows, int n_cols, const float* x, float* y, std::size_t ldy,
                  StreamHandle stream, const ResidualNormInput& norm_in) {
  switch (pick_parts(Form<kW>::steps(n_cols / 32), task_count<R, kOut>(n_rows))) {
    case 4:
      return launch<R, kTokens, kOut, 4, kNormed, kW>(w, n_rows, n_cols, x, y, ldy, stream, {},
                                                      norm_in);
    case 2:
    case 3:
      return launch<R, kTokens, kOut, 2, kNormed, kW>(w, n_rows, n_cols, x, y, ldy, stream, {},
                                                      norm_in);
    default:
      return launch<R, kTokens, kOut, 1, kNormed, kW>(w, n_rows, n_cols, x, y, ldy, stream, {},
                                                      norm_in);
  }
}

// kNormed (one token only): x is norm_in's GEMV input (ResidualNormInput).
template <int kTokens, int kOut, bool kNormed = false, PlaneWeights kW = PlaneWeights::kQ4_0x8>
void launch_tokens(const void* w, int n_rows, int n_cols, const float* x, float* y, std::size_t ldy,
                   StreamHandle stream, const ResidualNormInput& norm_in = {}) {
  static_assert(kTokens == 1 || !kNormed);
  switch (pick_rows(n_rows, kTokens, kOut != kRows, kW)) {
    case 4:
      if constexpr (kTokens == 1) {
        return launch_parts<4, kTokens, kOut, kNormed, kW>(w, n_rows, n_cols, x, y, ldy, stream,
                                                           norm_in);
      }
      [[fallthrough]];
    case 2:
      return launch_parts<2, kTokens, kOut, kNormed, kW>(w, n_rows, n_cols, x, y, ldy, stream,
                                                         norm_in);
    default:
      if constexpr (kOut == kRows) {
        return launch_parts<1, kTokens, kOut, kNormed, kW>(w, n_rows, n_cols, x, y, ldy, stream,
                                                           norm_in);
      } else {  // a gate/up task holds pairs of rows
        return launch_parts<2, kTokens, kOut, kNormed, kW>(w, n_rows, n_cols, x, y, ldy, stream,
                                                           norm_in);
      }
  }
}

// Rows of whole 256-column groups the GEMV takes (the GGUF forms' rows are then 16-byte multiples).
bool whole_groups(std::size_t n_cols) {
  return n_cols > 0 && n_cols % 256 == 0 && n_cols <= kMaxQ4_0x8Cols;
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// col_multiple: 256 for matrices regrouped in place, 32 for widened ones (q4_0x8.h).
void check(const void* w, std::size_t n_rows, std::size_t n_cols, const float* x, const float* y,
           std::size_t ldy, int n_tokens, std::size_t col_multiple = 256) {
  if (n_cols == 0 || n_cols % col_multiple != 0 || n_cols > kMaxQ4_0x8Cols || n_rows == 0 ||
      n_rows > 0x7fffffffu) {
    cuda_fail("CUDA gemv (Q4_0x8): ", n_rows, " x ", n_cols,
              " (need rows in [1, 2^31) and columns a positive multiple of ", col_multiple,
              " up to ", kMaxQ4_0x8Cols, ")");
  }
  if (w == nullptr || !aligned16(w) || x == nullptr || !aligned16(x) || y == nullptr) {
    cuda_fail(
        "CUDA gemv (Q4_0x8): weights and x must be 16-byte aligned device arrays, y non-null");
  }
  if (n_tokens < 1) cuda_fail("CUDA gemv (Q4_0x8): n_tokens must be positive, got ", n_tokens);
  if (ldy < n_rows) cuda_fail("CUDA gemv (Q4_0x8): output stride ", ldy, " < rows ", n_rows);
}

void check_gated(std::size_t n_rows) {
  if (n_rows % 2 != 0) {
    cuda_fail("CUDA gemv (Q4_0x8, gated): ", n_rows, " rows are not gate rows + as many up rows");
  }
}

void check_normed(const ResidualNormInput& in, std::size_t n_cols, PlaneWeights weights) {
  if (!gemv_q4_0x8_normed_applies(n_cols, weights)) {
    cuda_fail("CUDA gemv (Q4_0x8, normed input): ", n_cols,
              " columns (need a multiple of 256 up to ", kMaxNormedCols, ")");
  }
  if (in.norm == nullptr || !aligned16(in.norm) || !aligned16(in.o) || !aligned16(in.o_norm) ||
      !aligned16(in.x_out)) {
    cuda_fail("CUDA gemv (Q4_0x8, normed input): needs norm weights; x, o, o_norm, norm and x_out",
              " must be 16-byte aligned");
  }
  if (in.x_out != nullptr && in.x_out == in.x) {
    cuda_fail("CUDA gemv (Q4_0x8, normed input): x_out must not be x (every CTA reads x)");
  }
}

// Tokens in pairs that share the weight read where both tokens' planes fit in shared memory.
template <int kOut, PlaneWeights kW>
void run_tokens(const void* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
                std::size_t ldy, int n_tokens, StreamHandle stream) {
  const int rows = static_cast<int>(n_rows), cols = static_cast<int>(n_cols);
  const bool pairs = ring_bytes<2, 2, kW>() + 2 * token_bytes(cols / 32) +
                         partial_bytes<2, 2, 4>() + barrier_bytes<2, 2, true>() <=
                     max_smem();
  for (int t = 0; t < n_tokens;) {
    const float* xt = x + static_cast<std::size_t>(t) * n_cols;
    float* yt = y + static_cast<std::size_t>(t) * ldy;
    if (pairs && n_tokens - t >= 2) {
      launch_tokens<2, kOut, false, kW>(w, rows, cols, xt, yt, ldy, stream);
      t += 2;
    } else {
      launch_tokens<1, kOut, false, kW>(w, rows, cols, xt, yt, ldy, stream);
      t += 1;
    }
  }
}

// Calls fn with std::integral_constant<PlaneWeights, weights>: one instantiation per form.
template <typename Fn>
void with_form(PlaneWeights weights, Fn&& fn) {
  using W = PlaneWeights;
  switch (weights) {
    case W::kQ4_K:
      return fn(std::integral_constant<W, W::kQ4_K>{});
    case W::kQ8_0:
      return fn(std::integral_constant<W, W::kQ8_0>{});
    case W::kQ5_K:
      return fn(std::integral_constant<W, W::kQ5_K>{});
    case W::kQ8_0Rows:
    case W::kQ5_0Rows:
    case W::kQ5_1Rows:
      cuda_fail("CUDA gemv (Q4_0x8): the expert down forms (Q8_0, Q5_0, Q5_1 rows at any 4-byte ",
                "boundary) have no other GEMV");
    case W::kQ4_0x8:
      break;
  }
  return fn(std::integral_constant<W, W::kQ4_0x8>{});
}

// The trace buffer of this file's kernels (kernel_trace.cuh); empty when not tracing.
DeviceBuffer<TraceRecord>& trace_buffer() {
  static DeviceBuffer<TraceRecord> buffer;
  return buffer;
}

}  // namespace

bool gemv_q4_0x8_normed_applies(std::size_t n_cols, PlaneWeights weights) {
  if (n_cols == 0 || n_cols % 256 != 0 || n_cols > kMaxNormedCols) return false;
  // The largest launch shape (four-row tasks, four parts) fits in shared memory, as launch()
  // would check (the row arrays make 8192 columns too many for devices before sm_90).
  const int cols = static_cast<int>(n_cols);
  std::size_t ring = 0;
  with_form(weights, [&](auto form) { ring = ring_bytes<4, 1, decltype(form)::value>(); });
  return ring + token_bytes(cols / 32) + partial_bytes<4, 1, 4>() + barrier_bytes<4, 1, true>() +
             norm_row_bytes(cols) <=
         max_smem();
}

bool q4_k_planes_applies(GgmlType type, std::size_t n_cols) {
  static const bool on = switch_on("QFORGE_Q4_K_PLANES");
  return on && type == GgmlType::Q4_K && whole_groups(n_cols);
}

std::optional<PlaneWeights> gguf_plane_weights(GgmlType type, std::size_t n_cols) {
  static const bool q8_0 = switch_on("QFORGE_Q8_0_PLANES"), q5_k = switch_on("QFORGE_Q5_K_PLANES");
  if (q4_k_planes_applies(type, n_cols)) return PlaneWeights::kQ4_K;
  if (!whole_groups(n_cols)) return std::nullopt;
  if (type == GgmlType::Q8_0 && q8_0) return PlaneWeights::kQ8_0;
  if (type == GgmlType::Q5_K && q5_k) return PlaneWeights::kQ5_K;
  return std::nullopt;
}

bool gemv_trace_built() {
  return kTraceBuilt;
}

void gemv_trace_start(std::size_t capacity) {
  if (!kTraceBuilt) {
    cuda_fail("kernel traces need a qforge configured with -DQFORGE_KERNEL_TRACE=ON");
  }
  if (capacity > 0xffffffffu) cuda_fail("gemv_trace_start: capacity ", capacity, " > 2^32 - 1");
  QFORGE_CUDA_CHECK(cudaDeviceSynchronize());
  trace_buffer() = DeviceBuffer<TraceRecord>(capacity);
  trace_start_here(trace_buffer().data(), static_cast<unsigned>(capacity));
}

std::vector<TraceRecord> gemv_trace_stop() {
  QFORGE_CUDA_CHECK(cudaDeviceSynchronize());
  const std::size_t n = std::min<std::size_t>(trace_count_here(), trace_buffer().size());
  std::vector<TraceRecord> records(n);
  if (n > 0) {
    QFORGE_CUDA_CHECK(cudaMemcpy(records.data(), trace_buffer().data(), n * sizeof(TraceRecord),
                                 cudaMemcpyDeviceToHost));
  }
  trace_start_here(nullptr, 0);  // before the buffer goes
  trace_buffer() = DeviceBuffer<TraceRecord>();
  return records;
}

void set_gemv_q4_0x8_rows(int rows) {
  if (rows != 0 && rows != 1 && rows != 2 && rows != 4) {
    cuda_fail("set_gemv_q4_0x8_rows: rows must be 0, 1, 2 or 4, got ", rows);
  }
  rows_choice().store(rows);
}

void set_gemv_q4_0x8_bulk(bool on) {
  bulk_choice().store(on);
}

bool gemv_q4_0x8_bulk_chosen() {
  return bulk_choice().load();
}

void set_gemv_q4_0x8_cluster(int size) {
  if (size != 0 && size != 1 && size != 2 && size != 4) {
    cuda_fail("set_gemv_q4_0x8_cluster: size must be 0, 1, 2 or 4, got ", size);
  }
  cluster_choice().store(size);
}

int gemv_q4_0x8_cluster_chosen() {
  return cluster_choice().load();
}

void set_gemv_q4_0x8_parts(int parts) {
  if (parts != 0 && parts != 1 && parts != 2 && parts != 4) {
    cuda_fail("set_gemv_q4_0x8_parts: parts must be 0, 1, 2 or 4, got ", parts);
  }
  parts_choice().store(parts);
}

void gemv_q4_0x8(const void* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
                 std::size_t ldy, int n_tokens, StreamHandle stream, PlaneWeights weights) {
  check(w, n_rows, n_cols, x, y, ldy, n_tokens);
  with_form(weights, [&](auto form) {
    run_tokens<kRows, decltype(form)::value>(w, n_rows, n_cols, x, y, ldy, n_tokens, stream);
  });
}

void gemv_q4_0x8_glu(FfnActivation act, const void* w, std::size_t n_rows, std::size_t n_cols,
                     const float* x, float* y, std::size_t ldy, int n_tokens, StreamHandle stream,
                     PlaneWeights weights) {
  check_gated(n_rows);
  check(w, n_rows, n_cols, x, y, ldy * 2, n_tokens);  // ldy >= n_rows / 2
  const bool silu = act == FfnActivation::kSiluGlu;
  with_form(weights, [&](auto form) {
    constexpr PlaneWeights kW = decltype(form)::value;
    (silu ? run_tokens<kSiluGlu, kW> : run_tokens<kGeluGlu, kW>)(w, n_rows, n_cols, x, y, ldy,
                                                                 n_tokens, stream);
  });
}

void gemv_q4_0x8_normed(const void* w, std::size_t n_rows, std::size_t n_cols,
                        const ResidualNormInput& in, float* y, StreamHandle stream,
                        PlaneWeights weights) {
  check(w, n_rows, n_cols, in.x, y, n_rows, 1);
  check_normed(in, n_cols, weights);
  const int rows = static_cast<int>(n_rows), cols = static_cast<int>(n_cols);
  with_form(weights, [&](auto form) {
    launch_tokens<1, kRows, true, decltype(form)::value>(w, rows, cols, in.x, y, n_rows, stream,
                                                         in);
  });
}

void gemv_q4_0x8_glu_normed(FfnActivation act, const void* w, std::size_t n_rows,
                            std::size_t n_cols, const ResidualNormInput& in, float* y,
                            StreamHandle stream, PlaneWeights weights) {
  check_gated(n_rows);
  check(w, n_rows, n_cols, in.x, y, n_rows, 1);
  check_normed(in, n_cols, weights);
  const int rows = static_cast<int>(n_rows), cols = static_cast<int>(n_cols);
  const bool silu = act == FfnActivation::kSiluGlu;
  with_form(weights, [&](auto form) {
    constexpr PlaneWeights kW = decltype(form)::value;
    (silu ? launch_tokens<1, kSiluGlu, true, kW>
          : launch_tokens<1, kGeluGlu, true, kW>)(w, rows, cols, in.x, y, n_rows / 2, stream, in);
  });
}

void moe_gemv_q4_0x8_glu(FfnActivation act, const ExpertStack& w, const int* ids, int n_slots,
                         const float* x, float* y, std::size_t ldy, StreamHandle stream,
                         bool x_settled) {
  if (n_slots <= 0) return;
  check_expert_stack(w, "moe_gemv_q4_0x8_glu weights");
  const std::optional<PlaneWeights> form = w.layout == WeightLayout::kQ4_0x8
                                               ? PlaneWeights::kQ4_0x8
                                               : gguf_plane_weights(w.type, w.cols);
  if (!form || w.rows % 2 != 0 || ids == nullptr ||
      w.expert_bytes < w.rows * row_bytes(w.type, w.cols) || w.expert_bytes % 16 != 0) {
    cuda_fail("CUDA MoE gemv (Q4_0x8, gated): needs Q4_0x8, Q4_K, Q8_0 or Q5_K experts of gate ",
              "rows + as many up rows (", w.rows, " rows of ", w.expert_bytes,
              " bytes per expert, a multiple of 16) and expert ids");
  }
  // Tasks are counted in int: slots x rows stays far below 2^31 for any real MoE.
  if (static_cast<long long>(n_slots) * static_cast<long long>(w.rows) > 0x3fffffffLL) {
    cuda_fail("CUDA MoE gemv (Q4_0x8, gated): ", n_slots, " slots of ", w.rows, " rows");
  }
  check(w.data, w.rows, w.cols, x, y, ldy * 2, 1);  // ldy >= rows / 2
  const Experts ex{ids, w.expert_bytes, w.n_experts, n_slots, false, false, x_settled};
  const int rows = static_cast<int>(w.rows), cols = static_cast<int>(w.cols);
  const bool silu = act == FfnActivation::kSiluGlu;
  with_form(*form, [&](auto f) {
    constexpr PlaneWeights kW = decltype(f)::value;
    (silu ? launch<2, 1, kSiluGlu, 1, false, kW>
          : launch<2, 1, kGeluGlu, 1, false, kW>)(w.data, rows, cols, x, y, ldy, stream, ex, {});
  });
}

// Rows per warp task of the expert down form: its rows are short (704 columns in Gemma 4 26B-A4B,
// one 22-block step), so a task's fixed cost is spread over more of them. H200 tg128 of Gemma 4
// 26B-A4B, 1 / 2 / 4 rows: 404.3 / 420.2 / 425.8 tokens/s (the GGUF-layout row-tiled kernel:
// 416.1).
constexpr int kDownRows = 4;

std::optional<PlaneWeights> expert_down_plane_weights(const ExpertStack& w) {
  static const bool on = switch_on("QFORGE_DOWN_PLANES");
  if (!on || w.layout != WeightLayout::kGguf || w.cols == 0 || w.cols % 32 != 0 ||
      w.cols > kMaxQ4_0x8Cols || !aligned16(w.data) || w.expert_bytes % 16 != 0 ||
      w.expert_bytes < w.rows * row_bytes(w.type, w.cols)) {
    return std::nullopt;
  }
  switch (w.type) {
    case GgmlType::Q8_0:
      return PlaneWeights::kQ8_0Rows;
    case GgmlType::Q5_0:
      return PlaneWeights::kQ5_0Rows;
    case GgmlType::Q5_1:
      return PlaneWeights::kQ5_1Rows;
    default:
      return std::nullopt;
  }
}

namespace {

// The expert down launches of one form: as many slots per launch as shared memory holds the
// planes of (all k of a token for the 704-column experts of Gemma 4 26B-A4B).
template <PlaneWeights kW>
void launch_expert_down(const ExpertStack& w, const int* ids, int n_slots, const float* x, float* y,
                        std::size_t ldy, StreamHandle stream, bool ids_settled) {
  const std::size_t per_slot = token_bytes(static_cast<int>(w.cols / 32));
  constexpr std::size_t kRing =
      ring_bytes<kDownRows, 1, kW>() + barrier_bytes<kDownRows, 1, true>();
  const std::size_t room = max_smem() > kRing ? max_smem() - kRing : 0;
  const int per_launch = static_cast<int>(std::min<std::size_t>(room / per_slot, 64));
  if (per_launch < 1) {
    cuda_fail("CUDA MoE gemv (Q4_0x8): the planes of one slot of ", w.cols,
              " columns do not fit in shared memory");
  }
  for (int s0 = 0; s0 < n_slots; s0 += per_launch) {
    const int n = std::min(per_launch, n_slots - s0);
    const Experts ex{ids + s0, w.expert_bytes, w.n_experts, n, true, ids_settled};
    const float* xs = x + static_cast<std::size_t>(s0) * w.cols;
    float* ys = y + static_cast<std::size_t>(s0) * ldy;
    launch<kDownRows, 1, kRows, 1, false, kW>(w.data, static_cast<int>(w.rows),
                                              static_cast<int>(w.cols), xs, ys, ldy, stream, ex);
  }
}

}  // namespace

void moe_gemv_q4_0x8(const ExpertStack& w, const int* ids, int n_slots, const float* x, float* y,
                     std::size_t ldy, StreamHandle stream, bool ids_settled) {
  if (n_slots <= 0) return;
  check_expert_stack(w, "moe_gemv_q4_0x8 weights");
  const std::optional<PlaneWeights> form = w.layout == WeightLayout::kQ4_0x8
                                               ? std::optional(PlaneWeights::kQ4_0x8)
                                               : expert_down_plane_weights(w);
  if (!form || ids == nullptr ||
      (*form == PlaneWeights::kQ4_0x8 && w.expert_bytes < w.rows * q4_0x8_row_bytes(w.cols))) {
    cuda_fail("CUDA MoE gemv (Q4_0x8): needs Q4_0x8 experts (", w.rows, " rows of ",
              q4_0x8_row_bytes(w.cols), " bytes), or GGUF Q8_0, Q5_0 or Q5_1 experts at 16-byte ",
              "multiples (", type_name(w.type), ", ", w.expert_bytes,
              " bytes per expert), and expert ids");
  }
  if (static_cast<long long>(n_slots) * static_cast<long long>(w.rows) > 0x3fffffffLL) {
    cuda_fail("CUDA MoE gemv (Q4_0x8): ", n_slots, " slots of ", w.rows, " rows");
  }
  check(w.data, w.rows, w.cols, x, y, ldy, 1, 32);
  switch (*form) {
    case PlaneWeights::kQ8_0Rows:
      return launch_expert_down<PlaneWeights::kQ8_0Rows>(w, ids, n_slots, x, y, ldy, stream,
                                                         ids_settled);
    case PlaneWeights::kQ5_0Rows:
      return launch_expert_down<PlaneWeights::kQ5_0Rows>(w, ids, n_slots, x, y, ldy, stream,
                                                         ids_settled);
    case PlaneWeights::kQ5_1Rows:
      return launch_expert_down<PlaneWeights::kQ5_1Rows>(w, ids, n_slots, x, y, ldy, stream,
                                                         ids_settled);
    default:
      return launch_expert_down<PlaneWeights::kQ4_0x8>(w, ids, n_slots, x, y, ldy, stream,
                                                       ids_settled);
  }
}

}  // namespace qforge::cuda
