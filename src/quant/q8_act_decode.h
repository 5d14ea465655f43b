// Weight rows decoded for the 8-bit activation kernels (q8_act.h). A row of n elements becomes
// n signed int8 codes and, per 32-element block b and half h (elements 0..15 / 16..31):
//   half_scale[2b + h]  F32 factor of the half's codes (the f16 d of legacy formats; d times
//                       the 6-bit / int8 sub-scale for K-quants, rounded to F32 once),
//   offset[2b + h]      F32 value added per element (Q4_1/Q5_1 min, -dmin * m of K-quants);
//                       only written for types with has_offset,
// so that element e of block b is half_scale[2b + (e%32)/16] * code[e] + offset[...].
// Every code is in [-128, 127], which keeps the AVX2 int16 products of the kernels free of
// saturation (|code| * 127 * 2 <= 32512).
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/ggml_type.h"

namespace qforge::q8act {

struct DecodedRow {
  std::int8_t* codes;
  float* half_scale;
  float* offset;  // may be null for types with has_offset == false
};

using DecodeRowFn = void (*)(const std::byte* row, std::size_t n, const DecodedRow& out);

struct TypeKernels {
  DecodeRowFn decode = nullptr;         // AVX2 where available, else the scalar one
  DecodeRowFn decode_scalar = nullptr;  // portable reference
  bool has_offset = false;
  // Both halves of every block get the same half_scale (one scale per 32 elements), which lets
  // the VNNI tile use one scalar scale product per block and output.
  bool same_half_scales = false;
};

// Null decode for types without 8-bit activation support.
TypeKernels kernels_for(GgmlType type);

}  // namespace qforge::q8act
