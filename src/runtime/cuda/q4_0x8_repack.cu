// GGUF Q4_0 -> Q4_0x8 (q4_0x8.h), on the device, once per matrix at load time.
#include "runtime/cuda/check.cuh"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "runtime/cuda/buffer.h"
#include "runtime/cuda/q4_0x8.cuh"
#include "runtime/cuda/q4_0x8.h"

namespace qforge::cuda {
namespace {

constexpr std::size_t kBlockBytes = 18;

// One thread per 32-column block; rows are whole groups, so the blocks of all rows are simply
// consecutive groups of 8.
__global__ void repack_kernel(const std::uint8_t* __restrict__ src, std::uint8_t* __restrict__ dst,
                              std::size_t n_blocks) {
  const std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= n_blocks) return;
  const auto* in = reinterpret_cast<const unsigned short*>(src + i * kBlockBytes);
  const std::size_t group = i / q4_0x8::kGroupBlocks;
  const int b = static_cast<int>(i % q4_0x8::kGroupBlocks);
  std::uint8_t* base = dst + group * q4_0x8::kGroupBytes;
  *reinterpret_cast<unsigned short*>(base + q4_0x8::scale_offset(b)) = in[0];
  uint4 codes;
  codes.x = in[1] | static_cast<unsigned>(in[2]) << 16;
  codes.y = in[3] | static_cast<unsigned>(in[4]) << 16;
  codes.z = in[5] | static_cast<unsigned>(in[6]) << 16;
  codes.w = in[7] | static_cast<unsigned>(in[8]) << 16;
  *reinterpret_cast<uint4*>(base + q4_0x8::codes_offset(b)) = codes;
}

}  // namespace

bool q4_0x8_applies(GgmlType type, std::size_t n_cols) {
  static const bool enabled = [] {
    const char* env = std::getenv("QFORGE_Q4_0X8");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return enabled && type == GgmlType::Q4_0 && n_cols > 0 && n_cols % 256 == 0 &&
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
  const std::size_t total = n_rows * (n_cols / 32);  // blocks
  constexpr std::size_t kChunkGroups = (std::size_t{64} << 20) / q4_0x8::kGroupBytes;
  const std::size_t chunk = std::min(total, kChunkGroups * q4_0x8::kGroupBlocks);
  if (total == 0) return;
  scratch.reserve_discard(chunk * kBlockBytes);  // a previous call's work is synchronized
  auto* bytes = static_cast<std::uint8_t*>(w);
  for (std::size_t first = 0; first < total; first += chunk) {
    const std::size_t n = std::min(chunk, total - first);
    std::uint8_t* piece = bytes + first * kBlockBytes;
    detail::copy_device_to_device(scratch.data(), piece, n * kBlockBytes, stream);
    repack_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(scratch.data(), piece,
                                                                              n);
    QFORGE_CUDA_CHECK_LAUNCH("repack_kernel");
  }
  QFORGE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace qforge::cuda
