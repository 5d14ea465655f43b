// Element-wise and row-wise kernels of the CUDA forward pass (see model_ops.h).
#include <cuda_bf16.h>
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include "runtime/cuda/block_decode.cuh"
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

// ---- QK-norm + rope: one warp per (token, head) ------------------------------------------------
__global__ void qk_prepare_kernel(float* qkv, int n_tokens, QkPrepare p, const float* cos,
                                  const float* sin) {
  pdl_wait();
  pdl_trigger();
  const int warp_global = static_cast<int>((blockIdx.x * blockDim.x + threadIdx.x) / 32);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int heads = p.n_head + p.n_head_kv;
  if (warp_global >= n_tokens * heads) return;
  const int t = warp_global / heads, head = warp_global % heads;
  const bool is_q = head < p.n_head;
  float* v = qkv + static_cast<std::size_t>(t) * p.token_stride +
             (is_q ? static_cast<std::size_t>(head) * p.head_dim
                   : p.k_offset + static_cast<std::size_t>(head - p.n_head) * p.head_dim);
  const float* norm = is_q ? p.q_norm : p.k_norm;
  if (norm != nullptr) {
    float ss = 0.0f;
    for (int i = lane; i < p.head_dim; i += 32) ss = fmaf(v[i], v[i], ss);
    ss = warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(p.head_dim) + p.eps);
    for (int i = lane; i < p.head_dim; i += 32) v[i] = v[i] * inv * norm[i];
    __syncwarp();
  }
  const int half = p.n_rot / 2;
  const float* ct = cos + static_cast<std::size_t>(t) * half;
  const float* st = sin + static_cast<std::size_t>(t) * half;
  const bool adjacent = p.style == RopeStyle::kAdjacentPairs;
  for (int i = lane; i < half; i += 32) {
    const int a = adjacent ? 2 * i : i;
    const int b = adjacent ? 2 * i + 1 : i + half;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * ct[i] - x1 * st[i];
    v[b] = x0 * st[i] + x1 * ct[i];
  }
}

// ---- residual add + RMSNorm: one CTA per row, the row in registers (row_regs.cuh) -----------
template <int kPer>
__global__ void add_norm_kernel(float* __restrict__ x, const float* __restrict__ o,
                                const float* __restrict__ o_norm,
                                const float* __restrict__ next_norm, float* __restrict__ h,
                                std::size_t n, float eps) {
  pdl_wait();
  pdl_trigger();
  __shared__ float scratch[32];
  float* xr = x + blockIdx.x * n;
  RowRegs<kPer> xv;
  xv.load(xr, n);
  if (o != nullptr) {
    RowRegs<kPer> ov;
    ov.load(o + blockIdx.x * n, n);
    if (o_norm != nullptr) ov.scale(ov.inv_rms(n, eps, scratch), o_norm, n);
#pragma unroll
    for (int j = 0; j < kPer; ++j) xv.v[j] += ov.v[j];
    xv.store(xr, n);
  }
  xv.scale(xv.inv_rms(n, eps, scratch), next_norm, n);
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

// ---- KV store
// -------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ T to_cache(float v);
template <>
__device__ __forceinline__ std::uint16_t to_cache<std::uint16_t>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
template <>
__device__ __forceinline__ float to_cache<float>(float v) {
  return v;
}

template <typename T>
__global__ void store_kv_kernel(const float* qkv, std::size_t token_stride, std::size_t k_offset,
                                std::size_t v_offset, int n_tokens, const int* pos0, int k_dim,
                                int v_dim, T* k_cache, T* v_cache) {
  pdl_wait();
  pdl_trigger();
  const int per_token = k_dim + v_dim;
  const int idx = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (idx >= n_tokens * per_token) return;
  const int t = idx / per_token, i = idx % per_token;
  const float* src = qkv + static_cast<std::size_t>(t) * token_stride;
  const auto pos = static_cast<std::size_t>(*pos0 + t);
  if (i < k_dim) {
    k_cache[pos * k_dim + i] = to_cache<T>(src[k_offset + i]);
  } else {
    v_cache[pos * v_dim + (i - k_dim)] = to_cache<T>(src[v_offset + (i - k_dim)]);
  }
}

}  // namespace

void embed_tokens(GgmlType type, const void* w, std::size_t n_cols, const std::int32_t* tokens,
                  int n_tokens, float scale, float* out, StreamHandle stream) {
  if (n_tokens <= 0) return;
  switch (type) {
    case GgmlType::F32:
      return launch_embed<blocks::F32>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::F16:
      return launch_embed<blocks::F16>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::BF16:
      return launch_embed<blocks::BF16>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::Q4_0:
      return launch_embed<blocks::Q4_0>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::Q4_1:
      return launch_embed<blocks::Q4_1>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::Q5_0:
      return launch_embed<blocks::Q5_0>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::Q8_0:
      return launch_embed<blocks::Q8_0>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::IQ4_NL:
      return launch_embed<blocks::IQ4_NL>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::Q4_K:
      return launch_embed<blocks::Q4_K>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::Q5_K:
      return launch_embed<blocks::Q5_K>(w, n_cols, tokens, n_tokens, scale, out, stream);
    case GgmlType::Q6_K:
      return launch_embed<blocks::Q6_K>(w, n_cols, tokens, n_tokens, scale, out, stream);
    default:
      cuda_fail("CUDA embed: no decoder for token embedding type ", type_name(type));
  }
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
  const std::size_t threads = static_cast<std::size_t>(n_tokens) * (p.n_head + p.n_head_kv) * 32;
  if (threads == 0) return;
  launch_pdl("qk_prepare_kernel", qk_prepare_kernel, blocks_for(threads, 128), 128, 0, stream, qkv,
             n_tokens, p, cos, sin);
  QFORGE_CUDA_CHECK_LAUNCH("qk_prepare_kernel");
}

void add_and_norm(float* x, const float* o, const float* o_norm, const float* next_norm, float* h,
                  int n_rows, std::size_t n, float eps, StreamHandle stream) {
  if (n_rows <= 0 || n == 0) return;
  with_row_regs(n, [&]<int kPer>(std::integral_constant<int, kPer>, unsigned threads) {
    launch_pdl("add_norm_kernel", add_norm_kernel<kPer>, static_cast<unsigned>(n_rows), threads, 0,
               stream, x, o, o_norm, next_norm, h, n, eps);
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

void store_kv(const float* qkv, std::size_t token_stride, std::size_t k_offset,
              std::size_t v_offset, int n_tokens, const int* pos0, const KvLayout& kv,
              void* k_cache, void* v_cache, StreamHandle stream) {
  const int k_dim = kv.n_head_kv * kv.head_dim_k, v_dim = kv.n_head_kv * kv.head_dim_v;
  const std::size_t total = static_cast<std::size_t>(n_tokens) * (k_dim + v_dim);
  if (total == 0) return;
  if (kv.bf16) {
    launch_pdl("store_kv_kernel", store_kv_kernel<std::uint16_t>, blocks_for(total), kThreads, 0,
               stream, qkv, token_stride, k_offset, v_offset, n_tokens, pos0, k_dim, v_dim,
               static_cast<std::uint16_t*>(k_cache), static_cast<std::uint16_t*>(v_cache));
  } else {
    launch_pdl("store_kv_kernel", store_kv_kernel<float>, blocks_for(total), kThreads, 0, stream,
               qkv, token_stride, k_offset, v_offset, n_tokens, pos0, k_dim, v_dim,
               static_cast<float*>(k_cache), static_cast<float*>(v_cache));
  }
  QFORGE_CUDA_CHECK_LAUNCH("store_kv_kernel");
}

}  // namespace qforge::cuda
