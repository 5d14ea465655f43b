// Weight decoders for the tensor-core GEMM (gemm_tc_kernel.cuh): they turn the 64 columns
// [k0, k0 + 64) of one weight row into F32 values, a "unit" (16 or 32 weights) per call, in runs
// of 4 consecutive columns, by reusing the GEMV block decoders (block_decode.cuh) wherever their
// units tile 64-column chunks:
//   - 32-element formats: a chunk is 2 blocks of 2 units (16 weights each);
//   - Q4_K / Q5_K: units 2p and 2p + 1 of a super-block cover exactly its columns [64p, 64p + 64);
//   - F32 / F16 / BF16: a chunk is 8 units of 8 weights;
//   - Q6_K: the GEMV units cover 128-column halves, so it has its own 64-column decoder here.
//
// Interface of a chunk decoder D:
//   kUnits         units per 64-column chunk
//   kRuns          runs of 4 weights per unit
//   kTailElems     columns per independently valid piece (a block; 64 when n_cols % 64 == 0
//                  always holds, as for K-quants)
//   kUnitsPerTail  consecutive units that form one such piece
//   kAlign         weight alignment the loads need (bytes)
//   decode(row, k0, unit, w, start, table): w[4r .. 4r+3] are the weights of chunk-relative
//                  columns start[r] .. start[r] + 3 (start[r] % 4 == 0).
//
// A "split" decoder (kSplit, e.g. Q4_0Split) also offers the two halves of decode:
//   Raw load(row, k0, unit)                        the global loads only (a few registers)
//   convert(raw, unit, w, start, table)            the arithmetic
// so that the kernel can issue the loads of the next K step before its tensor-core work and
// convert afterwards, hiding the global-memory latency instead of waiting for it at every step.
// Only the MoE GEMM uses one so far (Q4_0: 5% faster there on an H200; a Q8_0 version was 4%
// slower, its 5 raw registers per unit cost more than the latency they hide).
#pragma once

#include <cstdint>

#include "quant/ggml_type.h"
#include "runtime/cuda/block_decode.cuh"
#include "runtime/cuda/q4_0x8.cuh"

namespace qforge::cuda::gemm_tc {

// Formats whose blocks are at most 64 columns wide (32-element quants, floats).
template <typename Fmt>
struct SmallBlocks {
  static_assert(64 % Fmt::kBlockElems == 0);
  static constexpr int kBlocks = 64 / Fmt::kBlockElems;
  static constexpr int kUnits = kBlocks * Fmt::kUnitsPerBlock;
  static constexpr int kRuns = Fmt::kRuns;
  static constexpr int kTailElems = Fmt::kBlockElems;
  static constexpr int kUnitsPerTail = Fmt::kUnitsPerBlock;
  static constexpr int kAlign = Fmt::kAlign;
  static constexpr bool kUsesTable = blocks::UsesTable<Fmt>;
  static constexpr bool kSplit = false;

  __device__ __forceinline__ static void decode(const std::uint8_t* row, int k0, int unit, float* w,
                                                int* start, const float* table) {
    const int b = unit / Fmt::kUnitsPerBlock;
    const int block = k0 / Fmt::kBlockElems + b;
    Fmt::decode(row + static_cast<std::size_t>(block) * Fmt::kBlockBytes,
                unit % Fmt::kUnitsPerBlock, w, start, table);
#pragma unroll
    for (int r = 0; r < kRuns; ++r) start[r] += b * Fmt::kBlockElems;
  }
};

// Q4_0 as two phases (the same arithmetic as blocks::Q4_0::decode).
struct Q4_0Split : SmallBlocks<blocks::Q4_0> {
  static constexpr bool kSplit = true;
  struct Raw {
    std::uint32_t d, q0, q1;
  };
  __device__ __forceinline__ static Raw load(const std::uint8_t* row, int k0, int unit) {
    const std::uint8_t* blk = row + static_cast<std::size_t>(k0 / 32 + unit / 2) * 18;
    const int h = unit % 2;
    return {blocks::ld_u16(blk), blocks::ld_u32_a2(blk + 2 + 8 * h),
            blocks::ld_u32_a2(blk + 6 + 8 * h)};
  }
  __device__ __forceinline__ static void convert(const Raw& r, int unit, float* w, int* start,
                                                 const float*) {
    const float d = blocks::f16_bits(r.d);
    const int h = unit % 2, base = 32 * (unit / 2);
    blocks::run4<8>(r.q0 & blocks::kLowNibbles, d, 0.0f, w + 0);
    blocks::run4<8>(r.q1 & blocks::kLowNibbles, d, 0.0f, w + 4);
    blocks::run4<8>((r.q0 >> 4) & blocks::kLowNibbles, d, 0.0f, w + 8);
    blocks::run4<8>((r.q1 >> 4) & blocks::kLowNibbles, d, 0.0f, w + 12);
    start[0] = base + 8 * h, start[1] = base + 8 * h + 4;
    start[2] = base + 16 + 8 * h, start[3] = base + 20 + 8 * h;
  }
};

// Q4_0x8 rows (q4_0x8.h): the same codes and arithmetic as Q4_0Split, each block's code bytes
// 16-byte aligned (two 4-byte loads per unit instead of four 2-byte ones) and its scale in the
// group header.
struct Q4_0x8Split : Q4_0Split {
  static constexpr int kAlign = 16;
  __device__ __forceinline__ static Raw load(const std::uint8_t* row, int k0, int unit) {
    const int b = k0 / 32 + unit / 2, h = unit % 2;
    const std::uint8_t* codes = row + q4_0x8::codes_offset(b) + 8 * h;
    return {blocks::ld_u16(row + q4_0x8::scale_offset(b)), blocks::ld_u32(codes),
            blocks::ld_u32(codes + 4)};
  }
  __device__ __forceinline__ static void decode(const std::uint8_t* row, int k0, int unit, float* w,
                                                int* start, const float* table) {
    convert(load(row, k0, unit), unit, w, start, table);
  }
};

// Q4_K and Q5_K: chunk p of a super-block is units 2p and 2p + 1 of the GEMV decoder.
template <typename Fmt>
struct KQuant64 {
  static_assert(Fmt::kBlockElems == 256 && Fmt::kUnitsPerBlock == 8);
  static constexpr int kUnits = 2;
  static constexpr int kRuns = Fmt::kRuns;
  static constexpr int kTailElems = 64;
  static constexpr int kUnitsPerTail = 2;
  static constexpr int kAlign = Fmt::kAlign;
  static constexpr bool kUsesTable = false;
  static constexpr bool kSplit = false;

  __device__ __forceinline__ static void decode(const std::uint8_t* row, int k0, int unit, float* w,
                                                int* start, const float* table) {
    const int block = k0 / 256, p = (k0 % 256) / 64;
    Fmt::decode(row + static_cast<std::size_t>(block) * Fmt::kBlockBytes, 2 * p + unit, w, start,
                table);
#pragma unroll
    for (int r = 0; r < kRuns; ++r) start[r] -= 64 * p;
  }
};

// Q6_K (layout in block_decode.cuh): chunk c (columns [64c, 64c + 64) of a super-block) is
// h = c / 2 and s in {s0, s0 + 1} with s0 = 2 * (c % 2): the low 4 bits of column 32s + k of the
// half are nibble (c % 2) of ql[64h + 32(s - s0) + k], the high 2 bits bits 2s..2s+1 of
// qh[32h + k]. Unit t (0, 1) takes k in [16t, 16t + 16) for both s: 32 weights, two scales.
struct Q6_K64 {
  static constexpr int kUnits = 2;
  static constexpr int kRuns = 8;
  static constexpr int kTailElems = 64;
  static constexpr int kUnitsPerTail = 2;
  static constexpr int kAlign = 2;
  static constexpr bool kUsesTable = false;
  static constexpr bool kSplit = false;

  __device__ __forceinline__ static void decode(const std::uint8_t* row, int k0, int t, float* w,
                                                int* start, const float*) {
    const std::uint8_t* blk = row + static_cast<std::size_t>(k0 / 256) * 210;
    const int c = (k0 % 256) / 64, h = c >> 1, s0 = 2 * (c & 1), nib = 4 * (c & 1);
    const float d = blocks::ld_f16(blk + 208);
    const std::uint8_t* ql = blk + 64 * h + 16 * t;
    const std::uint8_t* qh = blk + 128 + 32 * h + 16 * t;
    const std::uint8_t* sc = blk + 192 + 8 * h + 2 * s0 + t;
    const float scale0 = d * static_cast<float>(static_cast<std::int8_t>(__ldg(sc)));
    const float scale1 = d * static_cast<float>(static_cast<std::int8_t>(__ldg(sc + 2)));
#pragma unroll
    for (int q = 0; q < 4; ++q) {  // k in [16t + 4q, +4)
      const std::uint32_t a = blocks::ld_u32_a2(ql + 4 * q);
      const std::uint32_t b = blocks::ld_u32_a2(ql + 32 + 4 * q);
      const std::uint32_t hb = blocks::ld_u32_a2(qh + 4 * q);
      const std::uint32_t code0 =
          ((a >> nib) & blocks::kLowNibbles) | (((hb >> (2 * s0)) & 0x03030303u) << 4);
      const std::uint32_t code1 =
          ((b >> nib) & blocks::kLowNibbles) | (((hb >> (2 * s0 + 2)) & 0x03030303u) << 4);
      blocks::run4<32>(code0, scale0, 0.0f, w + 4 * q);
      blocks::run4<32>(code1, scale1, 0.0f, w + 16 + 4 * q);
      start[q] = 16 * t + 4 * q;
      start[4 + q] = 32 + 16 * t + 4 * q;
    }
  }
};

// The decoder of each type, per family (each family's kernels are instantiated in their own .cu
// file, for the dense and the MoE GEMM alike): fn(D{}) with the decoder D of `type`, or false
// when `type` is not in the family. split_q4_0 picks Q4_0Split for Q4_0.
template <typename Fn>
bool with_legacy_decoder(GgmlType type, bool split_q4_0, Fn&& fn) {
  switch (type) {
    case GgmlType::Q4_0:
      if (split_q4_0) {
        fn(Q4_0Split{});
      } else {
        fn(SmallBlocks<blocks::Q4_0>{});
      }
      return true;
    case GgmlType::Q4_1:
      fn(SmallBlocks<blocks::Q4_1>{});
      return true;
    case GgmlType::Q5_0:
      fn(SmallBlocks<blocks::Q5_0>{});
      return true;
    case GgmlType::Q5_1:
      fn(SmallBlocks<blocks::Q5_1>{});
      return true;
    case GgmlType::Q8_0:
      fn(SmallBlocks<blocks::Q8_0>{});
      return true;
    case GgmlType::IQ4_NL:
      fn(SmallBlocks<blocks::IQ4_NL>{});
      return true;
    default:
      return false;
  }
}

template <typename Fn>
bool with_kquant_decoder(GgmlType type, Fn&& fn) {
  switch (type) {
    case GgmlType::Q4_K:
      fn(KQuant64<blocks::Q4_K>{});
      return true;
    case GgmlType::Q5_K:
      fn(KQuant64<blocks::Q5_K>{});
      return true;
    case GgmlType::Q6_K:
      fn(Q6_K64{});
      return true;
    default:
      return false;
  }
}

template <typename Fn>
bool with_float_decoder(GgmlType type, Fn&& fn) {
  switch (type) {
    case GgmlType::F32:
      fn(SmallBlocks<blocks::F32>{});
      return true;
    case GgmlType::F16:
      fn(SmallBlocks<blocks::F16>{});
      return true;
    case GgmlType::BF16:
      fn(SmallBlocks<blocks::BF16>{});
      return true;
    default:
      return false;
  }
}

}  // namespace qforge::cuda::gemm_tc
