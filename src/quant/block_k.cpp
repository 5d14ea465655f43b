// K-quants (256-element super-blocks): dequantize and dot. Layouts, little-endian, f16 = half:
//   Q2_K (84 B):  scales[16] (lo nibble scale, hi nibble min), qs[64] (2-bit), d, dmin
//   Q3_K (110 B): hmask[32] (high bit), qs[64] (low 2 bits), scales[12] (16 x 6-bit, -32), d
//   Q4_K (144 B): d, dmin, scales[12] (8 x 6-bit scale + 8 x 6-bit min), qs[128] (4-bit)
//   Q5_K (176 B): d, dmin, scales[12], qh[32] (fifth bit), qs[128]
//   Q6_K (210 B): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] int8, d
//   Q8_K (292 B): d:f32, qs[256] int8, bsums[16] int16
// Element order inside the packed arrays follows gguf-py's quants.py (the oracle); see the
// decode functions. The dequantized value is rounded(scale * q) - offset, with scale = d * sc
// and offset = dmin * m rounded in F32 first, exactly as the oracle evaluates it.
#include "quant/block_k.h"

#include "quant/block_common.h"
#include "quant/block_kernels.h"

namespace qforge::blocks {
namespace {

// Q2_K / Q3_K / Q6_K 2-bit planes: element 128h + 32s + k lives in bits 2s..2s+1 of byte 32h+k.
inline int two_bit_plane(const std::byte* qs, std::size_t e) {
  const std::size_t h = e / 128, s = (e % 128) / 32, k = e % 32;
  return (u8(qs, 32 * h + k) >> (2 * s)) & 3;
}

// Q4_K / Q5_K nibbles: sub-block j (32 elements) uses byte 32*(j/2)+k, low nibble for even j.
inline int k4_nibble(const std::byte* qs, std::size_t e) {
  const std::size_t j = e / 32, k = e % 32;
  return (u8(qs, 32 * (j / 2) + k) >> (4 * (j % 2))) & 0x0f;
}

void dequantize_decoded(const DecodedSuperBlock& b, float* dst) {
  for (std::size_t s = 0; s < kQK_K / b.sub; ++s) {
    const float scale = b.scale[s], offset = b.offset[s];
    for (std::size_t e = s * b.sub; e < (s + 1) * b.sub; ++e)
      dst[e] = rounded(scale * static_cast<float>(b.q[e])) - offset;
  }
}

float dot_decoded(const DecodedSuperBlock& b, const float* x) {
  const std::size_t n_sub = kQK_K / b.sub;
#ifdef QFORGE_BLOCKS_AVX2
  __m256 acc = _mm256_setzero_ps();
  for (std::size_t s = 0; s < n_sub; ++s) {
    __m256 qx = _mm256_setzero_ps(), sx = _mm256_setzero_ps();
    for (std::size_t k = s * b.sub; k < (s + 1) * b.sub; k += 8) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.q + k));
      const __m256 xv = _mm256_loadu_ps(x + k);
      qx = _mm256_fmadd_ps(i8x8_to_ps(q8), xv, qx);
      sx = _mm256_add_ps(sx, xv);
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(b.scale[s]), qx, acc);
    acc = _mm256_fnmadd_ps(_mm256_set1_ps(b.offset[s]), sx, acc);
  }
  return hsum(acc);
#else
  float sum = 0.0f;
  for (std::size_t s = 0; s < n_sub; ++s) {
    float qx = 0.0f, sx = 0.0f;
    for (std::size_t k = s * b.sub; k < (s + 1) * b.sub; ++k) {
      qx += static_cast<float>(b.q[k]) * x[k];
      sx += x[k];
    }
    sum += b.scale[s] * qx - b.offset[s] * sx;
  }
  return sum;
#endif
}

template <void (*Decode)(const std::byte*, DecodedSuperBlock&), std::size_t kBytes>
void dequantize_with(const std::byte* src, float* dst, std::size_t n) {
  DecodedSuperBlock b;
  for (std::size_t i = 0; i < n / kQK_K; ++i) {
    Decode(src + i * kBytes, b);
    dequantize_decoded(b, dst + i * kQK_K);
  }
}

template <void (*Decode)(const std::byte*, DecodedSuperBlock&), std::size_t kBytes>
float dot_with(const std::byte* row, const float* x, std::size_t n) {
  DecodedSuperBlock b;
  float sum = 0.0f;
  for (std::size_t i = 0; i < n / kQK_K; ++i) {
    Decode(row + i * kBytes, b);
    sum += dot_decoded(b, x + i * kQK_K);
  }
  return sum;
}

#ifdef QFORGE_BLOCKS_AVX2
// sum_k q[k] * x[k] over 16 int8 codes (low 16 bytes of q); and over 32 with all 32 bytes.
inline __m256 i8x16_dot(__m128i q, const float* x, __m256 acc) {
  acc = _mm256_fmadd_ps(i8x8_to_ps(q), _mm256_loadu_ps(x), acc);
  return _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x + 8), acc);
}
inline __m256 sum32(const float* x) {
  return _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                       _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
}

// Q4_K: for each of 4 groups of 32 bytes, low nibbles are sub-block 2g, high nibbles 2g + 1.
float dot_q4_k_avx2(const std::byte* row, const float* x, std::size_t n) {
  __m256 acc = _mm256_setzero_ps();
  const __m256i mask = _mm256_set1_epi8(0x0f);
  for (std::size_t b = 0; b < n / kQK_K; ++b, row += 144, x += kQK_K) {
    const float d = load_f16(row), dmin = load_f16(row + 2);
    for (std::size_t g = 0; g < 4; ++g) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 + 32 * g));
      const __m256i halves[2] = {_mm256_and_si256(bytes, mask),
                                 _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask)};
      for (std::size_t h = 0; h < 2; ++h) {
        const std::size_t j = 2 * g + h;
        const float* xs = x + 32 * j;
        int sc, m;
        get_scale_min_k4(j, row + 4, sc, m);
        // codes are 0..15, so the signed byte conversion is exact
        __m256 qx = i8x16_dot(_mm256_castsi256_si128(halves[h]), xs, _mm256_setzero_ps());
        qx = i8x16_dot(_mm256_extracti128_si256(halves[h], 1), xs + 16, qx);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * static_cast<float>(sc)), qx, acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * static_cast<float>(m)), sum32(xs), acc);
      }
    }
  }
  return hsum(acc);
}

// Q6_K: elements 128h + 32s + k (k < 32) take the low or high nibble (s / 2) of
// ql[64h + 32(s % 2) + k] and bits 2s..2s+1 of qh[32h + k]; scales cover 16 elements each.
float dot_q6_k_avx2(const std::byte* row, const float* x, std::size_t n) {
  __m256 acc = _mm256_setzero_ps();
  const __m256i mask4 = _mm256_set1_epi8(0x0f), mask2 = _mm256_set1_epi8(3),
                bias = _mm256_set1_epi8(32);
  for (std::size_t b = 0; b < n / kQK_K; ++b, row += 210, x += kQK_K) {
    const float d = load_f16(row + 208);
    const std::byte* scales = row + 192;
    for (std::size_t h = 0; h < 2; ++h) {
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 128 + 32 * h));
      for (std::size_t s = 0; s < 4; ++s) {
        const __m256i ql =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 64 * h + 32 * (s % 2)));
        const __m256i lo = _mm256_and_si256(s < 2 ? ql : _mm256_srli_epi16(ql, 4), mask4);
        const __m256i hi = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(static_cast<int>(2 * s))), mask2);
        const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), bias);
        const std::size_t e = 128 * h + 32 * s;
        const float sa = d * static_cast<float>(static_cast<std::int8_t>(u8(scales, e / 16)));
        const float sb = d * static_cast<float>(static_cast<std::int8_t>(u8(scales, e / 16 + 1)));
        const __m256 qa = i8x16_dot(_mm256_castsi256_si128(q), x + e, _mm256_setzero_ps());
        const __m256 qb =
            i8x16_dot(_mm256_extracti128_si256(q, 1), x + e + 16, _mm256_setzero_ps());
        acc = _mm256_fmadd_ps(_mm256_set1_ps(sa), qa, acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(sb), qb, acc);
      }
    }
  }
  return hsum(acc);
}
#endif
}  // namespace

void get_scale_min_k4(std::size_t j, const std::byte* scales, int& sc, int& m) {
  if (j < 4) {
    sc = u8(scales, j) & 63;
    m = u8(scales, j + 4) & 63;
  } else {
    sc = (u8(scales, j + 4) & 0x0f) | ((u8(scales, j - 4) >> 6) << 4);
    m = (u8(scales, j + 4) >> 4) | ((u8(scales, j) >> 6) << 4);
  }
}

void set_scale_min_k4(const int* sc, const int* m, std::byte* scales) {
  for (std::size_t j = 0; j < 4; ++j) {
    scales[j] = static_cast<std::byte>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<std::byte>((m[j] & 63) | ((m[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<std::byte>((sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4));
  }
}

void decode_q2_k(const std::byte* block, DecodedSuperBlock& out) {
  const std::byte* scales = block;
  const std::byte* qs = block + 16;
  const float d = load_f16(block + 80), dmin = load_f16(block + 82);
  out.sub = 16;
  for (std::size_t s = 0; s < 16; ++s) {
    out.scale[s] = d * static_cast<float>(u8(scales, s) & 0x0f);
    out.offset[s] = dmin * static_cast<float>(u8(scales, s) >> 4);
  }
  for (std::size_t e = 0; e < kQK_K; ++e) out.q[e] = static_cast<std::int8_t>(two_bit_plane(qs, e));
}

void decode_q3_k(const std::byte* block, DecodedSuperBlock& out) {
  const std::byte* hmask = block;
  const std::byte* qs = block + 32;
  const std::byte* scales = block + 96;
  const float d = load_f16(block + 108);
  out.sub = 16;
  for (std::size_t t = 0; t < 16; ++t) {
    const int lo = (u8(scales, t % 8) >> (4 * (t / 8))) & 0x0f;
    const int hi = (u8(scales, 8 + t % 4) >> (2 * (t / 4))) & 3;
    out.scale[t] = d * static_cast<float>((lo | (hi << 4)) - 32);
    out.offset[t] = 0.0f;
  }
  for (std::size_t e = 0; e < kQK_K; ++e) {
    const int high = (u8(hmask, e % 32) >> (e / 32)) & 1;  // a set bit means "no -4 offset"
    out.q[e] = static_cast<std::int8_t>(two_bit_plane(qs, e) - (high ? 0 : 4));
  }
}

void decode_q4_k(const std::byte* block, DecodedSuperBlock& out) {
  const float d = load_f16(block), dmin = load_f16(block + 2);
  const std::byte* qs = block + 16;
  out.sub = 32;
  for (std::size_t j = 0; j < 8; ++j) {
    int sc, m;
    get_scale_min_k4(j, block + 4, sc, m);
    out.scale[j] = d * static_cast<float>(sc);
    out.offset[j] = dmin * static_cast<float>(m);
  }
  for (std::size_t e = 0; e < kQK_K; ++e) out.q[e] = static_cast<std::int8_t>(k4_nibble(qs, e));
}

void decode_q5_k(const std::byte* block, DecodedSuperBlock& out) {
  const float d = load_f16(block), dmin = load_f16(block + 2);
  const std::byte* qh = block + 16;
  const std::byte* qs = block + 48;
  out.sub = 32;
  for (std::size_t j = 0; j < 8; ++j) {
    int sc, m;
    get_scale_min_k4(j, block + 4, sc, m);
    out.scale[j] = d * static_cast<float>(sc);
    out.offset[j] = dmin * static_cast<float>(m);
  }
  for (std::size_t e = 0; e < kQK_K; ++e) {
    const int high = (u8(qh, e % 32) >> (e / 32)) & 1;
    out.q[e] = static_cast<std::int8_t>(k4_nibble(qs, e) | (high << 4));
  }
}

void decode_q6_k(const std::byte* block, DecodedSuperBlock& out) {
  const std::byte* ql = block;
  const std::byte* qh = block + 128;
  const std::byte* scales = block + 192;
  const float d = load_f16(block + 208);
  out.sub = 16;
  for (std::size_t s = 0; s < 16; ++s) {
    out.scale[s] = d * static_cast<float>(static_cast<std::int8_t>(u8(scales, s)));
    out.offset[s] = 0.0f;
  }
  for (std::size_t e = 0; e < kQK_K; ++e) {
    // Low nibbles: element 128h + 64n + k comes from nibble n of ql[64h + k].
    const std::size_t h = e / 128, n = (e % 128) / 64, k = e % 64;
    const int lo = (u8(ql, 64 * h + k) >> (4 * n)) & 0x0f;
    out.q[e] = static_cast<std::int8_t>((lo | (two_bit_plane(qh, e) << 4)) - 32);
  }
}

void decode_q8_k(const std::byte* block, DecodedSuperBlock& out) {
  float d;
  std::memcpy(&d, block, sizeof d);
  out.sub = 16;
  for (std::size_t s = 0; s < 16; ++s) {
    out.scale[s] = d;
    out.offset[s] = 0.0f;
  }
  std::memcpy(out.q, block + 4, kQK_K);
}

void dequantize_q2_k(const std::byte* s, float* d, std::size_t n) {
  dequantize_with<decode_q2_k, 84>(s, d, n);
}
void dequantize_q3_k(const std::byte* s, float* d, std::size_t n) {
  dequantize_with<decode_q3_k, 110>(s, d, n);
}
void dequantize_q4_k(const std::byte* s, float* d, std::size_t n) {
  dequantize_with<decode_q4_k, 144>(s, d, n);
}
void dequantize_q5_k(const std::byte* s, float* d, std::size_t n) {
  dequantize_with<decode_q5_k, 176>(s, d, n);
}
void dequantize_q6_k(const std::byte* s, float* d, std::size_t n) {
  dequantize_with<decode_q6_k, 210>(s, d, n);
}
void dequantize_q8_k(const std::byte* s, float* d, std::size_t n) {
  dequantize_with<decode_q8_k, 292>(s, d, n);
}

float dot_q2_k(const std::byte* r, const float* x, std::size_t n) {
  return dot_with<decode_q2_k, 84>(r, x, n);
}
float dot_q3_k(const std::byte* r, const float* x, std::size_t n) {
  return dot_with<decode_q3_k, 110>(r, x, n);
}
float dot_q4_k(const std::byte* r, const float* x, std::size_t n) {
#ifdef QFORGE_BLOCKS_AVX2
  return dot_q4_k_avx2(r, x, n);
#else
  return dot_with<decode_q4_k, 144>(r, x, n);
#endif
}
float dot_q5_k(const std::byte* r, const float* x, std::size_t n) {
  return dot_with<decode_q5_k, 176>(r, x, n);
}
float dot_q6_k(const std::byte* r, const float* x, std::size_t n) {
#ifdef QFORGE_BLOCKS_AVX2
  return dot_q6_k_avx2(r, x, n);
#else
  return dot_with<decode_q6_k, 210>(r, x, n);
#endif
}
float dot_q8_k(const std::byte* r, const float* x, std::size_t n) {
  return dot_with<decode_q8_k, 292>(r, x, n);
}

}  // namespace qforge::blocks
