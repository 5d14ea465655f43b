// Element-wise and row-wise kernels of the CUDA forward pass (see model_ops.h).
#include <cuda_bf16.h>

#include <algorithm>
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include "runtime/cuda/block_decode.cuh"
#include "runtime/cuda/cache_element.cuh"
#include "runtime/cuda/glu.cuh"
#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/reduce.cuh"
#include "runtime/cuda/row_regs.cuh"

namespace qforge::cuda {
namespace {

constexpr unsigned kThreads = 256;

unsigned blocks_for(std::size_t n, unsigned threads = kThreads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

// ---- token embeddings: one thread per decode unit of the token's row -------------------------
template <typename Fmt>
__global__ void embed_kernel(const std::uint8_t* __restrict__ w, std::size_t n_blocks,
                             const std::int32_t* __restrict__ tokens, float scale,
                             float* __restrict__ out) {
  pdl_wait();
  pdl_trigger();
  __shared__ float table[16];
  if constexpr (blocks::UsesTable<Fmt>) {
    if (threadIdx.x < 16) table[threadIdx.x] = blocks::kIq4NlLevels[threadIdx.x];
    __syncthreads();
  }
  const std::size_t u = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u >= n_blocks * Fmt::kUnitsPerBlock) return;
  const auto token = static_cast<std::size_t>(tokens[blockIdx.y]);
  const std::size_t b = u / Fmt::kUnitsPerBlock;
  const std::uint8_t* blk = w + (token * n_blocks + b) * Fmt::kBlockBytes;
  float wv[4 * Fmt::kRuns];
  int start[Fmt::kRuns];
  Fmt::decode(blk, static_cast<int>(u % Fmt::kUnitsPerBlock), wv, start, table);
  float* dst = out + static_cast<std::size_t>(blockIdx.y) * n_blocks * Fmt::kBlockElems +
               b * Fmt::kBlockElems;
#pragma unroll
  for (int r = 0; r < Fmt::kRuns; ++r) {
#pragma unroll
    for (int i = 0; i < 4; ++i) dst[start[r] + i] = wv[4 * r + i] * scale;
  }
}

template <typename Fmt>
void launch_embed(const void* w, std::size_t n_cols, const std::int32_t* tokens, int n_tokens,
                  float scale, float* out, StreamHandle stream) {
  if (n_cols % Fmt::kBlockElems != 0) {
    cuda_fail("CUDA embed: ", n_cols, " columns are not a multiple of ", Fmt::kBlockElems);
  }
  const std::size_t n_blocks = n_cols / Fmt::kBlockElems;
  const dim3 grid(blocks_for(n_blocks * Fmt::kUnitsPerBlock), static_cast<unsigned>(n_tokens));
  launch_pdl("embed_kernel", embed_kernel<Fmt>, grid, kThreads, 0, stream,
             static_cast<const std::uint8_t*>(w), n_blocks, tokens, scale, out);
  QFORGE_CUDA_CHECK_LAUNCH("embed_kernel");
}

// ---- rotary tables -----------------------------------------------------------------------------
__global__ void rope_table_kernel(const int* pos0, int n_tokens, int n_rot, double base,
                                  double freq_scale, const float* freq_factors, float* cos_out,
                                  float* sin_out) {
  pdl_wait();
  pdl_trigger();
  const int half = n_rot / 2;
  const int idx = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (idx >= n_tokens * half) return;
  const int t = idx / half, i = idx % half;
  const double pos = static_cast<double>(*pos0 + t) * freq_scale;
  double inv_freq = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(n_rot));
  if (freq_factors != nullptr) inv_freq /= static_cast<double>(freq_factors[i]);
  double s, c;
  sincos(pos * inv_freq, &s, &c);
  cos_out[idx] = static_cast<float>(c);
  sin_out[idx] = static_cast<float>(s);
}

// ---- QK-norm + rope (+ V): one warp per (token, head) ------------------------------------------
// Warps per token: n_head Q heads, n_head_kv K heads, then (v_warps) n_head_kv V heads. Each warp
// copies its head into its own shared-memory slice once and works there: the previous version
// worked in place in global memory and paid an L2 round trip for each of its passes (norm sum,
// scaling, rope, cache store), ~5 us per decode step. A K warp with v_from_k also makes that
// head's V from the K values before the norm (Gemma 4 layers without attn_v).
constexpr int kQkWarps = 4;

// Sum of squares in the lane-strided order of the CPU-compared reference: i = lane, lane + 32, ...
__device__ __forceinline__ float head_inv_rms(const float* buf, int dim, float eps, int lane) {
  float ss = 0.0f;
  for (int i = lane; i < dim; i += 32) ss = fmaf(buf[i], buf[i], ss);
  ss = warp_sum(ss);
  return 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
}

template <typename T>
__device__ __forceinline__ void emit_v(const QkPrepare& p, const float* buf, float* qkv_token,
                                       std::size_t pos, int hv, int lane) {
  const int dv = p.head_dim_v;
  const float inv = p.v_norm ? head_inv_rms(buf, dv, p.eps, lane) : 1.0f;
  if (p.k_cache != nullptr) {
    T* dst = static_cast<T*>(p.v_cache) + (pos * p.n_head_kv + hv) * dv;
    for (int i = lane; i < dv; i += 32) dst[i] = to_cache<T>(p.v_norm ? buf[i] * inv : buf[i]);
  } else {
    float* dst = qkv_token + p.v_offset + static_cast<std::size_t>(hv) * dv;
    for (int i = lane; i < dv; i += 32) dst[i] = p.v_norm ? buf[i] * inv : buf[i];
  }
}

template <typename T>
__global__ void __launch_bounds__(kQkWarps * 32)
    qk_prepare_kernel(float* qkv, int n_tokens, QkPrepare p, const float* cos, const float* sin,
                      int heads, int buf_floats) {
  pdl_trigger_early();  // the attention kernel after it only prefetches earlier steps' rows
  extern __shared__ float qk_shared[];
  const int warp = static_cast<int>(threadIdx.x / 32);
  const int warp_global = static_cast<int>(blockIdx.x) * kQkWarps + warp;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (warp_global >= n_tokens * heads) return;  // an exited thread counts as triggered
  // This warp's slice: the head's values (buf_floats), then for a Q/K head its norm weights
  // (head_dim) and its rotary cos and sin (n_rot / 2 each), all loaded up front.
  float* buf = qk_shared + static_cast<std::size_t>(warp) * (buf_floats + p.head_dim + p.n_rot);
  float* wbuf = buf + buf_floats;
  float* cbuf = wbuf + p.head_dim;
  float* sbuf = cbuf + p.n_rot / 2;
  const bool store = p.k_cache != nullptr;
  const int t = warp_global / heads, head = warp_global % heads;
  const std::size_t pos = store ? static_cast<std::size_t>(*p.pos0 + t) : 0;
  float* token = qkv + static_cast<std::size_t>(t) * p.token_stride;

  if (head >= p.n_head + p.n_head_kv) {  // a V head of its own
    pdl_wait();
    const int hv = head - p.n_head - p.n_head_kv;
    const float* src = token + p.v_offset + static_cast<std::size_t>(hv) * p.head_dim_v;
#pragma unroll 4
    for (int i = lane; i < p.head_dim_v; i += 32) buf[i] = src[i];
    __syncwarp();
    emit_v<T>(p, buf, token, pos, hv, lane);
    return;
  }
  const bool is_q = head < p.n_head;
  const int hk = head - p.n_head;
  float* v = token + (is_q ? static_cast<std::size_t>(head) * p.head_dim
                           : p.k_offset + static_cast<std::size_t>(hk) * p.head_dim);
  const float* norm = is_q ? p.q_norm : p.k_norm;
  const int half = p.n_rot / 2;
  const float* ct = cos + static_cast<std::size_t>(t) * half;
  const float* st = sin + static_cast<std::size_t>(t) * half;
  // The norm weights (from HBM) and the rope tables (written at the start of the step) before
  // waiting for the previous kernel, which writes neither (pdl.cuh); the head after it.
  if (norm != nullptr) {
#pragma unroll 4
    for (int i = lane; i < p.head_dim; i += 32) wbuf[i] = norm[i];
  }
#pragma unroll 4
  for (int i = lane; i < half; i += 32) cbuf[i] = ct[i], sbuf[i] = st[i];
  pdl_wait();
#pragma unroll 4
  for (int i = lane; i < p.head_dim; i += 32) buf[i] = v[i];
  __syncwarp();
  if (!is_q && p.v_from_k) {
    emit_v<T>(p, buf, token, pos, hk, lane);  // reads buf only: K's own pass may follow
    __syncwarp();
  }
  if (norm != nullptr) {
    const float inv = head_inv_rms(buf, p.head_dim, p.eps, lane);
    for (int i = lane; i < p.head_dim; i += 32) buf[i] = buf[i] * inv * wbuf[i];
    __syncwarp();
  }
  const bool adjacent = p.style == RopeStyle::kAdjacentPairs;
  for (int i = lane; i < half; i += 32) {
    const int a = adjacent ? 2 * i : i;
    const int b = adjacent ? 2 * i + 1 : i + half;
    const float x0 = buf[a], x1 = buf[b];
    buf[a] = x0 * cbuf[i] - x1 * sbuf[i];
    buf[b] = x0 * sbuf[i] + x1 * cbuf[i];
  }
  __syncwarp();
  for (int i = lane; i < p.head_dim; i += 32) v[i] = buf[i];
  if (store && !is_q) {
    T* dst = static_cast<T*>(p.k_cache) + (pos * p.n_head_kv + hk) * p.head_dim;
    for (int i = lane; i < p.head_dim; i += 32) dst[i] = to_cache<T>(buf[i]);
  }
}

// ---- residual add + RMSNorm: one CTA per row, the row in registers (row_regs.cuh) -----------
template <int kPer, bool kMoe>
__global__ void __launch_bounds__(1024)
    add_norm_kernel(float* __restrict__ x, const float* __restrict__ o,
                    const float* __restrict__ o_norm, const float* __restrict__ next_norm,
                    float* __restrict__ h, std::size_t n, float eps, MoeInputs moe, float root) {
  pdl_trigger_early();  // the next kernel is a GEMV (pdl.cuh)
  __shared__ float scratch[32];
  // The norm weights are read from HBM (a whole token's weights have passed through L2 since):
  // loaded before waiting for the previous kernel, which never writes them (pdl.cuh).
  RowRegs<kPer> xv, wn, wr, wp, wo;
  wn.load_weights(next_norm, n);
  if constexpr (kMoe) {
    wr.load_weights(moe.router_scale, n);
    wp.load_weights(moe.pre_norm, n);
  }
  if (o != nullptr) wo.load_weights(o_norm, n);
  pdl_wait();
  float* xr = x + blockIdx.x * n;
  xv.load(xr, n);
  if (o != nullptr) {
    RowRegs<kPer> ov;
    ov.load(o + blockIdx.x * n, n);
    if (o_norm != nullptr) ov.scale(ov.inv_rms(n, eps, scratch), wo);
#pragma unroll
    for (int j = 0; j < kPer; ++j) xv.v[j] += ov.v[j];
    xv.store(xr, n);
  }
  const float inv = xv.inv_rms(n, eps, scratch);
  if constexpr (kMoe) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const std::size_t i = RowRegs<kPer>::index(j);
      if (i >= n) continue;
      const float normed = xv.v[j] * inv;
      moe.router_in[blockIdx.x * n + i] = normed * wr.v[j] * root;
      moe.expert_in[blockIdx.x * n + i] = normed * wp.v[j];
    }
  }
  xv.scale(inv, wn);
  xv.store(h + blockIdx.x * n, n);
}

// ---- gated activation ---------------------------------------------------------------------------
template <bool kSilu>
__global__ void glu_rows_kernel(const float* gate_up, float* out, std::size_t n_ff,
                                std::size_t total) {
  pdl_wait();
  pdl_trigger();
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const std::size_t t = i / n_ff, j = i % n_ff;
  const float g = gate_up[2 * n_ff * t + j], u = gate_up[2 * n_ff * t + n_ff + j];
  out[i] = (kSilu ? silu(g) : gelu_tanh(g)) * u;
}

}  // namespace

void embed_tokens(GgmlType type, const void* w, std::size_t n_cols, const std::int32_t* tokens,
                  int n_tokens, float scale, float* out, StreamHandle stream) {
  if (n_tokens <= 0) return;
  const bool ok = blocks::with_format(type, [&]<typename Fmt>(Fmt) {
    launch_embed<Fmt>(w, n_cols, tokens, n_tokens, scale, out, stream);
  });
  if (!ok) cuda_fail("CUDA embed: no decoder for token embedding type ", type_name(type));
}

void rope_tables(const int* pos0, int n_tokens, int n_rot, const RopeParams& params,
                 const float* freq_factors, float* cos, float* sin, StreamHandle stream) {
  const int total = n_tokens * (n_rot / 2);
  if (total <= 0) return;
  launch_pdl("rope_table_kernel", rope_table_kernel, blocks_for(static_cast<std::size_t>(total)),
             kThreads, 0, stream, pos0, n_tokens, n_rot, params.freq_base, params.freq_scale,
             freq_factors, cos, sin);
  QFORGE_CUDA_CHECK_LAUNCH("rope_table_kernel");
}

void qk_prepare(float* qkv, int n_tokens, const QkPrepare& p, const float* cos, const float* sin,
                StreamHandle stream) {
  if (p.n_rot <= 0 || p.n_rot % 2 != 0 || p.n_rot > p.head_dim) {
    cuda_fail("CUDA qk_prepare: n_rot ", p.n_rot, " must be even and in (0, ", p.head_dim, "]");
  }
  const bool store = p.k_cache != nullptr;
  if (store && (p.v_cache == nullptr || p.pos0 == nullptr || p.n_head_kv == 0)) {
    cuda_fail("CUDA qk_prepare: storing into the cache needs both caches, pos0 and K heads");
  }
  const bool has_v = p.n_head_kv > 0 && (store || p.v_from_k || p.v_norm);
  if (has_v && (p.head_dim_v <= 0 || (p.v_from_k && p.head_dim_v != p.head_dim))) {
    cuda_fail("CUDA qk_prepare: V heads of ", p.head_dim_v, " floats (K heads ", p.head_dim,
              (p.v_from_k ? ", V taken from K" : ""), ")");
  }
  if (p.head_dim > kMaxQkHeadDim || p.head_dim_v > kMaxQkHeadDim) {
    cuda_fail("CUDA qk_prepare: heads of ", p.head_dim, " / ", p.head_dim_v,
              " floats are wider than the supported ", kMaxQkHeadDim);
  }
  const bool v_warps = has_v && !p.v_from_k;
  const int heads = p.n_head + p.n_head_kv * (v_warps ? 2 : 1);
  const std::size_t warps = static_cast<std::size_t>(n_tokens) * heads;
  if (warps == 0) return;
  const int buf_floats = std::max(p.head_dim, has_v ? p.head_dim_v : 0);
  const std::size_t shared =
      sizeof(float) * kQkWarps * static_cast<std::size_t>(buf_floats + p.head_dim + p.n_rot);
  const auto grid = static_cast<unsigned>((warps + kQkWarps - 1) / kQkWarps);
  if (!store || p.cache_bf16) {
    launch_pdl("qk_prepare_kernel", qk_prepare_kernel<std::uint16_t>, grid, kQkWarps * 32, shared,
               stream, qkv, n_tokens, p, cos, sin, heads, buf_floats);
  } else {
    launch_pdl("qk_prepare_kernel", qk_prepare_kernel<float>, grid, kQkWarps * 32, shared, stream,
               qkv, n_tokens, p, cos, sin, heads, buf_floats);
  }
  QFORGE_CUDA_CHECK_LAUNCH("qk_prepare_kernel");
}

void add_and_norm(float* x, const float* o, const float* o_norm, const float* next_norm, float* h,
                  int n_rows, std::size_t n, float eps, StreamHandle stream, const MoeInputs& moe) {
  if (n_rows <= 0 || n == 0) return;
  const bool with_moe = moe.router_in != nullptr;
  if (with_moe &&
      (moe.router_scale == nullptr || moe.pre_norm == nullptr || moe.expert_in == nullptr)) {
    cuda_fail("CUDA add_and_norm: MoE inputs need both scales and both outputs");
  }
  const float root = 1.0f / sqrtf(static_cast<float>(n));
  with_row_regs(n, [&]<int kPer>(std::integral_constant<int, kPer>, unsigned threads) {
    if (with_moe) {
      launch_pdl("add_norm_kernel", add_norm_kernel<kPer, true>, static_cast<unsigned>(n_rows),
                 threads, 0, stream, x, o, o_norm, next_norm, h, n, eps, moe, root);
    } else {
      launch_pdl("add_norm_kernel", add_norm_kernel<kPer, false>, static_cast<unsigned>(n_rows),
                 threads, 0, stream, x, o, o_norm, next_norm, h, n, eps, moe, root);
    }
  });
  QFORGE_CUDA_CHECK_LAUNCH("add_norm_kernel");
}

void glu_rows(FfnActivation act, const float* gate_up, float* out, int n_tokens, std::size_t n_ff,
              StreamHandle stream) {
  const std::size_t total = static_cast<std::size_t>(n_tokens) * n_ff;
  if (total == 0) return;
  if (act == FfnActivation::kSiluGlu) {
    launch_pdl("glu_rows_kernel", glu_rows_kernel<true>, blocks_for(total), kThreads, 0, stream,
               gate_up, out, n_ff, total);
  } else {
    launch_pdl("glu_rows_kernel", glu_rows_kernel<false>, blocks_for(total), kThreads, 0, stream,
               gate_up, out, n_ff, total);
  }
  QFORGE_CUDA_CHECK_LAUNCH("glu_rows_kernel");
}

}  // namespace qforge::cuda
