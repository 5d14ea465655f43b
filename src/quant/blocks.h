// Block formats, byte-compatible with ggml/GGUF: dequantize, quantize (optionally weighted by
// per-column importance, i.e. an imatrix), and fused dot products of a quantized row with an F32
// vector (the CPU matmul primitive). Rows are whole blocks: n % block_size(type) == 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "quant/ggml_type.h"

namespace qforge {

// True for types this library can dequantize / quantize.
bool can_dequantize(GgmlType type);
bool can_quantize(GgmlType type);

// src holds row_bytes(type, dst.size()) bytes.
void dequantize_row(GgmlType type, std::span<const std::byte> src, std::span<float> dst);

// dst holds row_bytes(type, src.size()) bytes. importance (empty or src.size() long, >= 0) weights
// the squared error of each column when choosing scales, as llama.cpp's imatrix quantization does,
// for the K-quants, IQ4_NL / IQ4_XS, Q4_0 and Q5_0 (a weighted scale search). Without it, and
// always for Q4_1, Q5_1 and Q8_0, ggml's reference rounding (byte-identical to gguf-py) is used.
void quantize_row(GgmlType type, std::span<const float> src, std::span<std::byte> dst,
                  std::span<const float> importance = {});

// Many rows at once, split over the thread pool. src is n_rows * n_per_row floats.
void quantize_rows(GgmlType type, std::span<const float> src, std::size_t n_per_row,
                   std::span<std::byte> dst, std::span<const float> importance = {});
void dequantize_rows(GgmlType type, std::span<const std::byte> src, std::size_t n_per_row,
                     std::span<float> dst);

// sum_i dequant(row)[i] * x[i], accumulated in F32, without materialising the row.
float dot_row(GgmlType type, std::span<const std::byte> row, std::span<const float> x);

}  // namespace qforge
