// K-quant quantizers. gguf-py has none, so these follow the published reference approach rather
// than a byte oracle:
//  * each 256-element super-block is split into sub-blocks (16 or 32 elements);
//  * a per-sub-block float scale (and, for Q2_K/Q4_K/Q5_K, an offset) is fitted by trying a
//    range of candidate inverse scales and solving the weighted least-squares problem for the
//    codes each candidate produces, keeping the lowest weighted squared error;
//  * the sub-block scales are then themselves quantized (4, 6 or 8 bits) against one f16
//    super-block scale, and the codes are recomputed for the scales as stored.
// Weights: without an importance vector the error of large values counts more (|x|, x^2 or
// mean|x| + |x|, as the reference uses per type); with one, importance * sqrt(sigma^2 + x^2).
// tests/unit/test_blocks.cpp checks the round-trip RMSE against the uniform-quantizer bound and
// that importance lowers the error on the weighted columns.
#include <algorithm>
#include <cmath>

#include "quant/block_common.h"
#include "quant/block_k.h"
#include "quant/block_kernels.h"

namespace qforge::blocks {
namespace {

inline int clamp_round(float v, int lo, int hi) {
  if (!(v == v)) return 0;
  return std::clamp(round_away(std::clamp(v, -1e6f, 1e6f)), lo, hi);
}

// x ~= scale * L - offset with L in [0, nmax], offset >= 0. Returns the scale; sets offset, L.
float fit_affine(const float* x, const float* w, std::size_t n, int nmax, float rmin, float rdelta,
                 int nstep, float& offset, std::uint8_t* L) {
  float lo = x[0], hi = x[0];
  for (std::size_t i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  lo = std::min(lo, 0.0f);
  if (!(hi > lo)) {
    std::fill(L, L + n, std::uint8_t{0});
    offset = -lo;
    return 0.0f;
  }
  float best_scale = (hi - lo) / static_cast<float>(nmax), best_min = lo;
  float best_err = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    L[i] = static_cast<std::uint8_t>(clamp_round((x[i] - lo) / best_scale, 0, nmax));
    const float diff = best_scale * L[i] + lo - x[i];
    best_err += w[i] * diff * diff;
  }
  std::uint8_t trial[32];
  for (int is = 0; is <= nstep; ++is) {
    const float iscale =
        (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (hi - lo);
    float sw = 0, sl = 0, sl2 = 0, sxl = 0, sx = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const int l = clamp_round(iscale * (x[i] - lo), 0, nmax);
      trial[i] = static_cast<std::uint8_t>(l);
      sw += w[i];
      sl += w[i] * l;
      sl2 += w[i] * l * l;
      sxl += w[i] * l * x[i];
      sx += w[i] * x[i];
    }
    const float det = sw * sl2 - sl * sl;
    if (!(det > 0.0f)) continue;
    float scale = (sw * sxl - sx * sl) / det;
    float min = (sl2 * sx - sl * sxl) / det;
    if (min > 0.0f) {  // offsets are subtracted and stored unsigned: clamp the fit to min <= 0
      min = 0.0f;
      scale = sxl / sl2;
    }
    float err = 0.0f;
    for (std::size_t i = 0; i < n; ++i) {
      const float diff = scale * trial[i] + min - x[i];
      err += w[i] * diff * diff;
    }
    if (err < best_err) {
      best_err = err;
      best_scale = scale;
      best_min = min;
      std::copy(trial, trial + n, L);
    }
  }
  offset = -best_min;
  return best_scale;
}

// x ~= scale * L with L in [-nmax, nmax - 1]. Returns the scale (0 for an all-zero input).
float fit_symmetric(const float* x, const float* w, std::size_t n, int nmax, bool refine) {
  float amax = 0.0f, max = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  if (amax < 1e-30f) return 0.0f;
  float best_scale = 0.0f, best = -1.0f;
  int L[32];
  for (int is = -9; is <= 9; ++is) {
    const float iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
    float sxl = 0.0f, sl2 = 0.0f;
    for (std::size_t i = 0; i < n; ++i) {
      L[i] = clamp_round(iscale * x[i], -nmax, nmax - 1);
      sxl += w[i] * x[i] * L[i];
      sl2 += w[i] * L[i] * L[i];
    }
    // Least-squares scale sxl/sl2 removes sxl^2/sl2 of the weighted energy: maximise that.
    if (sl2 > 0.0f && sxl * sxl > best * sl2) {
      best_scale = sxl / sl2;
      best = best_scale * sxl;
    }
  }
  if (refine && best_scale != 0.0f) {
    // A few rounds of coordinate descent: re-assign codes for the current scale, re-fit.
    for (int round = 0; round < 4; ++round) {
      float sxl = 0.0f, sl2 = 0.0f;
      for (std::size_t i = 0; i < n; ++i) {
        const int l = clamp_round(x[i] / best_scale, -nmax, nmax - 1);
        sxl += w[i] * x[i] * l;
        sl2 += w[i] * l * l;
      }
      if (!(sl2 > 0.0f) || !(sxl * sxl > best * sl2 * 1.000001f)) break;
      best_scale = sxl / sl2;
      best = best_scale * sxl;
    }
  }
  return best_scale;
}

void make_weights(const float* x, const float* importance, std::size_t n, float av, float sigma2,
                  int kind, float* w) {
  for (std::size_t i = 0; i < n; ++i) {
    if (importance) {
      w[i] = importance[i] * std::sqrt(sigma2 + x[i] * x[i]);
    } else if (kind == 0) {
      w[i] = std::fabs(x[i]);
    } else if (kind == 1) {
      w[i] = av + std::fabs(x[i]);
    } else {
      w[i] = x[i] * x[i];
    }
  }
}

inline float sum_sq(const float* x, std::size_t n) {
  float s = 0.0f;
  for (std::size_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}

// Shared by Q2_K, Q4_K, Q5_K: fitted sub-block scales/offsets quantized to `bits` unsigned
// levels under f16 d/dmin; then the codes for the stored values. Fills sc/m (levels) and L.
struct AffineSuperBlock {
  float d = 0.0f, dmin = 0.0f;
  int sc[16] = {}, m[16] = {};
  std::uint8_t L[kQK_K] = {};
};

void quantize_affine_superblock(const float* x, const float* importance, std::size_t sub, int nmax,
                                int scale_levels, float rmin, float rdelta, int nstep,
                                int weight_kind, AffineSuperBlock& out) {
  const std::size_t n_sub = kQK_K / sub;
  float scales[16], offsets[16], w[32];
  const float sigma2 = sum_sq(x, kQK_K) / kQK_K;
  float max_scale = 0.0f, max_offset = 0.0f;
  for (std::size_t s = 0; s < n_sub; ++s) {
    const float* xs = x + s * sub;
    const float av = std::sqrt(sum_sq(xs, sub) / static_cast<float>(sub));
    make_weights(xs, importance ? importance + s * sub : nullptr, sub, av, sigma2, weight_kind, w);
    scales[s] = fit_affine(xs, w, sub, nmax, rmin, rdelta, nstep, offsets[s], out.L + s * sub);
    max_scale = std::max(max_scale, scales[s]);
    max_offset = std::max(max_offset, offsets[s]);
  }
  const float fmax_levels = static_cast<float>(scale_levels);
  const float inv_scale = max_scale > 0.0f ? fmax_levels / max_scale : 0.0f;
  const float inv_offset = max_offset > 0.0f ? fmax_levels / max_offset : 0.0f;
  for (std::size_t s = 0; s < n_sub; ++s) {
    out.sc[s] = clamp_round(inv_scale * scales[s], 0, scale_levels);
    out.m[s] = clamp_round(inv_offset * offsets[s], 0, scale_levels);
  }
  out.d = f16_to_f32(f32_to_f16(max_scale / fmax_levels));
  out.dmin = f16_to_f32(f32_to_f16(max_offset / fmax_levels));
  for (std::size_t s = 0; s < n_sub; ++s) {
    const float dl = out.d * static_cast<float>(out.sc[s]);
    const float ml = out.dmin * static_cast<float>(out.m[s]);
    if (dl == 0.0f) {
      std::fill(out.L + s * sub, out.L + (s + 1) * sub, std::uint8_t{0});
      continue;
    }
    for (std::size_t i = s * sub; i < (s + 1) * sub; ++i)
      out.L[i] = static_cast<std::uint8_t>(clamp_round((x[i] + ml) / dl, 0, nmax));
  }
}

// Shared by Q3_K and Q6_K: signed sub-block scales quantized to int levels in
// [-(levels), levels - 1] under one f16 d, then codes L in [-nmax, nmax - 1].
struct SymmetricSuperBlock {
  float d = 0.0f;
  int sc[16] = {};
  int L[kQK_K] = {};
};

void quantize_symmetric_superblock(const float* x, const float* importance, int nmax, int levels,
                                   bool refine, SymmetricSuperBlock& out) {
  constexpr std::size_t kSub = 16;
  float scales[16], w[kSub];
  const float sigma2 = sum_sq(x, kQK_K) / kQK_K;
  float max_scale = 0.0f, amax = 0.0f;
  for (std::size_t s = 0; s < 16; ++s) {
    make_weights(x + s * kSub, importance ? importance + s * kSub : nullptr, kSub, 0.0f, sigma2, 2,
                 w);
    scales[s] = fit_symmetric(x + s * kSub, w, kSub, nmax, refine);
    if (std::fabs(scales[s]) > amax) {
      amax = std::fabs(scales[s]);
      max_scale = scales[s];
    }
  }
  if (amax == 0.0f) {
    out = SymmetricSuperBlock{};
    return;
  }
  const float iscale = -static_cast<float>(levels) / max_scale;
  out.d = f16_to_f32(f32_to_f16(1.0f / iscale));
  for (std::size_t s = 0; s < 16; ++s) {
    out.sc[s] = clamp_round(iscale * scales[s], -levels, levels - 1);
    const float dl = out.d * static_cast<float>(out.sc[s]);
    for (std::size_t i = s * kSub; i < (s + 1) * kSub; ++i)
      out.L[i] = dl != 0.0f ? clamp_round(x[i] / dl, -nmax, nmax - 1) : 0;
  }
}

inline void set_two_bit_plane(std::byte* qs, std::size_t e, int v) {
  const std::size_t h = e / 128, s = (e % 128) / 32, k = e % 32;
  qs[32 * h + k] |= static_cast<std::byte>((v & 3) << (2 * s));
}
inline void set_k4_nibble(std::byte* qs, std::size_t e, int v) {
  const std::size_t j = e / 32, k = e % 32;
  qs[32 * (j / 2) + k] |= static_cast<std::byte>((v & 0x0f) << (4 * (j % 2)));
}

}  // namespace

void quantize_q2_k(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  for (std::size_t b = 0; b < n / kQK_K; ++b, src += kQK_K, dst += 84) {
    AffineSuperBlock sb;
    quantize_affine_superblock(src, importance ? importance + b * kQK_K : nullptr, 16, 3, 15, -0.5f,
                               0.1f, 15, 0, sb);
    std::memset(dst, 0, 84);
    for (std::size_t s = 0; s < 16; ++s) dst[s] = static_cast<std::byte>(sb.sc[s] | (sb.m[s] << 4));
    for (std::size_t e = 0; e < kQK_K; ++e) set_two_bit_plane(dst + 16, e, sb.L[e]);
    store_f16(dst + 80, sb.d);
    store_f16(dst + 82, sb.dmin);
  }
}

void quantize_q3_k(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  for (std::size_t b = 0; b < n / kQK_K; ++b, src += kQK_K, dst += 110) {
    SymmetricSuperBlock sb;
    quantize_symmetric_superblock(src, importance ? importance + b * kQK_K : nullptr, 4, 32, true,
                                  sb);
    std::memset(dst, 0, 110);
    for (std::size_t e = 0; e < kQK_K; ++e) {
      const int u = sb.L[e] + 4;  // 0..7: bit 2 goes to hmask (set = no -4 offset)
      set_two_bit_plane(dst + 32, e, u & 3);
      if (u & 4) dst[e % 32] |= static_cast<std::byte>(1u << (e / 32));
    }
    std::byte* scales = dst + 96;
    for (std::size_t t = 0; t < 16; ++t) {
      const int u = sb.sc[t] + 32;
      scales[t % 8] |= static_cast<std::byte>((u & 0x0f) << (4 * (t / 8)));
      scales[8 + t % 4] |= static_cast<std::byte>((u >> 4) << (2 * (t / 4)));
    }
    store_f16(dst + 108, sb.d);
  }
}

void quantize_q4_k(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  for (std::size_t b = 0; b < n / kQK_K; ++b, src += kQK_K, dst += 144) {
    AffineSuperBlock sb;
    quantize_affine_superblock(src, importance ? importance + b * kQK_K : nullptr, 32, 15, 63,
                               -1.0f, 0.1f, 20, 1, sb);
    std::memset(dst, 0, 144);
    store_f16(dst, sb.d);
    store_f16(dst + 2, sb.dmin);
    set_scale_min_k4(sb.sc, sb.m, dst + 4);
    for (std::size_t e = 0; e < kQK_K; ++e) set_k4_nibble(dst + 16, e, sb.L[e]);
  }
}

void quantize_q5_k(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  for (std::size_t b = 0; b < n / kQK_K; ++b, src += kQK_K, dst += 176) {
    AffineSuperBlock sb;
    quantize_affine_superblock(src, importance ? importance + b * kQK_K : nullptr, 32, 31, 63,
                               -0.5f, 0.1f, 15, 1, sb);
    std::memset(dst, 0, 176);
    store_f16(dst, sb.d);
    store_f16(dst + 2, sb.dmin);
    set_scale_min_k4(sb.sc, sb.m, dst + 4);
    for (std::size_t e = 0; e < kQK_K; ++e) {
      set_k4_nibble(dst + 48, e, sb.L[e]);
      if (sb.L[e] & 16) dst[16 + e % 32] |= static_cast<std::byte>(1u << (e / 32));
    }
  }
}

void quantize_q6_k(const float* src, std::byte* dst, std::size_t n, const float* importance) {
  for (std::size_t b = 0; b < n / kQK_K; ++b, src += kQK_K, dst += 210) {
    SymmetricSuperBlock sb;
    quantize_symmetric_superblock(src, importance ? importance + b * kQK_K : nullptr, 32, 128,
                                  false, sb);
    std::memset(dst, 0, 210);
    for (std::size_t e = 0; e < kQK_K; ++e) {
      const int u = sb.L[e] + 32;  // 0..63
      const std::size_t h = e / 128, nib = (e % 128) / 64, k = e % 64;
      dst[64 * h + k] |= static_cast<std::byte>((u & 0x0f) << (4 * nib));
      set_two_bit_plane(dst + 128, e, u >> 4);
    }
    for (std::size_t s = 0; s < 16; ++s)
      dst[192 + s] = static_cast<std::byte>(static_cast<std::int8_t>(sb.sc[s]));
    store_f16(dst + 208, sb.d);
  }
}

void quantize_q8_k(const float* src, std::byte* dst, std::size_t n, const float*) {
  for (std::size_t b = 0; b < n / kQK_K; ++b, src += kQK_K, dst += 292) {
    std::memset(dst, 0, 292);
    float amax = 0.0f, max = 0.0f;
    for (std::size_t i = 0; i < kQK_K; ++i) {
      if (std::fabs(src[i]) > amax) {
        amax = std::fabs(src[i]);
        max = src[i];
      }
    }
    if (amax == 0.0f) continue;  // d = 0, codes 0
    const float iscale = -127.0f / max;
    std::int16_t bsums[16] = {};
    for (std::size_t i = 0; i < kQK_K; ++i) {
      const int q = clamp_round(iscale * src[i], -127, 127);
      dst[4 + i] = static_cast<std::byte>(static_cast<std::int8_t>(q));
      bsums[i / 16] = static_cast<std::int16_t>(bsums[i / 16] + q);
    }
    const float d = 1.0f / iscale;
    std::memcpy(dst, &d, sizeof d);
    std::memcpy(dst + 260, bsums, sizeof bsums);
  }
}

}  // namespace qforge::blocks
