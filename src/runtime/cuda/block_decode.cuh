// Device-side decoding of ggml block formats, byte layout exactly as stored in GGUF.
//
// Each format is described by a traits struct. A block of kBlockElems elements occupies kBlockBytes
// bytes and is cut into kUnitsPerBlock "units": the work of one thread in one step. decode()
// turns unit `unit` of the block at `blk` into kRuns runs of 4 consecutive dequantized weights
// (w[4r..4r+3]) that start at element start[r] of the block (a multiple of 4, so the matching x
// values are one 16-byte load). Units of a block are chosen so that consecutive threads read
// consecutive bytes (coalesced), and each thread loads its bytes with as few, as wide loads as
// the format's alignment allows (16 bytes for K-quant blocks, 2 bytes for 18/22/34/210-byte
// blocks, whose start is only 2-byte aligned).
//
// Integer codes become floats without the slow int->float conversion unit: a code n in a byte is
// placed under the exponent of 2^23 (bits 0x4B0000nn), which is exactly the float 2^23 + n, and
// one subtraction of (2^23 + bias) gives n - bias exactly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "quant/ggml_type.h"

namespace qforge::cuda::blocks {

// ---- loads (read-only path; weights are streamed once, so no L1 allocation is requested) ----
__device__ __forceinline__ std::uint16_t ld_u16(const std::uint8_t* p) {
  return __ldg(reinterpret_cast<const unsigned short*>(p));
}
__device__ __forceinline__ std::uint32_t ld_u32(const std::uint8_t* p) {  // 4-byte aligned
  return __ldg(reinterpret_cast<const unsigned int*>(p));
}
__device__ __forceinline__ std::uint32_t ld_u32_a2(const std::uint8_t* p) {  // 2-byte aligned
  return static_cast<std::uint32_t>(ld_u16(p)) | static_cast<std::uint32_t>(ld_u16(p + 2)) << 16;
}
__device__ __forceinline__ uint4 ld_u128(const std::uint8_t* p) {  // 16-byte aligned
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}
__device__ __forceinline__ float ld_f16(const std::uint8_t* p) {
  return __half2float(__ushort_as_half(ld_u16(p)));
}
__device__ __forceinline__ float f16_bits(std::uint32_t bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu)));
}

// Byte i of `word` (0..255) minus `bias`, exactly, as explained above.
template <int kBias>
__device__ __forceinline__ float byte_minus(std::uint32_t word, int i) {
  const float f = __int_as_float(static_cast<int>(__byte_perm(word, 0x4B000000u, 0x7540u | i)));
  return f - (8388608.0f + static_cast<float>(kBias));
}

// Writes w[0..3] = scale * (byte i of word - kBias) + offset.
template <int kBias>
__device__ __forceinline__ void run4(std::uint32_t word, float scale, float offset, float* w) {
#pragma unroll
  for (int i = 0; i < 4; ++i) w[i] = fmaf(scale, byte_minus<kBias>(word, i), offset);
}

// Spreads bits 0..3 of b into bit 4 of bytes 0..3 (the fifth bit of Q5 codes).
__device__ __forceinline__ std::uint32_t bits_to_byte_bit4(std::uint32_t b) {
  return ((b & 0xfu) * 0x00204081u & 0x01010101u) << 4;
}

constexpr std::uint32_t kLowNibbles = 0x0f0f0f0fu;

// ---- 32-element formats ----------------------------------------------------------------------
// Q4_0: d:f16, qs[16]; element j < 16 is the low nibble of qs[j], element 16 + j the high one.
// Unit h (0, 1) takes qs[8h .. 8h+8): elements 8h..8h+7 and 16+8h..16+8h+7.
struct Q4_0 {
  static constexpr int kBlockElems = 32, kBlockBytes = 18, kUnitsPerBlock = 2, kRuns = 4;
  static constexpr int kAlign = 2;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int h, float* w,
                                                int* start, const float*) {
    const float d = ld_f16(blk);
    const std::uint32_t q0 = ld_u32_a2(blk + 2 + 8 * h), q1 = ld_u32_a2(blk + 6 + 8 * h);
    run4<8>(q0 & kLowNibbles, d, 0.0f, w + 0);
    run4<8>(q1 & kLowNibbles, d, 0.0f, w + 4);
    run4<8>((q0 >> 4) & kLowNibbles, d, 0.0f, w + 8);
    run4<8>((q1 >> 4) & kLowNibbles, d, 0.0f, w + 12);
    start[0] = 8 * h, start[1] = 8 * h + 4, start[2] = 16 + 8 * h, start[3] = 20 + 8 * h;
  }
};

// Q4_1: d:f16, m:f16, qs[16]; x = d * q + m. Blocks are 20 bytes, so 4-byte aligned.
struct Q4_1 {
  static constexpr int kBlockElems = 32, kBlockBytes = 20, kUnitsPerBlock = 2, kRuns = 4;
  static constexpr int kAlign = 4;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int h, float* w,
                                                int* start, const float*) {
    const std::uint32_t dm = ld_u32(blk);
    const float d = f16_bits(dm), m = f16_bits(dm >> 16);
    const std::uint32_t q0 = ld_u32(blk + 4 + 8 * h), q1 = ld_u32(blk + 8 + 8 * h);
    run4<0>(q0 & kLowNibbles, d, m, w + 0);
    run4<0>(q1 & kLowNibbles, d, m, w + 4);
    run4<0>((q0 >> 4) & kLowNibbles, d, m, w + 8);
    run4<0>((q1 >> 4) & kLowNibbles, d, m, w + 12);
    start[0] = 8 * h, start[1] = 8 * h + 4, start[2] = 16 + 8 * h, start[3] = 20 + 8 * h;
  }
};

// Unit h of a 32-element block with 5-bit codes (Q5_0, Q5_1): qs words q0, q1 (qs[8h .. 8h+8)),
// the block's fifth bits qh (bit j: element j); weight = d * (code - kBias) + m.
template <int kBias>
__device__ __forceinline__ void decode_5bit_unit(std::uint32_t q0, std::uint32_t q1,
                                                 std::uint32_t qh, int h, float d, float m,
                                                 float* w, int* start) {
  const int e = 8 * h;
  run4<kBias>((q0 & kLowNibbles) | bits_to_byte_bit4(qh >> e), d, m, w + 0);
  run4<kBias>((q1 & kLowNibbles) | bits_to_byte_bit4(qh >> (e + 4)), d, m, w + 4);
  run4<kBias>(((q0 >> 4) & kLowNibbles) | bits_to_byte_bit4(qh >> (e + 16)), d, m, w + 8);
  run4<kBias>(((q1 >> 4) & kLowNibbles) | bits_to_byte_bit4(qh >> (e + 20)), d, m, w + 12);
  start[0] = e, start[1] = e + 4, start[2] = 16 + e, start[3] = 20 + e;
}

// Q5_0: d:f16, qh:u32 (bit j = fifth bit of element j), qs[16]; x = d * (code - 16).
struct Q5_0 {
  static constexpr int kBlockElems = 32, kBlockBytes = 22, kUnitsPerBlock = 2, kRuns = 4;
  static constexpr int kAlign = 2;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int h, float* w,
                                                int* start, const float*) {
    const float d = ld_f16(blk);
    const std::uint32_t qh = ld_u32_a2(blk + 2);
    const std::uint32_t q0 = ld_u32_a2(blk + 6 + 8 * h), q1 = ld_u32_a2(blk + 10 + 8 * h);
    decode_5bit_unit<16>(q0, q1, qh, h, d, 0.0f, w, start);
  }
};

// Q5_1: d:f16, m:f16, qh:u32 (bit j = fifth bit of element j), qs[16]; x = d * code + m. Blocks
// are 24 bytes, so 4-byte aligned (llama-quantize's Q5_K where rows are not whole 256-column
// super-blocks: Gemma 4 26B-A4B's 704- and 2112-column FFN down projections).
struct Q5_1 {
  static constexpr int kBlockElems = 32, kBlockBytes = 24, kUnitsPerBlock = 2, kRuns = 4;
  static constexpr int kAlign = 4;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int h, float* w,
                                                int* start, const float*) {
    const std::uint32_t dm = ld_u32(blk);
    const float d = f16_bits(dm), m = f16_bits(dm >> 16);
    const std::uint32_t qh = ld_u32(blk + 4);
    const std::uint32_t q0 = ld_u32(blk + 8 + 8 * h), q1 = ld_u32(blk + 12 + 8 * h);
    decode_5bit_unit<0>(q0, q1, qh, h, d, m, w, start);
  }
};

// Q8_0: d:f16, qs[32] int8. Unit h takes qs[16h .. 16h+16). Signed bytes become unsigned by
// flipping the top bit (q + 128).
struct Q8_0 {
  static constexpr int kBlockElems = 32, kBlockBytes = 34, kUnitsPerBlock = 2, kRuns = 4;
  static constexpr int kAlign = 2;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int h, float* w,
                                                int* start, const float*) {
    const float d = ld_f16(blk);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const std::uint32_t q = ld_u32_a2(blk + 2 + 16 * h + 4 * r) ^ 0x80808080u;
      run4<128>(q, d, 0.0f, w + 4 * r);
      start[r] = 16 * h + 4 * r;
    }
  }
};

// IQ4_NL: d:f16, qs[16] as Q4_0, but codes index a fixed table of 16 non-uniform levels, passed in
// (shared memory: its 16 entries sit in 16 different banks, so lookups never conflict).
struct IQ4_NL {
  static constexpr int kBlockElems = 32, kBlockBytes = 18, kUnitsPerBlock = 2, kRuns = 4;
  static constexpr int kAlign = 2;
  static constexpr bool kUsesTable = true;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int h, float* w,
                                                int* start, const float* table) {
    const float d = ld_f16(blk);
    const std::uint32_t q0 = ld_u32_a2(blk + 2 + 8 * h), q1 = ld_u32_a2(blk + 6 + 8 * h);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[i] = d * table[(q0 >> (8 * i)) & 0xf];
      w[4 + i] = d * table[(q1 >> (8 * i)) & 0xf];
      w[8 + i] = d * table[(q0 >> (8 * i + 4)) & 0xf];
      w[12 + i] = d * table[(q1 >> (8 * i + 4)) & 0xf];
    }
    start[0] = 8 * h, start[1] = 8 * h + 4, start[2] = 16 + 8 * h, start[3] = 20 + 8 * h;
  }
};

// ---- K-quants (256-element super-blocks) -------------------------------------------------------
// Q4_K / Q5_K 6-bit scale and min of sub-block j from the 12-byte scales field.
__device__ __forceinline__ void scale_min_k4(const std::uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = __ldg(s + j) & 63;
    m = __ldg(s + j + 4) & 63;
  } else {
    const int hi = __ldg(s + j + 4);
    sc = (hi & 0x0f) | ((__ldg(s + j - 4) >> 6) << 4);
    m = (hi >> 4) | ((__ldg(s + j) >> 6) << 4);
  }
}

// Q4_K: d:f16, dmin:f16, scales[12], qs[128]. Sub-blocks 2p and 2p+1 (32 elements each) share
// qs[32p .. 32p+32): low nibbles then high nibbles. Unit u = 2p + t takes qs[32p+16t .. +16):
// elements 64p+16t+i (low) and 64p+32+16t+i (high), i < 16. x = d*sc*q - dmin*m.
struct Q4_K {
  static constexpr int kBlockElems = 256, kBlockBytes = 144, kUnitsPerBlock = 8, kRuns = 8;
  static constexpr int kAlign = 16;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int u, float* w,
                                                int* start, const float*) {
    const int p = u >> 1, t = u & 1;
    const std::uint32_t dd = ld_u32(blk);
    const float d = f16_bits(dd), dmin = f16_bits(dd >> 16);
    int sc0, m0, sc1, m1;
    scale_min_k4(blk + 4, 2 * p, sc0, m0);
    scale_min_k4(blk + 4, 2 * p + 1, sc1, m1);
    const float s0 = d * static_cast<float>(sc0), o0 = -dmin * static_cast<float>(m0);
    const float s1 = d * static_cast<float>(sc1), o1 = -dmin * static_cast<float>(m1);
    const uint4 q = ld_u128(blk + 16 + 32 * p + 16 * t);
    const std::uint32_t qw[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      run4<0>(qw[r] & kLowNibbles, s0, o0, w + 4 * r);
      run4<0>((qw[r] >> 4) & kLowNibbles, s1, o1, w + 16 + 4 * r);
      start[r] = 64 * p + 16 * t + 4 * r;
      start[4 + r] = 64 * p + 32 + 16 * t + 4 * r;
    }
  }
};

// Q5_K: d, dmin, scales[12], qh[32], qs[128]. As Q4_K, plus a fifth bit: element 64p+i (i < 32,
// low nibble) has bit 2p of qh[i], element 64p+32+i bit 2p+1.
struct Q5_K {
  static constexpr int kBlockElems = 256, kBlockBytes = 176, kUnitsPerBlock = 8, kRuns = 8;
  static constexpr int kAlign = 16;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int u, float* w,
                                                int* start, const float*) {
    const int p = u >> 1, t = u & 1;
    const std::uint32_t dd = ld_u32(blk);
    const float d = f16_bits(dd), dmin = f16_bits(dd >> 16);
    int sc0, m0, sc1, m1;
    scale_min_k4(blk + 4, 2 * p, sc0, m0);
    scale_min_k4(blk + 4, 2 * p + 1, sc1, m1);
    const float s0 = d * static_cast<float>(sc0), o0 = -dmin * static_cast<float>(m0);
    const float s1 = d * static_cast<float>(sc1), o1 = -dmin * static_cast<float>(m1);
    const uint4 q = ld_u128(blk + 48 + 32 * p + 16 * t);
    const uint4 h = ld_u128(blk + 16 + 16 * t);
    const std::uint32_t qw[4] = {q.x, q.y, q.z, q.w};
    const std::uint32_t hw[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const std::uint32_t hi_lo = ((hw[r] >> (2 * p)) & 0x01010101u) << 4;
      const std::uint32_t hi_hi = ((hw[r] >> (2 * p + 1)) & 0x01010101u) << 4;
      run4<0>((qw[r] & kLowNibbles) | hi_lo, s0, o0, w + 4 * r);
      run4<0>(((qw[r] >> 4) & kLowNibbles) | hi_hi, s1, o1, w + 16 + 4 * r);
      start[r] = 64 * p + 16 * t + 4 * r;
      start[4 + r] = 64 * p + 32 + 16 * t + 4 * r;
    }
  }
};

// Q6_K: ql[128], qh[64], scales[16] int8, d:f16 (210 bytes: blocks are only 2-byte aligned).
// Element 128h + 32s + k (s < 4, k < 32): low 4 bits from ql[64h + k + 32*(s&1)] (low nibble for
// s < 2, high nibble otherwise), high 2 bits from bits 2s..2s+1 of qh[32h + k]; scale
// scales[(128h + 32s + k) / 16]. x = d * scale * (code - 32).
// Unit u = 4h + c takes k in [8c, 8c+8) for all four s: 32 elements.
struct Q6_K {
  static constexpr int kBlockElems = 256, kBlockBytes = 210, kUnitsPerBlock = 8, kRuns = 8;
  static constexpr int kAlign = 2;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int u, float* w,
                                                int* start, const float*) {
    const int h = u >> 2, c = u & 3;
    const float d = ld_f16(blk + 208);
    const std::uint8_t* ql = blk + 64 * h + 8 * c;
    const std::uint8_t* qh = blk + 128 + 32 * h + 8 * c;
    const std::uint8_t* sc = blk + 192 + 8 * h + (c >> 1);
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // k in [8c + 4*half, +4)
      const std::uint32_t a = ld_u32_a2(ql + 4 * half), b = ld_u32_a2(ql + 32 + 4 * half);
      const std::uint32_t hb = ld_u32_a2(qh + 4 * half);
      const std::uint32_t codes[4] = {
          (a & kLowNibbles) | ((hb << 4) & 0x30303030u),
          (b & kLowNibbles) | ((hb << 2) & 0x30303030u),
          ((a >> 4) & kLowNibbles) | (hb & 0x30303030u),
          ((b >> 4) & kLowNibbles) | ((hb >> 2) & 0x30303030u),
      };
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const float scale = d * static_cast<float>(static_cast<std::int8_t>(__ldg(sc + 2 * s)));
        run4<32>(codes[s], scale, 0.0f, w + 8 * s + 4 * half);
        start[2 * s + half] = 128 * h + 32 * s + 8 * c + 4 * half;
      }
    }
  }
};

// ---- plain floats: a "block" is 8 elements, one 16- or 32-byte unit ---------------------------
struct F32 {
  static constexpr int kBlockElems = 8, kBlockBytes = 32, kUnitsPerBlock = 1, kRuns = 2;
  static constexpr int kAlign = 16;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int, float* w, int* start,
                                                const float*) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint4 v = ld_u128(blk + 16 * r);
      w[4 * r] = __uint_as_float(v.x), w[4 * r + 1] = __uint_as_float(v.y);
      w[4 * r + 2] = __uint_as_float(v.z), w[4 * r + 3] = __uint_as_float(v.w);
      start[r] = 4 * r;
    }
  }
};

struct F16 {
  static constexpr int kBlockElems = 8, kBlockBytes = 16, kUnitsPerBlock = 1, kRuns = 2;
  static constexpr int kAlign = 16;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int, float* w, int* start,
                                                const float*) {
    const uint4 v = ld_u128(blk);
    const std::uint32_t vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&vw[i]));
      w[2 * i] = f.x, w[2 * i + 1] = f.y;
    }
    start[0] = 0, start[1] = 4;
  }
};

struct BF16 {
  static constexpr int kBlockElems = 8, kBlockBytes = 16, kUnitsPerBlock = 1, kRuns = 2;
  static constexpr int kAlign = 16;
  __device__ __forceinline__ static void decode(const std::uint8_t* blk, int, float* w, int* start,
                                                const float*) {
    const uint4 v = ld_u128(blk);
    const std::uint32_t vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      w[2 * i] = __uint_as_float(vw[i] << 16), w[2 * i + 1] = __uint_as_float(vw[i] & 0xffff0000u);
    }
    start[0] = 0, start[1] = 4;
  }
};

// Formats without a lookup table ignore the table argument.
template <typename T>
concept UsesTable = requires {
  T::kUsesTable;
};

// The 16 levels of IQ4_NL (a format fact from the GGUF specification); kernels copy them into
// shared memory once per CTA.
static __constant__ float kIq4NlLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                              1,    13,   25,  38,  53,  69,  89,  113};

// Calls fn(Fmt{}) with the traits struct of `type` and returns true, or returns false (fn not
// called) for a type without one: the one type switch of the kernels that take every format.
template <typename Fn>
bool with_format(GgmlType type, Fn&& fn) {
  switch (type) {
    case GgmlType::F32:
      fn(F32{});
      return true;
    case GgmlType::F16:
      fn(F16{});
      return true;
    case GgmlType::BF16:
      fn(BF16{});
      return true;
    case GgmlType::Q4_0:
      fn(Q4_0{});
      return true;
    case GgmlType::Q4_1:
      fn(Q4_1{});
      return true;
    case GgmlType::Q5_0:
      fn(Q5_0{});
      return true;
    case GgmlType::Q5_1:
      fn(Q5_1{});
      return true;
    case GgmlType::Q8_0:
      fn(Q8_0{});
      return true;
    case GgmlType::IQ4_NL:
      fn(IQ4_NL{});
      return true;
    case GgmlType::Q4_K:
      fn(Q4_K{});
      return true;
    case GgmlType::Q5_K:
      fn(Q5_K{});
      return true;
    case GgmlType::Q6_K:
      fn(Q6_K{});
      return true;
    default:
      return false;
  }
}

}  // namespace qforge::cuda::blocks
