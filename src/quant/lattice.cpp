#include "quant/lattice.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/blocks.h"

namespace qforge {
namespace {

constexpr int kBlock = 32;

float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }
bool is_bf16(float x) { return round_bf16(x) == x; }
bool is_f16_exact(float x) { return f16_to_f32(f32_to_f16(x)) == x; }

// Neighbouring BF16 values of x (x itself first), for scale candidates that round back to it.
float bf16_step(float x, int steps) {
  std::uint16_t b = f32_to_bf16(x);
  // BF16 bit patterns of one sign are ordered like their magnitudes.
  const int v = static_cast<int>(b & 0x7fff) + steps;
  if (v < 0 || v >= 0x7f80) return x;
  b = static_cast<std::uint16_t>((b & 0x8000) | v);
  return bf16_to_f32(b);
}

struct CodeRange {
  int lo, hi;
};
CodeRange code_range(LatticeKind kind) {
  switch (kind) {
    case LatticeKind::kSymmetric8: return {-8, 7};
    case LatticeKind::kSymmetric7: return {-7, 7};
    case LatticeKind::kAsymmetric: return {0, 15};
    case LatticeKind::kNone: break;
  }
  return {0, 0};
}

// BF16 scales near `approx` whose product with `code` (plus m) rounds to `target` in BF16. Several can
// qualify (the rounding of the extremum hides the scale's last bit), so all are returned.
std::vector<float> scales_for(float approx, int code, float m, float target) {
  std::vector<float> out;
  const float base = round_bf16(approx);
  for (int s : {0, -1, 1, -2, 2, -3, 3}) {
    const float d = bf16_step(base, s);
    if (round_bf16(d * static_cast<float>(code) + m) == target &&
        std::find(out.begin(), out.end(), d) == out.end())
      out.push_back(d);
  }
  return out;
}

// Candidate (d, m) pairs that reproduce the group's extremum under `kind`.
std::vector<GroupScale> scale_candidates(std::span<const float> group, LatticeKind kind) {
  float ext = 0, lo = INFINITY, hi = -INFINITY;
  for (float w : group) {
    if (!std::isfinite(w)) return {};
    if (std::fabs(w) > std::fabs(ext)) ext = w;
    lo = std::min(lo, w);
    hi = std::max(hi, w);
  }
  std::vector<GroupScale> out;
  switch (kind) {
    case LatticeKind::kSymmetric8:
      // Google's rule: the signed extremum is coded -8, so d = ext / -8 (exact: a power of two).
      out.push_back({ext / -8.0f, 0});
      break;
    case LatticeKind::kSymmetric7: {
      if (ext == 0) return {{0, 0}};
      const int code = ext > 0 ? 7 : -7;
      for (float d : scales_for(ext / static_cast<float>(code), code, 0, ext)) out.push_back({d, 0});
      break;
    }
    case LatticeKind::kAsymmetric:
      if (hi == lo) return {{0, lo}};
      for (float d : scales_for((hi - lo) / 15.0f, 15, lo, hi)) out.push_back({d, lo});
      break;
    case LatticeKind::kNone:
      break;
  }
  return out;
}

std::size_t exact_blocks(std::span<const float> group, LatticeKind kind, GroupScale gs) {
  std::size_t n = 0;
  LatticeBlock scratch;
  for (std::size_t b = 0; b + kBlock <= group.size(); b += kBlock)
    n += fit_block(group.subspan(b, kBlock), kind, gs.d, gs.m, scratch) == BlockFit::kExact;
  return n;
}

void put_f16(std::byte* p, float v) {
  const std::uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

void write_nibbles(std::byte* qs, const std::array<int, kBlock>& codes) {
  for (int j = 0; j < kBlock / 2; ++j)
    qs[j] = static_cast<std::byte>((codes[j] & 0xf) | ((codes[j + kBlock / 2] & 0xf) << 4));
}

// Writes an exact lattice block; false when the target cannot carry this block's scale exactly.
bool write_exact_block(const LatticeBlock& b, LatticeKind kind, GgmlType target, std::byte* dst) {
  switch (target) {
    case GgmlType::Q4_0: {
      if (kind == LatticeKind::kAsymmetric || !is_f16_exact(b.d)) return false;
      put_f16(dst, b.d);
      std::array<int, kBlock> codes{};
      for (int i = 0; i < kBlock; ++i) codes[i] = b.q[i] + 8;
      write_nibbles(dst + 2, codes);
      return true;
    }
    case GgmlType::Q4_1: {
      // Symmetric grids shift to [0, 15] with minimum lo*d (exact: 4 extra bits at most).
      const int lo = code_range(kind).lo;
      const float m = kind == LatticeKind::kAsymmetric ? b.m : b.d * static_cast<float>(lo);
      if (!is_f16_exact(b.d) || !is_f16_exact(m)) return false;
      put_f16(dst, b.d);
      put_f16(dst + 2, m);
      std::array<int, kBlock> codes{};
      for (int i = 0; i < kBlock; ++i) codes[i] = b.q[i] - (kind == LatticeKind::kAsymmetric ? 0 : lo);
      write_nibbles(dst + 4, codes);
      return true;
    }
    case GgmlType::Q8_0: {
      if (kind == LatticeKind::kAsymmetric || !is_f16_exact(b.d)) return false;
      put_f16(dst, b.d);
      for (int i = 0; i < kBlock; ++i) dst[2 + i] = static_cast<std::byte>(static_cast<std::int8_t>(b.q[i]));
      return true;
    }
    default:
      return false;
  }
}

}  // namespace

std::string_view lattice_kind_name(LatticeKind kind) {
  switch (kind) {
    case LatticeKind::kNone: return "none";
    case LatticeKind::kSymmetric8: return "sym[-8,7]";
    case LatticeKind::kSymmetric7: return "sym[-7,7]";
    case LatticeKind::kAsymmetric: return "asym[0,15]";
  }
  return "?";
}

std::optional<GroupScale> group_scale(std::span<const float> group, LatticeKind kind) {
  const auto candidates = scale_candidates(group, kind);
  if (candidates.empty()) return std::nullopt;
  // The candidate that puts the most blocks of the group on the grid (all of them, on real data).
  std::optional<GroupScale> best;
  std::size_t best_exact = 0;
  for (const auto& c : candidates) {
    const std::size_t n = candidates.size() == 1 ? 0 : exact_blocks(group, kind, c);
    if (!best || n > best_exact) {
      best = c;
      best_exact = n;
    }
  }
  return best;
}

BlockFit fit_block(std::span<const float> w, LatticeKind kind, float d, float m, LatticeBlock& out) {
  const CodeRange range = code_range(kind);
  out.d = d;
  out.m = m;
  for (std::size_t i = 0; i < w.size() && i < out.q.size(); ++i) {
    if (!std::isfinite(w[i])) return BlockFit::kNotFinite;
    int q = 0;
    if (d != 0) {
      const float r = std::nearbyint((w[i] - m) / d);
      if (!(r >= static_cast<float>(range.lo) && r <= static_cast<float>(range.hi))) return BlockFit::kOffLattice;
      q = static_cast<int>(r);
    }
    if (q < range.lo || q > range.hi) return BlockFit::kOffLattice;
    if (round_bf16(d * static_cast<float>(q) + m) != w[i]) return BlockFit::kOffLattice;
    out.q[i] = static_cast<std::int8_t>(q);
  }
  return BlockFit::kExact;
}

LatticeDetection detect_lattice(std::span<const float> w, std::size_t cols, double min_share,
                                std::size_t max_blocks) {
  LatticeDetection best;
  if (cols == 0 || cols % kBlock != 0 || w.empty() || w.size() % cols != 0) return best;
  const std::size_t n_blocks = w.size() / kBlock;
  const std::size_t n_sample = std::min(n_blocks, max_blocks);
  // Evenly spread sample; the stride is coprime-ish with row length through integer rounding.
  std::vector<std::size_t> sample(n_sample);
  for (std::size_t i = 0; i < n_sample; ++i) sample[i] = i * n_blocks / n_sample;
  for (float v : w.subspan(0, std::min<std::size_t>(w.size(), 1 << 16)))
    if (!is_bf16(v)) return best;  // not BF16-valued data: a BF16 lattice cannot apply

  for (LatticeKind kind : {LatticeKind::kSymmetric8, LatticeKind::kSymmetric7, LatticeKind::kAsymmetric}) {
    for (int group : {32, 64, 128}) {
      if (cols % static_cast<std::size_t>(group) != 0) continue;
      std::uint64_t on = 0;
      LatticeBlock scratch;
      for (std::size_t b : sample) {
        const std::size_t start = b * kBlock;
        const std::size_t gstart = start / group * group;
        const auto gs = group_scale(w.subspan(gstart, group), kind);
        if (!gs) continue;
        if (fit_block(w.subspan(start, kBlock), kind, gs->d, gs->m, scratch) == BlockFit::kExact) ++on;
      }
      const double share = n_sample ? double(on) / double(n_sample) : 0.0;
      // Strictly better share wins; ties keep the earlier (simpler) hypothesis.
      if (share >= min_share && on > best.blocks_on) {
        best.spec = {kind, group};
        best.blocks_on = on;
        best.blocks_sampled = n_sample;
      }
    }
  }
  if (best.spec.kind == LatticeKind::kNone) best.blocks_sampled = n_sample;
  return best;
}

bool lattice_target_supported(GgmlType target, LatticeKind kind) {
  if (kind == LatticeKind::kNone) return false;
  if (target == GgmlType::Q4_1) return true;
  return (target == GgmlType::Q4_0 || target == GgmlType::Q8_0) && kind != LatticeKind::kAsymmetric;
}

void encode_lattice_row(std::span<const float> w, LatticeSpec spec, GgmlType target,
                        std::span<std::byte> dst, LatticeEncodeStats& stats) {
  const std::size_t cols = w.size();
  if (!lattice_target_supported(target, spec.kind))
    fail("lattice {} cannot be written exactly as {}", lattice_kind_name(spec.kind), type_name(target));
  if (cols % static_cast<std::size_t>(spec.group_size) != 0 || cols % kBlock != 0)
    fail("row of {} weights is not a whole number of {}-weight groups", cols, spec.group_size);
  if (dst.size() != row_bytes(target, cols))
    fail("internal error: lattice row buffer holds {} bytes, {} needed", dst.size(), row_bytes(target, cols));
  const std::size_t bsize = type_size(target);
  std::array<float, kBlock> back{};
  for (std::size_t g = 0; g < cols; g += spec.group_size) {
    const auto group = w.subspan(g, spec.group_size);
    const auto gs = group_scale(group, spec.kind);
    for (std::size_t b = g; b < g + spec.group_size; b += kBlock) {
      const auto block = w.subspan(b, kBlock);
      std::byte* out = dst.data() + b / kBlock * bsize;
      ++stats.blocks;
      LatticeBlock lb;
      BlockFit fit = BlockFit::kOffLattice;
      if (gs) fit = fit_block(block, spec.kind, gs->d, gs->m, lb);
      else if (std::any_of(block.begin(), block.end(), [](float v) { return !std::isfinite(v); }))
        fit = BlockFit::kNotFinite;
      bool exact = false;
      if (fit == BlockFit::kExact) {
        exact = write_exact_block(lb, spec.kind, target, out);
        if (exact) ++stats.exact;
        else ++stats.scale_unrepresentable;
      } else if (fit == BlockFit::kNotFinite) {
        ++stats.not_finite;
      } else {
        ++stats.off_lattice;
      }
      if (!exact) quantize_row(target, block, std::span(out, bsize));
      dequantize_row(target, std::span<const std::byte>(out, bsize), back);
      for (int i = 0; i < kBlock; ++i)
        stats.max_abs_error = std::max(stats.max_abs_error, static_cast<double>(std::fabs(back[i] - block[i])));
    }
  }
}

}  // namespace qforge
