// 8-bit activations for integer matmul on the CPU. Each activation row is quantized once per
// matmul into blocks of 32 int8 values with one F32 scale (d = max|x| / 127, q = round(x / d)),
// plus d * (sum of q) over each half block (16 values). Weight rows stay in their GGUF block
// format; the kernels decode them to signed int8 codes with per-block scales (see
// q8_act_decode.h) and multiply them with integer dot products (AVX2 maddubs/madd), accumulating
// each block's integer result into F32 with the product of the two scales. Offsets of the
// asymmetric formats (Q4_1/Q5_1 mins, K-quant mins) use the stored half-block sums.
//
// The result of a dot product is the same whatever the number of rows / tokens multiplied at once
// (the tiled kernel keeps each output's summation order), and the portable scalar kernel
// reproduces the AVX2 / AVX512-VNNI ones bit for bit (it emulates their 8 F32 lanes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "quant/ggml_type.h"

namespace qforge {

inline constexpr std::size_t kQ8ActBlock = 32;

namespace q8act {
// Scratch of trivial values whose data() is 64-byte aligned, so that the kernels' 32-byte loads
// of rows that start at multiples of 32 bytes never straddle a cache line. resize() only ever
// grows the storage (a matmul alternates between row lengths; growing a vector again would
// zero-fill it every time) and leaves the contents unspecified.
template <typename T>
class AlignedBuffer {
 public:
  void resize(std::size_t n) {
    if (n + kPad > storage_.size()) {
      storage_.resize(n + kPad);
      const auto addr = reinterpret_cast<std::uintptr_t>(storage_.data());
      offset_ = ((kAlign - addr % kAlign) % kAlign) / sizeof(T);
    }
    size_ = n;
  }
  std::size_t size() const { return size_; }
  T* data() { return storage_.data() + offset_; }
  const T* data() const { return storage_.data() + offset_; }

 private:
  static constexpr std::size_t kAlign = 64;
  static constexpr std::size_t kPad = kAlign / sizeof(T);
  std::vector<T> storage_;
  std::size_t offset_ = 0, size_ = 0;
};
}  // namespace q8act

class Q8Activations {
 public:
  // Quantizes n_rows rows of n_cols floats (n_cols % kQ8ActBlock == 0), rows in parallel when
  // there are several. Reuses the buffers of a previous call.
  void quantize(std::span<const float> x, std::size_t n_rows, std::size_t n_cols);

  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  std::size_t blocks_per_row() const { return cols_ / kQ8ActBlock; }

  const std::int8_t* codes(std::size_t row) const { return q_.data() + row * cols_; }
  const float* scales(std::size_t row) const { return d_.data() + row * blocks_per_row(); }
  // 2 per block: d * sum(q) over elements 0..15 and 16..31 of the block.
  const float* half_sums(std::size_t row) const {
    return sums_.data() + row * 2 * blocks_per_row();
  }

  // For the multi-token VNNI tile, written when rows() >= kGroupRows:
  // the codes + 128 as unsigned bytes (what the VNNI dot product takes) of a row,
  const std::uint8_t* biased_codes(std::size_t row) const { return uq_.data() + row * cols_; }
  // and the scales of the rows 4g..4g+3 interleaved per block (4 per block), for g < rows() / 4.
  static constexpr std::size_t kGroupRows = 4;
  const float* group_scales(std::size_t g) const {
    return group_d_.data() + g * kGroupRows * blocks_per_row();
  }

  // The values the codes stand for (d * q), for tests.
  void dequantize_row(std::size_t row, std::span<float> out) const;

 private:
  std::size_t rows_ = 0, cols_ = 0;
  q8act::AlignedBuffer<std::int8_t> q_;
  q8act::AlignedBuffer<std::uint8_t> uq_;
  q8act::AlignedBuffer<float> d_, sums_, group_d_;
};

// Quantizes one row with the portable scalar code (the dispatched one is AVX2 when built so);
// both give identical bytes. codes: n, scales: n / 32, half_sums: n / 16.
void quantize_activation_row_scalar(std::span<const float> x, std::span<std::int8_t> codes,
                                    std::span<float> scales, std::span<float> half_sums);

// Weight types the 8-bit activation kernels support (the row length must also be a multiple of
// the type's block size, as every GGUF row is).
bool q8_act_supported(GgmlType type);

// Instruction sets of the kernels. All give bit-identical results (they follow the same lane
// structure); the fastest available one is used, QFORGE_Q8_ISA=scalar|avx2 caps it.
enum class Q8Isa { kScalar, kAvx2, kAvx512Vnni };
bool q8_act_isa_available(Q8Isa isa);
Q8Isa q8_act_isa();

// sum_i dequant(row)[i] * act(t)[i]: one weight row (row_bytes(type, a.cols()) bytes) times
// activation row t of `a`.
float dot_row_q8(GgmlType type, std::span<const std::byte> row, const Q8Activations& a,
                 std::size_t t);
// The same with the kernels (and for kScalar also the weight decoders) of one instruction set.
float dot_row_q8_isa(Q8Isa isa, GgmlType type, std::span<const std::byte> row,
                     const Q8Activations& a, std::size_t t);

// y[t * ldy + r] = dot_row_q8(type, row r, a, t) for r in [r0, r1) and every row t of `a`.
// weights points at row 0; rows are row_stride bytes apart. Register-blocked over a few weight
// rows x a few activation rows; each weight row is decoded once per call.
// With a single activation row the fused one-token kernels (q8_act_gemv.h) are used where the
// type has one; they give the same bits as the tiled kernels.
void matmul_q8_rows(GgmlType type, const std::byte* weights, std::size_t row_stride, std::size_t r0,
                    std::size_t r1, const Q8Activations& a, float* y, std::size_t ldy);

// The same with the kernels of one instruction set (tests, benchmarks).
void matmul_q8_rows_isa(Q8Isa isa, GgmlType type, const std::byte* weights, std::size_t row_stride,
                        std::size_t r0, std::size_t r1, const Q8Activations& a, float* y,
                        std::size_t ldy);

// Whether `isa` has a fused one-token kernel for `type`.
bool q8_gemv_available(Q8Isa isa, GgmlType type);
// y[r - r0] = dot_row_q8_isa(isa, type, row r, a, t) for r in [r0, r1), computed with the fused
// kernel of `isa` (which must exist: q8_gemv_available).
void matmul_q8_gemv_isa(Q8Isa isa, GgmlType type, const std::byte* weights, std::size_t row_stride,
                        std::size_t r0, std::size_t r1, const Q8Activations& a, std::size_t t,
                        float* y);

}  // namespace qforge
