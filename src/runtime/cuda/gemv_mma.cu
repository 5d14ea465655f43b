// Q4_0 GEMV on tensor cores with F32-accurate activations.
//
// Why: with F32 activations on CUDA cores every weight costs a byte-to-float, an FMA and its share
// of the loads (~0.12 warp instructions per weight): at the HBM rate of Q4_0 (7.6e12 weights/s on
// an H200) that is more than the SMs can issue. Here the block codes (-8..7, exact in BF16) are the
// A operand of mma.sync m16n8k16 (16 weight rows) and x, split into three BF16 pieces
// x = hi + mid + lo (their sum is x to ~2^-24 relative), three columns of B per token. The tensor
// core sums each block's 32 products per piece in F32; the block scale multiplies that sum once
// per (row, piece) in an F32 FMA, and the pieces and warps are added at the end. Accuracy is that
// of an F32 dot product (the tests' 1e-5 relative to sum |w x| holds).
//
// Memory side: a CTA (4 warps) owns 16 rows; the warps split the row into chunks of 512 elements
// (16 blocks, 288 bytes per row) taken round robin. Each warp streams its chunks into its own
// shared-memory stages with 16-byte cp.async (contiguous bytes: few L1 wavefronts per byte, and
// no registers held by loads in flight), keeping kStages - 1 chunks in flight while it computes.
// x of the chunk is split into pieces once per warp and laid out in B-fragment order.
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>

#include "runtime/cuda/cp_async.cuh"
#include "runtime/cuda/gemv_mma.h"

namespace qforge::cuda::detail {
namespace {

constexpr int kWarps = 4;
constexpr int kTileRows = 16;
// A chunk is kCB Q4_0 blocks of each of the tile's rows (8 or 16: 144 or 288 bytes per row).
template <int kCB>
struct Chunk {
  static constexpr int kElems = 32 * kCB;
  static constexpr int kRowBytes = 18 * kCB;
  static constexpr int kRowStride = kRowBytes + 16;  // padded against bank conflicts, 16-aligned
  static constexpr int kStageBytes = kTileRows * kRowStride;
  static constexpr int kSteps = 2 * kCB;  // k16 steps per chunk
};

template <int kTokens, int kStages, int kCB>
struct Shape : Chunk<kCB> {
  using C = Chunk<kCB>;
  static constexpr int kSteps = C::kSteps, kStageBytes = C::kStageBytes;
  static constexpr int kCols = 3 * kTokens;  // B columns: (token, piece)
  static constexpr int kNTiles = (kCols + 7) / 8;
  static constexpr int kXBytes = kSteps * kCols * 4 * 8;  // uint2 per (step, column, lane % 4)
  static constexpr int kWarpBytes = kStages * kStageBytes + kXBytes;
  static constexpr int kSmem = kWarps * kWarpBytes;
  static_assert(kTileRows * kNTiles * 8 * 4 <= kStageBytes, "reduction fits in a stage");
};

struct Args {
  const std::uint8_t* w;
  std::size_t row_bytes;
  std::size_t expert_bytes;  // expert form only
  const int* ids;            // nullptr: plain GEMV
  int n_experts;
  int x_group;
  int n_rows;
  int n_cols;
  const float* x;
  float* y;
  std::size_t ldy;
};

__device__ __forceinline__ std::uint32_t bf16x2_bits(__nv_bfloat162 v) {
  return *reinterpret_cast<std::uint32_t*>(&v);
}

// Codes of bytes 0 and 2 of q's low nibbles (after the caller's shift) as a BF16 pair, minus 8:
// 0x4300 | n is the BF16 128 + n exactly, and 128 + n - 136 = n - 8 exactly.
__device__ __forceinline__ std::uint32_t nibble_pair(std::uint32_t q) {
  std::uint32_t v = (q & 0x000f000fu) | 0x43004300u;
  __nv_bfloat162 b = *reinterpret_cast<__nv_bfloat162*>(&v);
  b = __hsub2(b, __floats2bfloat162_rn(136.0f, 136.0f));
  return bf16x2_bits(b);
}

// (a, b) -> three BF16 pairs whose sums are a and b to ~2^-24 relative (each remainder is exact).
__device__ __forceinline__ void split3(float a, float b, std::uint32_t* out) {
  const __nv_bfloat162 hi = __floats2bfloat162_rn(a, b);
  const float2 hf = __bfloat1622float2(hi);
  const float ra = a - hf.x, rb = b - hf.y;
  const __nv_bfloat162 mid = __floats2bfloat162_rn(ra, rb);
  const float2 mf = __bfloat1622float2(mid);
  const __nv_bfloat162 lo = __floats2bfloat162_rn(ra - mf.x, rb - mf.y);
  out[0] = bf16x2_bits(hi), out[1] = bf16x2_bits(mid), out[2] = bf16x2_bits(lo);
}

__device__ __forceinline__ void mma_bf16(float* d, const std::uint32_t* a, std::uint32_t b0,
                                         std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ std::uint32_t lds_u16(const std::uint8_t* p) {
  return *reinterpret_cast<const unsigned short*>(p);
}

// Copies chunk `chunk` of the CTA's 16 rows (kPerRow 16-byte pieces per row) into `stage`.
template <int kPerRow, int kCB>
__device__ __forceinline__ void issue_chunk(std::uint8_t* stage, const Args& a,
                                            const std::uint8_t* w, int row0, int chunk, int lane) {
  constexpr int kTotal = kTileRows * kPerRow;
#pragma unroll
  for (int j = 0; j < (kTotal + 31) / 32; ++j) {
    const int i = lane + 32 * j;
    if (kTotal % 32 == 0 || i < kTotal) {
      const int r = i / kPerRow, c = i % kPerRow;
      const int row = min(row0 + r, a.n_rows - 1);
      const std::uint8_t* src = w + static_cast<std::size_t>(row) * a.row_bytes +
                                static_cast<std::size_t>(chunk) * Chunk<kCB>::kRowBytes + 16 * c;
      cp_async16(stage + r * Chunk<kCB>::kRowStride + 16 * c, src);
    }
  }
}

template <int kTokens, int kStages, int kCB>
__global__ void __launch_bounds__(kWarps * 32) gemv_mma_kernel(const Args a) {
  pdl_wait();
  pdl_trigger();
  using S = Shape<kTokens, kStages, kCB>;
  constexpr int kChunkBlocks = kCB, kChunkElems = S::kElems, kRowStride = S::kRowStride;
  constexpr int kStageBytes = S::kStageBytes;
  extern __shared__ __align__(16) std::uint8_t smem[];
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int g = lane >> 2, t = lane & 3;
  const int row0 = static_cast<int>(blockIdx.x) * kTileRows;

  const std::uint8_t* w = a.w;
  const float* x = a.x;
  float* y = a.y;
  if (a.ids != nullptr) {  // expert form: one token per slot (blockIdx.y)
    const int slot = static_cast<int>(blockIdx.y);
    const int e = a.ids[slot];
    y += static_cast<std::size_t>(slot) * a.ldy;
    if (e < 0 || e >= a.n_experts) {
      const int r = static_cast<int>(threadIdx.x);
      if (r < kTileRows && row0 + r < a.n_rows) y[row0 + r] = 0.0f;
      return;
    }
    w += static_cast<std::size_t>(e) * a.expert_bytes;
    x += static_cast<std::size_t>(slot / a.x_group) * static_cast<std::size_t>(a.n_cols);
  }

  std::uint8_t* mine = smem + warp * S::kWarpBytes;
  auto* xs = reinterpret_cast<uint2*>(mine + kStages * kStageBytes);
  const int n_chunks = (a.n_cols + kChunkElems - 1) / kChunkElems;
  const int full_blocks = a.n_cols / 32;  // n_cols is a multiple of 256: chunks of 8 or 16 blocks
  const int my_chunks = warp < n_chunks ? (n_chunks - warp + kWarps - 1) / kWarps : 0;
  auto issue = [&](int i) {
    const int chunk = warp + i * kWarps;
    std::uint8_t* stage = mine + (i % kStages) * kStageBytes;
    if (full_blocks - chunk * kChunkBlocks >= kChunkBlocks) {
      issue_chunk<kCB * 18 / 16, kCB>(stage, a, w, row0, chunk, lane);
    } else {
      issue_chunk<9, kCB>(stage, a, w, row0, chunk, lane);
    }
  };

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < my_chunks) issue(i);
    cp_async_commit();
  }

  float acc[S::kNTiles][4];
#pragma unroll
  for (int n = 0; n < S::kNTiles; ++n) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[n][j] = 0.0f;
  }

  for (int i = 0; i < my_chunks; ++i) {
    const int chunk = warp + i * kWarps;
    const int nb = min(kChunkBlocks, full_blocks - chunk * kChunkBlocks);
    __syncwarp();  // every lane is done with the stage and x pieces about to be overwritten
    if (i + kStages - 1 < my_chunks) issue(i + kStages - 1);
    cp_async_commit();

    // x pieces of this chunk: lane takes steps s = lane / 4 + 8j, elements 16 s + 4 t .. + 3
    // (coalesced float4 loads). B fragment of step s for lane (g, t): column g, values
    // (x[4t], x[4t+2]) and (x[4t+1], x[4t+3]) of the step's 16 elements (matching the code order
    // of nibble_pair below).
    const std::size_t e0 = static_cast<std::size_t>(chunk) * kChunkElems;
#pragma unroll
    for (int j = 0; j < kCB / 4; ++j) {
      const int s = (lane >> 2) + 8 * j;
      if (s < 2 * nb) {
#pragma unroll
        for (int tk = 0; tk < kTokens; ++tk) {
          const float4 v = __ldg(reinterpret_cast<const float4*>(
              x + static_cast<std::size_t>(tk) * static_cast<std::size_t>(a.n_cols) + e0 + 16 * s +
              4 * t));
          std::uint32_t p0[3], p1[3];
          split3(v.x, v.z, p0);
          split3(v.y, v.w, p1);
#pragma unroll
          for (int p = 0; p < 3; ++p) {
            xs[(s * S::kCols + 3 * tk + p) * 4 + t] = make_uint2(p0[p], p1[p]);
          }
        }
      }
    }

    cp_async_wait<kStages - 1>();
    __syncwarp();

    const std::uint8_t* sg = mine + (i % kStages) * kStageBytes + g * kRowStride;
    const std::uint8_t* sg8 = sg + 8 * kRowStride;
#pragma unroll 4
    for (int b = 0; b < nb; ++b) {
      const int o = 18 * b;
      const float dg = __half2float(__ushort_as_half(static_cast<unsigned short>(lds_u16(sg + o))));
      const float dg8 =
          __half2float(__ushort_as_half(static_cast<unsigned short>(lds_u16(sg8 + o))));
      const std::uint32_t qg = lds_u16(sg + o + 2 + 4 * t) | lds_u16(sg + o + 4 + 4 * t) << 16;
      const std::uint32_t qg8 = lds_u16(sg8 + o + 2 + 4 * t) | lds_u16(sg8 + o + 4 + 4 * t) << 16;
      // k order inside the block: step 2b takes elements (4t, 4t+2 | 4t+1, 4t+3) of the low
      // nibbles, step 2b+1 the same of the high nibbles (elements 16 + ...).
      const std::uint32_t a0[4] = {nibble_pair(qg), nibble_pair(qg8), nibble_pair(qg >> 8),
                                   nibble_pair(qg8 >> 8)};
      const std::uint32_t a1[4] = {nibble_pair(qg >> 4), nibble_pair(qg8 >> 4),
                                   nibble_pair(qg >> 12), nibble_pair(qg8 >> 12)};
#pragma unroll
      for (int n = 0; n < S::kNTiles; ++n) {
        const int col = 8 * n + g;
        uint2 b0 = make_uint2(0, 0), b1 = make_uint2(0, 0);
        if (col < S::kCols) {
          b0 = xs[((2 * b) * S::kCols + col) * 4 + t];
          b1 = xs[((2 * b + 1) * S::kCols + col) * 4 + t];
        }
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma_bf16(d, a0, b0.x, b0.y);
        mma_bf16(d, a1, b1.x, b1.y);
        acc[n][0] = fmaf(dg, d[0], acc[n][0]);
        acc[n][1] = fmaf(dg, d[1], acc[n][1]);
        acc[n][2] = fmaf(dg8, d[2], acc[n][2]);
        acc[n][3] = fmaf(dg8, d[3], acc[n][3]);
      }
    }
  }
  cp_async_wait<0>();
  __syncwarp();

  // Partials (row, column) of each warp -> its first stage; then sum over warps and pieces.
  auto* red = reinterpret_cast<float*>(mine);
  constexpr int kRedCols = 8 * S::kNTiles;
#pragma unroll
  for (int n = 0; n < S::kNTiles; ++n) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int r = g + 8 * (j >> 1), c = 8 * n + 2 * t + (j & 1);
      red[r * kRedCols + c] = acc[n][j];
    }
  }
  __syncthreads();
  const int i = static_cast<int>(threadIdx.x);
  if (i < kTileRows * kTokens) {
    const int r = i % kTileRows, tk = i / kTileRows;
    if (row0 + r < a.n_rows) {
      float sum = 0.0f;
#pragma unroll
      for (int p = 0; p < 3; ++p) {
#pragma unroll
        for (int wi = 0; wi < kWarps; ++wi) {
          sum +=
              reinterpret_cast<const float*>(smem + wi * S::kWarpBytes)[r * kRedCols + 3 * tk + p];
        }
      }
      y[static_cast<std::size_t>(tk) * a.ldy + static_cast<std::size_t>(row0 + r)] = sum;
    }
  }
}

template <int kTokens, int kStages, int kCB = 16>
void launch(const Args& a, unsigned grid_y, StreamHandle stream) {
  constexpr int smem = Shape<kTokens, kStages, kCB>::kSmem;
  static const bool attribute_set = [] {
    QFORGE_CUDA_CHECK(cudaFuncSetAttribute(gemv_mma_kernel<kTokens, kStages, kCB>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    return true;
  }();
  (void)attribute_set;
  const dim3 grid(static_cast<unsigned>((a.n_rows + kTileRows - 1) / kTileRows), grid_y);
  launch_pdl("gemv_mma_kernel", gemv_mma_kernel<kTokens, kStages, kCB>, grid, kWarps * 32, smem,
             stream, a);
  QFORGE_CUDA_CHECK_LAUNCH("gemv_mma_kernel");
}

std::atomic<int>& stages_choice() {
  static std::atomic<int> stages{12};
  return stages;
}

std::atomic<std::size_t>& min_rows_choice() {
  static std::atomic<std::size_t> min_rows{8192};
  return min_rows;
}

}  // namespace

void set_gemv_mma_stages(int stages) {
  stages_choice().store(stages);
}
int gemv_mma_stages() {
  return stages_choice().load();
}
void set_gemv_mma_min_rows(std::size_t min_rows) {
  min_rows_choice().store(min_rows);
}
bool gemv_mma_preferred(std::size_t n_rows, int n_tokens) {
  return n_tokens <= 2 && n_rows >= min_rows_choice().load();
}

bool gemv_mma_applies(GgmlType type, const void* w, std::size_t n_cols, int n_tokens) {
  return type == GgmlType::Q4_0 && stages_choice().load() != 0 && n_cols % 256 == 0 &&
         n_cols <= 0x7fffff00u && reinterpret_cast<std::uintptr_t>(w) % 16 == 0 &&
         (n_tokens == 1 || n_tokens == 2 || n_tokens == 4);
}

void gemv_mma(const void* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
              std::size_t ldy, int n_tokens, StreamHandle stream) {
  if (n_rows > 0x7fffffffu) cuda_fail("CUDA gemv (mma): ", n_rows, " rows are too many");
  const Args a{static_cast<const std::uint8_t*>(w),
               row_bytes(GgmlType::Q4_0, n_cols),
               0,
               nullptr,
               0,
               1,
               static_cast<int>(n_rows),
               static_cast<int>(n_cols),
               x,
               y,
               ldy};
  const int stages = stages_choice().load();
  switch (n_tokens) {
    case 1:
      if (stages == 2) return launch<1, 2>(a, 1, stream);
      if (stages == 4) return launch<1, 4>(a, 1, stream);
      if (stages == 12) return launch<1, 2, 8>(a, 1, stream);
      if (stages == 13) return launch<1, 3, 8>(a, 1, stream);
      if (stages == 14) return launch<1, 4, 8>(a, 1, stream);
      return launch<1, 3>(a, 1, stream);
    case 2:
      return launch<2, 2, 8>(a, 1, stream);
    case 4:
      return launch<4, 3>(a, 1, stream);
    default:
      cuda_fail("CUDA gemv (mma): batch of ", n_tokens, " tokens is not 1, 2 or 4");
  }
}

void moe_gemv_mma(const void* w, std::size_t expert_bytes, int n_experts, std::size_t n_rows,
                  std::size_t n_cols, const int* ids, int n_slots, int x_group, const float* x,
                  float* y, std::size_t ldy, StreamHandle stream) {
  if (n_rows > 0x7fffffffu || expert_bytes % 16 != 0) {
    cuda_fail("CUDA MoE gemv (mma): ", n_rows, " rows, expert stride ", expert_bytes);
  }
  const Args a{static_cast<const std::uint8_t*>(w),
               row_bytes(GgmlType::Q4_0, n_cols),
               expert_bytes,
               ids,
               n_experts,
               x_group,
               static_cast<int>(n_rows),
               static_cast<int>(n_cols),
               x,
               y,
               ldy};
  launch<1, 2, 8>(a, static_cast<unsigned>(n_slots), stream);
}

}  // namespace qforge::cuda::detail
