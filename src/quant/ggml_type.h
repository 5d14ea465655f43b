// The tensor element types of GGUF files (ggml's numbering), with their block geometry.
// A tensor row of n elements of type T occupies n / block_size(T) * type_size(T) bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace qforge {

enum class GgmlType : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39, NVFP4 = 40, Q1_0 = 41,
};

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;     // as llama.cpp prints it: "Q4_0", "BF16", ...
  std::uint32_t block_size;  // elements per block
  std::uint32_t type_size;   // bytes per block
};

// nullopt for numbers that are not (or no longer) ggml types: readers must reject those.
std::optional<GgmlTypeTraits> ggml_type_traits(std::uint32_t raw);
const GgmlTypeTraits& traits(GgmlType type);
std::optional<GgmlType> ggml_type_from_name(std::string_view name);  // case-insensitive

inline std::string_view type_name(GgmlType t) { return traits(t).name; }
inline std::uint32_t block_size(GgmlType t) { return traits(t).block_size; }
inline std::uint32_t type_size(GgmlType t) { return traits(t).type_size; }
inline double bits_per_weight(GgmlType t) {
  return 8.0 * traits(t).type_size / traits(t).block_size;
}

// Bytes of a row of n elements; n must be a multiple of the block size (checked by callers).
inline std::uint64_t row_bytes(GgmlType t, std::uint64_t n) {
  return n / block_size(t) * type_size(t);
}

}  // namespace qforge
