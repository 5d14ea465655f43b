// Activation quantization and the integer dot / matmul kernels of q8_act.h.
//
// Lane structure (shared by the AVX2 kernel and its scalar emulation): for each 32-element block
// the products code_w[e] * code_a[e] are summed in 8 int32 lanes, lane i holding elements
// 4i..4i+3 (what maddubs followed by madd produces), times the block's integer sub-scale of that
// half. Each lane is converted to F32 and accumulated with fma(lane, d_w * d_a, acc[i]) into 8 F32
// accumulators per output, which are reduced at the end as hsum does; the offset terms are
// accumulated separately in one F32. Following exactly these steps makes both kernels agree bit
// for bit.
#include "quant/q8_act.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "core/parallel.h"
#include "quant/block_common.h"
#include "quant/q8_act_decode.h"
#include "quant/q8_act_gemv.h"

namespace qforge {
namespace {

using q8act::DecodedRow;
using q8act::TypeKernels;

constexpr std::size_t kQK = kQ8ActBlock;

inline float fused(float a, float b, float c) {
#if defined(__FMA__) || defined(FP_FAST_FMAF)
  return std::fma(a, b, c);
#else
  return a * b + c;  // no FMA unit: only the scalar kernel exists, so nothing to match
#endif
}

// The activation side of one row.
struct ActRow {
  const std::int8_t* codes;
  const float* scale;
  const float* half_sums;
};

ActRow act_row(const Q8Activations& a, std::size_t t) {
  return {a.codes(t), a.scales(t), a.half_sums(t)};
}

// Reduction order of blocks::hsum: (l0+l4 + l2+l6) + (l1+l5 + l3+l7).
inline float hsum_lanes(const float* l) {
  const float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
  return (s0 + s2) + (s1 + s3);
}

inline std::int8_t quantize_value(float v) {
  if (!(v >= -127.0f)) return -127;  // also NaN
  if (v > 127.0f) return 127;
  return static_cast<std::int8_t>(std::nearbyint(v));  // nearest even, as cvtps_epi32
}

void quantize_scalar(const float* x, std::size_t n, std::int8_t* q, float* d, float* sums) {
  for (std::size_t b = 0; b < n / kQK; ++b, x += kQK, q += kQK) {
    float amax = 0.0f;
    for (std::size_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float scale = amax / 127.0f;
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    int half[2] = {0, 0};
    for (std::size_t j = 0; j < kQK; ++j) {
      q[j] = quantize_value(x[j] * inv);
      half[j / 16] += q[j];
    }
    d[b] = scale;
    sums[2 * b] = scale * static_cast<float>(half[0]);
    sums[2 * b + 1] = scale * static_cast<float>(half[1]);
  }
}

// A decoded weight row as the kernels read it.
struct WeightRow {
  const std::int8_t* codes;
  const float* half_scale;  // 2 per block
  const float* offset;      // 2 per block, or null
  // Prepared once per decoded row for the VNNI tile (null otherwise), 8 per block: the lane base
  // -128 * (sum of the lane's 4 codes), and the half scales spread over the 8 lanes.
  const std::int32_t* vnni_base = nullptr;
  const float* lane_scale = nullptr;
};

// sum_i o[i] * s[i] over len entries in 8 F32 lanes (as a vector loop would), then reduced.
float offset_dot_scalar(const float* o, const float* s, std::size_t len) {
  float lanes[8] = {};
  std::size_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (std::size_t l = 0; l < 8; ++l) lanes[l] = fused(o[i + l], s[i + l], lanes[l]);
  float sum = hsum_lanes(lanes);
  for (; i < len; ++i) sum = fused(o[i], s[i], sum);
  return sum;
}

float dot_scalar(const WeightRow& w, const ActRow& a, std::size_t nb) {
  float lanes[8] = {};
  for (std::size_t b = 0; b < nb; ++b) {
    const std::int8_t* wq = w.codes + kQK * b;
    const std::int8_t* aq = a.codes + kQK * b;
    for (std::size_t i = 0; i < 8; ++i) {
      int p = 0;
      for (std::size_t e = 4 * i; e < 4 * i + 4; ++e) p += int{wq[e]} * int{aq[e]};
      lanes[i] = fused(static_cast<float>(p), w.half_scale[2 * b + i / 4] * a.scale[b], lanes[i]);
    }
  }
  const float sum = hsum_lanes(lanes);
  return w.offset ? sum + offset_dot_scalar(w.offset, a.half_sums, 2 * nb) : sum;
}

#ifdef QFORGE_BLOCKS_AVX2
// uq (may be null) also receives the codes + 128 as unsigned bytes.
void quantize_avx2(const float* x, std::size_t n, std::int8_t* q, float* d, float* sums,
                   std::uint8_t* uq) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (std::size_t b = 0; b < n / kQK; ++b, x += kQK, q += kQK) {
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 8 * i);
    const __m256 m =
        _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                      _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float scale = amax / 127.0f;
    const __m256 inv = _mm256_set1_ps(scale != 0.0f ? 1.0f / scale : 0.0f);
    __m256i iv[4];
    for (int i = 0; i < 4; ++i) {
      iv[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
      iv[i] = _mm256_min_epi32(_mm256_max_epi32(iv[i], lo), hi);
    }
    const __m256i packed =
        _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
    const __m256i codes = _mm256_permutevar8x32_epi32(packed, order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), codes);
    if (uq != nullptr) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(uq + kQK * b),
                          _mm256_xor_si256(codes, _mm256_set1_epi8(static_cast<char>(0x80))));
    }
    int half[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i s8 = _mm256_add_epi32(iv[2 * h], iv[2 * h + 1]);
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      half[h] = _mm_cvtsi128_si32(s4);
    }
    d[b] = scale;
    sums[2 * b] = scale * static_cast<float>(half[0]);
    sums[2 * b + 1] = scale * static_cast<float>(half[1]);
  }
}

inline float offset_dot_avx2(const float* o, const float* s, std::size_t len) {
  __m256 acc = _mm256_setzero_ps();
  std::size_t i = 0;
  for (; i + 8 <= len; i += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(o + i), _mm256_loadu_ps(s + i), acc);
  float sum = blocks::hsum(acc);
  for (; i < len; ++i) sum = fused(o[i], s[i], sum);
  return sum;
}

inline __m256i load_codes(const std::int8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
// Lanes 0..3 = hs[0], lanes 4..7 = hs[1].
inline __m256 load_half_scales(const float* hs) {
  const __m128 pair = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(hs)));
  return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(pair),
                                  _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

// RM weight rows x RN activation rows over nb blocks; out[m * RN + n]. Signed x signed bytes via
// maddubs(|w|, sign(a, w)), then madd with ones: lane i = sum of elements 4i..4i+3.
template <int RM, int RN>
void tile_avx2(const WeightRow* w, const ActRow* a, std::size_t nb, float* out) {
  __m256 acc[RM][RN];
  for (int m = 0; m < RM; ++m)
    for (int n = 0; n < RN; ++n) acc[m][n] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (std::size_t b = 0; b < nb; ++b) {
    __m256i wq[RM], wabs[RM];
    __m256 ws[RM];
    for (int m = 0; m < RM; ++m) {
      wq[m] = load_codes(w[m].codes + kQK * b);
      wabs[m] = _mm256_abs_epi8(wq[m]);
      ws[m] = load_half_scales(w[m].half_scale + 2 * b);
    }
    for (int n = 0; n < RN; ++n) {
      const __m256i aq = load_codes(a[n].codes + kQK * b);
      const __m256 ad = _mm256_set1_ps(a[n].scale[b]);
      for (int m = 0; m < RM; ++m) {
        const __m256i p16 = _mm256_maddubs_epi16(wabs[m], _mm256_sign_epi8(aq, wq[m]));
        const __m256i p32 = _mm256_madd_epi16(p16, ones);
        acc[m][n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_mul_ps(ws[m], ad), acc[m][n]);
      }
    }
  }
  for (int m = 0; m < RM; ++m) {
    for (int n = 0; n < RN; ++n) {
      const float sum = blocks::hsum(acc[m][n]);
      out[m * RN + n] =
          w[m].offset ? sum + offset_dot_avx2(w[m].offset, a[n].half_sums, 2 * nb) : sum;
    }
  }
}

#if defined(__GNUC__)
#define QFORGE_Q8_VNNI 1
#define QFORGE_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// The same with AVX512-VNNI on 256-bit vectors: dpbusd multiplies unsigned by signed bytes and
// sums 4 products per int32 lane without an int16 stage, so the activations are made unsigned
// (a + 128) and 128 * (sum of the lane's weight codes) is subtracted: the dpbusd starts from the
// row's prepared lane base (prepare_vnni). With the bases and lane scales read from memory the
// 4 x 4 tile keeps its 16 accumulators in registers. lane_scale (tile_vnni) and group_scale
// (tile_vnni_uniform's w_scale16 at this row's slot: the row's block scale 4 times per 16 floats)
// are only written where not null.
QFORGE_VNNI_TARGET void prepare_vnni(const WeightRow& w, std::size_t nb, std::int32_t* base,
                                     float* lane_scale, float* group_scale) {
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i zero = _mm256_setzero_si256();
  for (std::size_t b = 0; b < nb; ++b) {
    const __m256i sum = _mm256_dpbusd_epi32(zero, bias, load_codes(w.codes + kQK * b));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(base + 8 * b), _mm256_sub_epi32(zero, sum));
    if (lane_scale != nullptr) {
      _mm256_storeu_ps(lane_scale + 8 * b, load_half_scales(w.half_scale + 2 * b));
    }
    if (group_scale != nullptr) {
      _mm_storeu_ps(group_scale + 16 * b, _mm_set1_ps(w.half_scale[2 * b]));
    }
  }
}

template <int RM, int RN>
QFORGE_VNNI_TARGET void tile_vnni(const WeightRow* w, const ActRow* a, std::size_t nb, float* out) {
  __m256 acc[RM][RN];
  for (int m = 0; m < RM; ++m)
    for (int n = 0; n < RN; ++n) acc[m][n] = _mm256_setzero_ps();
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  for (std::size_t b = 0; b < nb; ++b) {
    __m256i wq[RM];
    for (int m = 0; m < RM; ++m) wq[m] = load_codes(w[m].codes + kQK * b);
    for (int n = 0; n < RN; ++n) {
      const __m256i au = _mm256_xor_si256(load_codes(a[n].codes + kQK * b), bias);
      const __m256 ad = _mm256_set1_ps(a[n].scale[b]);
      for (int m = 0; m < RM; ++m) {
        const __m256i base =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[m].vnni_base + 8 * b));
        const __m256i p32 = _mm256_dpbusd_epi32(base, au, wq[m]);
        acc[m][n] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32),
                            _mm256_mul_ps(_mm256_loadu_ps(w[m].lane_scale + 8 * b), ad), acc[m][n]);
      }
    }
  }
  for (int m = 0; m < RM; ++m) {
    for (int n = 0; n < RN; ++n) {
      const float sum = blocks::hsum(acc[m][n]);
      out[m * RN + n] =
          w[m].offset ? sum + offset_dot_avx2(w[m].offset, a[n].half_sums, 2 * nb) : sum;
    }
  }
}

// blocks::hsum of 8 vectors at once: [hsum(r0[0]) .. hsum(r0[3]) | hsum(r1[0]) .. hsum(r1[3])],
// each summed in hsum's order ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)).
QFORGE_VNNI_TARGET inline __m256 hsum_2x4(const __m256* r0, const __m256* r1) {
  __m256 h[4];  // h[n] = [r0[n].lo + r0[n].hi | r1[n].lo + r1[n].hi]
  for (int n = 0; n < 4; ++n) {
    h[n] = _mm256_add_ps(_mm256_permute2f128_ps(r0[n], r1[n], 0x20),
                         _mm256_permute2f128_ps(r0[n], r1[n], 0x31));
  }
  // Per 128-bit half: [s0+s2, s1+s3] of vectors n and n+1.
  const __m256 q01 = _mm256_add_ps(_mm256_shuffle_ps(h[0], h[1], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(h[0], h[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 q23 = _mm256_add_ps(_mm256_shuffle_ps(h[2], h[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(h[2], h[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm256_add_ps(_mm256_shuffle_ps(q01, q23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm256_shuffle_ps(q01, q23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// The tile of tile_vnni_uniform: weight rows x activation rows.
constexpr int kUniRows = 4;
constexpr int kUniTokens = 4;
constexpr int kUniOut = kUniRows * kUniTokens;
// Blocks whose scale products are formed before their dot products (a 4 KiB stack buffer).
constexpr std::size_t kScaleChunk = 64;

// 4 weight rows x 4 activation rows for types whose blocks have one scale (both half scales
// equal). tile_vnni multiplies the lane scales by the activation scale for every output and
// block; here the 16 products d_w * d_a of a block come from one 512-bit multiply of prepared
// layouts (w_scale16: per block the 4 rows' scales, each repeated 4 times; a_scale4: per block
// the 4 tokens' scales) and are read back as broadcast operands of the FMAs, which leaves the
// dot product, its conversion and one FMA per output and block. The products are the same F32
// values tile_vnni forms in each lane, so the results are identical. The activations come as
// biased codes (ua: codes + 128, written by Q8Activations::quantize), which saves tile_vnni's
// xor per token and block. Output (row m, token n) goes to y[n * ldy + m].
QFORGE_VNNI_TARGET inline __attribute__((always_inline)) void tile_vnni_uniform_group(
    const WeightRow* w, const Q8Activations& act, std::size_t t, const std::uint8_t* const* ua,
    std::size_t nb, const float* w_scale16, const float* a_scale4, float* y, std::size_t ldy) {
  __m256 acc[kUniRows][kUniTokens];
  for (int m = 0; m < kUniRows; ++m)
    for (int n = 0; n < kUniTokens; ++n) acc[m][n] = _mm256_setzero_ps();
  alignas(64) float products[kScaleChunk * kUniOut];
  for (std::size_t b0 = 0; b0 < nb; b0 += kScaleChunk) {
    const std::size_t chunk = std::min(kScaleChunk, nb - b0);
    for (std::size_t i = 0; i < chunk; ++i) {
      const std::size_t b = b0 + i;
      const __m512 ws = _mm512_loadu_ps(w_scale16 + kUniOut * b);
      // (maskz: GCC 12 flags the unmasked form's undefined source as maybe uninitialized)
      const __m512 as =
          _mm512_maskz_broadcast_f32x4(0xffff, _mm_loadu_ps(a_scale4 + kUniTokens * b));
      _mm512_store_ps(products + kUniOut * i, _mm512_mul_ps(ws, as));
    }
    for (std::size_t i = 0; i < chunk; ++i) {
      const std::size_t b = b0 + i;
      __m256i wq[kUniRows], base[kUniRows];
      for (int m = 0; m < kUniRows; ++m) {
        wq[m] = load_codes(w[m].codes + kQK * b);
        base[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[m].vnni_base + 8 * b));
      }
      const float* p = products + kUniOut * i;
      for (int n = 0; n < kUniTokens; ++n) {
        const __m256i au = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ua[n] + kQK * b));
        for (int m = 0; m < kUniRows; ++m) {
          const __m256i p32 = _mm256_dpbusd_epi32(base[m], au, wq[m]);
          acc[m][n] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32),
                                      _mm256_set1_ps(p[kUniTokens * m + n]), acc[m][n]);
        }
      }
    }
  }
  // Token n's 4 outputs are adjacent in y: reduce per token pair and store 4 floats per token.
  for (int n = 0; n < kUniTokens; n += 2) {
    const __m256 c0[kUniRows] = {acc[0][n], acc[1][n], acc[2][n], acc[3][n]};
    const __m256 c1[kUniRows] = {acc[0][n + 1], acc[1][n + 1], acc[2][n + 1], acc[3][n + 1]};
    const __m256 sums = hsum_2x4(c0, c1);
    _mm_storeu_ps(y + static_cast<std::size_t>(n) * ldy, _mm256_castps256_ps128(sums));
    _mm_storeu_ps(y + static_cast<std::size_t>(n + 1) * ldy, _mm256_extractf128_ps(sums, 1));
  }
  for (int m = 0; m < kUniRows; ++m) {
    if (w[m].offset == nullptr) continue;
    for (int n = 0; n < kUniTokens; ++n)
      y[static_cast<std::size_t>(n) * ldy + static_cast<std::size_t>(m)] +=
          offset_dot_avx2(w[m].offset, act.half_sums(t + static_cast<std::size_t>(n)), 2 * nb);
  }
}

// All groups of 4 tokens in [t0, t1) (a multiple of 4 tokens) against the 4 rows w.
QFORGE_VNNI_TARGET void tile_vnni_uniform(const WeightRow* w, const Q8Activations& act,
                                          std::size_t t0, std::size_t t1, const float* w_scale16,
                                          float* y, std::size_t ldy) {
  const std::size_t nb = act.blocks_per_row();
  for (std::size_t t = t0; t < t1; t += kUniTokens) {
    const std::uint8_t* ua[kUniTokens];
    for (std::size_t n = 0; n < kUniTokens; ++n) ua[n] = act.biased_codes(t + n);
    tile_vnni_uniform_group(w, act, t, ua, nb, w_scale16, act.group_scales(t / kUniTokens),
                            y + t * ldy, ldy);
  }
}

bool cpu_has_vnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512f");
  }();
  return has;
}
#endif
#endif

// Register tile: weight rows x activation rows. The VNNI kernels run on AVX512-VL, which has 32
// vector registers: room for 4 x 4 accumulators (AVX2's 16 registers hold 4 x 2).
constexpr int kRM = 4;
constexpr int kRN = 2;
constexpr int kRNVnni = 4;
constexpr int kRNMax = kRNVnni;

int tile_tokens(Q8Isa isa) {
  return isa == Q8Isa::kAvx512Vnni ? kRNVnni : kRN;
}

using TileFn = void (*)(const WeightRow*, const ActRow*, std::size_t, float*);

void tile_scalar(const WeightRow* w, const ActRow* a, std::size_t nb, float* out, int rm, int rn) {
  for (int m = 0; m < rm; ++m)
    for (int n = 0; n < rn; ++n) out[m * rn + n] = dot_scalar(w[m], a[n], nb);
}

#ifdef QFORGE_BLOCKS_AVX2
TileFn pick_avx2(int rm, int rn) {
  static constexpr TileFn kTable[kRM][kRN] = {{tile_avx2<1, 1>, tile_avx2<1, 2>},
                                              {tile_avx2<2, 1>, tile_avx2<2, 2>},
                                              {tile_avx2<3, 1>, tile_avx2<3, 2>},
                                              {tile_avx2<4, 1>, tile_avx2<4, 2>}};
  return kTable[rm - 1][rn - 1];
}
#ifdef QFORGE_Q8_VNNI
TileFn pick_vnni(int rm, int rn) {
  static constexpr TileFn kTable[kRM][kRNVnni] = {
      {tile_vnni<1, 1>, tile_vnni<1, 2>, tile_vnni<1, 3>, tile_vnni<1, 4>},
      {tile_vnni<2, 1>, tile_vnni<2, 2>, tile_vnni<2, 3>, tile_vnni<2, 4>},
      {tile_vnni<3, 1>, tile_vnni<3, 2>, tile_vnni<3, 3>, tile_vnni<3, 4>},
      {tile_vnni<4, 1>, tile_vnni<4, 2>, tile_vnni<4, 3>, tile_vnni<4, 4>}};
  return kTable[rm - 1][rn - 1];
}
#endif
#endif

#ifdef QFORGE_BLOCKS_AVX2
// Full tiles of kRM rows x RN tokens for the tokens [t0, t1) (a multiple of RN) in one call:
// with the tile kernel inlined into the loop its per-call set-up is paid once.
template <int RN>
void full_tiles_avx2(const WeightRow* w, const Q8Activations& a, std::size_t t0, std::size_t t1,
                     float* y, std::size_t ldy) {
  for (std::size_t t = t0; t < t1; t += RN) {
    ActRow act[RN];
    for (std::size_t n = 0; n < RN; ++n) act[n] = act_row(a, t + n);
    float out[kRM * RN];
    tile_avx2<kRM, RN>(w, act, a.blocks_per_row(), out);
    for (std::size_t n = 0; n < RN; ++n)
      for (std::size_t m = 0; m < kRM; ++m) y[(t + n) * ldy + m] = out[m * RN + n];
  }
}
#ifdef QFORGE_Q8_VNNI
template <int RN>
QFORGE_VNNI_TARGET void full_tiles_vnni(const WeightRow* w, const Q8Activations& a, std::size_t t0,
                                        std::size_t t1, float* y, std::size_t ldy) {
  for (std::size_t t = t0; t < t1; t += RN) {
    ActRow act[RN];
    for (std::size_t n = 0; n < RN; ++n) act[n] = act_row(a, t + n);
    float out[kRM * RN];
    tile_vnni<kRM, RN>(w, act, a.blocks_per_row(), out);
    for (std::size_t n = 0; n < RN; ++n)
      for (std::size_t m = 0; m < kRM; ++m) y[(t + n) * ldy + m] = out[m * RN + n];
  }
}
#endif
#endif

// The full kRM-row tiles of `isa` for as many tokens from 0 as fill whole tiles; returns the
// number of tokens done (0 where the instruction set has no such path).
std::size_t run_full_tiles(Q8Isa isa, [[maybe_unused]] const WeightRow* w,
                           [[maybe_unused]] const Q8Activations& a, [[maybe_unused]] float* y,
                           [[maybe_unused]] std::size_t ldy) {
  switch (isa) {
#ifdef QFORGE_BLOCKS_AVX2
    case Q8Isa::kAvx2: {
      const std::size_t t1 = a.rows() / kRN * kRN;
      full_tiles_avx2<kRN>(w, a, 0, t1, y, ldy);
      return t1;
    }
#ifdef QFORGE_Q8_VNNI
    case Q8Isa::kAvx512Vnni: {
      const std::size_t t1 = a.rows() / kRNVnni * kRNVnni;
      full_tiles_vnni<kRNVnni>(w, a, 0, t1, y, ldy);
      return t1;
    }
#endif
#endif
    default:
      return 0;
  }
}

// Runs an rm x rn tile with the kernels of `isa`.
void run_tile(Q8Isa isa, const WeightRow* w, const ActRow* a, std::size_t nb, float* out, int rm,
              int rn) {
  switch (isa) {
#ifdef QFORGE_BLOCKS_AVX2
    case Q8Isa::kAvx2:
      pick_avx2(rm, rn)(w, a, nb, out);
      return;
#ifdef QFORGE_Q8_VNNI
    case Q8Isa::kAvx512Vnni:
      pick_vnni(rm, rn)(w, a, nb, out);
      return;
#endif
#endif
    default:
      tile_scalar(w, a, nb, out, rm, rn);
      return;
  }
}

// Scratch for decoded weight rows.
struct DecodeBuffer {
  std::size_t n = 0, nb = 0;
  Q8Isa isa = Q8Isa::kScalar;
  q8act::AlignedBuffer<std::int8_t> codes;
  q8act::AlignedBuffer<float> half_scale, offset;
  q8act::AlignedBuffer<std::int32_t> vnni_base;
  q8act::AlignedBuffer<float> lane_scale;
  q8act::AlignedBuffer<float> group_scale;  // tile_vnni_uniform's w_scale16 of the decoded rows

  DecodeBuffer() = default;
  DecodeBuffer(std::size_t rows, std::size_t n_cols, Q8Isa kernels) {
    reset(rows, n_cols, kernels);
  }

  // Sizes the buffers for `rows` rows of n_cols (reusing their storage).
  void reset(std::size_t rows, std::size_t n_cols, Q8Isa kernels) {
    n = n_cols;
    nb = n_cols / kQK;
    isa = kernels;
    codes.resize(rows * n);
    half_scale.resize(rows * 2 * nb);
    offset.resize(rows * 2 * nb);
    if (isa == Q8Isa::kAvx512Vnni) {
      vnni_base.resize(rows * 8 * nb);
      lane_scale.resize(rows * 8 * nb);
      group_scale.resize(16 * nb);
    }
  }

  // Decodes `row` into slot i (and prepares it for the tile kernels of `isa`: VNNI lane scales
  // for tile_vnni if lane_scales, the slot's share of group_scale for tile_vnni_uniform if
  // group_scales).
  WeightRow decode(std::size_t i, const std::byte* row, const TypeKernels& k,
                   [[maybe_unused]] bool lane_scales = true,
                   [[maybe_unused]] bool group_scales = false) {
    const DecodedRow d{codes.data() + i * n, half_scale.data() + i * 2 * nb,
                       offset.data() + i * 2 * nb};
    (isa == Q8Isa::kScalar ? k.decode_scalar : k.decode)(row, n, d);
    WeightRow w{d.codes, d.half_scale, k.has_offset ? d.offset : nullptr};
#ifdef QFORGE_Q8_VNNI
    if (isa == Q8Isa::kAvx512Vnni) {
      std::int32_t* base = vnni_base.data() + i * 8 * nb;
      float* scale = lane_scales ? lane_scale.data() + i * 8 * nb : nullptr;
      prepare_vnni(w, nb, base, scale, group_scales ? group_scale.data() + 4 * i : nullptr);
      w.vnni_base = base;
      w.lane_scale = scale;
    }
#endif
    return w;
  }
};

TypeKernels checked_kernels(GgmlType type, std::size_t n) {
  const TypeKernels k = q8act::kernels_for(type);
  if (k.decode == nullptr) {
    fail("8-bit activation matmul: weight type {} is not supported", type_name(type));
  }
  if (n % block_size(type) != 0 || n % kQK != 0) {
    fail("8-bit activation matmul: row length {} is not a multiple of the {} block size {}", n,
         type_name(type), block_size(type));
  }
  return k;
}

void check_row(GgmlType type, std::span<const std::byte> row, const Q8Activations& a,
               std::size_t t) {
  if (t >= a.rows()) fail("dot_row_q8: activation row {} out of {}", t, a.rows());
  if (row.size() < row_bytes(type, a.cols())) {
    fail("dot_row_q8: {} row has {} bytes, expected {} for {} elements", type_name(type),
         row.size(), row_bytes(type, a.cols()), a.cols());
  }
}

Q8Isa detect_isa() {
  Q8Isa best = Q8Isa::kScalar;
#ifdef QFORGE_BLOCKS_AVX2
  best = Q8Isa::kAvx2;
#ifdef QFORGE_Q8_VNNI
  if (cpu_has_vnni()) best = Q8Isa::kAvx512Vnni;
#endif
#endif
  // QFORGE_Q8_ISA=scalar|avx2 caps the choice (benchmarks, debugging).
  if (const char* env = std::getenv("QFORGE_Q8_ISA")) {
    const std::string_view v(env);
    if (v == "scalar") best = Q8Isa::kScalar;
    if (v == "avx2" && best == Q8Isa::kAvx512Vnni) best = Q8Isa::kAvx2;
  }
  return best;
}

}  // namespace

bool q8_act_isa_available(Q8Isa isa) {
  switch (isa) {
    case Q8Isa::kScalar:
      return true;
#ifdef QFORGE_BLOCKS_AVX2
    case Q8Isa::kAvx2:
      return true;
#ifdef QFORGE_Q8_VNNI
    case Q8Isa::kAvx512Vnni:
      return cpu_has_vnni();
#endif
#endif
    default:
      return false;
  }
}

Q8Isa q8_act_isa() {
  static const Q8Isa isa = detect_isa();
  return isa;
}

void Q8Activations::quantize(std::span<const float> x, std::size_t n_rows, std::size_t n_cols) {
  if (n_cols % kQK != 0 || x.size() != n_rows * n_cols) {
    fail("Q8Activations: {} floats are not {} rows of {} (a multiple of {})", x.size(), n_rows,
         n_cols, kQK);
  }
  rows_ = n_rows;
  cols_ = n_cols;
  const std::size_t nb = blocks_per_row();
  const bool grouped = n_rows >= kGroupRows;
  q_.resize(n_rows * n_cols);
  d_.resize(n_rows * nb);
  sums_.resize(2 * n_rows * nb);
  if (grouped) {
    uq_.resize(n_rows * n_cols);
    group_d_.resize(n_rows / kGroupRows * kGroupRows * nb);
  }
  auto body = [&](std::size_t begin, std::size_t end) {
    for (std::size_t r = begin; r < end; ++r) {
      std::int8_t* q = q_.data() + r * n_cols;
      float* d = d_.data() + r * nb;
      std::uint8_t* uq = grouped ? uq_.data() + r * n_cols : nullptr;
#ifdef QFORGE_BLOCKS_AVX2
      quantize_avx2(x.data() + r * n_cols, n_cols, q, d, sums_.data() + 2 * r * nb, uq);
#else
      quantize_scalar(x.data() + r * n_cols, n_cols, q, d, sums_.data() + 2 * r * nb);
      for (std::size_t i = 0; uq != nullptr && i < n_cols; ++i) {
        uq[i] = static_cast<std::uint8_t>(q[i] ^ 0x80);
      }
#endif
      if (!grouped) continue;
      if (r < n_rows / kGroupRows * kGroupRows) {
        float* gd = group_d_.data() + r / kGroupRows * kGroupRows * nb + r % kGroupRows;
        for (std::size_t b = 0; b < nb; ++b) gd[kGroupRows * b] = d[b];
      }
    }
  };
  if (n_rows == 1) {
    body(0, 1);
  } else {
    parallel_for(n_rows, body, std::max<std::size_t>(1, 16384 / std::max<std::size_t>(n_cols, 1)));
  }
}

void Q8Activations::dequantize_row(std::size_t row, std::span<float> out) const {
  if (row >= rows_ || out.size() != cols_) fail("Q8Activations::dequantize_row: bad row or size");
  for (std::size_t i = 0; i < cols_; ++i)
    out[i] = scales(row)[i / kQK] * static_cast<float>(codes(row)[i]);
}

void quantize_activation_row_scalar(std::span<const float> x, std::span<std::int8_t> codes,
                                    std::span<float> scales, std::span<float> half_sums) {
  const std::size_t n = x.size();
  if (n % kQK != 0 || codes.size() != n || scales.size() != n / kQK ||
      half_sums.size() != 2 * (n / kQK)) {
    fail("quantize_activation_row_scalar: buffer sizes do not match {} values", n);
  }
  quantize_scalar(x.data(), n, codes.data(), scales.data(), half_sums.data());
}

bool q8_act_supported(GgmlType type) {
  return q8act::kernels_for(type).decode != nullptr;
}

float dot_row_q8(GgmlType type, std::span<const std::byte> row, const Q8Activations& a,
                 std::size_t t) {
  return dot_row_q8_isa(q8_act_isa(), type, row, a, t);
}

float dot_row_q8_isa(Q8Isa isa, GgmlType type, std::span<const std::byte> row,
                     const Q8Activations& a, std::size_t t) {
  if (!q8_act_isa_available(isa)) fail("dot_row_q8: this CPU / build lacks the requested kernels");
  const TypeKernels k = checked_kernels(type, a.cols());
  check_row(type, row, a, t);
  DecodeBuffer buf(1, a.cols(), isa);
  const WeightRow w = buf.decode(0, row.data(), k);
  const ActRow ar = act_row(a, t);
  float out;
  run_tile(isa, &w, &ar, a.blocks_per_row(), &out, 1, 1);
  return out;
}

namespace {

// matmul_q8_rows with the kernels of `isa`.
void matmul_rows(Q8Isa isa, GgmlType type, const std::byte* weights, std::size_t row_stride,
                 std::size_t r0, std::size_t r1, const Q8Activations& a, float* y,
                 std::size_t ldy) {
  const std::size_t n = a.cols(), nb = a.blocks_per_row(), n_tok = a.rows();
  const TypeKernels k = checked_kernels(type, n);
  if (n_tok == 1) {
    if (const q8act::GemvFn gemv = q8act::gemv_kernel(isa, type)) {
      gemv(weights, row_stride, r0, r1, {a.codes(0), a.scales(0), a.half_sums(0)}, n, y + r0);
      return;
    }
  }
  // Per thread and reused: this runs once per parallel chunk of every matmul.
  thread_local DecodeBuffer buffer;
  DecodeBuffer& buf = buffer;
  buf.reset(kRM, n, isa);
#ifdef QFORGE_Q8_VNNI
  // Full 4 x 4 tiles of one-scale types take tile_vnni_uniform (it reads the activations' biased
  // codes and group scales, which quantize writes for 4 or more rows).
  static_assert(kUniTokens == Q8Activations::kGroupRows);
  const bool uniform = isa == Q8Isa::kAvx512Vnni && k.same_half_scales && n_tok >= kUniTokens;
#endif
  WeightRow w[kRM];
  ActRow act[kRNMax];
  float out[kRM * kRNMax];
  const auto rn_max = static_cast<std::size_t>(tile_tokens(isa));
  for (std::size_t r = r0; r < r1; r += kRM) {
    const int rm = static_cast<int>(std::min<std::size_t>(kRM, r1 - r));
    bool lane_scales = true, group_scales = false;
#ifdef QFORGE_Q8_VNNI
    // Row groups that only meet full 4 x 4 uniform tiles need no lane scales.
    group_scales = uniform && rm == kUniRows;
    lane_scales = !group_scales || n_tok % kUniTokens != 0;
#endif
    for (int m = 0; m < rm; ++m) {
      const auto i = static_cast<std::size_t>(m);
      w[m] = buf.decode(i, weights + (r + i) * row_stride, k, lane_scales, group_scales);
    }
    // The weights stream from memory once per call, in bursts between long stretches of tile
    // work that the hardware prefetcher does not look past: fetch the next rows now.
    if (n_tok > 1 && r + kRM < r1) {
      const std::byte* next = weights + (r + kRM) * row_stride;
      const std::size_t bytes = std::min<std::size_t>(kRM, r1 - r - kRM) * row_stride;
      for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(next + off);
    }
    // Whole tiles first (one call for all of them), then the tokens left over.
    std::size_t t_begin = 0;
#ifdef QFORGE_Q8_VNNI
    if (group_scales) {
      t_begin = n_tok / kUniTokens * kUniTokens;
      tile_vnni_uniform(w, a, 0, t_begin, buf.group_scale.data(), y + r, ldy);
    }
#endif
    if (t_begin == 0 && rm == kRM) t_begin = run_full_tiles(isa, w, a, y + r, ldy);
    for (std::size_t t = t_begin; t < n_tok; t += rn_max) {
      const int rn = static_cast<int>(std::min<std::size_t>(rn_max, n_tok - t));
      for (int i = 0; i < rn; ++i) act[i] = act_row(a, t + static_cast<std::size_t>(i));
      run_tile(isa, w, act, nb, out, rm, rn);
      for (int m = 0; m < rm; ++m) {
        for (int i = 0; i < rn; ++i) {
          y[(t + static_cast<std::size_t>(i)) * ldy + r + static_cast<std::size_t>(m)] =
              out[m * rn + i];
        }
      }
    }
  }
}

}  // namespace

void matmul_q8_rows(GgmlType type, const std::byte* weights, std::size_t row_stride, std::size_t r0,
                    std::size_t r1, const Q8Activations& a, float* y, std::size_t ldy) {
  matmul_rows(q8_act_isa(), type, weights, row_stride, r0, r1, a, y, ldy);
}

void matmul_q8_rows_isa(Q8Isa isa, GgmlType type, const std::byte* weights, std::size_t row_stride,
                        std::size_t r0, std::size_t r1, const Q8Activations& a, float* y,
                        std::size_t ldy) {
  if (!q8_act_isa_available(isa)) {
    fail("matmul_q8_rows_isa: this CPU / build lacks the requested kernels");
  }
  matmul_rows(isa, type, weights, row_stride, r0, r1, a, y, ldy);
}

bool q8_gemv_available(Q8Isa isa, GgmlType type) {
  return q8_act_isa_available(isa) && q8act::gemv_kernel(isa, type) != nullptr;
}

void matmul_q8_gemv_isa(Q8Isa isa, GgmlType type, const std::byte* weights, std::size_t row_stride,
                        std::size_t r0, std::size_t r1, const Q8Activations& a, std::size_t t,
                        float* y) {
  if (!q8_gemv_available(isa, type)) {
    fail("matmul_q8_gemv_isa: no fused {} kernel for this instruction set", type_name(type));
  }
  checked_kernels(type, a.cols());
  if (t >= a.rows()) fail("matmul_q8_gemv_isa: activation row {} out of {}", t, a.rows());
  q8act::gemv_kernel(isa, type)(weights, row_stride, r0, r1,
                                {a.codes(t), a.scales(t), a.half_sums(t)}, a.cols(), y);
}

}  // namespace qforge
