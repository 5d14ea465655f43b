// flash_prefill: causal attention of a prompt chunk on tensor cores (FlashAttention-2 style).
//
// The query rows of one KV group are flattened to (token, head in group) pairs, token-major; a
// CTA of 4 warps takes 64 consecutive rows (16 per warp) of one KV head, so every K/V tile in
// shared memory serves all query heads of the group and several tokens. Per KV tile of BKV
// positions a warp computes S = Q K^T (mma.sync m16n8k16, BF16 in, F32 out), scales, soft-caps
// and masks it in F32, runs the online softmax in F32 (row max / sum over the 4 lanes of a quad)
// and adds P V with P rounded to BF16; the row sum uses the rounded P, so each output is an exact
// convex combination of the V rows it weighs. Value heads wider than DVT are split over
// gridDim.z (the CTAs of a row tile recompute S for each DVT slice).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16): lane = 4 g + c holds A rows g and g + 8,
// columns 2c, 2c + 1 (+ 8), B column g, rows 2c, 2c + 1 (+ 8), and C rows g / g + 8, columns
// 2c, 2c + 1. Shared-memory rows are padded by 8 elements (16 bytes) so that the 8 row addresses
// of an ldmatrix fall into different banks.
#include <cstdint>

#include "runtime/cuda/check.cuh"
#include "runtime/cuda/flash_attention.cuh"
#include "runtime/cuda/flash_attention.h"

namespace qforge::cuda {
namespace {

using flash::first_visible;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16 * kWarps;  // query rows per CTA

// ROWS x COLS elements (columns [col0, col0 + COLS) of rows j0 .. j0 + ROWS - 1 of one KV head)
// into shared memory as BF16; rows at or past `end` are zero (their cache slots may hold
// anything, and 0 * NaN would poison the output).
template <int ROWS, int COLS, typename T>
__device__ __forceinline__ void load_tile(std::uint16_t* dst, int dst_stride, const T* cache,
                                          int row_stride, int col0, int j0, int end) {
  constexpr int kChunks = ROWS * COLS / 8;  // 16-byte BF16 chunks
  static_assert(kChunks % kThreads == 0, "tile must split evenly over the threads");
  constexpr int kPerThread = kChunks / kThreads;
  constexpr int kBatch = kPerThread < 8 ? kPerThread : 8;  // loads in flight per thread
#pragma unroll
  for (int b = 0; b < kPerThread; b += kBatch) {
    uint4 v[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int chunk = static_cast<int>(threadIdx.x) + (b + i) * kThreads;
      const int r = chunk / (COLS / 8), c = chunk % (COLS / 8) * 8;
      v[i] = make_uint4(0, 0, 0, 0);
      if (j0 + r < end) {
        v[i] = flash::load8_bf16(cache + static_cast<std::size_t>(j0 + r) * row_stride + col0 + c);
      }
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int chunk = static_cast<int>(threadIdx.x) + (b + i) * kThreads;
      const int r = chunk / (COLS / 8), c = chunk % (COLS / 8) * 8;
      *reinterpret_cast<uint4*>(dst + r * dst_stride + c) = v[i];
    }
  }
}

// Row of this lane's fragment: position and first visible position (pos -1: padding row).
struct RowSpan {
  int pos, first;
};

template <int D, int DVT, int BKV, typename T>
__global__ void __launch_bounds__(kThreads)
    flash_prefill_kernel(const float* __restrict__ q, std::size_t q_stride,
                         const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                         const int* __restrict__ pos0, int n_tokens, int n_head_kv, int group,
                         float scale, float softcap, int window, float* __restrict__ out) {
  constexpr int kStride = D + 8, kVStride = DVT + 8;
  extern __shared__ __align__(16) std::uint16_t smem[];
  std::uint16_t* const sq = smem;
  std::uint16_t* const sk = sq + kRows * kStride;
  std::uint16_t* const sv = sk + BKV * kStride;

  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // longest rows first
  const int kv_head = static_cast<int>(blockIdx.y);
  const int d0 = static_cast<int>(blockIdx.z) * DVT;
  const int n_rows = n_tokens * group, n_head = n_head_kv * group;
  const int f0 = tile * kRows;
  const int base = *pos0;

  // Q rows of this CTA as BF16.
  for (int i = static_cast<int>(threadIdx.x); i < kRows * D / 2; i += kThreads) {
    const int r = i / (D / 2), c = i % (D / 2) * 2;
    const int f = f0 + r;
    float x = 0.0f, y = 0.0f;
    if (f < n_rows) {
      const float* src = q + static_cast<std::size_t>(f / group) * q_stride +
                         static_cast<std::size_t>(kv_head * group + f % group) * D + c;
      x = src[0], y = src[1];
    }
    *reinterpret_cast<unsigned*>(sq + r * kStride + c) = flash::pack_bf16(x, y);
  }

  const int g = lane / 4, c2 = lane % 4 * 2;
  auto row_span = [&](int r) {
    const int f = f0 + r;
    if (f >= n_rows) return RowSpan{-1, 0};
    const int pos = base + f / group;
    return RowSpan{pos, first_visible(pos, window)};
  };
  const RowSpan ra = row_span(warp * 16 + g), rb = row_span(warp * 16 + g + 8);

  // Positions any row of the CTA / of this warp sees.
  const int last_row = min(f0 + kRows, n_rows) - 1;
  const int kv_begin = first_visible(base + f0 / group, window),
            kv_end = base + last_row / group + 1;
  const int wf0 = f0 + warp * 16;
  const bool warp_active = wf0 < n_rows;
  const int w_begin = first_visible(base + wf0 / group, window);
  const int w_end = base + (min(wf0 + 16, n_rows) - 1) / group + 1;

  float o[DVT / 8][4];
#pragma unroll
  for (int n = 0; n < DVT / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

  for (int j0 = kv_begin; j0 < kv_end; j0 += BKV) {
    __syncthreads();  // the previous tile is consumed (and, the first time, Q is stored)
    load_tile<BKV, D>(sk, kStride, k_cache + static_cast<std::size_t>(kv_head) * D, n_head_kv * D,
                      0, j0, kv_end);
    load_tile<BKV, DVT>(sv, kVStride, v_cache + static_cast<std::size_t>(kv_head) * D,
                        n_head_kv * D, d0, j0, kv_end);
    __syncthreads();
    if (!warp_active || j0 >= w_end || j0 + BKV <= w_begin) continue;

    float s[BKV / 8][4];
#pragma unroll
    for (int n = 0; n < BKV / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 16) {
      unsigned a[4];
      flash::ldmatrix_x4(a, sq + (warp * 16 + lane % 16) * kStride + k0 + lane / 16 * 8);
#pragma unroll
      for (int n = 0; n < BKV / 16; ++n) {
        unsigned b[4];
        flash::ldmatrix_x4(
            b, sk + (n * 16 + lane % 8 + lane / 16 * 8) * kStride + k0 + lane / 8 % 2 * 8);
        flash::mma_bf16(s[2 * n], a, b[0], b[1]);
        flash::mma_bf16(s[2 * n + 1], a, b[2], b[3]);
      }
    }

    // Scale, soft-cap, mask; the tile's row maxima over the quad.
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int n = 0; n < BKV / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int j = j0 + n * 8 + c2 + e;
        const float va = flash::apply_softcap(s[n][e] * scale, softcap);
        const float vb = flash::apply_softcap(s[n][2 + e] * scale, softcap);
        s[n][e] = j <= ra.pos && j >= ra.first ? va : -INFINITY;
        s[n][2 + e] = j <= rb.pos && j >= rb.first ? vb : -INFINITY;
        mx_a = fmaxf(mx_a, s[n][e]);
        mx_b = fmaxf(mx_b, s[n][2 + e]);
      }
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, off));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, off));
    }
    const float new_a = fmaxf(m_a, mx_a), new_b = fmaxf(m_b, mx_b);
    // Rows that have seen nothing yet keep m = -inf; exp against 0 then gives 0, not NaN.
    const float ref_a = new_a == -INFINITY ? 0.0f : new_a;
    const float ref_b = new_b == -INFINITY ? 0.0f : new_b;
    const float corr_a = expf(m_a - ref_a), corr_b = expf(m_b - ref_b);
    m_a = new_a, m_b = new_b;
    l_a *= corr_a, l_b *= corr_b;
#pragma unroll
    for (int n = 0; n < DVT / 8; ++n) {
      o[n][0] *= corr_a, o[n][1] *= corr_a;
      o[n][2] *= corr_b, o[n][3] *= corr_b;
    }

    // P as BF16 A fragments: 16 positions = two C tiles.
    unsigned pa[BKV / 16][4];
#pragma unroll
    for (int kb = 0; kb < BKV / 16; ++kb) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float(&sc)[4] = s[2 * kb + half];
        const unsigned pa_lo = flash::pack_bf16(expf(sc[0] - ref_a), expf(sc[1] - ref_a));
        const unsigned pb_lo = flash::pack_bf16(expf(sc[2] - ref_b), expf(sc[3] - ref_b));
        l_a += __uint_as_float(pa_lo << 16) + __uint_as_float(pa_lo & 0xffff0000u);
        l_b += __uint_as_float(pb_lo << 16) + __uint_as_float(pb_lo & 0xffff0000u);
        pa[kb][2 * half] = pa_lo;
        pa[kb][2 * half + 1] = pb_lo;
      }
    }

#pragma unroll
    for (int kb = 0; kb < BKV / 16; ++kb) {
#pragma unroll
      for (int n = 0; n < DVT / 16; ++n) {
        unsigned b[4];
        flash::ldmatrix_x4_trans(b, sv + (kb * 16 + lane % 16) * kVStride + n * 16 + lane / 16 * 8);
        flash::mma_bf16(o[2 * n], pa[kb], b[0], b[1]);
        flash::mma_bf16(o[2 * n + 1], pa[kb], b[2], b[3]);
      }
    }
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int f = f0 + warp * 16 + g + 8 * half;
    if (f >= n_rows) continue;
    const float inv = 1.0f / (half == 0 ? l_a : l_b);
    const int t = f / group, h = kv_head * group + f % group;
    float* dst = out + (static_cast<std::size_t>(t) * n_head + h) * (gridDim.z * DVT) + d0 + c2;
#pragma unroll
    for (int n = 0; n < DVT / 8; ++n) {
      *reinterpret_cast<float2*>(dst + n * 8) =
          make_float2(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
    }
  }
}

template <int D, int DVT, int BKV, typename T>
void launch(const float* q, const void* k, const void* v, const int* pos0, int n_tokens,
            const BatchAttention& p, float* out, StreamHandle stream) {
  constexpr std::size_t kSmem = (static_cast<std::size_t>(kRows + BKV) * (D + 8) +
                                 static_cast<std::size_t>(BKV) * (DVT + 8)) *
                                sizeof(std::uint16_t);
  static const bool configured = [] {
    QFORGE_CUDA_CHECK(cudaFuncSetAttribute(flash_prefill_kernel<D, DVT, BKV, T>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(kSmem)));
    return true;
  }();
  (void)configured;
  const int group = p.n_head / p.kv.n_head_kv;
  const long long row_tiles = (static_cast<long long>(n_tokens) * group + kRows - 1) / kRows;
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(p.kv.n_head_kv),
                  static_cast<unsigned>(D / DVT));
  flash_prefill_kernel<D, DVT, BKV, T><<<grid, kThreads, kSmem, stream>>>(
      q, p.q_stride, static_cast<const T*>(k), static_cast<const T*>(v), pos0, n_tokens,
      p.kv.n_head_kv, group, p.scale, p.softcap, p.window, out);
  QFORGE_CUDA_CHECK_LAUNCH("flash_prefill_kernel");
}

template <typename T>
void dispatch(const float* q, const void* k, const void* v, const int* pos0, int n_tokens,
              const BatchAttention& p, float* out, StreamHandle stream) {
  switch (p.kv.head_dim_k) {
    case 64:
      return launch<64, 64, 64, T>(q, k, v, pos0, n_tokens, p, out, stream);
    case 128:
      return launch<128, 128, 64, T>(q, k, v, pos0, n_tokens, p, out, stream);
    case 256:
      return launch<256, 256, 32, T>(q, k, v, pos0, n_tokens, p, out, stream);
    default:
      return launch<512, 256, 16, T>(q, k, v, pos0, n_tokens, p, out, stream);
  }
}

}  // namespace

void flash_prefill(const float* q, const void* k_cache, const void* v_cache, const int* pos0,
                   int n_tokens, const BatchAttention& p, float* out, StreamHandle stream) {
  flash::check_params("flash_prefill", q, k_cache, v_cache, pos0, out, n_tokens, p);
  const long long rows = static_cast<long long>(n_tokens) * (p.n_head / p.kv.n_head_kv);
  if (rows > (1ll << 30) || p.kv.n_head_kv > 65535) {
    cuda_fail("flash_prefill: batch of ", n_tokens, " tokens x ", p.n_head, " heads is too large");
  }
  if (p.kv.bf16) {
    dispatch<std::uint16_t>(q, k_cache, v_cache, pos0, n_tokens, p, out, stream);
  } else {
    dispatch<float>(q, k_cache, v_cache, pos0, n_tokens, p, out, stream);
  }
}

}  // namespace qforge::cuda
