// Row-tiled GEMV: a CTA of 4 warps computes kRows rows together; the warps split the row into
// steps of 256 elements (warp w takes steps w, w+4, ...) and meet in shared memory at the end.
//
// Why this shape (docs/cuda.md has the measurements): the first kernel (one warp per row, lanes
// walking 16-weight units) was limited by L1 wavefronts, not by DRAM: each x load of a warp
// touched 16 scattered cache lines and was repeated for every row. Here each x load of a warp
// covers 4-8 cache lines, serves kRows rows and every token's weights are decoded once; the
// weight loads of a warp fall in 1-2 lines each. Splitting a row over 4 warps keeps enough CTAs
// (n_rows / kRows) and enough loads in flight for 4096-row matrices.
//
// The expert form (moe_gemv_tiled) is the same kernel with grid.y = slot: each slot reads its
// expert id from device memory (written by the routing kernel, so after pdl_wait) and offsets the
// weights, x and y; ids outside [0, n_experts) produce zero rows.
//
// Scales are applied once per run of 4 products (weight = s * code + o, so the run contributes
// s * sum(code * x) + o * sum(x)), which saves one multiply per weight.
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include "runtime/cuda/gemv_lanes.cuh"
#include "runtime/cuda/gemv_tiled.h"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda::detail {
namespace {

constexpr int kWarps = 4;
constexpr std::size_t kFewRows = 1024;

// Expert indirection of the expert form; ids == nullptr for a plain product.
struct Experts {
  const int* ids = nullptr;
  std::size_t expert_bytes = 0;
  int n_experts = 0;
  int x_group = 1;
};

template <typename L, int kRows, int kTokens, int kUnroll>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_tiled_kernel(const std::uint8_t* __restrict__ w, std::size_t row_bytes, int n_rows,
                      int n_cols, const float* __restrict__ x, float* __restrict__ y,
                      std::size_t ldy, Experts experts) {
  pdl_wait();
  pdl_trigger();
  constexpr int G = L::kGroups;
  __shared__ float partial[kWarps][kRows * kTokens];
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int row0 = static_cast<int>(blockIdx.x) * kRows;
  if (experts.ids != nullptr) {  // expert form: one token per slot (kTokens == 1)
    const int slot = static_cast<int>(blockIdx.y);
    const int e = experts.ids[slot];
    y += static_cast<std::size_t>(slot) * ldy;
    if (e < 0 || e >= experts.n_experts) {
      const int r = static_cast<int>(threadIdx.x);
      if (r < kRows && row0 + r < n_rows) y[row0 + r] = 0.0f;
      return;
    }
    w += static_cast<std::size_t>(e) * experts.expert_bytes;
    x += static_cast<std::size_t>(slot / experts.x_group) * static_cast<std::size_t>(n_cols);
  }

  const std::uint8_t* rows[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    rows[r] = w + static_cast<std::size_t>(min(row0 + r, n_rows - 1)) * row_bytes;
  }
  float acc[kRows][kTokens];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) acc[r][t] = 0.0f;
  }

  const int n_steps = (n_cols + L::kStepElems - 1) / L::kStepElems;
#pragma unroll kUnroll
  for (int step = warp; step < n_steps; step += kWarps) {
    int e[G];
    L::elems(step, lane, e);
    if (e[0] >= n_cols) continue;  // only in a partial last step
    float xv[kTokens][4 * G];
    float xsum[kTokens][G];
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(
            x + static_cast<std::size_t>(t) * static_cast<std::size_t>(n_cols) + e[g]));
        xv[t][4 * g] = v.x, xv[t][4 * g + 1] = v.y, xv[t][4 * g + 2] = v.z, xv[t][4 * g + 3] = v.w;
        if constexpr (L::kOffset) xsum[t][g] = (v.x + v.y) + (v.z + v.w);
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float c[4 * G], s[G], o[G];
      L::load(rows[r], step, lane, c, s, o);
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          float dot = c[4 * g] * xv[t][4 * g];
          dot = fmaf(c[4 * g + 1], xv[t][4 * g + 1], dot);
          dot = fmaf(c[4 * g + 2], xv[t][4 * g + 2], dot);
          dot = fmaf(c[4 * g + 3], xv[t][4 * g + 3], dot);
          if constexpr (L::kScaled) {
            acc[r][t] = fmaf(s[g], dot, acc[r][t]);
          } else {
            acc[r][t] += dot;
          }
          if constexpr (L::kOffset) acc[r][t] = fmaf(o[g], xsum[t][g], acc[r][t]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const float v = warp_sum(acc[r][t]);
      if (lane == 0) partial[warp][r * kTokens + t] = v;
    }
  }
  __syncthreads();
  const int i = static_cast<int>(threadIdx.x);
  if (i < kRows * kTokens) {
    const int r = i / kTokens, t = i % kTokens;
    if (row0 + r < n_rows) {
      float sum = 0.0f;
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) sum += partial[wi][i];
      y[static_cast<std::size_t>(t) * ldy + static_cast<std::size_t>(row0 + r)] = sum;
    }
  }
}

template <typename L, int kRows, int kTokens, int kUnroll = 2>  // kUnroll: steps in flight
void launch(const void* w, std::size_t row_bytes, std::size_t n_rows, std::size_t n_cols,
            const float* x, float* y, std::size_t ldy, StreamHandle stream, Experts experts,
            unsigned n_slots) {
  const dim3 grid(static_cast<unsigned>((n_rows + kRows - 1) / kRows), n_slots);
  launch_pdl("gemv_tiled_kernel", gemv_tiled_kernel<L, kRows, kTokens, kUnroll>, grid, kWarps * 32,
             0, stream, static_cast<const std::uint8_t*>(w), row_bytes, static_cast<int>(n_rows),
             static_cast<int>(n_cols), x, y, ldy, experts);
  QFORGE_CUDA_CHECK_LAUNCH("gemv_tiled_kernel");
}

// A plain product of n_tokens tokens.
template <typename L>
void run(const void* w, std::size_t row_bytes, std::size_t n_rows, std::size_t n_cols,
         const float* x, float* y, std::size_t ldy, int n_tokens, StreamHandle stream) {
  switch (n_tokens) {
    case 1:
      // Matrices of few rows (a MoE router: 128 x 2816) get a CTA per row, else 32 CTAs would
      // read the whole matrix.
      if (n_rows < kFewRows) {
        return launch<L, 1, 1>(w, row_bytes, n_rows, n_cols, x, y, ldy, stream, {}, 1);
      }
      return launch<L, 4, 1>(w, row_bytes, n_rows, n_cols, x, y, ldy, stream, {}, 1);
    case 2:
      return launch<L, 4, 2>(w, row_bytes, n_rows, n_cols, x, y, ldy, stream, {}, 1);
    case 4:
      return launch<L, 4, 4>(w, row_bytes, n_rows, n_cols, x, y, ldy, stream, {}, 1);
    case 8:
      return launch<L, 2, 8>(w, row_bytes, n_rows, n_cols, x, y, ldy, stream, {}, 1);
    default:
      cuda_fail("CUDA gemv (tiled): batch of ", n_tokens, " tokens is not 1, 2, 4 or 8");
  }
}

// Calls fn with the lane layout of `type` and returns true, or returns false for a type the
// row-tiled kernel does not decode.
template <typename Fn>
bool dispatch(GgmlType type, Fn&& fn) {
  switch (type) {
    case GgmlType::F32:
      fn(lanes::F32{});
      return true;
    case GgmlType::F16:
      fn(lanes::F16{});
      return true;
    case GgmlType::BF16:
      fn(lanes::BF16{});
      return true;
    case GgmlType::Q4_0:
      fn(lanes::Q4_0{});
      return true;
    case GgmlType::Q8_0:
      fn(lanes::Q8_0{});
      return true;
    case GgmlType::Q4_K:
      fn(lanes::Q4_K{});
      return true;
    default:
      return false;
  }
}

void no_kernel(GgmlType type) {
  cuda_fail("CUDA gemv (tiled): no kernel for ", type_name(type));
}

void check_size(std::size_t n_rows, std::size_t n_cols) {
  if (n_rows > 0x7fffffffu || n_cols > 0x7fffff00u) {
    cuda_fail("CUDA gemv (tiled): ", n_rows, " x ", n_cols, " is too large");
  }
}

}  // namespace

bool gemv_tiled_supported(GgmlType type) {
  return dispatch(type, [](auto) {});
}

void gemv_tiled(GgmlType type, const void* w, std::size_t n_rows, std::size_t n_cols,
                const float* x, float* y, std::size_t ldy, int n_tokens, StreamHandle stream) {
  check_size(n_rows, n_cols);
  const std::size_t rb = row_bytes(type, n_cols);
  const bool ok = dispatch(
      type, [&]<typename L>(L) { run<L>(w, rb, n_rows, n_cols, x, y, ldy, n_tokens, stream); });
  if (!ok) no_kernel(type);
}

void moe_gemv_tiled(GgmlType type, const void* w, std::size_t expert_bytes, int n_experts,
                    std::size_t n_rows, std::size_t n_cols, const int* ids, int n_slots,
                    int x_group, const float* x, float* y, std::size_t ldy, StreamHandle stream) {
  check_size(n_rows, n_cols);
  const std::size_t rb = row_bytes(type, n_cols);
  const Experts experts{ids, expert_bytes, n_experts, x_group};
  const bool ok = dispatch(type, [&]<typename L>(L) {
    launch<L, 4, 1>(w, rb, n_rows, n_cols, x, y, ldy, stream, experts,
                    static_cast<unsigned>(n_slots));
  });
  if (!ok) no_kernel(type);
}

}  // namespace qforge::cuda::detail
