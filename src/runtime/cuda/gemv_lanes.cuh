// Lane layouts of the row-tiled GEMV (gemv_tiled.cu): which weights of a row each lane decodes in
// one step, chosen so that the x values a warp reads in one instruction are as contiguous as the
// block format allows, and each lane's weights come from one block.
//
// A warp covers kStepElems consecutive elements of a row per step. Each lane takes kGroups runs of
// 4 consecutive elements, starting at elems[g] (a multiple of 4). load() returns the codes c of
// those elements and, per run, a scale s and an offset o such that weight = s * c + o. All runs of
// a lane lie in one block, so the lane is in range exactly when elems[0] < n_cols (n_cols being a
// multiple of the block size).
#pragma once

#include "runtime/cuda/block_decode.cuh"

namespace qforge::cuda::lanes {

using blocks::byte_minus;
using blocks::kLowNibbles;

// Q4_0 (18-byte blocks of 32): 4 lanes per block; lane j-quarter takes qs[4q .. 4q+4), whose low
// nibbles are elements 4q..4q+3 and high nibbles 16+4q..16+4q+3.
struct Q4_0 {
  static constexpr int kStepElems = 256, kGroups = 2;
  static constexpr bool kScaled = true, kOffset = false;
  __device__ __forceinline__ static void elems(int step, int lane, int* e) {
    const int b = step * 8 + (lane >> 2), j = 4 * (lane & 3);
    e[0] = 32 * b + j;
    e[1] = 32 * b + 16 + j;
  }
  __device__ __forceinline__ static void load(const std::uint8_t* row, int step, int lane, float* c,
                                              float* s, float*) {
    const int b = step * 8 + (lane >> 2), j = 4 * (lane & 3);
    const std::uint8_t* blk = row + 18 * b;
    const float d = blocks::ld_f16(blk);
    const std::uint32_t q = blocks::ld_u32_a2(blk + 2 + j);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      c[i] = byte_minus<8>(q & kLowNibbles, i);
      c[4 + i] = byte_minus<8>((q >> 4) & kLowNibbles, i);
    }
    s[0] = s[1] = d;
  }
};

// Q8_0 (34-byte blocks of 32): 4 lanes per block, 8 consecutive int8 codes each.
struct Q8_0 {
  static constexpr int kStepElems = 256, kGroups = 2;
  static constexpr bool kScaled = true, kOffset = false;
  __device__ __forceinline__ static void elems(int step, int lane, int* e) {
    const int b = step * 8 + (lane >> 2), j = 8 * (lane & 3);
    e[0] = 32 * b + j;
    e[1] = 32 * b + j + 4;
  }
  __device__ __forceinline__ static void load(const std::uint8_t* row, int step, int lane, float* c,
                                              float* s, float*) {
    const int b = step * 8 + (lane >> 2), j = 8 * (lane & 3);
    const std::uint8_t* blk = row + 34 * b;
    const float d = blocks::ld_f16(blk);
    const std::uint32_t q0 = blocks::ld_u32_a2(blk + 2 + j) ^ 0x80808080u;
    const std::uint32_t q1 = blocks::ld_u32_a2(blk + 6 + j) ^ 0x80808080u;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      c[i] = byte_minus<128>(q0, i);
      c[4 + i] = byte_minus<128>(q1, i);
    }
    s[0] = s[1] = d;
  }
};

// Q4_K (144-byte super-blocks of 256): one super-block per step; lane (p, q) = (lane / 8,
// lane % 8) takes qs[32p + 4q .. +4): low nibbles are elements 64p + 4q.. (sub-block 2p), high
// nibbles 64p + 32 + 4q.. (sub-block 2p + 1).
struct Q4_K {
  static constexpr int kStepElems = 256, kGroups = 2;
  static constexpr bool kScaled = true, kOffset = true;
  __device__ __forceinline__ static void elems(int step, int lane, int* e) {
    e[0] = 256 * step + 64 * (lane >> 3) + 4 * (lane & 7);
    e[1] = e[0] + 32;
  }
  __device__ __forceinline__ static void load(const std::uint8_t* row, int step, int lane, float* c,
                                              float* s, float* o) {
    const int p = lane >> 3, qi = lane & 7;
    const std::uint8_t* blk = row + 144 * step;
    const std::uint32_t dd = blocks::ld_u32(blk);
    const std::uint32_t w0 = blocks::ld_u32(blk + 4), w1 = blocks::ld_u32(blk + 8);
    const std::uint32_t w2 = blocks::ld_u32(blk + 12);
    const std::uint32_t q = blocks::ld_u32(blk + 16 + 32 * p + 4 * qi);
    // 6-bit scales/mins of sub-blocks 2p and 2p+1, two bytes at a time: bytes k, k+1 of each
    // 4-byte word of the 12-byte scales field, k = 2 (p & 1).
    const int shift = 16 * (p & 1);
    const std::uint32_t a = (w0 >> shift) & 0xffffu, m = (w1 >> shift) & 0xffffu;
    const std::uint32_t hi = (w2 >> shift) & 0xffffu;
    std::uint32_t sc, mn;
    if (p < 2) {
      sc = a & 0x3f3fu;
      mn = m & 0x3f3fu;
    } else {
      sc = (hi & 0x0f0fu) | ((a & 0xc0c0u) >> 2);
      mn = ((hi >> 4) & 0x0f0fu) | ((m & 0xc0c0u) >> 2);
    }
    const float d = blocks::f16_bits(dd), dmin = blocks::f16_bits(dd >> 16);
    s[0] = d * byte_minus<0>(sc, 0);
    s[1] = d * byte_minus<0>(sc, 1);
    o[0] = -dmin * byte_minus<0>(mn, 0);
    o[1] = -dmin * byte_minus<0>(mn, 1);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      c[i] = byte_minus<0>(q & kLowNibbles, i);
      c[4 + i] = byte_minus<0>((q >> 4) & kLowNibbles, i);
    }
  }
};

// Plain floats: 8 consecutive elements per lane, one or two 16-byte loads.
struct BF16 {
  static constexpr int kStepElems = 256, kGroups = 2;
  static constexpr bool kScaled = false, kOffset = false;
  __device__ __forceinline__ static void elems(int step, int lane, int* e) {
    e[0] = 256 * step + 8 * lane;
    e[1] = e[0] + 4;
  }
  __device__ __forceinline__ static void load(const std::uint8_t* row, int step, int lane, float* c,
                                              float*, float*) {
    const uint4 v = blocks::ld_u128(row + 2 * (256 * step + 8 * lane));
    const std::uint32_t vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      c[2 * i] = __uint_as_float(vw[i] << 16);
      c[2 * i + 1] = __uint_as_float(vw[i] & 0xffff0000u);
    }
  }
};

struct F16 {
  static constexpr int kStepElems = 256, kGroups = 2;
  static constexpr bool kScaled = false, kOffset = false;
  __device__ __forceinline__ static void elems(int step, int lane, int* e) {
    BF16::elems(step, lane, e);
  }
  __device__ __forceinline__ static void load(const std::uint8_t* row, int step, int lane, float* c,
                                              float*, float*) {
    const uint4 v = blocks::ld_u128(row + 2 * (256 * step + 8 * lane));
    const std::uint32_t vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&vw[i]));
      c[2 * i] = f.x, c[2 * i + 1] = f.y;
    }
  }
};

// F32: 4 consecutive elements per lane (one 16-byte load), so rows need only be a multiple of 4
// (stories260K's feed-forward width is 172).
struct F32 {
  static constexpr int kStepElems = 128, kGroups = 1;
  static constexpr bool kScaled = false, kOffset = false;
  __device__ __forceinline__ static void elems(int step, int lane, int* e) {
    e[0] = 128 * step + 4 * lane;
  }
  __device__ __forceinline__ static void load(const std::uint8_t* row, int step, int lane, float* c,
                                              float*, float*) {
    const uint4 v = blocks::ld_u128(row + 4 * (128 * step + 4 * lane));
    c[0] = __uint_as_float(v.x), c[1] = __uint_as_float(v.y);
    c[2] = __uint_as_float(v.z), c[3] = __uint_as_float(v.w);
  }
};

}  // namespace qforge::cuda::lanes
