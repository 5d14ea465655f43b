// The integer-plane form of x for the Q4_0x8 decode GEMVs (gemv_q4_0x8.cu, decode_persistent.cu):
// the shared-memory layout of x's planes, the quantizer that writes them and the dot product of
// one weight block with them (int8_planes.cuh gives the representation).
#pragma once

#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

#include "runtime/cuda/cluster.cuh"
#include "runtime/cuda/cp_async.cuh"
#include "runtime/cuda/int8_planes.cuh"

namespace qforge::cuda::q4_0x8 {

using planes::dp4a_us;
using planes::kStep;
using planes::pack_bytes;

// Shared memory per token: planes [3][2][n_blocks][16 bytes] (plane, half of the block: elements
// 0-15 / 16-31, block), then per block a float2 (s / (254^2 * 16), 8 * sum x).
// Rounded up to 16 bytes, so that the planes of the next token (or slot) stay 16-byte aligned.
__host__ __device__ constexpr std::size_t token_bytes(int n_blocks) {
  return (static_cast<std::size_t>(n_blocks) * (96 + 8) + 15) / 16 * 16;
}

// Block b's planes from one token's planes at tok (the layout above): the first kPlanes planes'
// two halves into pl, and the block's float2 header as the result.
template <int kPlanes>
__device__ __forceinline__ float2 block_planes(const uint4* tok, int n_blocks, int b,
                                               uint4 (&pl)[6]) {
#pragma unroll
  for (int c = 0; c < 2 * kPlanes; ++c) pl[c] = tok[c * n_blocks + b];
  return reinterpret_cast<const float2*>(tok + 6 * n_blocks)[b];
}

// The planes of 8-element chunk i of x (chunk i & 3 of block (i % per_token) / 4 of token i /
// per_token), for i < total, into the planes at smem: this CTA's, or with kCluster those of each
// of the n_ranks CTAs of its cluster (distributed shared memory). The four chunks of a block sit
// in four consecutive lanes, which meet in shuffles for the block's max |x| and sum: every lane of
// the warp calls this, those without a chunk (i >= total) with zeros.
// kPlanes: 3, or 1 for DecodeX::kInt8 (plane 0 alone; block_dot<1> reads no other).
template <bool kCluster = false, int kPlanes = 3>
__device__ __forceinline__ void store_chunk_planes(const float (&v)[8], int i, int total,
                                                   int per_token, int n_blocks, std::uint8_t* smem,
                                                   int n_ranks = 1) {
  float m = 0.0f, sum = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) m = fmaxf(m, fabsf(v[k])), sum += v[k];
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    sum += __shfl_xor_sync(0xffffffffu, sum, o);
  }
  if (i >= total) return;
  const int t = i / per_token, b = (i - t * per_token) >> 2, q = i & 3;
  int p[3][8];
  planes::quantize8<kPlanes>(v, m, p);
  std::uint8_t* tok = smem + static_cast<std::size_t>(t) * token_bytes(n_blocks);
  if constexpr (!kCluster) {
#pragma unroll
    for (int plane = 0; plane < kPlanes; ++plane) {
      const std::size_t chunk = static_cast<std::size_t>((2 * plane + (q >> 1)) * n_blocks + b);
      *reinterpret_cast<uint2*>(tok + 16 * chunk + 8 * (q & 1)) =
          make_uint2(pack_bytes(p[plane]), pack_bytes(p[plane] + 4));
    }
    if (q == 0) {
      reinterpret_cast<float2*>(tok + 96 * static_cast<std::size_t>(n_blocks))[b] =
          make_float2(m / 127.0f / (kStep * kStep * 16.0f), 8.0f * sum);
    }
  } else {
    uint2 words[3];
#pragma unroll
    for (int plane = 0; plane < kPlanes; ++plane) {
      words[plane] = make_uint2(pack_bytes(p[plane]), pack_bytes(p[plane] + 4));
    }
    const float2 header = make_float2(m / 127.0f / (kStep * kStep * 16.0f), 8.0f * sum);
    const std::uint32_t local = smem_addr(tok);
    for (int r = 0; r < n_ranks; ++r) {
      const std::uint32_t dst = cluster::peer_addr(local, r);
#pragma unroll
      for (int plane = 0; plane < kPlanes; ++plane) {
        const auto chunk = static_cast<std::uint32_t>((2 * plane + (q >> 1)) * n_blocks + b);
        cluster::store(dst + 16 * chunk + 8 * (q & 1), words[plane]);
      }
      if (q == 0) {
        cluster::store(dst + 96 * static_cast<std::uint32_t>(n_blocks) + 8 * b,
                       make_uint2(__float_as_uint(header.x), __float_as_uint(header.y)));
      }
    }
  }
}

// sum_k (code_k - 8) x_k of one block (without the weight scale), from its codes and the planes.
// kPlanes = 1 takes plane 0 alone, the opt-in DecodeX::kInt8 (cuda_device.h): the codes then meet
// x rounded to int8 over the block (steps of max |x| / 127, as llama.cpp's q8_1), while the -8
// offset still takes the exact sum of x.
template <int kPlanes = 3>
__device__ __forceinline__ float block_dot(const uint4& codes, const uint4 (&pl)[6], float2 xb) {
  static_assert(kPlanes == 1 || kPlanes == 3);
  const std::uint32_t cw[4] = {codes.x, codes.y, codes.z, codes.w};
  int lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const std::uint32_t l = cw[i] & 0x0f0f0f0fu, h = cw[i] & 0xf0f0f0f0u;  // h = 16 * code
#pragma unroll
    for (int plane = 0; plane < kPlanes; ++plane) {
      const uint4& a = pl[2 * plane];
      const uint4& b = pl[2 * plane + 1];
      const std::uint32_t wa = i == 0 ? a.x : i == 1 ? a.y : i == 2 ? a.z : a.w;
      const std::uint32_t wb = i == 0 ? b.x : i == 1 ? b.y : i == 2 ? b.z : b.w;
      lo[plane] = dp4a_us(l, wa, lo[plane]);
      hi[plane] = dp4a_us(h, wb, hi[plane]);
    }
  }
  // 16 * Pi, exact: |16 * Pi| <= 16 * 32 * 15 * 127 < 2^20, and 254 * 16 * P1 + 16 * P2 < 2^28.
  const int s0 = 16 * lo[0] + hi[0], s1 = 16 * lo[1] + hi[1], s2 = 16 * lo[2] + hi[2];
  return fmaf(planes::combine(s0, s1, s2), xb.x, -xb.y);
}

// ---- GGUF Q4_K blocks, read as they are (PlaneWeights::kQ4_K, q4_0x8.h) ------------------------
// A Q4_K super-block (144 bytes, 256 columns) is an f16 scale d and f16 min scale dmin, twelve
// bytes holding a 6-bit scale sc_j and min m_j per 32-column sub-block j, then 128 code bytes:
// sub-block 2i has the low nibbles of bytes 32i..32i+31, sub-block 2i+1 their high nibbles. A
// weight is d sc_j code - dmin m_j, so one sub-block's product with x is
//   d sc_j sum_k code_k x_k - dmin m_j sum_k x_k,
// the first sum from the planes as in block_dot, the second the block's exact sum of x. Like a
// Q4_0x8 row, a Q4_K row is 576 bytes per 1024 columns, so the GEMV's stages, tasks and planes
// serve both: lane l of a step takes sub-block l & 7 of the step's super-block l >> 3.

// Where lane's sub-block sits in a step of a Q4_K row: its super-block's header, and the 32 code
// bytes whose low (even sub-block) or high (odd) nibbles are its codes.
__device__ __forceinline__ int q4_k_header_at(int lane) {
  return 144 * (lane >> 3);
}
__device__ __forceinline__ int q4_k_codes_at(int lane) {
  return 144 * (lane >> 3) + 16 + 32 * ((lane & 7) >> 1);
}

// The factors of sub-block j = lane & 7 from its super-block's 16-byte header: d sc_j times 16 for
// an even sub-block (its low-nibble codes are summed as they are, where block_dot's plane scale
// expects 16 x code) and dmin m_j / 8 (the plane header holds 8 sum x). kPlainCodes: every
// sub-block's codes are summed as they are (Q5_K, whose header has the same 12 scale bytes).
template <bool kPlainCodes = false>
__device__ __forceinline__ float2 q4_k_factors(const uint4& header, int lane) {
  const int j = lane & 7, shift = 8 * (j & 3);
  const unsigned yb = (header.y >> shift) & 0xffu;  // scales[j] (j < 4) or scales[j - 4]
  const unsigned zb = (header.z >> shift) & 0xffu;  // scales[j + 4] (j < 4) or scales[j]
  const unsigned wb = (header.w >> shift) & 0xffu;  // scales[j + 4] (j >= 4)
  const unsigned sc = j < 4 ? yb & 63u : (wb & 15u) | (yb >> 6) << 4;
  const unsigned m = j < 4 ? zb & 63u : (wb >> 4) | (zb >> 6) << 4;
  const float d = __half2float(__ushort_as_half(static_cast<unsigned short>(header.x & 0xffffu)));
  const float dmin = __half2float(__ushort_as_half(static_cast<unsigned short>(header.x >> 16)));
  return make_float2(d * static_cast<float>(sc) * ((j & 1) != 0 && !kPlainCodes ? 1.0f : 16.0f),
                     dmin * static_cast<float>(m) * 0.125f);
}

// The plane sums of a 32-column sub-block whose codes are unsigned bytes, code_word(i) giving
// elements 4i..4i+3 (i < 8; the first four words meet the first half of the block's planes),
// combined as in block_dot. The callers bound the sums.
template <int kPlanes, typename CodeWord>
__device__ __forceinline__ float sub_block_dot(CodeWord&& code_word, const uint4 (&pl)[6]) {
  static_assert(kPlanes == 1 || kPlanes == 3);
  int s[3] = {0, 0, 0};
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const std::uint32_t c = code_word(i);
#pragma unroll
    for (int plane = 0; plane < kPlanes; ++plane) {
      const uint4& a = pl[2 * plane + (i >> 2)];
      const int k = i & 3;
      const std::uint32_t word = k == 0 ? a.x : k == 1 ? a.y : k == 2 ? a.z : a.w;
      s[plane] = dp4a_us(c, word, s[plane]);
    }
  }
  return planes::combine(s[0], s[1], s[2]);
}

// The plane sums of one sub-block combined as in block_dot: times the plane header's scale (and
// q4_k_factors' 16 for an even sub-block) it is sum_k code_k x_k. c0, c1: the 32 code bytes; mask
// 0x0f0f0f0f (even sub-block) or 0xf0f0f0f0 (odd: the codes in place, 16 x code, as block_dot
// takes its high nibbles).
template <int kPlanes = 3>
__device__ __forceinline__ float q4_k_dot(const uint4& c0, const uint4& c1, std::uint32_t mask,
                                          const uint4 (&pl)[6]) {
  const std::uint32_t cw[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
  // |s_i| <= 16 * 32 * 15 * 127 < 2^20, as block_dot's 16 * Pi.
  return sub_block_dot<kPlanes>([&](int i) { return cw[i] & mask; }, pl);
}

// ---- GGUF Q5_K blocks, read as they are (PlaneWeights::kQ5_K) ---------------------------------
// A Q5_K super-block (176 bytes, 256 columns) is Q4_K's 16-byte header (d, dmin, the 6-bit scales
// and mins), then qh[32], then qs[128] laid out as Q4_K's codes: element e of sub-block j has its
// low 4 bits in the low (even j) or high (odd j) nibble of qs[32 (j >> 1) + e] and its fifth bit
// at bit j of qh[e]. A weight is d sc_j code - dmin m_j with 5-bit codes, so the product is
// Q4_K's with q4_k_factors<true>. A row is 704 bytes per 1024 columns: the GEMV's stage for this
// form is that wide, lane l again taking sub-block l & 7 of super-block l >> 3.

// sum_k code_k x_k of sub-block j times 16 / the plane scale (as q4_k_dot), from its code bytes
// qs (32, at qs[32 (j >> 1)]) and the super-block's qh.
template <int kPlanes = 3>
__device__ __forceinline__ float q5_k_dot(const uint4 (&qs)[2], const uint4 (&qh)[2], int j,
                                          const uint4 (&pl)[6]) {
  const std::uint32_t cw[8] = {qs[0].x, qs[0].y, qs[0].z, qs[0].w,
                               qs[1].x, qs[1].y, qs[1].z, qs[1].w};
  const std::uint32_t hw[8] = {qh[0].x, qh[0].y, qh[0].z, qh[0].w,
                               qh[1].x, qh[1].y, qh[1].z, qh[1].w};
  const unsigned lo_shift = 4 * (j & 1);
  // Codes 0..31: |s_i| <= 32 * 31 * 127 < 2^17, exact integer sums.
  return sub_block_dot<kPlanes>(
      [&](int i) {
        return ((cw[i] >> lo_shift) & 0x0f0f0f0fu) | (((hw[i] >> j) & 0x01010101u) << 4);
      },
      pl);
}

// ---- GGUF Q8_0 blocks, read as they are (PlaneWeights::kQ8_0) ---------------------------------
// A Q8_0 block is an f16 scale d and 32 int8 codes (34 bytes), a weight d code. Blocks of a row
// sit at 2-byte boundaries, so a lane that takes half a block (16 codes) reads the words around
// them and shifts. The GEMV's step is 16 blocks (544 bytes), lane l taking half l & 1 of block
// l >> 1 with the matching half of the block's planes.

// The 4 N bytes at p (2-byte aligned, shared memory) as N words: the aligned words around them,
// shifted.
template <int N>
__device__ __forceinline__ void load_words_at2(const std::uint8_t* p, std::uint32_t (&w)[N]) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const auto* words = reinterpret_cast<const std::uint32_t*>(addr & ~std::uintptr_t{3});
  const unsigned sh = static_cast<unsigned>(addr & 2) * 8;
  std::uint32_t v[N + 1];
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = words[i];
  v[N] = sh != 0 ? words[N] : 0u;  // aligned: the word after the 4 N bytes is not needed
#pragma unroll
  for (int i = 0; i < N; ++i) w[i] = __funnelshift_r(v[i], v[i + 1], sh);
}

// The 16 bytes at p (2-byte aligned, shared memory) as four words.
__device__ __forceinline__ void load16_at2(const std::uint8_t* p, std::uint32_t (&w)[4]) {
  load_words_at2<4>(p, w);
}

// sum_k code_k x_k over 16 codes (int8, four per word) against the matching half-block planes
// pl[0..kPlanes), in units of the planes' header scale (s / (254^2 16), token_bytes).
template <int kPlanes = 3>
__device__ __forceinline__ float q8_0_dot(const std::uint32_t (&codes)[4], const uint4 (&pl)[3]) {
  static_assert(kPlanes == 1 || kPlanes == 3);
  int s[3] = {0, 0, 0};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
#pragma unroll
    for (int plane = 0; plane < kPlanes; ++plane) {
      const uint4& a = pl[plane];
      const std::uint32_t word = k == 0 ? a.x : k == 1 ? a.y : k == 2 ? a.z : a.w;
      s[plane] = planes::dp4a_ss(codes[k], word, s[plane]);
    }
  }
  // |s_i| <= 16 * 128 * 127 < 2^18: the integer sums are exact; 254 s1 + s2 may exceed 2^24, and
  // its F32 rounding (2^-24 relative) is 254^-2 below s0's share: F32-grade, as block_dot.
  return 16.0f * planes::combine(s[0], s[1], s[2]);
}

// ---- GGUF Q5_0 / Q5_1 blocks, read as they are (PlaneWeights::kQ5_0Rows, kQ5_1Rows) ----------
// A Q5_0 block is an f16 scale d, a 32-bit qh and 16 code bytes qs (22 bytes); Q5_1 adds an f16
// min m after d (24 bytes). Element e (< 32) has its low 4 bits in the low (e < 16) or high nibble
// of qs[e % 16] and its fifth bit at bit e of qh; a weight is d (code - 16) (Q5_0) or d code + m
// (Q5_1). The expert down GEMV takes a block per lane.

// sum_k code_k x_k of one block times 16 / the plane scale (as q4_k_dot), from w = {qh, the four
// words of qs}.
template <int kPlanes = 3>
__device__ __forceinline__ float q5_0_dot(const std::uint32_t (&w)[5], const uint4 (&pl)[6]) {
  // Word i of codes is elements 4i..4i+3: low nibbles of qs word i (i < 4), high ones of word
  // i - 4, and qh bits 4i..4i+3, each moved to bit 4 of its byte by one multiply (the four
  // shifted copies of the 4 bits do not overlap). Codes 0..31: |s_i| < 2^17, exact.
  return sub_block_dot<kPlanes>(
      [&](int i) {
        const std::uint32_t lo = i < 4 ? w[1 + i] : w[i - 3] >> 4;
        const std::uint32_t hi = ((w[0] >> (4 * i)) & 0xfu) * 0x02040810u;
        return (lo & 0x0f0f0f0fu) | (hi & 0x10101010u);
      },
      pl);
}

// ---- GGUF Q6_K blocks, read as they are (the persistent step's Q4_K_M mixes) -------------------
// A Q6_K super-block (210 bytes, 256 columns, 2-byte aligned) is ql[128] (low 4 bits of the
// codes), qh[64] (high 2 bits), 16 int8 scales (one per 16 columns), then an f16 d. Of 32-column
// sub-block j (half n = j >> 2 of the super-block, s = j & 3 within it), element e has its low
// bits in nibble s >> 1 of ql[64 n + 32 (s & 1) + e], its high bits at bit 2 s of qh[32 n + e],
// and scale scales[8 n + 2 s + e / 16]; the weight is d scale (code - 32).

// d sum_e scale_e (code_e - 32) x_e over sub-block j of the super-block at sb (2-byte aligned, in
// shared memory), x as block b of one token's planes at tok (the layout of token_bytes). The codes
// minus 32 are int8 (c + 96, then the top bit flipped), so they meet the planes in signed dp4a,
// one sum per 16-column scale. Each half of the block loads its own planes (12 registers, not 24:
// this runs beside the Q4_K products in the persistent step, whose registers it shares).
template <int kPlanes = 3>
__device__ __forceinline__ float q6_k_dot(const std::uint8_t* sb, int j, const uint4* tok,
                                          int n_blocks, int b) {
  static_assert(kPlanes == 1 || kPlanes == 3);
  const int n = j >> 2, s = j & 3;
  const auto addr = reinterpret_cast<std::uintptr_t>(sb);
  const unsigned sh = static_cast<unsigned>(addr & 2) * 8;  // sb 2 bytes into a word: 16
  const auto* ql =
      reinterpret_cast<const std::uint32_t*>((addr & ~std::uintptr_t{3}) + 64 * n + 32 * (s & 1));
  const auto* qh =
      reinterpret_cast<const std::uint32_t*>((addr & ~std::uintptr_t{3}) + 128 + 32 * n);
  const unsigned lo_shift = 4 * (s >> 1), hi_shift = 2 * s;
  float f[2];
  std::uint32_t l0 = ql[0], h0 = qh[0];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    uint4 pl[3];
#pragma unroll
    for (int plane = 0; plane < kPlanes; ++plane)
      pl[plane] = tok[(2 * plane + half) * n_blocks + b];
    int sum[3] = {0, 0, 0};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int i = 4 * half + k;
      const std::uint32_t l1 = ql[i + 1], h1 = qh[i + 1];
      const std::uint32_t lo = (__funnelshift_r(l0, l1, sh) >> lo_shift) & 0x0f0f0f0fu;
      const std::uint32_t hi = ((__funnelshift_r(h0, h1, sh) >> hi_shift) & 0x03030303u) << 4;
      l0 = l1, h0 = h1;
      const std::uint32_t c = ((lo | hi) + 0x60606060u) ^ 0x80808080u;  // code - 32, int8
#pragma unroll
      for (int plane = 0; plane < kPlanes; ++plane) {
        const uint4& a = pl[plane];
        const std::uint32_t word = k == 0 ? a.x : k == 1 ? a.y : k == 2 ? a.z : a.w;
        sum[plane] = planes::dp4a_ss(c, word, sum[plane]);
      }
    }
    // |sum| <= 16 * 32 * 127 per plane: exact, as block_dot's.
    f[half] = planes::combine(sum[0], sum[1], sum[2]);
  }
  // The two 16-column scales, d, and the planes' scale (16 x the sums is what it scales).
  const std::uint32_t scales = *reinterpret_cast<const std::uint16_t*>(sb + 192 + 8 * n + 2 * s);
  const float sc0 = static_cast<float>(static_cast<signed char>(scales & 0xffu));
  const float sc1 = static_cast<float>(static_cast<signed char>(scales >> 8));
  const float d = __half2float(*reinterpret_cast<const __half*>(sb + 208));
  const float xs = reinterpret_cast<const float2*>(tok + 6 * n_blocks)[b].x;
  return d * 16.0f * xs * fmaf(sc0, f[0], sc1 * f[1]);
}

}  // namespace qforge::cuda::q4_0x8
