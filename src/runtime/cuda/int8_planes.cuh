// x as three int8 planes, shared by the integer-form decode GEMVs (gemv_q4_0x8.cu, gemv_q6_k.cu).
//
// Every block of x is s * (p0 + p1 / 254 + p2 / 254^2) with int8 planes p0..p2 and s = max|x| /
// 127 over the block: each value is represented to within max|x of its block| * 2^-24. Weight
// codes meet each plane in dp4a (exact integer sums), and the three sums are combined in F32.
#pragma once

#include <cstdint>

namespace qforge::cuda::planes {

constexpr float kStep = 254.0f;  // plane i + 1 holds the residual of plane i times 254

// c + sum of the 4 byte products, a's bytes unsigned (weight codes), b's signed (plane values).
__device__ __forceinline__ int dp4a_us(std::uint32_t a, std::uint32_t b, int c) {
  int d;
  asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// c + sum of the 4 byte products, both a's and b's bytes signed.
__device__ __forceinline__ int dp4a_ss(std::uint32_t a, std::uint32_t b, int c) {
  int d;
  asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Four int8 values (in int) as the bytes of a word, p[0] lowest.
__device__ __forceinline__ std::uint32_t pack_bytes(const int* p) {
  return (static_cast<std::uint32_t>(p[0]) & 0xffu) |
         (static_cast<std::uint32_t>(p[1]) & 0xffu) << 8 |
         (static_cast<std::uint32_t>(p[2]) & 0xffu) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

// u rounded to the nearest integer (ties to even) for |u| < 2^22, as a float and into i, by the
// FP32 unit: the sum u + 1.5 * 2^23 has a unit step, so it holds round(u) in its low mantissa
// bits. This is __float2int_rn's result without the conversion instructions, which run at 1/8 of
// the FP32 rate on sm_90 (H200 tg128, twenty-third pass: Gemma 4 E4B +1%, the other models level).
// The _rn intrinsics keep the compiler from contracting the sums into FMAs, which would round
// differently.
__device__ __forceinline__ float round_rn(float u, int& i) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  const float t = __fadd_rn(u, kMagic);
  i = __float_as_int(t) - 0x4B400000;  // the bits of kMagic
  return __fsub_rn(t, kMagic);
}

// The planes of 8 values of a block whose max |x| is m (0 for an all-zero block); the first
// kPlanes of them (plane 0 alone: x rounded to int8). Each plane value is in [-127, 127]: |u| <=
// 127, and each residual is at most half a step, times 254.
template <int kPlanes = 3>
__device__ __forceinline__ void quantize8(const float (&v)[8], float m, int (&p)[3][8]) {
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float u = __fmul_rn(v[k], inv);
    const float p0 = round_rn(u, p[0][k]);
    if constexpr (kPlanes == 1) continue;
    const float r1 = __fmul_rn(__fsub_rn(u, p0), kStep);
    const float p1 = round_rn(r1, p[1][k]);
    round_rn(__fmul_rn(__fsub_rn(r1, p1), kStep), p[2][k]);
  }
}

// s0 * 254^2 + s1 * 254 + s2 from the plane sums, exact where |s1 * 254 + s2| < 2^24 (the callers
// bound it); times s / 254^2 it is the dot product with x.
__device__ __forceinline__ float combine(int s0, int s1, int s2) {
  return fmaf(static_cast<float>(s0), kStep * kStep,
              static_cast<float>(s1 * static_cast<int>(kStep) + s2));
}

}  // namespace qforge::cuda::planes
