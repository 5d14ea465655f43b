// Gemma 4 kernels of the CUDA forward pass (see gemma4_ops.h).
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include "runtime/cuda/gemma4_ops.h"
#include "runtime/cuda/glu.cuh"
#include "runtime/cuda/reduce.cuh"
#include "runtime/cuda/row_regs.cuh"

namespace qforge::cuda {
namespace {

constexpr unsigned kThreads = 256;

unsigned blocks_for(std::size_t n, unsigned threads = kThreads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// One CTA per row, rows in registers (row_regs.cuh). The experts' row is the weighted sum of the
// token's k slot outputs, added in slot order (as the CPU reference). With kResidual the combined
// row goes on through residual_scale_norm's steps (r) instead of being stored in o.
template <int kPer, bool kResidual>
__global__ void __launch_bounds__(1024)
    moe_combine_kernel(float* __restrict__ o, const float* __restrict__ y,
                       const float* __restrict__ slot_w, int k, const float* __restrict__ w_dense,
                       const float* __restrict__ w_moe, ResidualNorm r, std::size_t n, float eps) {
  pdl_trigger_early();  // the next kernel is a GEMV (pdl.cuh)
  __shared__ float scratch[32];
  RowRegs<kPer> dense, experts, wd, we, wo, wn;
  wd.load_weights(w_dense, n);  // before the wait: no kernel writes them (pdl.cuh)
  we.load_weights(w_moe, n);
  if constexpr (kResidual) {
    wo.load_weights(r.o_norm, n);
    wn.load_weights(r.next_norm, n);
  }
  pdl_wait();
  float* orow = o + blockIdx.x * n;
  dense.load(orow, n);
#pragma unroll
  for (int j = 0; j < kPer; ++j) experts.v[j] = 0.0f;
  constexpr int kSlotBatch = 4;  // slots whose loads are in flight together
  for (int s0 = 0; s0 < k; s0 += kSlotBatch) {
#pragma unroll
    for (int u = 0; u < kSlotBatch; ++u) {
      const int s = s0 + u;
      if (s >= k) break;
      const std::size_t slot =
          static_cast<std::size_t>(blockIdx.x) * k + static_cast<std::size_t>(s);
      const float w = slot_w[slot];
      const float* ys = y + slot * n;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const std::size_t i = RowRegs<kPer>::index(j);
        if (i < n) experts.v[j] += w * ys[i];
      }
    }
  }
  dense.scale(dense.inv_rms(n, eps, scratch), wd);
  experts.scale(experts.inv_rms(n, eps, scratch), we);
#pragma unroll
  for (int j = 0; j < kPer; ++j) dense.v[j] += experts.v[j];
  if constexpr (!kResidual) {
    dense.store(orow, n);
  } else {
    // residual_scale_norm_kernel's steps on the combined row, in the same order.
    if (r.o_norm != nullptr) dense.scale(dense.inv_rms(n, eps, scratch), wo);
    RowRegs<kPer> xv;
    float* xr = r.x + blockIdx.x * n;
    xv.load(xr, n);
#pragma unroll
    for (int j = 0; j < kPer; ++j) xv.v[j] = (xv.v[j] + dense.v[j]) * r.scale;
    xv.store(xr, n);
    if (r.next_norm == nullptr) return;
    xv.scale(xv.inv_rms(n, eps, scratch), wn);
    xv.store(r.h + blockIdx.x * n, n);
  }
}

// One CTA per row, rows in registers.
template <int kPer>
__global__ void __launch_bounds__(1024)
    residual_scale_norm_kernel(float* __restrict__ x, const float* __restrict__ o,
                               const float* __restrict__ o_norm, float scale,
                               const float* __restrict__ next_norm, float* __restrict__ h,
                               std::size_t n, float eps) {
  pdl_trigger_early();  // the next kernel is a GEMV (pdl.cuh)
  __shared__ float scratch[32];
  RowRegs<kPer> xv, wn, wo;
  wn.load_weights(next_norm, n);  // before the wait: no kernel writes them (pdl.cuh)
  if (o != nullptr) wo.load_weights(o_norm, n);
  pdl_wait();
  float* xr = x + blockIdx.x * n;
  xv.load(xr, n);
  if (o != nullptr) {
    RowRegs<kPer> ov;
    ov.load(o + blockIdx.x * n, n);
    if (o_norm != nullptr) ov.scale(ov.inv_rms(n, eps, scratch), wo);
#pragma unroll
    for (int j = 0; j < kPer; ++j) xv.v[j] = (xv.v[j] + ov.v[j]) * scale;
  } else {
#pragma unroll
    for (int j = 0; j < kPer; ++j) xv.v[j] *= scale;
  }
  xv.store(xr, n);
  if (next_norm == nullptr) return;
  xv.scale(xv.inv_rms(n, eps, scratch), wn);
  xv.store(h + blockIdx.x * n, n);
}

// One warp per (token, slice).
__global__ void per_layer_combine_kernel(float* proj, const float* token_rows, const float* norm,
                                         int n_tokens, std::size_t width, int n_pl,
                                         float proj_scale, float mix_scale, float eps) {
  pdl_wait();
  pdl_trigger();
  const int n_slices = static_cast<int>(width / static_cast<std::size_t>(n_pl));
  const int warp = static_cast<int>((blockIdx.x * blockDim.x + threadIdx.x) / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (warp >= n_tokens * n_slices) return;
  const std::size_t base = static_cast<std::size_t>(warp / n_slices) * width +
                           static_cast<std::size_t>(warp % n_slices) * n_pl;
  float* p = proj + base;
  const float* tok = token_rows + base;
  float ss = 0.0f;
  for (int i = lane; i < n_pl; i += 32) {
    const float v = p[i] * proj_scale;
    p[i] = v;
    ss = fmaf(v, v, ss);
  }
  ss = warp_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(n_pl) + eps);
  for (int i = lane; i < n_pl; i += 32) p[i] = (p[i] * inv * norm[i] + tok[i]) * mix_scale;
}

template <bool kSilu>
__global__ void per_layer_gate_kernel(float* g, const float* per_layer, int n_pl, std::size_t width,
                                      std::size_t offset, std::size_t total) {
  pdl_wait();
  pdl_trigger();
  const std::size_t idx = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const std::size_t t = idx / static_cast<std::size_t>(n_pl);
  const std::size_t i = idx % static_cast<std::size_t>(n_pl);
  const float v = g[idx];
  g[idx] = (kSilu ? silu(v) : gelu_tanh(v)) * per_layer[t * width + offset + i];
}

}  // namespace

void moe_combine(float* o, const float* y, const float* slot_weights, int k, const float* w_dense,
                 const float* w_moe, int n_rows, std::size_t n, float eps, StreamHandle stream,
                 const ResidualNorm* then) {
  if (n_rows <= 0 || n == 0) return;
  if (k <= 0) cuda_fail("CUDA moe_combine: ", k, " slots per token");
  if (then != nullptr && then->x == nullptr) cuda_fail("CUDA moe_combine: no residual rows");
  const ResidualNorm r = then != nullptr ? *then : ResidualNorm{};
  with_row_regs(n, [&]<int kPer>(std::integral_constant<int, kPer>, unsigned threads) {
    if (then != nullptr) {
      launch_pdl("moe_combine_kernel", moe_combine_kernel<kPer, true>,
                 static_cast<unsigned>(n_rows), threads, 0, stream, o, y, slot_weights, k, w_dense,
                 w_moe, r, n, eps);
    } else {
      launch_pdl("moe_combine_kernel", moe_combine_kernel<kPer, false>,
                 static_cast<unsigned>(n_rows), threads, 0, stream, o, y, slot_weights, k, w_dense,
                 w_moe, r, n, eps);
    }
  });
  QFORGE_CUDA_CHECK_LAUNCH("moe_combine_kernel");
}

void residual_scale_norm(float* x, const float* o, const float* o_norm, float scale,
                         const float* next_norm, float* h, int n_rows, std::size_t n, float eps,
                         StreamHandle stream) {
  if (n_rows <= 0 || n == 0) return;
  with_row_regs(n, [&]<int kPer>(std::integral_constant<int, kPer>, unsigned threads) {
    launch_pdl("residual_scale_norm_kernel", residual_scale_norm_kernel<kPer>,
               static_cast<unsigned>(n_rows), threads, 0, stream, x, o, o_norm, scale, next_norm, h,
               n, eps);
  });
  QFORGE_CUDA_CHECK_LAUNCH("residual_scale_norm_kernel");
}

void per_layer_combine(float* proj, const float* token_rows, const float* norm, int n_tokens,
                       std::size_t width, int n_pl, float proj_scale, float mix_scale, float eps,
                       StreamHandle stream) {
  if (n_pl <= 0 || width % static_cast<std::size_t>(n_pl) != 0) {
    cuda_fail("CUDA per-layer embeddings: width ", width, " is not a multiple of ", n_pl);
  }
  const std::size_t threads =
      static_cast<std::size_t>(n_tokens) * (width / static_cast<std::size_t>(n_pl)) * 32;
  if (threads == 0) return;
  launch_pdl("per_layer_combine_kernel", per_layer_combine_kernel, blocks_for(threads, 128), 128, 0,
             stream, proj, token_rows, norm, n_tokens, width, n_pl, proj_scale, mix_scale, eps);
  QFORGE_CUDA_CHECK_LAUNCH("per_layer_combine_kernel");
}

void per_layer_gate(FfnActivation act, float* g, const float* per_layer, int n_tokens, int n_pl,
                    std::size_t width, std::size_t offset, StreamHandle stream) {
  const std::size_t total = static_cast<std::size_t>(n_tokens) * static_cast<std::size_t>(n_pl);
  if (total == 0) return;
  if (act == FfnActivation::kSiluGlu) {
    launch_pdl("per_layer_gate_kernel", per_layer_gate_kernel<true>, blocks_for(total), kThreads, 0,
               stream, g, per_layer, n_pl, width, offset, total);
  } else {
    launch_pdl("per_layer_gate_kernel", per_layer_gate_kernel<false>, blocks_for(total), kThreads,
               0, stream, g, per_layer, n_pl, width, offset, total);
  }
  QFORGE_CUDA_CHECK_LAUNCH("per_layer_gate_kernel");
}

}  // namespace qforge::cuda
