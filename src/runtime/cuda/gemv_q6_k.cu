// One-token decode GEMV over Q6_K weights as GGUF stores them (the usual LM-head format).
//
// A Q6_K block is 210 bytes, so rows start only 2-byte aligned: the first kernel (gemv.cu) loads
// its weights 2 bytes at a time, one warp per row, and re-reads x from L1 for every row (~1.85
// TB/s on an H100). Here one CTA per SM loops its warps over the rows, and each warp streams its
// rows through a ring of S slots in shared memory (S - 1 rows in flight): a row's 16-byte aligned
// span [floor16(start), ceil16(end)) is copied with 16-byte cp.async, whatever the row's
// alignment (the chunks holding the matrix's first and last bytes 2 bytes at a time instead, so
// that nothing outside it is read), and decoded from shared memory at offset start % 16. A 4-byte
// word at a 2-byte aligned offset there is two aligned 32-bit loads joined by a funnel shift. x is
// copied into shared memory once per CTA, with 4 floats of padding after every 128 so that the 8
// lanes of a block read 8 distinct 16-byte bank groups.
//
// Lanes: 8 per block, 4 blocks per warp step. Lane unit u = 4h + c takes elements
// 128h + 32s + 8c + [0, 8) for s < 4, as blocks::Q6_K::decode's unit u does: 8 bytes of ql at
// 64h + 8c, 8 at 64h + 32 + 8c, 8 of qh at 128 + 32h + 8c and one scale byte per s (the 8
// elements of one s share a 16-element sub-block). Codes become floats exactly (the 2^23 trick of
// block_decode.cuh), each s sums its 8 products (code - 32) * x in F32, and the block adds
// d * sum_s scale_s * sum_s: F32 throughout, no activation quantization (the F32 form).
//
// The integer form (the default since the ninth pass; QFORGE_Q6K_DP4A=0 or set_gemv_q6_k_form(1)
// for the F32 one) holds x as three int8 planes per 32-element block instead (build_planes:
// within max|x of the block| * 2^-24 of every value, the numerics of gemv_q4_0x8.cu), so that a
// lane's 8 codes of one s meet each plane in two dp4a and the -32 offset comes from a per-chunk
// sum of x: ~40% fewer instructions per weight. ncu put the one-CTA-per-SM F32 form near issue-
// bound with 8 warps per SM (Gemma 4's 262144 x 2816 head at ~2.6 TB/s of an H200's ~4.2).
// Whole-model H200 tg128, F32 / integer form: Gemma 4 26B-A4B 449.7 / 455.6, Llama-3-8B 458.0 /
// 461.9, Gemma 4 31B 130.6 / 131.2 (docs/benchmarks.md, ninth pass). With the opt-in
// DecodeX::kInt8 (cuda_device.h) the integer form builds and reads plane 0 alone: x rounded to
// int8 per 32-element block, as llama.cpp's q8_1 (a separate instantiation).
//
// Rows too wide for whole-row slots beside x (from 7680 columns on sm_90: the 14336- and
// 21504-column FFN down projections that llama-quantize's Q4_K_M mixes make Q6_K) stream in ring
// items of 8 blocks of each of the task's rows instead (one aligned span per row, kChunked), the
// sums carried across a task's items. Until then they took the row-tiled F32 kernel: H200 tg128 of
// a Q4_K_M Llama-3-8B 362.5 -> 377.4 tokens/s (docs/benchmarks.md, nineteenth pass).
//
// The first S - 1 items are requested before waiting for the previous kernel (pdl.cuh): weights
// never depend on it; x is read after the wait.
//
// Shared-memory traffic per 1024 weights of one row: 32 wavefronts of x (4 bytes per weight), 25
// of weight words (14 loads, 2-way bank conflicts between the 4 blocks of a step), 7 of cp.async
// stores: near one per clock at 2.6 TB/s, so that pipe may bound the kernel before HBM does. Two
// rows per warp task (set_gemv_q6_k_rows) put adjacent rows in one slot so that each x load
// serves both (48 wavefronts per 1024 weights), with 8 warps per CTA so that the larger slots
// fit. Measured on an H200 (whole-model tg128, two alternating runs each, first kernel / one row
// / two rows): Llama-3-8B (128256 x 4096 head) 458.8 / 479.5 / 481.2 tokens/s, Gemma 4 26B-A4B
// (262144 x 2816) 363.1 / 375.7 / 377.4: two rows by default (QFORGE_Q6K_GEMV_ROWS=1: one).
#include "runtime/cuda/gemv_q6_k.h"

#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "runtime/cuda/block_decode.cuh"
#include "runtime/cuda/cp_async.cuh"
#include "runtime/cuda/device_attrs.h"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/int8_planes.cuh"
#include "runtime/cuda/reduce.cuh"
#include "runtime/cuda_device.h"

namespace qforge::cuda::detail {
namespace {

constexpr int kBlockBytes = 210;
constexpr int kStepBytes = 4 * kBlockBytes;  // a warp step: 4 consecutive blocks of a row

// Warps per CTA for R rows per warp task.
template <int R>
constexpr int warps_per_cta() {
  return R == 1 ? 16 : 8;
}

constexpr int warps_for(int rows) {
  return rows == 1 ? warps_per_cta<1>() : warps_per_cta<2>();
}

// Rows too wide for whole-row slots stream in chunks of kChunkBlocks blocks (2048 columns, 1680
// bytes; a multiple of the 4 blocks of a warp step): Llama-3-8B's 14336-column and Gemma 4 31B's
// 21504-column FFN down projections, Q6_K in llama-quantize's Q4_K_M mixes.
constexpr int kChunkBlocks = 8;

// Shared memory: x with 4 floats of padding after every 128 (a multiple of 32 bytes), then per
// warp S slots. A slot holds the aligned span of R rows (up to 14 bytes before their start and 15
// after their end), or in the chunked form R aligned spans of one chunk of each row, and 16 more
// bytes, which shift consecutive slots by 16 bytes over the banks.
constexpr std::size_t x_bytes(std::size_t n_cols) {
  return (n_cols + n_cols / 32) * sizeof(float);
}
// One row's chunk of `chunk` blocks in a chunked slot, with its alignment slack.
constexpr int chunk_span_bytes(int chunk) {
  return (chunk * kBlockBytes + 14 + 15) / 16 * 16;
}
// chunk: blocks per ring item, n_cols / 256 (whole rows) or kChunkBlocks.
constexpr std::size_t slot_bytes(int rows, std::size_t n_cols, int chunk) {
  if (static_cast<std::size_t>(chunk) * 256 >= n_cols) {
    return (static_cast<std::size_t>(rows) * (n_cols / 256) * kBlockBytes + 14 + 15) / 16 * 16 + 16;
  }
  return static_cast<std::size_t>(rows) * chunk_span_bytes(chunk) + 16;
}
// The integer form's x (see build_planes): three int8 planes of n_cols bytes with 32 bytes of
// padding after every 128, then per 8-element chunk a float2 with 4 float2 of padding after every
// 16: 160 bytes per 128 columns for each of the four.
constexpr std::size_t plane_bytes(std::size_t n_cols) {
  return n_cols / 128 * 160;
}
constexpr std::size_t x_bytes(std::size_t n_cols, bool planes) {
  return planes ? 4 * plane_bytes(n_cols) : x_bytes(n_cols);
}
constexpr std::size_t smem_bytes(int rows, int stages, std::size_t n_cols, bool planes, int chunk) {
  return x_bytes(n_cols, planes) +
         static_cast<std::size_t>(warps_for(rows)) * stages * slot_bytes(rows, n_cols, chunk);
}

// Copies the 16-byte chunk at `chunk` (16-byte aligned) to `dst`, where it straddles the edge of
// the matrix [lo, hi): only the bytes inside, 2 at a time (lo and hi are 2-byte aligned). Only the
// first chunk of an unaligned matrix and the last one of a matrix that does not end on 16 bytes
// come here; cp.async could read outside the allocation.
__device__ __noinline__ void copy_edge(std::uint8_t* dst, const std::uint8_t* chunk,
                                       const std::uint8_t* lo, const std::uint8_t* hi) {
  const std::uint8_t* from = chunk < lo ? lo : chunk;
  const std::uint8_t* to = chunk + 16 > hi ? hi : chunk + 16;
  for (const std::uint8_t* p = from; p < to; p += 2) {
    *reinterpret_cast<std::uint16_t*>(dst + (p - chunk)) =
        *reinterpret_cast<const std::uint16_t*>(p);
  }
}

// The 8 bytes at byte 4 * p + sh / 8 of shared memory (sh 0 or 16): three aligned words.
__device__ __forceinline__ uint2 load8(const std::uint32_t* p, unsigned sh) {
  const std::uint32_t a = p[0], b = p[1], c = p[2];
  return make_uint2(__funnelshift_r(a, b, sh), __funnelshift_r(b, c, sh));
}

// acc + sum_i (byte i of code - 32) * x_i, exactly converted codes, products in order.
__device__ __forceinline__ float dot4(std::uint32_t code, float4 x, float acc) {
  acc = fmaf(blocks::byte_minus<32>(code, 0), x.x, acc);
  acc = fmaf(blocks::byte_minus<32>(code, 1), x.y, acc);
  acc = fmaf(blocks::byte_minus<32>(code, 2), x.z, acc);
  return fmaf(blocks::byte_minus<32>(code, 3), x.w, acc);
}

using planes::dp4a_us;
using planes::kStep;
using planes::pack_bytes;

// x in the integer form, built once per CTA: every 32-element block of x becomes
// s * (p0 + p1 / 254 + p2 / 254^2) with int8 planes and s = max|x| / 127 (within max|x| * 2^-24 of
// each value, as gemv_q4_0x8.cu's planes), and chunk (8 elements) k gets the float2
// (s / 254^2, 32 * sum of its x) at index k + 4 (k / 16): the first scales the chunk's plane sums,
// the second is the -32 offset of the Q6_K codes. Plane p of element e lies at byte
// p * plane_bytes + e + 32 (e / 128). The paddings put the 8-byte words of the 16 lanes of a
// half-warp, (block g < 2, h, c) at chunk 32g + 16h + 4s + c, in 16 distinct bank pairs.
// kPlanes: 3, or 1 for DecodeX::kInt8 (cuda_device.h: plane 0 alone, x rounded to int8).
template <int kPlanes>
__device__ void build_planes(const float* __restrict__ x, int n_cols, std::uint8_t* smem,
                             int n_threads) {
  const int n_chunks = n_cols / 8;  // a multiple of 32: every group of 4 lanes is one block
  const std::size_t pb = plane_bytes(static_cast<std::size_t>(n_cols));
  auto* info = reinterpret_cast<float2*>(smem + 3 * pb);
  for (int base = 0; base < n_chunks; base += n_threads) {  // uniform: shuffles below
    const int k = base + static_cast<int>(threadIdx.x);
    float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    if (k < n_chunks) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(x) + 2 * k);
      const float4 b = __ldg(reinterpret_cast<const float4*>(x) + 2 * k + 1);
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z;
      v[7] = b.w;
    }
    float m = 0.0f, sum = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) m = fmaxf(m, fabsf(v[i])), sum += v[i];
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    if (k >= n_chunks) continue;
    int p[3][8];
    planes::quantize8<kPlanes>(v, m, p);
    const std::size_t at = 8 * static_cast<std::size_t>(k) + 32 * static_cast<std::size_t>(k >> 4);
#pragma unroll
    for (int q = 0; q < kPlanes; ++q) {
      *reinterpret_cast<uint2*>(smem + q * pb + at) =
          make_uint2(pack_bytes(p[q]), pack_bytes(p[q] + 4));
    }
    info[k + 4 * (k >> 4)] = make_float2(m / 127.0f / (kStep * kStep), 32.0f * sum);
  }
}

// One lane's view of one row in a slot: its unit's ql / qh words, scale bytes and d of the block
// it is on (advanced by 4 blocks per step).
struct RowCursor {
  const std::uint32_t* ql;  // word of ql[64h + 8c]; ql[64h + 32 + 8c] is 8 words on
  const std::uint32_t* qh;  // word of qh[32h + 8c]
  const signed char* sc;    // scales[8h + (c >> 1)]; the unit's 4 scales are 2 bytes apart
  const unsigned short* d;
  unsigned sh;  // 16 when the block starts 2 bytes into a word, else 0 (the same for every step)

  RowCursor() = default;
  __device__ __forceinline__ RowCursor(const std::uint8_t* slot, int block_off, int h, int c) {
    const auto* words = reinterpret_cast<const std::uint32_t*>(slot);
    sh = static_cast<unsigned>(block_off & 2) << 3;
    ql = words + (block_off >> 2) + 16 * h + 2 * c;
    qh = ql + 32 - 8 * h;
    sc = reinterpret_cast<const signed char*>(slot) + block_off + 192 + 8 * h + (c >> 1);
    d = reinterpret_cast<const unsigned short*>(slot + block_off + 208);
  }

  // acc + d * sum_s scale_s * sum_{k < 8} (code - 32) * x over this lane's 32 elements of the
  // block; xv[s][half] holds x at 32s + 4 * half of the unit.
  __device__ __forceinline__ float block_dot(const float4 (&xv)[4][2], float acc) const {
    const uint2 a = load8(ql, sh), b = load8(ql + 8, sh), hb = load8(qh, sh);
    const float dd = __half2float(__ushort_as_half(*d));
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const std::uint32_t qa = half == 0 ? a.x : a.y, qb = half == 0 ? b.x : b.y;
      const std::uint32_t qhi = half == 0 ? hb.x : hb.y;
      const std::uint32_t codes[4] = {
          (qa & blocks::kLowNibbles) | ((qhi << 4) & 0x30303030u),
          (qb & blocks::kLowNibbles) | ((qhi << 2) & 0x30303030u),
          ((qa >> 4) & blocks::kLowNibbles) | (qhi & 0x30303030u),
          ((qb >> 4) & blocks::kLowNibbles) | ((qhi >> 2) & 0x30303030u),
      };
#pragma unroll
      for (int s = 0; s < 4; ++s) sum[s] = dot4(codes[s], xv[s][half], sum[s]);
    }
    float blk = static_cast<float>(sc[0]) * sum[0];
#pragma unroll
    for (int s = 1; s < 4; ++s) blk = fmaf(static_cast<float>(sc[2 * s]), sum[s], blk);
    return fmaf(dd, blk, acc);
  }

  // The integer form of block_dot: pw[s][p] is plane p of the lane's chunk s of the block (its
  // 8 elements of sub-row s), ci[s] that chunk's float2 (build_planes); kPlanes = 1 takes plane
  // 0 alone (DecodeX::kInt8).
  template <int kPlanes>
  __device__ __forceinline__ float block_dot_planes(const uint2 (&pw)[4][3], const float2 (&ci)[4],
                                                    float acc) const {
    const uint2 a = load8(ql, sh), b = load8(ql + 8, sh), hb = load8(qh, sh);
    const float dd = __half2float(__ushort_as_half(*d));
    std::uint32_t codes[2][4];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const std::uint32_t qa = half == 0 ? a.x : a.y, qb = half == 0 ? b.x : b.y;
      const std::uint32_t qhi = half == 0 ? hb.x : hb.y;
      codes[half][0] = (qa & blocks::kLowNibbles) | ((qhi << 4) & 0x30303030u);
      codes[half][1] = (qb & blocks::kLowNibbles) | ((qhi << 2) & 0x30303030u);
      codes[half][2] = ((qa >> 4) & blocks::kLowNibbles) | (qhi & 0x30303030u);
      codes[half][3] = ((qb >> 4) & blocks::kLowNibbles) | ((qhi >> 2) & 0x30303030u);
    }
    float blk = 0.0f;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const std::uint32_t lo = codes[0][s], hi = codes[1][s];
      const int s0 = dp4a_us(lo, pw[s][0].x, dp4a_us(hi, pw[s][0].y, 0));
      int s1 = 0, s2 = 0;
      if constexpr (kPlanes == 3) {
        s1 = dp4a_us(lo, pw[s][1].x, dp4a_us(hi, pw[s][1].y, 0));
        s2 = dp4a_us(lo, pw[s][2].x, dp4a_us(hi, pw[s][2].y, 0));
      }
      // |s1 * 254 + s2| < 2^24: exact in F32.
      const float f = planes::combine(s0, s1, s2);
      blk = fmaf(static_cast<float>(sc[2 * s]), fmaf(ci[s].x, f, -ci[s].y), blk);
    }
    return fmaf(dd, blk, acc);
  }

  __device__ __forceinline__ void next_step() {
    ql += kStepBytes / 4;
    qh += kStepBytes / 4;
    sc += kStepBytes;
    d += kStepBytes / 2;
  }
};

// Warp task t covers rows [R t, R t + R) (fewer in the last one); warp `first` of the grid takes
// tasks first, first + stride, ... A ring item is a task's rows whole (chunk >= n_blocks), or
// chunk blocks of each of them (the task's items in order); item k of the warp lands in slot
// k % S.
// kPlanes: 0 for the F32 form, else the integer form's planes of x (3, or 1 for DecodeX::kInt8).
// kChunked: chunk < n_blocks (a separate instantiation, so that the whole-row form, the LM heads',
// compiles as it did before chunks).
template <int R, int S, int kPlanes, bool kChunked>
__global__ void __launch_bounds__(32 * warps_per_cta<R>(), 1)
    gemv_q6_k_kernel(const std::uint8_t* __restrict__ w, int n_rows, int n_cols, int slot_size,
                     int chunk, const float* __restrict__ x, float* __restrict__ y) {
  constexpr int kWarps = warps_per_cta<R>();
  extern __shared__ uint4 smem_words[];
  auto* smem = reinterpret_cast<std::uint8_t*>(smem_words);
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int n_blocks = n_cols / 256, row_size = n_blocks * kBlockBytes;
  constexpr bool whole = !kChunked;
  const int n_chunks = whole ? 1 : (n_blocks + chunk - 1) / chunk;
  const int span = chunk_span_bytes(chunk);  // a row's room in a chunked slot
  const std::uint8_t* w_end = w + static_cast<std::size_t>(n_rows) * row_size;
  const int n_tasks = (n_rows + R - 1) / R;
  const int first_task = static_cast<int>(blockIdx.x) * kWarps + warp;
  const int task_stride = static_cast<int>(gridDim.x) * kWarps;
  const int my_tasks = first_task < n_tasks ? (n_tasks - 1 - first_task) / task_stride + 1 : 0;
  const int my_items = my_tasks * n_chunks;
  auto* xs = reinterpret_cast<float4*>(smem);
  constexpr bool kInt = kPlanes > 0;
  std::uint8_t* ring = smem + x_bytes(static_cast<std::size_t>(n_cols), kInt) +
                       static_cast<std::size_t>(warp) * S * slot_size;

  // The 16-byte aligned span around [begin, end) into dst, 16 bytes per lane and copy (the chunks
  // that straddle the matrix's edges 2 bytes at a time).
  auto copy_span = [&](std::uint8_t* dst, const std::uint8_t* begin, const std::uint8_t* end) {
    const auto a = reinterpret_cast<std::uintptr_t>(begin) & ~std::uintptr_t{15};
    const auto e = (reinterpret_cast<std::uintptr_t>(end) + 15) & ~std::uintptr_t{15};
    const int n16 = static_cast<int>((e - a) >> 4);
    const auto* src = reinterpret_cast<const std::uint8_t*>(a);
    if (src >= w && src + 16 * n16 <= w_end) {  // all but the matrix's first and last rows
      for (int i = lane; i < n16; i += 32) cp_async16(dst + 16 * i, src + 16 * i);
    } else {
      for (int i = lane; i < n16; i += 32) {
        const std::uint8_t* piece = src + 16 * i;
        if (piece >= w && piece + 16 <= w_end) {
          cp_async16(dst + 16 * i, piece);
        } else {
          copy_edge(dst + 16 * i, piece, w, w_end);
        }
      }
    }
  };

  // Issue side: the next item into the next slot, one commit group per item (an empty one past
  // the warp's last item, so that the wait below always counts S - 1 newer groups).
  int issued = 0, issue_task = first_task, issue_chunk = 0, issue_slot = 0;
  auto issue = [&] {
    if (issued < my_items) {
      const std::uint8_t* rows = w + static_cast<std::size_t>(issue_task) * R * row_size;
      std::uint8_t* dst = ring + issue_slot * slot_size;
      if constexpr (whole) {
        const std::uint8_t* end = rows + static_cast<std::size_t>(R) * row_size;
        copy_span(dst, rows, end > w_end ? w_end : end);
      } else {
        const int b0 = issue_chunk * chunk, nb = min(chunk, n_blocks - b0);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const std::uint8_t* begin =
              rows + static_cast<std::size_t>(r) * row_size + b0 * kBlockBytes;
          if (begin < w_end) copy_span(dst + r * span, begin, begin + nb * kBlockBytes);
        }
      }
      ++issued;
      if (++issue_chunk == n_chunks) issue_chunk = 0, issue_task += task_stride;
    }
    cp_async_commit();
    if (++issue_slot == S) issue_slot = 0;
  };

#pragma unroll
  for (int k = 0; k < S - 1; ++k) issue();
  pdl_wait();
  pdl_trigger();

  if constexpr (kInt) {
    build_planes<kPlanes>(x, n_cols, smem, 32 * kWarps);
  } else {  // x into shared memory: float4 i goes to i + i / 32 (4 floats of padding per 128)
    const int n4 = n_cols / 4;
    const auto* x4 = reinterpret_cast<const float4*>(x);
    constexpr int kThreads = 32 * kWarps, kBatch = 4;
    for (int base = static_cast<int>(threadIdx.x); base < n4; base += kBatch * kThreads) {
      float4 v[kBatch];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int i = base + j * kThreads;
        if (i < n4) v[j] = x4[i];
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        const int i = base + j * kThreads;
        if (i < n4) xs[i + (i >> 5)] = v[j];
      }
    }
  }
  __syncthreads();

  const int group = lane >> 3, h = (lane >> 2) & 1, c = lane & 3;
  const std::size_t pb = plane_bytes(static_cast<std::size_t>(n_cols));
  int task = first_task, chunk_at = 0, slot = 0;
  float acc[R] = {};
  for (int k = 0; k < my_items; ++k) {
    issue();
    cp_async_wait<S - 1>();  // item k has landed (this lane's copies) ...
    __syncwarp();            // ... and so have the other lanes'
    const std::uint8_t* slot_ptr = ring + slot * slot_size;
    const int row0 = task * R, b0 = chunk_at * chunk;
    const int b_end = whole ? n_blocks : min(n_blocks, b0 + chunk);
    const std::uint8_t* first = w + static_cast<std::size_t>(row0) * row_size + b0 * kBlockBytes;
    RowCursor rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      // Where row r's first block of the item lies in the slot: after its span's alignment slack,
      // and in the whole form after the rows before it.
      const int off = static_cast<int>(
          reinterpret_cast<std::uintptr_t>(first + static_cast<std::size_t>(r) * row_size) & 15);
      const int at =
          whole ? static_cast<int>(reinterpret_cast<std::uintptr_t>(first) & 15) + r * row_size
                : r * span + off;
      rows[r] = RowCursor(slot_ptr, at + group * kBlockBytes, h, c);
    }
    if (chunk_at == 0) {
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = 0.0f;
    }
    if constexpr (kInt) {
      // The lane's chunk s of block b is chunk 32b + 16h + 4s + c (build_planes' layout); a
      // step of 4 blocks is 1280 plane bytes and 160 float2 further.
      const std::uint8_t* pl = smem + 320 * group + 160 * h + 8 * c + 320 * b0;
      const float2* info =
          reinterpret_cast<const float2*>(smem + 3 * pb) + 40 * group + 20 * h + c + 40 * b0;
      for (int b = b0 + group; b < b_end; b += 4) {
        uint2 pw[4][3];
        float2 ci[4];
#pragma unroll
        for (int s = 0; s < 4; ++s) {
#pragma unroll
          for (int q = 0; q < kPlanes; ++q)
            pw[s][q] = *reinterpret_cast<const uint2*>(pl + q * pb + 32 * s);
          ci[s] = info[4 * s];
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          acc[r] = rows[r].template block_dot_planes<kPlanes>(pw, ci, acc[r]);
          rows[r].next_step();
        }
        pl += 1280;
        info += 160;
      }
    } else {
      // x of the lane's unit in block b: element 256b + 128h + 8c lies in padded float4
      // (64b + 32h + 2c) + (2b + h); a step of 4 blocks is 4 * 66 float4s further.
      const float4* xp = xs + 66 * (b0 + group) + 33 * h + 2 * c;
      for (int b = b0 + group; b < b_end; b += 4) {
        float4 xv[4][2];
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          xv[s][0] = xp[8 * s];
          xv[s][1] = xp[8 * s + 1];
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          acc[r] = rows[r].block_dot(xv, acc[r]);
          rows[r].next_step();
        }
        xp += 4 * 66;
      }
    }
    if (++chunk_at == n_chunks) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float v = warp_sum(acc[r]);
        if (lane == 0 && row0 + r < n_rows) y[row0 + r] = v;
      }
      chunk_at = 0;
      task += task_stride;
    }
    if (++slot == S) slot = 0;
    __syncwarp();  // every lane has read this slot before the next issue() refills it
  }
  cp_async_wait<0>();
}

std::atomic<int>& rows_choice() {
  static std::atomic<int> rows{0};
  return rows;
}

int default_rows() {
  static const int rows = env_number("QFORGE_Q6K_GEMV_ROWS", 2) == 1 ? 1 : 2;
  return rows;
}

int pick_rows() {
  const int forced = rows_choice().load();
  return forced != 0 ? forced : default_rows();
}

std::atomic<int>& form_choice() {
  static std::atomic<int> form{0};
  return form;
}

// The integer form (x as int8 planes, dp4a): on, unless QFORGE_Q6K_DP4A=0 or
// set_gemv_q6_k_form says otherwise.
bool integer_form() {
  static const bool env_on = env_number("QFORGE_Q6K_DP4A", 1) != 0;
  const int forced = form_choice().load();
  return forced != 0 ? forced == 2 : env_on;
}

// The ring of a launch: stages (2..4) and blocks per item (n_cols / 256: whole rows).
struct Ring {
  int stages = 0, chunk = 0;
};

// Whole rows in the most stages (2..4) whose slots fit next to x; else chunks of kChunkBlocks
// the same way (unless QFORGE_Q6K_CHUNKS=0, for comparisons: such rows then take the row-tiled
// kernel); stages 0 when not even two of those fit.
Ring pick_ring(int rows, std::size_t n_cols, bool planes) {
  static const bool chunks = switch_on("QFORGE_Q6K_CHUNKS");
  const int whole = static_cast<int>(n_cols / 256);
  for (const int chunk : {whole, kChunkBlocks}) {
    if (chunk != whole && !chunks) break;
    for (int stages = 4; stages >= 2; --stages) {
      if (smem_bytes(rows, stages, n_cols, planes, chunk) <= current_max_smem_per_block()) {
        return {stages, chunk};
      }
    }
  }
  return {};
}

int pick_stages(int rows, std::size_t n_cols, bool planes) {
  return pick_ring(rows, n_cols, planes).stages;
}

// chunk: pick_ring's blocks per item for this R and form.
template <int R, int S, int kPlanes>
void launch(const void* w, int n_rows, int n_cols, int chunk, const float* x, float* y,
            StreamHandle stream) {
  constexpr int kWarps = warps_per_cta<R>();
  constexpr bool kInt = kPlanes > 0;
  auto* kernel = chunk * 256 < n_cols ? gemv_q6_k_kernel<R, S, kPlanes, true>
                                      : gemv_q6_k_kernel<R, S, kPlanes, false>;
  // Each CTA owns a fixed stride of the rows.
  const std::size_t smem =
      one_cta_per_sm_smem(smem_bytes(R, S, static_cast<std::size_t>(n_cols), kInt, chunk));
  if (smem > 48 * 1024) {  // per device and kernel; a host-side call, also during graph capture
    QFORGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
  }
  const long long n_tasks = (static_cast<long long>(n_rows) + R - 1) / R;
  const auto grid = static_cast<unsigned>(std::min<long long>(
      (n_tasks + kWarps - 1) / kWarps, static_cast<long long>(current_sm_count())));
  const auto slot_size = static_cast<int>(slot_bytes(R, static_cast<std::size_t>(n_cols), chunk));
  launch_pdl("gemv_q6_k_kernel", kernel, grid, 32 * kWarps, smem, stream,
             static_cast<const std::uint8_t*>(w), n_rows, n_cols, slot_size, chunk, x, y);
  QFORGE_CUDA_CHECK_LAUNCH("gemv_q6_k_kernel");
}

template <int R, int kPlanes>
void launch_stages(const void* w, int n_rows, int n_cols, const float* x, float* y,
                   StreamHandle stream) {
  const Ring ring = pick_ring(R, static_cast<std::size_t>(n_cols), kPlanes > 0);
  switch (ring.stages) {
    case 4:
      return launch<R, 4, kPlanes>(w, n_rows, n_cols, ring.chunk, x, y, stream);
    case 3:
      return launch<R, 3, kPlanes>(w, n_rows, n_cols, ring.chunk, x, y, stream);
    default:
      return launch<R, 2, kPlanes>(w, n_rows, n_cols, ring.chunk, x, y, stream);
  }
}

template <int R>
void launch_form(const void* w, int n_rows, int n_cols, const float* x, float* y,
                 StreamHandle stream) {
  // The integer form where its planes fit beside two stages.
  // DecodeX::kInt8 (cuda_device.h) takes plane 0 of x alone.
  if (integer_form() && pick_stages(R, static_cast<std::size_t>(n_cols), true) != 0) {
    if (decode_x() == DecodeX::kInt8) return launch_stages<R, 1>(w, n_rows, n_cols, x, y, stream);
    return launch_stages<R, 3>(w, n_rows, n_cols, x, y, stream);
  }
  launch_stages<R, 0>(w, n_rows, n_cols, x, y, stream);
}

}  // namespace

bool gemv_q6_k_applies(std::size_t n_cols) {
  // Two rows' slots (8 warps) never take more than one row's (16 warps), so this covers both.
  return n_cols > 0 && n_cols % 256 == 0 && n_cols <= (std::size_t{1} << 20) &&
         pick_stages(1, n_cols, false) != 0;
}

void gemv_q6_k(const void* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
               StreamHandle stream) {
  if (!gemv_q6_k_applies(n_cols) || n_rows == 0 || n_rows > kGemvQ6KMaxRows) {
    cuda_fail("CUDA gemv (Q6_K): ", n_rows, " x ", n_cols, " (need rows in [1, ", kGemvQ6KMaxRows,
              "] and columns a positive multiple of 256 whose x and row slots ",
              "fit in shared memory)");
  }
  if (w == nullptr || reinterpret_cast<std::uintptr_t>(w) % 2 != 0 || x == nullptr ||
      reinterpret_cast<std::uintptr_t>(x) % 16 != 0 || y == nullptr) {
    cuda_fail("CUDA gemv (Q6_K): weights must be 2-byte and x 16-byte aligned device arrays, ",
              "y non-null");
  }
  const int rows = static_cast<int>(n_rows), cols = static_cast<int>(n_cols);
  if (pick_rows() == 2) {
    launch_form<2>(w, rows, cols, x, y, stream);
  } else {
    launch_form<1>(w, rows, cols, x, y, stream);
  }
}

void set_gemv_q6_k_form(int form) {
  if (form < 0 || form > 2) cuda_fail("set_gemv_q6_k_form: form must be 0, 1 or 2, got ", form);
  form_choice().store(form);
}

void set_gemv_q6_k_rows(int rows) {
  if (rows != 0 && rows != 1 && rows != 2) {
    cuda_fail("set_gemv_q6_k_rows: rows must be 0, 1 or 2, got ", rows);
  }
  rows_choice().store(rows);
}

}  // namespace qforge::cuda::detail
