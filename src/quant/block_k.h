// K-quant super-blocks (256 elements) decoded to integer codes plus per-sub-block float scale
// and offset: x[e] = scale[e / sub] * q[e] - offset[e / sub]. Shared by block_k.cpp (dequantize,
// dot) and the tests of block_k_quantize.cpp.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qforge::blocks {

inline constexpr std::size_t kQK_K = 256;

struct DecodedSuperBlock {
  std::int8_t q[kQK_K];
  float scale[16];
  float offset[16];
  std::size_t sub = 16;  // elements per scale: 16 or 32 (or 256 for Q8_K)
};

void decode_q2_k(const std::byte* block, DecodedSuperBlock& out);
void decode_q3_k(const std::byte* block, DecodedSuperBlock& out);
void decode_q4_k(const std::byte* block, DecodedSuperBlock& out);
void decode_q5_k(const std::byte* block, DecodedSuperBlock& out);
void decode_q6_k(const std::byte* block, DecodedSuperBlock& out);
void decode_q8_k(const std::byte* block, DecodedSuperBlock& out);

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K 12-byte scales field, and back.
void get_scale_min_k4(std::size_t j, const std::byte* scales, int& sc, int& m);
void set_scale_min_k4(const int* sc, const int* m, std::byte* scales);

}  // namespace qforge::blocks
