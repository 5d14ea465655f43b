// Tensor-core GEMM (gemm_tc.h): argument checks, the activation conversion and the scratch buffer;
// the kernels are in gemm_tc_kernel.cuh, instantiated per format family.
#include "runtime/cuda/check.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <vector>

#include "runtime/cuda/buffer.h"
#include "runtime/cuda/device_attrs.h"
#include "runtime/cuda/gemm_tc.h"
#include "runtime/cuda/gemm_tc_internal.h"

namespace qforge::cuda {
namespace {

__global__ void convert_to_bf16_kernel(const float4* __restrict__ x, uint4* __restrict__ out,
                                       std::size_t n8) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float4 a = __ldg(x + 2 * i), b = __ldg(x + 2 * i + 1);
    uint4 v;
    const __nv_bfloat162 p0 = __floats2bfloat162_rn(a.x, a.y), p1 = __floats2bfloat162_rn(a.z, a.w);
    const __nv_bfloat162 p2 = __floats2bfloat162_rn(b.x, b.y), p3 = __floats2bfloat162_rn(b.z, b.w);
    v.x = *reinterpret_cast<const unsigned*>(&p0);
    v.y = *reinterpret_cast<const unsigned*>(&p1);
    v.z = *reinterpret_cast<const unsigned*>(&p2);
    v.w = *reinterpret_cast<const unsigned*>(&p3);
    out[i] = v;
  }
}

// Column granularity and weight alignment each format's decoder needs.
struct FormatNeeds {
  std::size_t cols;
  std::size_t align;
};

bool needs_of(GgmlType type, FormatNeeds& needs) {
  switch (type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
      needs = {8, 16};
      return true;
    case GgmlType::Q4_0:
    case GgmlType::Q5_0:
    case GgmlType::Q8_0:
    case GgmlType::IQ4_NL:
      needs = {32, 2};
      return true;
    case GgmlType::Q4_1:
    case GgmlType::Q5_1:
      needs = {32, 4};
      return true;
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
      needs = {256, 16};
      return true;
    case GgmlType::Q6_K:
      needs = {256, 2};
      return true;
    default:
      return false;
  }
}

std::atomic<GemmTile>& tile_choice() {
  static std::atomic<GemmTile> tile{GemmTile::kAuto};
  return tile;
}

struct DeviceState {
  DeviceBuffer<std::uint16_t> scratch;
};

std::mutex& state_mutex() {
  static std::mutex m;
  return m;
}

DeviceState& device_state(int device) {  // caller holds state_mutex()
  static std::vector<DeviceState> states;
  if (static_cast<std::size_t>(device) >= states.size()) {
    states.resize(static_cast<std::size_t>(device) + 1);
  }
  return states[static_cast<std::size_t>(device)];
}

int current_device() {
  int device = 0;
  QFORGE_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void check_args(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols, const void* x,
                const float* y, std::size_t ldy, int n_tokens, WeightLayout layout) {
  FormatNeeds needs{};
  if (!needs_of(type, needs)) cuda_fail("CUDA gemm: no kernel for weight type ", type_name(type));
  if (layout == WeightLayout::kQ4_0x8) {
    if (type != GgmlType::Q4_0) cuda_fail("CUDA gemm: the Q4_0x8 layout needs Q4_0 weights");
    needs = {256, 16};
  }
  if (n_cols == 0 || n_cols % needs.cols != 0) {
    cuda_fail("CUDA gemm: ", type_name(type), " rows need a column count that is a positive ",
              "multiple of ", needs.cols, ", got ", n_cols);
  }
  if (n_rows == 0 || n_rows > 65535u * 64u || n_cols > 0x7fffffc0u) {
    cuda_fail("CUDA gemm: ", n_rows, " x ", n_cols, " weights are out of range (rows in [1, ",
              65535u * 64u, "], columns below 2^31)");
  }
  if (n_tokens < 1) cuda_fail("CUDA gemm: n_tokens must be at least 1, got ", n_tokens);
  if (ldy < n_rows) cuda_fail("CUDA gemm: output stride ", ldy, " < rows ", n_rows);
  if (w == nullptr || reinterpret_cast<std::uintptr_t>(w) % needs.align != 0) {
    cuda_fail("CUDA gemm: ", type_name(type), " weights at ", w, " must be non-null and ",
              needs.align, "-byte aligned");
  }
  if (x == nullptr || reinterpret_cast<std::uintptr_t>(x) % 16 != 0 || y == nullptr) {
    cuda_fail("CUDA gemm: x must be a 16-byte aligned device array and y non-null");
  }
}

gemm_tc::Args make_args(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols,
                        const std::uint16_t* x_bf16, float* y, std::size_t ldy, int n_tokens,
                        StreamHandle stream, int sms, WeightLayout layout) {
  gemm_tc::Args args{};
  args.q4_0x8 = layout == WeightLayout::kQ4_0x8;
  args.w = static_cast<const std::uint8_t*>(w);
  args.row_bytes = row_bytes(type, n_cols);
  args.n_rows = static_cast<int>(n_rows);
  args.n_cols = static_cast<int>(n_cols);
  args.n_tokens = n_tokens;
  args.x = x_bf16;
  args.y = y;
  args.ldy = ldy;
  args.stream = stream;
  args.sm_count = sms;
  args.tile = static_cast<int>(tile_choice().load());
  return args;
}

void run_checked(GgmlType type, const gemm_tc::Args& args) {
  if (!gemm_tc::run_legacy(type, args) && !gemm_tc::run_kquant(type, args) &&
      !gemm_tc::run_float(type, args)) {
    cuda_fail("CUDA gemm: no kernel for weight type ", type_name(type));
  }
}

}  // namespace

void set_gemm_tile(GemmTile tile) {
  tile_choice().store(tile);
}
GemmTile gemm_tile() {
  return tile_choice().load();
}

bool gemm_supported(GgmlType type) {
  FormatNeeds needs{};
  return needs_of(type, needs);
}

void convert_to_bf16(const float* x, std::uint16_t* out, std::size_t n, StreamHandle stream) {
  if (n % 8 != 0 || reinterpret_cast<std::uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(out) % 16 != 0) {
    cuda_fail("CUDA convert_to_bf16: ", n, " elements (need a multiple of 8) at ", x, " -> ", out,
              " (need 16-byte alignment)");
  }
  if (n == 0) return;
  const std::size_t n8 = n / 8;
  const auto blocks = static_cast<unsigned>(std::min<std::size_t>((n8 + 255) / 256, 4096));
  convert_to_bf16_kernel<<<blocks, 256, 0, stream>>>(reinterpret_cast<const float4*>(x),
                                                     reinterpret_cast<uint4*>(out), n8);
  QFORGE_CUDA_CHECK_LAUNCH("convert_to_bf16_kernel");
}

void gemm_bf16_x(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols,
                 const std::uint16_t* x_bf16, float* y, std::size_t ldy, int n_tokens,
                 StreamHandle stream, WeightLayout layout) {
  check_args(type, w, n_rows, n_cols, x_bf16, y, ldy, n_tokens, layout);
  run_checked(type, make_args(type, w, n_rows, n_cols, x_bf16, y, ldy, n_tokens, stream,
                              current_sm_count(), layout));
}

void gemm(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols, const float* x,
          float* y, std::size_t ldy, int n_tokens, StreamHandle stream, WeightLayout layout) {
  check_args(type, w, n_rows, n_cols, x, y, ldy, n_tokens, layout);
  const std::size_t n = n_cols * static_cast<std::size_t>(n_tokens);
  const int device = current_device();
  // The lock covers the enqueueing only; calls on one stream are ordered by the stream.
  const std::lock_guard lock(state_mutex());
  DeviceState& state = device_state(device);
  if (state.scratch.size() < n) {
    // Work queued earlier may still read the old buffer: let it finish before freeing it.
    QFORGE_CUDA_CHECK(cudaDeviceSynchronize());
    state.scratch = DeviceBuffer<std::uint16_t>();
    state.scratch = DeviceBuffer<std::uint16_t>(n);
  }
  convert_to_bf16(x, state.scratch.data(), n, stream);
  run_checked(type, make_args(type, w, n_rows, n_cols, state.scratch.data(), y, ldy, n_tokens,
                              stream, current_sm_count(), layout));
}

}  // namespace qforge::cuda
