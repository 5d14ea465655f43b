// GGUF Q4_0 -> Q4_0x8 (q4_0x8.h), on the device, once per matrix at load time.
#include "runtime/cuda/check.cuh"

#include <algorithm>

#include "runtime/cuda/buffer.h"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/q4_0x8.cuh"
#include "runtime/cuda/q4_0x8.h"

namespace qforge::cuda {
namespace {

constexpr std::size_t kBlockBytes = 18;

// One thread per 32-column block of n_rows rows of row_blocks blocks: src holds the rows in GGUF
// order, dst receives them as Q4_0x8 rows of dst_row_bytes. The thread of a row's last block
// zeroes the unused scales of a partial last group.
__global__ void repack_kernel(const std::uint8_t* __restrict__ src, std::uint8_t* __restrict__ dst,
                              std::size_t n_blocks, int row_blocks, std::size_t dst_row_bytes) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= n_blocks) return;
  const auto* in = reinterpret_cast<const unsigned short*>(src + i * kBlockBytes);
  const std::size_t row = i / static_cast<std::size_t>(row_blocks);
  const int b = static_cast<int>(i % static_cast<std::size_t>(row_blocks));
  std::uint8_t* base = dst + row * dst_row_bytes;
  *reinterpret_cast<unsigned short*>(base + q4_0x8::scale_offset(b)) = in[0];
  uint4 codes;
  codes.x = in[1] | static_cast<unsigned>(in[2]) << 16;
  codes.y = in[3] | static_cast<unsigned>(in[4]) << 16;
  codes.z = in[5] | static_cast<unsigned>(in[6]) << 16;
  codes.w = in[7] | static_cast<unsigned>(in[8]) << 16;
  *reinterpret_cast<uint4*>(base + q4_0x8::codes_offset(b)) = codes;
  if (b == row_blocks - 1) {
    for (int j = b % q4_0x8::kGroupBlocks + 1; j < q4_0x8::kGroupBlocks; ++j) {
      *reinterpret_cast<unsigned short*>(
          base + q4_0x8::scale_offset(b - b % q4_0x8::kGroupBlocks + j)) = 0;
    }
  }
}

// Rows from the last chunk to the first: a chunk's Q4_0x8 rows start at or after its GGUF rows
// (row_bytes <= q4_0x8_row_bytes), so writing them never overwrites rows still to be read; each
// chunk is copied to the scratch buffer first, since its own two forms overlap.
void repack_rows(void* w, std::size_t n_rows, std::size_t n_cols,
                 DeviceBuffer<std::uint8_t>& scratch, StreamHandle stream) {
  const int row_blocks = static_cast<int>(n_cols / 32);
  const std::size_t src_row = static_cast<std::size_t>(row_blocks) * kBlockBytes;
  const std::size_t dst_row = q4_0x8_row_bytes(n_cols);
  if (n_rows == 0) return;
  const std::size_t chunk_rows =
      std::clamp<std::size_t>((std::size_t{64} << 20) / src_row, 1, n_rows);
  scratch.reserve_discard(chunk_rows * src_row);  // a previous call's work is synchronized
  auto* bytes = static_cast<std::uint8_t*>(w);
  const std::size_t n_chunks = (n_rows + chunk_rows - 1) / chunk_rows;
  for (std::size_t c = n_chunks; c-- > 0;) {
    const std::size_t first = c * chunk_rows, rows = std::min(chunk_rows, n_rows - first);
    detail::copy_device_to_device(scratch.data(), bytes + first * src_row, rows * src_row, stream);
    const std::size_t n = rows * static_cast<std::size_t>(row_blocks);
    repack_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
        scratch.data(), bytes + first * dst_row, n, row_blocks, dst_row);
    QFORGE_CUDA_CHECK_LAUNCH("repack_kernel");
  }
  QFORGE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

bool q4_0x8_enabled() {
  static const bool on = switch_on("QFORGE_Q4_0X8");
  return on;
}

}  // namespace

bool q4_0x8_applies(GgmlType type, std::size_t n_cols) {
  return q4_0x8_enabled() && type == GgmlType::Q4_0 && n_cols > 0 && n_cols % 256 == 0 &&
         n_cols <= kMaxQ4_0x8Cols;
}

void repack_q4_0x8(void* w, std::size_t n_rows, std::size_t n_cols, StreamHandle stream) {
  DeviceBuffer<std::uint8_t> scratch;
  repack_q4_0x8(w, n_rows, n_cols, scratch, stream);
}

void repack_q4_0x8(void* w, std::size_t n_rows, std::size_t n_cols,
                   DeviceBuffer<std::uint8_t>& scratch, StreamHandle stream) {
  if (n_cols == 0 || n_cols % 256 != 0 || reinterpret_cast<std::uintptr_t>(w) % 16 != 0) {
    cuda_fail("repack_q4_0x8: ", n_cols, " columns at ", w,
              " (need a positive multiple of 256 columns and 16-byte alignment)");
  }
  repack_rows(w, n_rows, n_cols, scratch, stream);
}

bool q4_0x8_widened_applies(GgmlType type, std::size_t n_cols) {
  static const bool down = switch_on("QFORGE_Q4_0X8_DOWN");
  return down && q4_0x8_enabled() && type == GgmlType::Q4_0 && n_cols > 0 && n_cols % 32 == 0 &&
         n_cols <= kMaxQ4_0x8Cols;
}

void repack_q4_0x8_widening(void* w, std::size_t n_rows, std::size_t n_cols,
                            DeviceBuffer<std::uint8_t>& scratch, StreamHandle stream) {
  if (n_cols == 0 || n_cols % 32 != 0 || n_cols > kMaxQ4_0x8Cols ||
      reinterpret_cast<std::uintptr_t>(w) % 16 != 0) {
    cuda_fail("repack_q4_0x8_widening: ", n_cols, " columns at ", w,
              " (need a positive multiple of 32 columns up to ", kMaxQ4_0x8Cols,
              " and 16-byte alignment)");
  }
  repack_rows(w, n_rows, n_cols, scratch, stream);
}

}  // namespace qforge::cuda
