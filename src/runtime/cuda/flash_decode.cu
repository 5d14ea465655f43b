// flash_decode: attention of 1..8 query tokens over a deep KV cache, all in F32 on CUDA cores.
//
// Grid: (KV head, split, row block). A row block is RB query rows of one KV group, the rows being
// (token, head in group) pairs token-major, so one CTA serves every query head of the group and
// reads each K/V row of its split once. The positions the block's rows see are cut into
// gridDim.y equal splits on the device (from *pos0), so the grid never depends on the position.
// Two forms of the split kernel compute the same sums:
//   flash_decode_split_staged (the default): K and V rows staged in shared memory by cp.async,
//     those of earlier steps requested before the PDL wait (see its comment);
//   flash_decode_split (QFORGE_FLASH_DECODE_STAGED=0, kept for side-by-side runs): rows read
//     straight from global memory, per step of 128 positions:
//   scores: thread i takes position j0 + i, reads its whole K row with 16-byte loads and forms
//           the dot products with all RB queries (held in shared memory, read as broadcasts), so
//           there is no reduction across lanes per position;
//   softmax: one warp per row updates the running max / sum of the row and turns the scores into
//           weights (online softmax, F32);
//   values: thread (position group, 8-column chunk) accumulates weight * V over its positions,
//           V rows read as 16-byte vectors; the position groups are summed at the end.
// Each split writes its unnormalized output row and its (max, sum) per row; flash_decode_merge
// combines them. Scratch layout (flash_decode_scratch_floats): the output rows, D floats per
// (token, head, split), then the (max, sum) pairs in the same order, so output rows stay 16-byte
// aligned for the merge's vector loads.
#include <algorithm>
#include <cstdint>

#include "runtime/cuda/check.cuh"
#include "runtime/cuda/cp_async.cuh"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/flash_attention.cuh"
#include "runtime/cuda/flash_attention.h"
#include "runtime/cuda/pdl.cuh"
#include "runtime/cuda/prefetch.cuh"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {
namespace {

using flash::first_visible;

constexpr int kThreads = 128;
constexpr int kTile = kThreads;   // positions per step
constexpr int kMaxSplits = 4096;  // the merge keeps one weight per split in shared memory
constexpr int kMinSplit = 64;     // positions: shorter splits leave most threads of a step idle
constexpr int kMergePad = 4;      // floats after the merge's weights (see flash_decode_merge)

int rows_per_block(int n_rows) {
  return n_rows <= 2 ? 2 : n_rows <= 4 ? 4 : 8;
}

constexpr std::size_t split_smem_floats(int d, int rb) {
  const std::size_t work = static_cast<std::size_t>(rb) * (d + kTile + 3);
  const std::size_t reduce = static_cast<std::size_t>(kThreads) * 8 * rb;
  return work > reduce ? work : reduce;
}

// The positions [begin, end) that split `split` of n_splits covers: its share of those any row of
// the row block at f0 sees (base: the first query token's position).
__device__ __forceinline__ void split_positions(int base, int f0, int rb, int n_rows, int group,
                                                int window, int split, int n_splits, int& begin,
                                                int& end) {
  const int last = min(f0 + rb, n_rows) - 1;
  const int lo = first_visible(base + f0 / group, window), hi = base + last / group + 1;
  const int share = (hi - lo + n_splits - 1) / n_splits;
  begin = lo + split * share, end = min(hi, begin + share);
}

// The row block's queries into sq (zeros for padding rows), its running max / sum reset, and
// each row's position and first visible position (-1 and 0 for padding rows, which see nothing).
template <int D, int RB>
__device__ __forceinline__ void start_rows(const float* __restrict__ q, std::size_t q_stride,
                                           int base, int f0, int n_rows, int group, int kv_head,
                                           int window, float* sq, float* s_max, float* s_sum,
                                           int (&row_pos)[RB], int (&row_first)[RB]) {
  const int tid = static_cast<int>(threadIdx.x);
  for (int i = tid; i < RB * D; i += kThreads) {
    const int f = f0 + i / D;
    sq[i] = f < n_rows ? q[static_cast<std::size_t>(f / group) * q_stride +
                           static_cast<std::size_t>(kv_head * group + f % group) * D + i % D]
                       : 0.0f;
  }
  if (tid < RB) s_max[tid] = -INFINITY, s_sum[tid] = 0.0f;
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    const int f = f0 + r;
    row_pos[r] = f < n_rows ? base + f / group : -1;
    row_first[r] = f < n_rows ? first_visible(row_pos[r], window) : 0;
  }
}

// The value sums scaled by this step's softmax rescale of their row.
template <int RB>
__device__ __forceinline__ void rescale(float (&acc)[RB][8], const float* s_corr) {
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    const float corr = s_corr[r];
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r][e] *= corr;
  }
}

// The end of a split CTA: the position groups' value sums (acc, thread (group, chunk)) added in
// group order through s_reduce, then the rows' outputs and (max, sum) pairs written to part (see
// the scratch layout above). my_max / my_sum: row tid's, for the first RB threads.
template <int D, int RB, int kGroups>
__device__ __forceinline__ void write_split_result(const float (&acc)[RB][8], float* s_reduce,
                                                   float my_max, float my_sum, int f0, int n_rows,
                                                   int n_head_kv, int group, int kv_head, int split,
                                                   int n_splits, float* __restrict__ part) {
  constexpr int kChunks = D / 8;
  const int tid = static_cast<int>(threadIdx.x);
  const int chunk = tid % kChunks, pgroup = tid / kChunks;
  const int n_head = n_head_kv * group;
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    float* dst = s_reduce + (pgroup * RB + r) * D + chunk * 8;
    reinterpret_cast<float4*>(dst)[0] = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
    reinterpret_cast<float4*>(dst)[1] = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
  }
  __syncthreads();

  // Index of (token, head, split) of row f in the scratch's output rows and (max, sum) pairs.
  auto part_index = [&](int f) {
    const int t = f / group, h = kv_head * group + f % group;
    return (static_cast<std::size_t>(t) * n_head + h) * n_splits + split;
  };
  for (int i = tid; i < RB * D; i += kThreads) {
    const int r = i / D, d = i % D;
    if (f0 + r >= n_rows) continue;
    float total = 0.0f;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) total += s_reduce[(g * RB + r) * D + d];
    part[part_index(f0 + r) * D + d] = total;
  }
  if (tid < RB && f0 + tid < n_rows) {
    const std::size_t n_parts = static_cast<std::size_t>(n_rows) * n_head_kv * n_splits;
    float* dst = part + n_parts * D + 2 * part_index(f0 + tid);
    dst[0] = my_max, dst[1] = my_sum;
  }
}

template <int D, int RB, typename T>
__global__ void __launch_bounds__(kThreads)
    flash_decode_split(const float* __restrict__ q, std::size_t q_stride,
                       const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                       const int* __restrict__ pos0, int n_tokens, int n_head_kv, int group,
                       float scale, float softcap, int window, float* __restrict__ part) {
  constexpr int kChunks = D / 8;               // 8-column chunks of a V row
  constexpr int kGroups = kThreads / kChunks;  // position groups of the value step
  extern __shared__ __align__(16) float smem[];
  float* const sq = smem;                // [RB][D] queries
  float* const sp = sq + RB * D;         // [RB][kTile] scores, then weights
  float* const s_max = sp + RB * kTile;  // [RB] running max
  float* const s_sum = s_max + RB;       // [RB] running sum
  float* const s_corr = s_sum + RB;      // [RB] rescale of this step
  float* const s_reduce = smem;          // [kGroups][RB][D] at the end (reuses everything)

  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int kv_head = static_cast<int>(blockIdx.x);
  const int split = static_cast<int>(blockIdx.y), n_splits = static_cast<int>(gridDim.y);
  const int f0 = static_cast<int>(blockIdx.z) * RB;
  const int n_rows = n_tokens * group;
  const int base = *pos0;  // written before the step, by the host

  int begin, end;
  split_positions(base, f0, RB, n_rows, group, window, split, n_splits, begin, end);

  // The cache rows of earlier steps (before base) are not written by the previous kernel
  // (pdl.cuh) and have left L2 since: start fetching them into L2 before waiting for it.
  prefetch_kv_rows_l2(k_cache, v_cache, begin, min(end, base), n_head_kv, kv_head, D, D);
  pdl_wait();
  // Late, unlike batch_attention (pdl.cuh): measured slower early.
  pdl_trigger();

  int row_pos[RB], row_first[RB];
  start_rows<D, RB>(q, q_stride, base, f0, n_rows, group, kv_head, window, sq, s_max, s_sum,
                    row_pos, row_first);

  const int chunk = tid % kChunks, pgroup = tid / kChunks;
  float acc[RB][8];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r][e] = 0.0f;
  }
  __syncthreads();

  for (int j0 = begin; j0 < end; j0 += kTile) {
    // Scores of position j0 + tid.
    const int j = j0 + tid;
    float s[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) s[r] = 0.0f;
    if (j < end) {
      const T* krow = k_cache + (static_cast<std::size_t>(j) * n_head_kv + kv_head) * D;
#pragma unroll 16
      for (int c = 0; c < D; c += 8) {
        float kv[8];
        flash::load8(krow + c, kv);
#pragma unroll
        for (int r = 0; r < RB; ++r) {
          const float4 qa = *reinterpret_cast<const float4*>(sq + r * D + c);
          const float4 qb = *reinterpret_cast<const float4*>(sq + r * D + c + 4);
          s[r] = fmaf(qa.x, kv[0], s[r]);
          s[r] = fmaf(qa.y, kv[1], s[r]);
          s[r] = fmaf(qa.z, kv[2], s[r]);
          s[r] = fmaf(qa.w, kv[3], s[r]);
          s[r] = fmaf(qb.x, kv[4], s[r]);
          s[r] = fmaf(qb.y, kv[5], s[r]);
          s[r] = fmaf(qb.z, kv[6], s[r]);
          s[r] = fmaf(qb.w, kv[7], s[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      const bool seen = j < end && j <= row_pos[r] && j >= row_first[r];
      sp[r * kTile + tid] = seen ? flash::apply_softcap(s[r] * scale, softcap) : -INFINITY;
    }
    __syncthreads();

    // Online softmax, one warp per row.
    for (int r = warp; r < RB; r += kThreads / 32) {
      float4 v = reinterpret_cast<const float4*>(sp + r * kTile)[lane];
      const float m_old = s_max[r];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w))));
      const float ref = m_new == -INFINITY ? 0.0f : m_new;  // nothing seen yet: weights 0
      const float corr = expf(m_old - ref);
      v.x = expf(v.x - ref), v.y = expf(v.y - ref), v.z = expf(v.z - ref), v.w = expf(v.w - ref);
      reinterpret_cast<float4*>(sp + r * kTile)[lane] = v;
      const float sum = warp_sum((v.x + v.y) + (v.z + v.w));
      __syncwarp();  // every lane has read s_max[r] (m_old) before lane 0 replaces it
      if (lane == 0) s_max[r] = m_new, s_sum[r] = s_sum[r] * corr + sum, s_corr[r] = corr;
    }
    __syncthreads();

    // Weighted values.
    rescale(acc, s_corr);
    const int n_here = min(kTile, end - j0);
    const T* vbase = v_cache + static_cast<std::size_t>(kv_head) * D + chunk * 8;
#pragma unroll 8
    for (int jj = pgroup; jj < n_here; jj += kGroups) {
      float vv[8];
      flash::load8(vbase + static_cast<std::size_t>(j0 + jj) * n_head_kv * D, vv);
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        const float w = sp[r * kTile + jj];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(w, vv[e], acc[r][e]);
      }
    }
    __syncthreads();
  }

  float my_max = -INFINITY, my_sum = 0.0f;
  if (tid < RB) my_max = s_max[tid], my_sum = s_sum[tid];
  __syncthreads();
  write_split_result<D, RB, kGroups>(acc, s_reduce, my_max, my_sum, f0, n_rows, n_head_kv, group,
                                     kv_head, split, n_splits, part);
}

// The staged form of the split kernel (the default; QFORGE_FLASH_DECODE_STAGED=0 keeps the direct
// one above). K and V rows go through shared memory in tiles of kTile positions by cp.async, and
// the rows of earlier steps -- all of a split's rows but the newest n_tokens -- are requested
// before pdl_wait(), so a deep cache's reads overlap the kernel before this one (qk_prepare)
// instead of starting after it. Per tile:
//   scores: kTpp threads per position, each summing 8 16-byte chunks of the K row against all
//           RB queries (the chunks of a row interleaved over its threads, rows padded by 16 bytes
//           per thread, so that 8 neighbouring lanes read 8 different banks), then a shuffle sum;
//   softmax: one warp per row, as in the direct kernel;
//   values: thread (position group, 8-column chunk) accumulates weight * V from the staged rows.
// K of the next tile is copied while the softmax and the values of this one run, V of the next
// tile while its scores run (two buffers, one per matrix).
template <int D, typename T>
struct StagedTile {
  static constexpr int kRowBytes = D * static_cast<int>(sizeof(T));
  static constexpr int kTile = std::min(kThreads, 16384 / kRowBytes);  // positions per tile
  static constexpr int kTpp = kThreads / kTile;      // threads per position in the scores
  static constexpr int kRowChunks = kRowBytes / 16;  // 16-byte chunks per row
  static constexpr int kThreadChunks = kRowChunks / kTpp;
  static constexpr int kStride = kRowBytes + 16 * kTpp;  // bytes per staged row
  static constexpr int kBufferBytes = kTile * kStride;
  static constexpr int kElems = 16 / static_cast<int>(sizeof(T));  // cache elements per chunk
  static_assert(kRowBytes % 128 == 0 && kTile >= 8 && kTile <= kThreads && kThreadChunks >= 1);
};

template <int D, int RB, typename T>
constexpr std::size_t staged_smem_bytes() {
  using S = StagedTile<D, T>;
  const std::size_t work = 2 * static_cast<std::size_t>(S::kBufferBytes) +
                           sizeof(float) * static_cast<std::size_t>(RB) * (D + S::kTile + 3);
  const std::size_t reduce = sizeof(float) * static_cast<std::size_t>(kThreads) * 8 * RB;
  return work > reduce ? work : reduce;
}

// Rows [r_lo, r_hi) of the tile at position j0 of one KV head into buf (cp.async, uncommitted).
template <int D, typename T>
__device__ __forceinline__ void stage_rows(char* buf, const T* __restrict__ cache, int j0, int r_lo,
                                           int r_hi, int n_head_kv, int kv_head) {
  using S = StagedTile<D, T>;
  const int n = (r_hi - r_lo) * S::kRowChunks;
  for (int i = static_cast<int>(threadIdx.x); i < n; i += kThreads) {
    const int r = r_lo + i / S::kRowChunks, c = i % S::kRowChunks;
    const T* row = cache + (static_cast<std::size_t>(j0 + r) * n_head_kv + kv_head) * D;
    cp_async16(buf + r * S::kStride + 16 * c, reinterpret_cast<const char*>(row) + 16 * c);
  }
}

// The 16-byte chunk of cache elements at p (shared memory) as floats: 8 of BF16, 4 of F32.
template <typename T>
__device__ __forceinline__ void chunk_floats(const char* p, float (&out)[16 / sizeof(T)]) {
  if constexpr (sizeof(T) == 2) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  } else {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
}

template <int D, int RB, typename T>
__global__ void __launch_bounds__(kThreads)
    flash_decode_split_staged(const float* __restrict__ q, std::size_t q_stride,
                              const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                              const int* __restrict__ pos0, int n_tokens, int n_head_kv, int group,
                              float scale, float softcap, int window, float* __restrict__ part) {
  using S = StagedTile<D, T>;
  constexpr int kTile = S::kTile, kTpp = S::kTpp, kE = S::kElems;
  constexpr int kChunks = D / 8;               // 8-column chunks of a V row
  constexpr int kGroups = kThreads / kChunks;  // position groups of the value step
  constexpr int kPerLane = (kTile + 31) / 32;  // scores per lane in the softmax
  extern __shared__ __align__(16) char staged_smem[];
  char* const s_k = staged_smem;                                      // [kTile] K rows
  char* const s_v = s_k + S::kBufferBytes;                            // [kTile] V rows
  float* const sq = reinterpret_cast<float*>(s_v + S::kBufferBytes);  // [RB][D] queries
  float* const sp = sq + RB * D;         // [RB][kTile] scores, then weights
  float* const s_max = sp + RB * kTile;  // [RB] running max
  float* const s_sum = s_max + RB;       // [RB] running sum
  float* const s_corr = s_sum + RB;      // [RB] rescale of this tile
  float* const s_reduce = reinterpret_cast<float*>(staged_smem);  // [kGroups][RB][D] at the end

  const int tid = static_cast<int>(threadIdx.x), lane = tid % 32, warp = tid / 32;
  const int kv_head = static_cast<int>(blockIdx.x);
  const int split = static_cast<int>(blockIdx.y), n_splits = static_cast<int>(gridDim.y);
  const int f0 = static_cast<int>(blockIdx.z) * RB;
  const int n_rows = n_tokens * group;
  const int base = *pos0;  // written before the step, by the host

  int begin, end;
  split_positions(base, f0, RB, n_rows, group, window, split, n_splits, begin, end);
  const int n_tiles = begin < end ? (end - begin + kTile - 1) / kTile : 0;

  // The first tile's rows of earlier steps into shared memory, the later tiles' into L2, all
  // before the wait (pdl.cuh: no kernel of this step writes them).
  const int n_first = n_tiles > 0 ? min(kTile, end - begin) : 0;
  const int old_first = max(0, min(n_first, base - begin));
  stage_rows<D>(s_k, k_cache, begin, 0, old_first, n_head_kv, kv_head);
  stage_rows<D>(s_v, v_cache, begin, 0, old_first, n_head_kv, kv_head);
  cp_async_commit();
  prefetch_kv_rows_l2(k_cache, v_cache, begin + kTile, min(end, base), n_head_kv, kv_head, D, D);
  pdl_wait();
  pdl_trigger();  // late, as the direct kernel (early measured no better, fourteenth pass)
  stage_rows<D>(s_k, k_cache, begin, old_first, n_first, n_head_kv, kv_head);
  stage_rows<D>(s_v, v_cache, begin, old_first, n_first, n_head_kv, kv_head);
  cp_async_commit();

  int row_pos[RB], row_first[RB];
  start_rows<D, RB>(q, q_stride, base, f0, n_rows, group, kv_head, window, sq, s_max, s_sum,
                    row_pos, row_first);
  const int chunk = tid % kChunks, pgroup = tid / kChunks;
  float acc[RB][8];
#pragma unroll
  for (int r = 0; r < RB; ++r) {
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[r][e] = 0.0f;
  }

  for (int t = 0; t < n_tiles; ++t) {
    const int j0 = begin + t * kTile, n_here = min(kTile, end - j0);
    const bool more = t + 1 < n_tiles;
    // Groups in flight: the first tile's two, or this tile's K then V.
    if (t == 0) {
      cp_async_wait<0>();
    } else {
      cp_async_wait<1>();
    }
    __syncthreads();

    // Scores of position j0 + tid / kTpp.
    {
      const int p = tid / kTpp, sub = tid % kTpp, j = j0 + p;
      float s[RB];
#pragma unroll
      for (int r = 0; r < RB; ++r) s[r] = 0.0f;
      if (p < n_here) {
        const char* krow = s_k + p * S::kStride;
#pragma unroll
        for (int i = 0; i < S::kThreadChunks; ++i) {
          const int c = sub + kTpp * i;
          float kv[kE];
          chunk_floats<T>(krow + 16 * c, kv);
#pragma unroll
          for (int r = 0; r < RB; ++r) {
#pragma unroll
            for (int e = 0; e < kE; e += 4) {
              const float4 qa = *reinterpret_cast<const float4*>(sq + r * D + c * kE + e);
              s[r] = fmaf(qa.x, kv[e], s[r]);
              s[r] = fmaf(qa.y, kv[e + 1], s[r]);
              s[r] = fmaf(qa.z, kv[e + 2], s[r]);
              s[r] = fmaf(qa.w, kv[e + 3], s[r]);
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < RB; ++r) {
#pragma unroll
        for (int off = kTpp / 2; off > 0; off >>= 1)
          s[r] += __shfl_xor_sync(0xffffffffu, s[r], off);
      }
      if (sub == 0) {
#pragma unroll
        for (int r = 0; r < RB; ++r) {
          const bool seen = p < n_here && j <= row_pos[r] && j >= row_first[r];
          sp[r * kTile + p] = seen ? flash::apply_softcap(s[r] * scale, softcap) : -INFINITY;
        }
      }
    }
    __syncthreads();
    if (more)
      stage_rows<D>(s_k, k_cache, j0 + kTile, 0, min(kTile, end - j0 - kTile), n_head_kv, kv_head);
    cp_async_commit();

    // Online softmax, one warp per row.
    for (int r = warp; r < RB; r += kThreads / 32) {
      float v[kPerLane];
      float m = -INFINITY;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int idx = lane + 32 * i;
        v[i] = idx < kTile ? sp[r * kTile + idx] : -INFINITY;
        m = fmaxf(m, v[i]);
      }
      const float m_old = s_max[r];
      const float m_new = fmaxf(m_old, warp_max(m));
      const float ref = m_new == -INFINITY ? 0.0f : m_new;  // nothing seen yet: weights 0
      const float corr = expf(m_old - ref);
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) {
        const int idx = lane + 32 * i;
        const float w = expf(v[i] - ref);
        if (idx < kTile) sp[r * kTile + idx] = w;
        sum += w;
      }
      sum = warp_sum(sum);
      __syncwarp();  // every lane has read s_max[r] (m_old) before lane 0 replaces it
      if (lane == 0) s_max[r] = m_new, s_sum[r] = s_sum[r] * corr + sum, s_corr[r] = corr;
    }
    cp_async_wait<1>();  // this tile's V (the next tile's K may still be in flight)
    __syncthreads();

    // Weighted values.
    rescale(acc, s_corr);
#pragma unroll 4
    for (int jj = pgroup; jj < n_here; jj += kGroups) {
      float vv[8];
      const char* vrow = s_v + jj * S::kStride + chunk * 8 * static_cast<int>(sizeof(T));
      if constexpr (kE == 8) {
        chunk_floats<T>(vrow, vv);
      } else {
        float a[4], b[4];
        chunk_floats<T>(vrow, a);
        chunk_floats<T>(vrow + 16, b);
#pragma unroll
        for (int e = 0; e < 4; ++e) vv[e] = a[e], vv[4 + e] = b[e];
      }
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        const float w = sp[r * kTile + jj];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[r][e] = fmaf(w, vv[e], acc[r][e]);
      }
    }
    __syncthreads();
    if (more)
      stage_rows<D>(s_v, v_cache, j0 + kTile, 0, min(kTile, end - j0 - kTile), n_head_kv, kv_head);
    cp_async_commit();
  }
  cp_async_wait<0>();  // nothing is left in flight over s_reduce (no tiles: the empty groups)

  float my_max = -INFINITY, my_sum = 0.0f;
  if (tid < RB) my_max = s_max[tid], my_sum = s_sum[tid];
  __syncthreads();
  write_split_result<D, RB, kGroups>(acc, s_reduce, my_max, my_sum, f0, n_rows, n_head_kv, group,
                                     kv_head, split, n_splits, part);
}

// One CTA per (head, token): out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M), M = max_s m_s.
// The first warp turns the (max, sum) pairs into weights in shared memory; then thread (g, v)
// sums float4 v of the output rows of splits g, g + G, ... (G = kMergeThreads / (D / 4) split
// groups, loads unrolled so that several are in flight), and the groups' sums are added in group
// order. (The first version had one thread per column walk all splits with a branch per split:
// one dependent L2 load after another.)
constexpr int kMergeThreads = 256;

template <int D>
__global__ void __launch_bounds__(kMergeThreads)
    flash_decode_merge(const float* __restrict__ part, int n_splits, float* __restrict__ out) {
  constexpr int kVecs = D / 4;                    // float4 per output row
  constexpr int kGroups = kMergeThreads / kVecs;  // split groups
  pdl_wait();
  pdl_trigger();
  // [kGroups][D] group sums, then the split weights [n_splits], then the total, then kMergePad
  // floats of padding (loads the compiler issues ahead of a loop test read up to three floats
  // past the total; compute-sanitizer caught it in the first version).
  extern __shared__ __align__(16) float merge_smem[];
  float* const group_sum = merge_smem;
  float* const weight = merge_smem + kGroups * D;
  const int h = static_cast<int>(blockIdx.x), t = static_cast<int>(blockIdx.y);
  const int n_head = static_cast<int>(gridDim.x), n_tokens = static_cast<int>(gridDim.y);
  const std::size_t first = (static_cast<std::size_t>(t) * n_head + h) * n_splits;
  const std::size_t n_parts = static_cast<std::size_t>(n_tokens) * n_head * n_splits;
  const float4* rows = reinterpret_cast<const float4*>(part + first * D);
  const float2* ml = reinterpret_cast<const float2*>(part + n_parts * D) + first;
  const int tid = static_cast<int>(threadIdx.x);
  // Thread (g, v) sums float4 v of the rows of splits g, g + G, ...; its first kEarly rows are
  // loaded before the weights are known, so their L2 latency overlaps the (max, sum) pass.
  constexpr int kEarly = 8;
  const int v = tid % kVecs, g = tid / kVecs;
  float4 early[kEarly];
#pragma unroll
  for (int i = 0; i < kEarly; ++i) {
    const int s = g + i * kGroups;
    early[i] = s < n_splits ? rows[static_cast<std::size_t>(s) * kVecs + v]
                            : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  if (tid < 32) {
    float big = -INFINITY;
    for (int s = tid; s < n_splits; s += 32) big = fmaxf(big, ml[s].x);
    big = warp_max(big);
    float total = 0.0f;
    for (int s = tid; s < n_splits; s += 32) {
      const float2 p = ml[s];
      const float w = p.x == -INFINITY ? 0.0f : expf(p.x - big);  // empty splits weigh 0
      weight[s] = w;
      total += w * p.y;
    }
    total = warp_sum(total);
    if (tid == 0) weight[n_splits] = total;
  }
  __syncthreads();
  // Empty splits wrote zero rows, so their weight 0 needs no test here.
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int i = 0; i < kEarly; ++i) {
    const int s = g + i * kGroups;
    const float w = s < n_splits ? weight[s] : 0.0f;
    acc.x = fmaf(early[i].x, w, acc.x);
    acc.y = fmaf(early[i].y, w, acc.y);
    acc.z = fmaf(early[i].z, w, acc.z);
    acc.w = fmaf(early[i].w, w, acc.w);
  }
#pragma unroll 8
  for (int s = g + kEarly * kGroups; s < n_splits; s += kGroups) {
    const float4 o = rows[static_cast<std::size_t>(s) * kVecs + v];
    const float w = weight[s];
    acc.x = fmaf(o.x, w, acc.x);
    acc.y = fmaf(o.y, w, acc.y);
    acc.z = fmaf(o.z, w, acc.z);
    acc.w = fmaf(o.w, w, acc.w);
  }
  reinterpret_cast<float4*>(group_sum)[g * kVecs + v] = acc;
  __syncthreads();
  const float inv = 1.0f / weight[n_splits];
  float* dst = out + (static_cast<std::size_t>(t) * n_head + h) * D;
  for (int d = tid; d < D; d += kMergeThreads) {
    float sum = 0.0f;
#pragma unroll
    for (int q = 0; q < kGroups; ++q) sum += group_sum[q * D + d];
    dst[d] = sum * inv;
  }
}

// QFORGE_FLASH_DECODE_STAGED=0: the direct split kernel, for side-by-side measurements.
bool staged_split() {
  static const bool on = switch_on("QFORGE_FLASH_DECODE_STAGED");
  return on;
}

template <int D, int RB, typename T>
void launch(const float* q, const void* k, const void* v, const int* pos0, int n_tokens,
            const BatchAttention& p, int n_splits, float* part, float* out, StreamHandle stream) {
  const int group = p.n_head / p.kv.n_head_kv;
  const int row_blocks = (n_tokens * group + RB - 1) / RB;
  const dim3 grid(static_cast<unsigned>(p.kv.n_head_kv), static_cast<unsigned>(n_splits),
                  static_cast<unsigned>(row_blocks));
  if (staged_split()) {
    static constexpr std::size_t kSmem = staged_smem_bytes<D, RB, T>();
    static const bool configured = [] {  // over the default 48 KiB for d 512 with 8 rows
      if (kSmem > 48 * 1024) {
        QFORGE_CUDA_CHECK(cudaFuncSetAttribute(flash_decode_split_staged<D, RB, T>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(kSmem)));
      }
      return true;
    }();
    (void)configured;
    launch_pdl("flash_decode_split_staged", flash_decode_split_staged<D, RB, T>, grid, kThreads,
               kSmem, stream, q, p.q_stride, static_cast<const T*>(k), static_cast<const T*>(v),
               pos0, n_tokens, p.kv.n_head_kv, group, p.scale, p.softcap, p.window, part);
    QFORGE_CUDA_CHECK_LAUNCH("flash_decode_split_staged");
  } else {
    constexpr std::size_t kSmem = split_smem_floats(D, RB) * sizeof(float);
    static_assert(kSmem <= 48 * 1024,
                  "the split kernel's shared memory must fit the default limit");
    launch_pdl("flash_decode_split", flash_decode_split<D, RB, T>, grid, kThreads, kSmem, stream, q,
               p.q_stride, static_cast<const T*>(k), static_cast<const T*>(v), pos0, n_tokens,
               p.kv.n_head_kv, group, p.scale, p.softcap, p.window, part);
    QFORGE_CUDA_CHECK_LAUNCH("flash_decode_split");
  }
  constexpr int kMergeGroups = kMergeThreads / (D / 4);
  launch_pdl("flash_decode_merge", flash_decode_merge<D>,
             dim3(static_cast<unsigned>(p.n_head), static_cast<unsigned>(n_tokens)),
             static_cast<unsigned>(kMergeThreads),
             (kMergeGroups * D + n_splits + 1 + kMergePad) * sizeof(float), stream, part, n_splits,
             out);
  QFORGE_CUDA_CHECK_LAUNCH("flash_decode_merge");
}

template <int D, typename T>
void dispatch_rows(const float* q, const void* k, const void* v, const int* pos0, int n_tokens,
                   const BatchAttention& p, int n_splits, float* part, float* out,
                   StreamHandle stream) {
  switch (rows_per_block(n_tokens * (p.n_head / p.kv.n_head_kv))) {
    case 2:
      return launch<D, 2, T>(q, k, v, pos0, n_tokens, p, n_splits, part, out, stream);
    case 4:
      return launch<D, 4, T>(q, k, v, pos0, n_tokens, p, n_splits, part, out, stream);
    default:
      return launch<D, 8, T>(q, k, v, pos0, n_tokens, p, n_splits, part, out, stream);
  }
}

template <typename T>
void dispatch(const float* q, const void* k, const void* v, const int* pos0, int n_tokens,
              const BatchAttention& p, int n_splits, float* part, float* out, StreamHandle stream) {
  switch (p.kv.head_dim_k) {
    case 64:
      return dispatch_rows<64, T>(q, k, v, pos0, n_tokens, p, n_splits, part, out, stream);
    case 128:
      return dispatch_rows<128, T>(q, k, v, pos0, n_tokens, p, n_splits, part, out, stream);
    case 256:
      return dispatch_rows<256, T>(q, k, v, pos0, n_tokens, p, n_splits, part, out, stream);
    default:
      return dispatch_rows<512, T>(q, k, v, pos0, n_tokens, p, n_splits, part, out, stream);
  }
}

}  // namespace

std::size_t flash_decode_scratch_floats(const BatchAttention& p, int n_tokens, int n_splits) {
  return static_cast<std::size_t>(std::max(n_tokens, 0)) *
         static_cast<std::size_t>(std::max(p.n_head, 0)) *
         static_cast<std::size_t>(std::max(n_splits, 0)) *
         static_cast<std::size_t>(std::max(p.kv.head_dim_v, 0) + 2);
}

int flash_decode_splits(const BatchAttention& p, int n_tokens, int sm_count, int max_positions) {
  if (p.kv.n_head_kv <= 0 || p.n_head <= 0 || n_tokens <= 0) return 1;
  const int n_rows = n_tokens * (p.n_head / p.kv.n_head_kv);
  const int rb = rows_per_block(n_rows);
  const int blocks = p.kv.n_head_kv * ((n_rows + rb - 1) / rb);
  const int want = (4 * std::max(sm_count, 1) + blocks - 1) / blocks;  // ~4 CTAs per SM
  const int longest = std::max(1, (max_positions + kMinSplit - 1) / kMinSplit);
  return std::clamp(std::min(want, longest), 1, 256);
}

void flash_decode(const float* q, const void* k_cache, const void* v_cache, const int* pos0,
                  int n_tokens, const BatchAttention& p, int n_splits, float* scratch, float* out,
                  StreamHandle stream) {
  flash::check_params("flash_decode", q, k_cache, v_cache, pos0, out, n_tokens, p);
  if (n_tokens > kFlashDecodeMaxTokens) {
    cuda_fail("flash_decode: ", n_tokens, " tokens (at most ", kFlashDecodeMaxTokens,
              "; use flash_prefill)");
  }
  if (n_splits <= 0 || n_splits > kMaxSplits) {
    cuda_fail("flash_decode: bad split count ", n_splits, " (expected 1..", kMaxSplits, ")");
  }
  if (scratch == nullptr) cuda_fail("flash_decode: null scratch");
  if (p.kv.bf16) {
    dispatch<std::uint16_t>(q, k_cache, v_cache, pos0, n_tokens, p, n_splits, scratch, out, stream);
  } else {
    dispatch<float>(q, k_cache, v_cache, pos0, n_tokens, p, n_splits, scratch, out, stream);
  }
}

}  // namespace qforge::cuda
