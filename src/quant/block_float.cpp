// F32, F16 and BF16 "blocks" (block size 1).
#include <cstring>

#include "quant/block_common.h"
#include "quant/block_kernels.h"

namespace qforge::blocks {

void dequantize_f32(const std::byte* src, float* dst, std::size_t n) {
  std::memcpy(dst, src, n * sizeof(float));
}
void quantize_f32(const float* src, std::byte* dst, std::size_t n, const float*) {
  std::memcpy(dst, src, n * sizeof(float));
}
float dot_f32(const std::byte* row, const float* x, std::size_t n) {
  std::size_t i = 0;
  float sum = 0.0f;
#ifdef QFORGE_BLOCKS_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(reinterpret_cast<const float*>(row) + i),
                           _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(reinterpret_cast<const float*>(row) + i + 8),
                           _mm256_loadu_ps(x + i + 8), acc1);
  }
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) {
    float w;
    std::memcpy(&w, row + i * sizeof(float), sizeof w);
    sum += w * x[i];
  }
  return sum;
}

void dequantize_f16(const std::byte* src, float* dst, std::size_t n) {
  std::size_t i = 0;
#ifdef QFORGE_BLOCKS_AVX2
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(
        dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
#endif
  for (; i < n; ++i) dst[i] = load_f16(src + 2 * i);
}
void quantize_f16(const float* src, std::byte* dst, std::size_t n, const float*) {
  // Scalar on purpose: numpy's float16 cast (the oracle) rounds to nearest even like half.h.
  for (std::size_t i = 0; i < n; ++i) store_f16(dst + 2 * i, src[i]);
}
float dot_f16(const std::byte* row, const float* x, std::size_t n) {
  std::size_t i = 0;
  float sum = 0.0f;
#ifdef QFORGE_BLOCKS_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m256 w0 =
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
    const __m256 w1 =
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i + 16)));
    acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
  }
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) sum += load_f16(row + 2 * i) * x[i];
  return sum;
}

void dequantize_bf16(const std::byte* src, float* dst, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
}
void quantize_bf16(const float* src, std::byte* dst, std::size_t n, const float*) {
  for (std::size_t i = 0; i < n; ++i) store_u16(dst + 2 * i, f32_to_bf16(src[i]));
}
float dot_bf16(const std::byte* row, const float* x, std::size_t n) {
  std::size_t i = 0;
  float sum = 0.0f;
#ifdef QFORGE_BLOCKS_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i));
    const __m256 w0 = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(h)), 16));
    const __m256 w1 = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1)), 16));
    acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
  }
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) sum += bf16_to_f32(load_u16(row + 2 * i)) * x[i];
  return sum;
}

}  // namespace qforge::blocks
