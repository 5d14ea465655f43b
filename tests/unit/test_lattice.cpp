#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/half.h"
#include "quant/blocks.h"
#include "quant/lattice.h"

namespace qforge {
namespace {

float bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// A QAT-style tensor: per group, a BF16 scale and integer codes, stored as bf16(d*q + m). The
// scale follows each kind's rule so that the group's extremum carries the extreme code.
std::vector<float> make_lattice(LatticeKind kind, int group, std::size_t rows, std::size_t cols,
                                std::uint32_t seed, float scale_magnitude = 0.01f) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code8(-8, 7), code7(-7, 7), code15(0, 15), sign(0, 1);
  std::uniform_real_distribution<float> mag(0.5f, 2.0f);
  std::vector<float> w(rows * cols);
  for (std::size_t g = 0; g < w.size(); g += group) {
    const float d = bf16(scale_magnitude * mag(rng) * (sign(rng) ? 1.0f : -1.0f));
    const float m = kind == LatticeKind::kAsymmetric ? bf16(-8 * std::fabs(d) * mag(rng)) : 0.0f;
    std::vector<int> q(group);
    for (int i = 0; i < group; ++i) {
      q[i] = kind == LatticeKind::kSymmetric8 ? code8(rng) : kind == LatticeKind::kSymmetric7 ? code7(rng) : code15(rng);
    }
    // Pin the extremum so the group's scale is implied by its own data.
    const int pos = static_cast<int>(rng() % group);
    if (kind == LatticeKind::kSymmetric8) {
      for (int& c : q) c = std::max(c, -7);
      q[pos] = -8;
    } else if (kind == LatticeKind::kSymmetric7) {
      q[pos] = 7;
    } else {
      q[pos] = 15;
      q[(pos + 1) % group] = 0;
    }
    const float dd = kind == LatticeKind::kSymmetric7 ? std::fabs(d) : d;
    const float use_d = kind == LatticeKind::kAsymmetric ? std::fabs(d) : dd;
    for (int i = 0; i < group; ++i) w[g + i] = bf16(use_d * static_cast<float>(q[i]) + m);
  }
  return w;
}

std::vector<float> dequantize_all(GgmlType t, const std::vector<std::byte>& bytes, std::size_t n) {
  std::vector<float> out(n);
  dequantize_row(t, bytes, out);
  return out;
}

struct Case {
  LatticeKind kind;
  int group;
  GgmlType target;
};

class LatticeRecovery : public ::testing::TestWithParam<Case> {};

TEST_P(LatticeRecovery, DetectsGridAndEncodesEveryBlockExactly) {
  const auto [kind, group, target] = GetParam();
  const std::size_t rows = 16, cols = 256;
  const auto w = make_lattice(kind, group, rows, cols, 1234u + group);
  const auto det = detect_lattice(w, cols);
  EXPECT_EQ(det.spec.kind, kind);
  EXPECT_EQ(det.spec.group_size, group);
  EXPECT_DOUBLE_EQ(det.share(), 1.0);

  LatticeEncodeStats stats;
  std::vector<std::byte> row(row_bytes(target, cols));
  for (std::size_t r = 0; r < rows; ++r) {
    const auto src = std::span(w).subspan(r * cols, cols);
    encode_lattice_row(src, det.spec, target, row, stats);
    // Re-derive the lattice value d*q + m of every weight and compare bit for bit.
    const auto back = dequantize_all(target, row, cols);
    for (std::size_t g = 0; g < cols; g += group) {
      const auto gs = group_scale(src.subspan(g, group), kind);
      ASSERT_TRUE(gs.has_value());
      for (std::size_t b = g; b < g + group; b += 32) {
        LatticeBlock lb;
        ASSERT_EQ(fit_block(src.subspan(b, 32), kind, gs->d, gs->m, lb), BlockFit::kExact);
        for (int i = 0; i < 32; ++i) {
          const float lattice_value = lb.d * static_cast<float>(lb.q[i]) + lb.m;
          ASSERT_EQ(back[b + i], lattice_value) << "row " << r << " col " << b + i;
          ASSERT_EQ(bf16(back[b + i]), src[b + i]);  // and the BF16 source is its rounding
        }
      }
    }
  }
  EXPECT_EQ(stats.blocks, rows * cols / 32);
  EXPECT_EQ(stats.exact, stats.blocks);
  EXPECT_EQ(stats.off_lattice, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Grids, LatticeRecovery,
    ::testing::Values(Case{LatticeKind::kSymmetric8, 32, GgmlType::Q4_0}, Case{LatticeKind::kSymmetric8, 32, GgmlType::Q8_0},
                      Case{LatticeKind::kSymmetric8, 32, GgmlType::Q4_1}, Case{LatticeKind::kSymmetric8, 64, GgmlType::Q4_0},
                      Case{LatticeKind::kSymmetric8, 128, GgmlType::Q4_0}, Case{LatticeKind::kSymmetric7, 32, GgmlType::Q4_0},
                      Case{LatticeKind::kSymmetric7, 64, GgmlType::Q8_0}, Case{LatticeKind::kAsymmetric, 32, GgmlType::Q4_1},
                      Case{LatticeKind::kAsymmetric, 128, GgmlType::Q4_1}));

TEST(Lattice, RandomBf16WeightsAreNotALattice) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(64 * 512);
  for (float& v : w) v = bf16(normal(rng));
  const auto det = detect_lattice(w, 512);
  EXPECT_EQ(det.spec.kind, LatticeKind::kNone);
  EXPECT_LT(det.share(), 0.01);
}

TEST(Lattice, NonBf16DataIsNotALattice) {
  auto w = make_lattice(LatticeKind::kSymmetric8, 32, 4, 64, 3);
  w[5] += 1e-7f;  // F32 data
  EXPECT_EQ(detect_lattice(w, 64).spec.kind, LatticeKind::kNone);
}

TEST(Lattice, PerturbedBlocksAreCountedAndStillQuantized) {
  const std::size_t cols = 128;
  auto w = make_lattice(LatticeKind::kSymmetric8, 32, 64, cols, 99);
  w[3 * 32 + 5] = bf16(w[3 * 32 + 5] * 1.37f + 0.001f);  // knock one block off the grid
  const auto det = detect_lattice(w, cols);
  ASSERT_EQ(det.spec.kind, LatticeKind::kSymmetric8);
  LatticeEncodeStats stats;
  std::vector<std::byte> row(row_bytes(GgmlType::Q4_0, cols));
  for (std::size_t r = 0; r < 64; ++r) encode_lattice_row(std::span(w).subspan(r * cols, cols), det.spec, GgmlType::Q4_0, row, stats);
  EXPECT_EQ(stats.blocks, 256u);
  EXPECT_EQ(stats.off_lattice, 1u);
  EXPECT_EQ(stats.exact, 255u);
  EXPECT_GT(stats.max_abs_error, 0.0);
}

TEST(Lattice, ScalesBelowF16RangeAreReportedNotRounded) {
  // d ~ 1e-8 is below F16's smallest subnormal (2^-24 ~ 6e-8): F16 would round it to 0 or 2^-24.
  const std::size_t cols = 64;
  const auto w = make_lattice(LatticeKind::kSymmetric8, 32, 2, cols, 5, 1e-8f);
  const auto det = detect_lattice(w, cols);
  ASSERT_EQ(det.spec.kind, LatticeKind::kSymmetric8);
  LatticeEncodeStats stats;
  std::vector<std::byte> row(row_bytes(GgmlType::Q4_0, cols));
  for (std::size_t r = 0; r < 2; ++r) encode_lattice_row(std::span(w).subspan(r * cols, cols), det.spec, GgmlType::Q4_0, row, stats);
  EXPECT_EQ(stats.exact, 0u);
  EXPECT_EQ(stats.scale_unrepresentable, 4u);
}

TEST(Lattice, NonFiniteWeightsAreCounted) {
  auto w = make_lattice(LatticeKind::kSymmetric8, 32, 1, 64, 11);
  w[40] = NAN;
  LatticeEncodeStats stats;
  std::vector<std::byte> row(row_bytes(GgmlType::Q8_0, 64));
  encode_lattice_row(w, {LatticeKind::kSymmetric8, 32}, GgmlType::Q8_0, row, stats);
  EXPECT_EQ(stats.not_finite, 1u);
  EXPECT_EQ(stats.exact, 1u);
}

TEST(Lattice, UnsupportedTargetIsAnError) {
  const auto w = make_lattice(LatticeKind::kAsymmetric, 32, 1, 64, 2);
  LatticeEncodeStats stats;
  std::vector<std::byte> row(row_bytes(GgmlType::Q4_0, 64));
  EXPECT_THROW(encode_lattice_row(w, {LatticeKind::kAsymmetric, 32}, GgmlType::Q4_0, row, stats), std::exception);
}

}  // namespace
}  // namespace qforge
