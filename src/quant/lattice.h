// Recovery of the 4-bit lattice that quantization-aware training leaves in BF16 weights.
//
// A QAT checkpoint stores w = bf16(d * q) for each block of consecutive input weights, with one BF16
// scale d per group (32, 64 or 128 weights) and integer codes q in a small range. Google's rule for
// Gemma QAT is ggml's Q4_0 grid: d = (signed element of largest magnitude) / -8, q in [-8, 7].
// Other grids seen in the wild: symmetric q in [-7, 7] with d = max|w| / 7, and asymmetric
// w = bf16(d * q + m) with q in [0, 15] (Q4_1-like). detect_lattice() finds which grid (if any) a
// tensor's blocks sit on, fit_block() recovers (d, m, q) for one block exactly, and the encoders
// write those codes into ggml blocks that dequantize to exactly d*q (+ m).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "quant/ggml_type.h"

namespace qforge {

enum class LatticeKind : std::uint8_t {
  kNone,
  kSymmetric8,   // q in [-8, 7], extremum coded as -8 (Google / ggml Q4_0)
  kSymmetric7,   // q in [-7, 7], extremum coded as +-7
  kAsymmetric,   // q in [0, 15], w = d*q + m (Q4_1-like)
};
std::string_view lattice_kind_name(LatticeKind kind);

struct LatticeSpec {
  LatticeKind kind = LatticeKind::kNone;
  int group_size = 32;  // weights sharing one scale: 32, 64 or 128
};

// One 32-weight block on a lattice: value_i = d * q_i + m (m = 0 for symmetric kinds), computed in
// F32 (exact: d has 8 significant bits and |q| <= 15).
struct LatticeBlock {
  float d = 0;
  float m = 0;
  std::array<std::int8_t, 32> q{};
};

enum class BlockFit : std::uint8_t { kExact, kOffLattice, kNotFinite };

// Fits the block w[0..32) given the scale (and minimum) derived from its whole group. Returns kExact
// when every weight equals bf16(d*q + m) for integer q in the kind's range.
BlockFit fit_block(std::span<const float> w, LatticeKind kind, float d, float m, LatticeBlock& out);

// The (d, m) that the group's weights imply under `kind`: from the extremum, with a BF16 d; where
// several BF16 scales reproduce the extremum, the one that fits the most blocks of the group.
// nullopt when no BF16 scale reproduces the extremum (or a weight is not finite).
struct GroupScale {
  float d = 0;
  float m = 0;
};
std::optional<GroupScale> group_scale(std::span<const float> group, LatticeKind kind);

struct LatticeDetection {
  LatticeSpec spec;               // kNone when no grid explains enough blocks
  std::uint64_t blocks_sampled = 0;
  std::uint64_t blocks_on = 0;    // among the sampled blocks
  double share() const { return blocks_sampled ? double(blocks_on) / double(blocks_sampled) : 0.0; }
};

// w: a row-major [rows, cols] tensor (cols = input dim, contiguous) of exact BF16 values widened to
// F32. Samples up to max_blocks blocks spread over the tensor, tries every grid and group size, and
// returns the one with the highest share if it reaches min_share.
LatticeDetection detect_lattice(std::span<const float> w, std::size_t cols, double min_share = 0.98,
                                std::size_t max_blocks = 4096);

// Per-tensor accounting of an exact encoding.
struct LatticeEncodeStats {
  std::uint64_t blocks = 0;
  std::uint64_t exact = 0;           // dequantize to exactly d*q (+m)
  std::uint64_t off_lattice = 0;     // not on the grid: quantized by the ordinary quantizer
  std::uint64_t scale_unrepresentable = 0;  // on the grid but d (or m) not exact in F16
  std::uint64_t not_finite = 0;
  double max_abs_error = 0;          // vs the BF16 source, over all blocks
};

// True for the output types that can carry a lattice exactly: Q4_0 and Q8_0 (symmetric kinds),
// Q4_1 (all kinds).
bool lattice_target_supported(GgmlType target, LatticeKind kind);

// Encodes one row of `cols` weights (cols % 32 == 0, and % group_size == 0) into `dst` (row_bytes of
// `target`). Blocks that are on the lattice with an F16-exact scale are written exactly; others go
// through quantize_row's ordinary path for that block. Counts into stats.
void encode_lattice_row(std::span<const float> w, LatticeSpec spec, GgmlType target,
                        std::span<std::byte> dst, LatticeEncodeStats& stats);

}  // namespace qforge
