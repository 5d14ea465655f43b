// The tensor-core GEMM kernel (gemm_tc.h) as a template over the chunk decoder
// (gemm_tc_decode.cuh) and the CTA tile. Included by the per-format-family .cu files, which
// instantiate gemm_tc::run<Decoder> so that the families compile in parallel.
//
// A CTA computes a kBM (weight rows) x kBN (tokens) tile of y with 8 warps; the K dimension moves
// in steps of 64 columns. Per step, the weight tile is decoded to BF16 straight from global memory
// into shared memory (every weight of the tile decoded once per CTA) and the BF16 activation tile
// is copied with cp.async; both have two stages, so the copy and the decode of step s + 1 run
// while the tensor cores work on step s, with one barrier per step. Warps multiply with
// mma.sync m16n8k16 (BF16 in, F32 accumulate); fragments come from shared memory through
// ldmatrix. Rows of the shared tiles are padded from 128 to 144 bytes, so the 8 row addresses of
// an ldmatrix phase fall in 8 different 16-byte bank groups.
//
// The CTA body (gemm_cta) is shared with the expert-grouped MoE GEMM (moe_gemm_kernel.cuh): it
// takes the weight matrix as a WeightView and the tile's tokens as a "token map" with
//   x        any valid activation address (the source of zero-byte copies)
//   x_row(n): BF16 activation row of tile token n (nullptr: zero-filled, never stored)
//   y_row(n): output row of tile token n (nullptr: not stored)
// The dense GEMM maps tile token n to token tok0 + n of x and y (DenseTokens).
#pragma once

#include "runtime/cuda/check.cuh"

#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>

#include "runtime/cuda/cp_async.cuh"  // smem_addr, cp_async16_zfill, commit, wait
#include "runtime/cuda/gemm_tc_decode.cuh"
#include "runtime/cuda/gemm_tc_internal.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda::gemm_tc {

constexpr int kThreads = 256;
constexpr int kBK = 64;            // columns per K step
constexpr int kLds = kBK + 8;      // shared row stride in BF16 elements (144 bytes)

template <int BM, int BN, int WarpsM>
struct Tile {
  static constexpr int kBM = BM, kBN = BN, kWarpsM = WarpsM, kWarpsN = 8 / WarpsM;
  static constexpr int kWM = BM / kWarpsM, kWN = BN / kWarpsN;  // warp tile
  static constexpr int kMT = kWM / 16, kNT = kWN / 8;           // mma tiles per warp
  static_assert(kWarpsM * kWarpsN == 8 && kWM % 16 == 0 && kWN % 16 == 0);
  static constexpr int kStageElems = (BM + BN) * kLds;
  static constexpr int kSmemBytes = 2 * kStageElems * 2;
};

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void mma_bf16(float* d, const std::uint32_t* a, const std::uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ std::uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // round to nearest even
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

// One weight matrix: n_rows rows of row_bytes bytes starting at w.
struct WeightView {
  const std::uint8_t* w;
  std::size_t row_bytes;
  int n_rows, n_cols;
};

// Tokens tok0 .. tok0 + BN - 1 of a dense product (x row-major n_tokens x n_cols, y[t * ldy + r]).
struct DenseTokens {
  const std::uint16_t* x;
  float* y;
  std::size_t ldy;
  int tok0, n_tokens, n_cols;
  __device__ __forceinline__ const std::uint16_t* x_row(int n) const {
    const int tok = tok0 + n;
    return tok < n_tokens ? x + static_cast<std::size_t>(tok) * static_cast<std::size_t>(n_cols)
                          : nullptr;
  }
  __device__ __forceinline__ float* y_row(int n) const {
    const int tok = tok0 + n;
    return tok < n_tokens ? y + static_cast<std::size_t>(tok) * ldy : nullptr;
  }
};

// Decodes columns [k0, k0 + 64) of rows row0 .. row0 + BM - 1 into `tile` (BM x kLds BF16).
// Rows past the end repeat the last row (their outputs are never stored); columns past n_cols
// become zeros, so that they add nothing even against garbage (the matching activations are
// zero-filled too).
template <typename D, int BM>
__device__ __forceinline__ void decode_weights(const WeightView& a, int row0, int k0,
                                               __nv_bfloat16* tile, const float* table) {
  const int tid = static_cast<int>(threadIdx.x);
  constexpr int kTotal = BM * D::kUnits;
#pragma unroll
  for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
    const int i = tid + it * kThreads;
    if (kTotal % kThreads != 0 && i >= kTotal) break;
    const int r = i / D::kUnits, u = i % D::kUnits;
    const int row = min(row0 + r, a.n_rows - 1);
    __nv_bfloat16* dst = tile + r * kLds;
    const int piece = u / D::kUnitsPerTail;
    if (D::kTailElems == kBK || k0 + piece * D::kTailElems < a.n_cols) {
      float w[4 * D::kRuns];
      int start[D::kRuns];
      D::decode(a.w + static_cast<std::size_t>(row) * a.row_bytes, k0, u, w, start, table);
#pragma unroll
      for (int q = 0; q < D::kRuns; ++q) {
        const uint2 v = make_uint2(pack_bf16(w[4 * q], w[4 * q + 1]),
                                   pack_bf16(w[4 * q + 2], w[4 * q + 3]));
        *reinterpret_cast<uint2*>(dst + start[q]) = v;
      }
    } else if (u % D::kUnitsPerTail == 0) {
      // The whole piece lies past the end: one thread zeroes its columns.
      for (int c = 0; c < D::kTailElems; c += 8) {
        *reinterpret_cast<uint4*>(dst + piece * D::kTailElems + c) = make_uint4(0, 0, 0, 0);
      }
    }
  }
}

// The two halves of decode_weights for split decoders (gemm_tc_decode.cuh): load_weights issues
// the global loads of the thread's units into raw[], store_weights converts and stores them.
template <typename D, int BM>
constexpr int kUnitIters = (BM * D::kUnits + kThreads - 1) / kThreads;

template <typename D, int BM>
__device__ __forceinline__ bool unit_in_range(const WeightView& a, int k0, int it, int& r, int& u) {
  const int i = static_cast<int>(threadIdx.x) + it * kThreads;
  r = i / D::kUnits, u = i % D::kUnits;
  if (BM * D::kUnits % kThreads != 0 && i >= BM * D::kUnits) return false;
  return D::kTailElems == kBK || k0 + (u / D::kUnitsPerTail) * D::kTailElems < a.n_cols;
}

template <typename D, int BM>
__device__ __forceinline__ void load_weights(const WeightView& a, int row0, int k0,
                                             typename D::Raw* raw) {
#pragma unroll
  for (int it = 0; it < kUnitIters<D, BM>; ++it) {
    int r, u;
    if (!unit_in_range<D, BM>(a, k0, it, r, u)) continue;
    const int row = min(row0 + r, a.n_rows - 1);
    raw[it] = D::load(a.w + static_cast<std::size_t>(row) * a.row_bytes, k0, u);
  }
}

template <typename D, int BM>
__device__ __forceinline__ void store_weights(const WeightView& a, int k0,
                                              const typename D::Raw* raw, __nv_bfloat16* tile,
                                              const float* table) {
#pragma unroll
  for (int it = 0; it < kUnitIters<D, BM>; ++it) {
    int r, u;
    __nv_bfloat16* dst;
    if (unit_in_range<D, BM>(a, k0, it, r, u)) {
      dst = tile + r * kLds;
      float w[4 * D::kRuns];
      int start[D::kRuns];
      D::convert(raw[it], u, w, start, table);
#pragma unroll
      for (int q = 0; q < D::kRuns; ++q) {
        const uint2 v = make_uint2(pack_bf16(w[4 * q], w[4 * q + 1]),
                                   pack_bf16(w[4 * q + 2], w[4 * q + 3]));
        *reinterpret_cast<uint2*>(dst + start[q]) = v;
      }
    } else if (static_cast<int>(threadIdx.x) + it * kThreads < BM * D::kUnits &&
               u % D::kUnitsPerTail == 0) {
      // The whole piece lies past the end: one thread zeroes its columns.
      dst = tile + r * kLds;
      const int piece = u / D::kUnitsPerTail;
      for (int c = 0; c < D::kTailElems; c += 8) {
        *reinterpret_cast<uint4*>(dst + piece * D::kTailElems + c) = make_uint4(0, 0, 0, 0);
      }
    }
  }
}

// Copies activations of the tile's tokens, columns [k0, k0 + 64), zero-filling tokens without a
// row and columns past the end.
template <int BN, typename Tokens>
__device__ __forceinline__ void load_activations(const Tokens& tokens, int n_cols, int k0,
                                                 __nv_bfloat16* tile) {
  const int tid = static_cast<int>(threadIdx.x);
  constexpr int kTotal = BN * (kBK / 8);
  static_assert(kTotal % kThreads == 0);
#pragma unroll
  for (int it = 0; it < kTotal / kThreads; ++it) {
    const int i = tid + it * kThreads;
    const int n = i / (kBK / 8), c = 8 * (i % (kBK / 8));
    const int col = k0 + c;
    const std::uint16_t* row = tokens.x_row(n);
    const bool valid = row != nullptr && col < n_cols;
    cp_async16_zfill(tile + n * kLds + c, valid ? row + col : tokens.x, valid ? 16 : 0);
  }
  cp_async_commit();
}

// The raw registers of a split decoder (an unused placeholder for the others).
template <typename D, bool = D::kSplit>
struct RawOf {
  using Type = int;
};
template <typename D>
struct RawOf<D, true> {
  using Type = typename D::Raw;
};

// The CTA's rows row0 .. row0 + BM - 1 times its BN tokens. Dynamic shared memory holds the two
// stages (T::kSmemBytes); `table` is the IQ4_NL level table, already filled when D uses it.
template <typename D, typename T, typename Tokens>
__device__ __forceinline__ void gemm_cta(const WeightView& a, int row0, const Tokens& tokens,
                                         const float* table) {
  extern __shared__ uint4 smem_raw[];
  auto* smem = reinterpret_cast<__nv_bfloat16*>(smem_raw);

  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int wm0 = (warp % T::kWarpsM) * T::kWM, wn0 = (warp / T::kWarpsM) * T::kWN;

  auto w_tile = [&](int stage) { return smem + stage * T::kStageElems; };
  auto x_tile = [&](int stage) { return smem + stage * T::kStageElems + T::kBM * kLds; };

  float acc[T::kMT][T::kNT][4];
#pragma unroll
  for (int i = 0; i < T::kMT; ++i) {
#pragma unroll
    for (int j = 0; j < T::kNT; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    }
  }

  const int n_steps = (a.n_cols + kBK - 1) / kBK;
  load_activations<T::kBN>(tokens, a.n_cols, 0, x_tile(0));
  decode_weights<D, T::kBM>(a, row0, 0, w_tile(0), table);
  cp_async_wait<0>();
  __syncthreads();

  // ldmatrix lane addressing (see the m16n8k16 fragment layouts): A matrices 0..3 are rows
  // 0-7 / 8-15 x columns 0-7 / 8-15 in the order (r0-7,c0), (r8-15,c0), (r0-7,c8), (r8-15,c8);
  // B (stored token-major) pairs two n8 tiles: (n0-7,k0), (n0-7,k8), (n8-15,k0), (n8-15,k8).
  const int a_row = lane & 15, a_col = (lane >> 4) * 8;
  const int b_row = (lane & 7) + ((lane >> 4) << 3), b_col = ((lane >> 3) & 1) * 8;

  for (int step = 0; step < n_steps; ++step) {
    const int stage = step & 1;
    const bool more = step + 1 < n_steps;
    [[maybe_unused]] typename RawOf<D>::Type raw[kUnitIters<D, T::kBM>];
    if (more) {
      // The other stage was last read before the barrier that ended the previous step.
      load_activations<T::kBN>(tokens, a.n_cols, (step + 1) * kBK, x_tile(stage ^ 1));
      if constexpr (D::kSplit) {
        load_weights<D, T::kBM>(a, row0, (step + 1) * kBK, raw);  // converted after the MMAs
      } else {
        decode_weights<D, T::kBM>(a, row0, (step + 1) * kBK, w_tile(stage ^ 1), table);
      }
    }
    const __nv_bfloat16* As = w_tile(stage);
    const __nv_bfloat16* Bs = x_tile(stage);
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      std::uint32_t af[T::kMT][4];
      std::uint32_t bf[T::kNT][2];
#pragma unroll
      for (int i = 0; i < T::kMT; ++i) {
        ldmatrix_x4(af[i], As + (wm0 + 16 * i + a_row) * kLds + kk + a_col);
      }
#pragma unroll
      for (int j = 0; j < T::kNT; j += 2) {
        std::uint32_t r[4];
        ldmatrix_x4(r, Bs + (wn0 + 8 * j + b_row) * kLds + kk + b_col);
        bf[j][0] = r[0], bf[j][1] = r[1], bf[j + 1][0] = r[2], bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < T::kMT; ++i) {
#pragma unroll
        for (int j = 0; j < T::kNT; ++j) mma_bf16(acc[i][j], af[i], bf[j]);
      }
    }
    if constexpr (D::kSplit) {
      if (more) store_weights<D, T::kBM>(a, (step + 1) * kBK, raw, w_tile(stage ^ 1), table);
    }
    cp_async_wait<0>();
    __syncthreads();
  }

  // Accumulator layout: c0, c1 at (row g, tokens 2t, 2t + 1), c2, c3 at row g + 8.
  const int g = lane >> 2, t2 = 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < T::kNT; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float* y = tokens.y_row(wn0 + 8 * j + t2 + h);
      if (y == nullptr) continue;
#pragma unroll
      for (int i = 0; i < T::kMT; ++i) {
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const int row = row0 + wm0 + 16 * i + g + 8 * v;
          if (row < a.n_rows) y[row] = acc[i][j][2 * v + h];
        }
      }
    }
  }
}

template <typename D, typename T>
__global__ void __launch_bounds__(kThreads, 2) gemm_kernel(const Args a) {
  __shared__ float table[16];
  if constexpr (D::kUsesTable) {
    if (threadIdx.x < 16) table[threadIdx.x] = blocks::kIq4NlLevels[threadIdx.x];
    __syncthreads();
  }
  const WeightView weights{a.w, a.row_bytes, a.n_rows, a.n_cols};
  const DenseTokens tokens{a.x, a.y, a.ldy, static_cast<int>(blockIdx.x) * T::kBN, a.n_tokens,
                           a.n_cols};
  gemm_cta<D, T>(weights, static_cast<int>(blockIdx.y) * T::kBM, tokens, table);
}

template <typename D, typename T>
void launch(const Args& a) {
  const dim3 grid(static_cast<unsigned>((a.n_tokens + T::kBN - 1) / T::kBN),
                  static_cast<unsigned>((a.n_rows + T::kBM - 1) / T::kBM));
  QFORGE_CUDA_CHECK(cudaFuncSetAttribute(gemm_kernel<D, T>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         T::kSmemBytes));
  gemm_kernel<D, T><<<grid, kThreads, T::kSmemBytes, a.stream>>>(a);
  QFORGE_CUDA_CHECK_LAUNCH("gemm_tc kernel");
}

// Tile choice: few tokens get a narrow token tile (less zero-padded work); wide token tiles
// decode each weight tile for more tokens. A 128-row tile is halved when it would leave most
// of the device's CTA slots (2 per SM) empty.
template <typename D>
void run(const Args& a) {
  switch (a.tile) {  // a forced tile (tests, benchmarks)
    case 1: return launch<D, Tile<128, 128, 2>>(a);
    case 2: return launch<D, Tile<64, 128, 2>>(a);
    case 3: return launch<D, Tile<128, 64, 4>>(a);
    case 4: return launch<D, Tile<128, 32, 8>>(a);
    default: break;
  }
  if (a.n_tokens <= 32) return launch<D, Tile<128, 32, 8>>(a);
  if (a.n_tokens <= 64) return launch<D, Tile<128, 64, 4>>(a);
  const long long ctas_128 = static_cast<long long>((a.n_rows + 127) / 128) *
                             static_cast<long long>((a.n_tokens + 127) / 128);
  if (ctas_128 < 2LL * a.sm_count) return launch<D, Tile<64, 128, 2>>(a);
  return launch<D, Tile<128, 128, 2>>(a);
}

}  // namespace qforge::cuda::gemm_tc
