// Decoders from GGUF weight blocks to the int8 codes + scales of q8_act_decode.h. Layouts as in
// block_q4_q5_q8.cpp, block_k.cpp and block_iq4.cpp. The scalar decoders are the reference; the
// AVX2 ones (hot types only) write identical output.
#include "quant/q8_act_decode.h"

#include "quant/block_common.h"
#include "quant/block_k.h"

namespace qforge::q8act {
namespace {

using blocks::kIq4Values;
using blocks::load_f16;
using blocks::load_u16;
using blocks::load_u32;
using blocks::u8;

constexpr std::size_t kQK = 32;
constexpr std::size_t kQK_K = 256;

inline std::int8_t i8(int v) {
  return static_cast<std::int8_t>(v);
}

// Legacy 4-bit order: element j < 16 is the low nibble of qs[j], element j + 16 the high one.
inline int legacy_nibble(const std::byte* qs, std::size_t j) {
  return j < 16 ? (u8(qs, j) & 0x0f) : (u8(qs, j - 16) >> 4);
}
// K-quant 2-bit planes: element 128h + 32s + k lives in bits 2s..2s+1 of byte 32h + k.
inline int two_bit_plane(const std::byte* qs, std::size_t e) {
  return (u8(qs, 32 * (e / 128) + e % 32) >> (2 * ((e % 128) / 32))) & 3;
}
inline void set_scale(const DecodedRow& out, std::size_t b, float d) {
  out.half_scale[2 * b] = d;
  out.half_scale[2 * b + 1] = d;
}
// d times the integer sub-scales of the two halves.
inline void set_scale(const DecodedRow& out, std::size_t b, float d, int lo, int hi) {
  out.half_scale[2 * b] = d * static_cast<float>(lo);
  out.half_scale[2 * b + 1] = d * static_cast<float>(hi);
}
inline void set_offset(const DecodedRow& out, std::size_t b, float lo, float hi) {
  out.offset[2 * b] = lo;
  out.offset[2 * b + 1] = hi;
}

// ---- scalar decoders -------------------------------------------------------------------------

void q4_0_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 18) {
    set_scale(out, b, load_f16(row));
    for (std::size_t j = 0; j < kQK; ++j)
      out.codes[kQK * b + j] = i8(legacy_nibble(row + 2, j) - 8);
  }
}
void q4_1_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 20) {
    set_scale(out, b, load_f16(row));
    set_offset(out, b, load_f16(row + 2), load_f16(row + 2));
    for (std::size_t j = 0; j < kQK; ++j) out.codes[kQK * b + j] = i8(legacy_nibble(row + 4, j));
  }
}
void q5_0_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 22) {
    set_scale(out, b, load_f16(row));
    const std::uint32_t h = load_u32(row + 2);
    for (std::size_t j = 0; j < kQK; ++j) {
      const int high = static_cast<int>((h >> j) & 1u) << 4;
      out.codes[kQK * b + j] = i8((legacy_nibble(row + 6, j) | high) - 16);
    }
  }
}
void q5_1_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 24) {
    set_scale(out, b, load_f16(row));
    set_offset(out, b, load_f16(row + 2), load_f16(row + 2));
    const std::uint32_t h = load_u32(row + 4);
    for (std::size_t j = 0; j < kQK; ++j) {
      const int high = static_cast<int>((h >> j) & 1u) << 4;
      out.codes[kQK * b + j] = i8(legacy_nibble(row + 8, j) | high);
    }
  }
}
void q8_0_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 34) {
    set_scale(out, b, load_f16(row));
    for (std::size_t j = 0; j < kQK; ++j) out.codes[kQK * b + j] = i8(u8(row + 2, j));
  }
}
void iq4_nl_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 18) {
    set_scale(out, b, load_f16(row));
    for (std::size_t j = 0; j < kQK; ++j)
      out.codes[kQK * b + j] = kIq4Values[legacy_nibble(row + 2, j)];
  }
}

// Q4_K / Q5_K: sub-block j of 32 takes the low (even j) or high nibble of qs[32 (j / 2) + k].
template <bool kFifthBit>
void q45_k_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  constexpr std::size_t kBytes = kFifthBit ? 176 : 144;
  for (std::size_t sb = 0; sb < n / kQK_K; ++sb, row += kBytes) {
    const float d = load_f16(row), dmin = load_f16(row + 2);
    const std::byte* qh = row + 16;
    const std::byte* qs = row + (kFifthBit ? 48 : 16);
    for (std::size_t j = 0; j < 8; ++j) {
      const std::size_t b = 8 * sb + j;
      int sc, m;
      blocks::get_scale_min_k4(j, row + 4, sc, m);
      set_scale(out, b, d, sc, sc);
      const float off = -(dmin * static_cast<float>(m));
      set_offset(out, b, off, off);
      for (std::size_t k = 0; k < kQK; ++k) {
        int q = (u8(qs, 32 * (j / 2) + k) >> (4 * (j % 2))) & 0x0f;
        if constexpr (kFifthBit) q |= ((u8(qh, k) >> j) & 1) << 4;
        out.codes[kQK * b + k] = i8(q);
      }
    }
  }
}

void q6_k_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t sb = 0; sb < n / kQK_K; ++sb, row += 210) {
    const std::byte* ql = row;
    const std::byte* qh = row + 128;
    const std::byte* scales = row + 192;
    const float d = load_f16(row + 208);
    for (std::size_t j = 0; j < 8; ++j) {
      const std::size_t b = 8 * sb + j;
      set_scale(out, b, d, static_cast<std::int8_t>(u8(scales, 2 * j)),
                static_cast<std::int8_t>(u8(scales, 2 * j + 1)));
    }
    for (std::size_t e = 0; e < kQK_K; ++e) {
      // Low nibbles: element 128h + 64i + k comes from nibble i of ql[64h + k].
      const std::size_t h = e / 128, i = (e % 128) / 64, k = e % 64;
      const int lo = (u8(ql, 64 * h + k) >> (4 * i)) & 0x0f;
      out.codes[kQK_K * sb + e] = i8((lo | (two_bit_plane(qh, e) << 4)) - 32);
    }
  }
}

void q3_k_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t sb = 0; sb < n / kQK_K; ++sb, row += 110) {
    const std::byte* hmask = row;
    const std::byte* qs = row + 32;
    const std::byte* scales = row + 96;
    const float d = load_f16(row + 108);
    int sc[16];
    for (std::size_t t = 0; t < 16; ++t) {
      const int lo = (u8(scales, t % 8) >> (4 * (t / 8))) & 0x0f;
      const int hi = (u8(scales, 8 + t % 4) >> (2 * (t / 4))) & 3;
      sc[t] = (lo | (hi << 4)) - 32;
    }
    for (std::size_t j = 0; j < 8; ++j) {
      set_scale(out, 8 * sb + j, d, sc[2 * j], sc[2 * j + 1]);
    }
    for (std::size_t e = 0; e < kQK_K; ++e) {
      const int high = (u8(hmask, e % 32) >> (e / 32)) & 1;  // a set bit means "no -4 offset"
      out.codes[kQK_K * sb + e] = i8(two_bit_plane(qs, e) - (high ? 0 : 4));
    }
  }
}

void q2_k_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t sb = 0; sb < n / kQK_K; ++sb, row += 84) {
    const std::byte* scales = row;
    const std::byte* qs = row + 16;
    const float d = load_f16(row + 80), dmin = load_f16(row + 82);
    for (std::size_t j = 0; j < 8; ++j) {
      const std::size_t b = 8 * sb + j;
      const int s0 = u8(scales, 2 * j), s1 = u8(scales, 2 * j + 1);
      set_scale(out, b, d, s0 & 0x0f, s1 & 0x0f);
      set_offset(out, b, -(dmin * static_cast<float>(s0 >> 4)),
                 -(dmin * static_cast<float>(s1 >> 4)));
    }
    for (std::size_t e = 0; e < kQK_K; ++e) out.codes[kQK_K * sb + e] = i8(two_bit_plane(qs, e));
  }
}

void iq4_xs_scalar(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t sb = 0; sb < n / kQK_K; ++sb, row += 136) {
    const float d = load_f16(row);
    const std::uint16_t scales_h = load_u16(row + 2);
    for (std::size_t ib = 0; ib < 8; ++ib) {
      const std::size_t b = 8 * sb + ib;
      const int ls =
          ((u8(row + 4, ib / 2) >> (4 * (ib % 2))) & 0x0f) | (((scales_h >> (2 * ib)) & 3) << 4);
      set_scale(out, b, d, ls - 32, ls - 32);
      for (std::size_t j = 0; j < kQK; ++j)
        out.codes[kQK * b + j] = kIq4Values[legacy_nibble(row + 8 + 16 * ib, j)];
    }
  }
}

// ---- AVX2 decoders ---------------------------------------------------------------------------
#ifdef QFORGE_BLOCKS_AVX2
inline float f16_at(const std::byte* p) {
  return _cvtsh_ss(load_u16(p));
}
inline void store32(std::int8_t* dst, __m256i v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
}
inline __m256i load32(const std::byte* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
// The 32 legacy-order nibbles of qs[16] as bytes 0..15.
inline __m256i legacy_nibbles(const std::byte* qs) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask),
                          _mm_and_si128(bytes, mask));
}
// Byte j = 16 where bit j of h is set, else 0.
inline __m256i fifth_bits(std::uint32_t h) {
  const __m256i spread =
      _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(h)),
                          _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                           2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  const __m256i on = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(on, _mm256_set1_epi8(16));
}

void q4_0_avx2(const std::byte* row, std::size_t n, const DecodedRow& out) {
  const __m256i bias = _mm256_set1_epi8(8);
  for (std::size_t b = 0; b < n / kQK; ++b, row += 18) {
    set_scale(out, b, f16_at(row));
    store32(out.codes + kQK * b, _mm256_sub_epi8(legacy_nibbles(row + 2), bias));
  }
}
void q4_1_avx2(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 20) {
    set_scale(out, b, f16_at(row));
    const float m = f16_at(row + 2);
    set_offset(out, b, m, m);
    store32(out.codes + kQK * b, legacy_nibbles(row + 4));
  }
}
void q5_0_avx2(const std::byte* row, std::size_t n, const DecodedRow& out) {
  const __m256i bias = _mm256_set1_epi8(16);
  for (std::size_t b = 0; b < n / kQK; ++b, row += 22) {
    set_scale(out, b, f16_at(row));
    const __m256i q = _mm256_or_si256(legacy_nibbles(row + 6), fifth_bits(load_u32(row + 2)));
    store32(out.codes + kQK * b, _mm256_sub_epi8(q, bias));
  }
}
void q5_1_avx2(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 24) {
    set_scale(out, b, f16_at(row));
    const float m = f16_at(row + 2);
    set_offset(out, b, m, m);
    store32(out.codes + kQK * b,
            _mm256_or_si256(legacy_nibbles(row + 8), fifth_bits(load_u32(row + 4))));
  }
}
void q8_0_avx2(const std::byte* row, std::size_t n, const DecodedRow& out) {
  for (std::size_t b = 0; b < n / kQK; ++b, row += 34) {
    set_scale(out, b, f16_at(row));
    store32(out.codes + kQK * b, load32(row + 2));
  }
}
void iq4_nl_avx2(const std::byte* row, std::size_t n, const DecodedRow& out) {
  const __m256i table =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)));
  for (std::size_t b = 0; b < n / kQK; ++b, row += 18) {
    set_scale(out, b, f16_at(row));
    store32(out.codes + kQK * b, _mm256_shuffle_epi8(table, legacy_nibbles(row + 2)));
  }
}

template <bool kFifthBit>
void q45_k_avx2(const std::byte* row, std::size_t n, const DecodedRow& out) {
  constexpr std::size_t kBytes = kFifthBit ? 176 : 144;
  const __m256i mask = _mm256_set1_epi8(0x0f);
  for (std::size_t sb = 0; sb < n / kQK_K; ++sb, row += kBytes) {
    const float d = f16_at(row), dmin = f16_at(row + 2);
    const std::byte* qs = row + (kFifthBit ? 48 : 16);
    [[maybe_unused]] const __m256i qh = load32(row + 16);
    for (std::size_t j = 0; j < 8; ++j) {
      const std::size_t b = 8 * sb + j;
      int sc, m;
      blocks::get_scale_min_k4(j, row + 4, sc, m);
      set_scale(out, b, d, sc, sc);
      const float off = -(dmin * static_cast<float>(m));
      set_offset(out, b, off, off);
      const __m256i bytes = load32(qs + 32 * (j / 2));
      __m256i q = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(bytes, 4) : bytes, mask);
      if constexpr (kFifthBit) {
        const __m256i bit = _mm256_set1_epi8(static_cast<char>(1u << j));
        const __m256i on = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
        q = _mm256_or_si256(q, _mm256_and_si256(on, _mm256_set1_epi8(16)));
      }
      store32(out.codes + kQK * b, q);
    }
  }
}

// Elements 128h + 32s + k take nibble s / 2 of ql[64h + 32(s % 2) + k] and bits 2s..2s+1 of
// qh[32h + k].
void q6_k_avx2(const std::byte* row, std::size_t n, const DecodedRow& out) {
  const __m256i mask4 = _mm256_set1_epi8(0x0f), mask2 = _mm256_set1_epi8(3),
                bias = _mm256_set1_epi8(32);
  for (std::size_t sb = 0; sb < n / kQK_K; ++sb, row += 210) {
    const std::byte* scales = row + 192;
    const float d = f16_at(row + 208);
    for (std::size_t h = 0; h < 2; ++h) {
      const __m256i qh = load32(row + 128 + 32 * h);
      for (std::size_t s = 0; s < 4; ++s) {
        const __m256i ql = load32(row + 64 * h + 32 * (s % 2));
        const __m256i lo = _mm256_and_si256(s < 2 ? ql : _mm256_srli_epi16(ql, 4), mask4);
        const __m256i hi = _mm256_and_si256(
            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(static_cast<int>(2 * s))), mask2);
        const std::size_t j = 4 * h + s, b = 8 * sb + j;
        store32(out.codes + kQK * b,
                _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), bias));
        set_scale(out, b, d, static_cast<std::int8_t>(u8(scales, 2 * j)),
                  static_cast<std::int8_t>(u8(scales, 2 * j + 1)));
      }
    }
  }
}
#endif

}  // namespace

TypeKernels kernels_for(GgmlType type) {
#ifdef QFORGE_BLOCKS_AVX2
#define QFORGE_Q8_PICK(avx2, scalar) avx2
#else
#define QFORGE_Q8_PICK(avx2, scalar) scalar
#endif
  switch (type) {
    case GgmlType::Q4_0:
      return {QFORGE_Q8_PICK(q4_0_avx2, q4_0_scalar), q4_0_scalar, false, true};
    case GgmlType::Q4_1:
      return {QFORGE_Q8_PICK(q4_1_avx2, q4_1_scalar), q4_1_scalar, true, true};
    case GgmlType::Q5_0:
      return {QFORGE_Q8_PICK(q5_0_avx2, q5_0_scalar), q5_0_scalar, false, true};
    case GgmlType::Q5_1:
      return {QFORGE_Q8_PICK(q5_1_avx2, q5_1_scalar), q5_1_scalar, true, true};
    case GgmlType::Q8_0:
      return {QFORGE_Q8_PICK(q8_0_avx2, q8_0_scalar), q8_0_scalar, false, true};
    case GgmlType::IQ4_NL:
      return {QFORGE_Q8_PICK(iq4_nl_avx2, iq4_nl_scalar), iq4_nl_scalar, false, true};
    case GgmlType::Q4_K:
      return {QFORGE_Q8_PICK(q45_k_avx2<false>, q45_k_scalar<false>), q45_k_scalar<false>, true,
              true};
    case GgmlType::Q5_K:
      return {QFORGE_Q8_PICK(q45_k_avx2<true>, q45_k_scalar<true>), q45_k_scalar<true>, true, true};
    case GgmlType::Q6_K:
      return {QFORGE_Q8_PICK(q6_k_avx2, q6_k_scalar), q6_k_scalar, false};
    case GgmlType::Q3_K:
      return {q3_k_scalar, q3_k_scalar, false};
    case GgmlType::Q2_K:
      return {q2_k_scalar, q2_k_scalar, true};
    case GgmlType::IQ4_XS:
      return {iq4_xs_scalar, iq4_xs_scalar, false, true};
    default:
      return {};
  }
#undef QFORGE_Q8_PICK
}

}  // namespace qforge::q8act
