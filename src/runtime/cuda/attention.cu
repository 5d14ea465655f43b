// Split-K decode attention. Phase 1: CTA (head h, split s) runs an online softmax over its slice
// of positions, each of its 4 warps on every 4th position (a lane holds head_dim/32 consecutive
// elements of q, of the K row and of the output, so K/V rows are read as coalesced vectors), then
// merges the warps and writes (max, sum, unnormalised output) for the split. Phase 2 merges the
// splits of each head. Query heads of one GQA group read the same K/V rows, which L2 serves.
#include "runtime/cuda/check.cuh"
#include <cuda_bf16.h>

#include "runtime/cuda/attention.h"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kPositionsPerSplit = 128;

// N consecutive BF16 values (N in 2, 4, 8, 16; p aligned to 2N bytes) to float.
template <int N>
__device__ __forceinline__ void load_bf16(const std::uint16_t* p, float* out) {
  if constexpr (N >= 8) {
#pragma unroll
    for (int c = 0; c < N / 8; ++c) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + c);
      const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        out[8 * c + 2 * i] = __uint_as_float(w[i] << 16);
        out[8 * c + 2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
      }
    }
  } else if constexpr (N == 4) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    out[0] = __uint_as_float(v.x << 16), out[1] = __uint_as_float(v.x & 0xffff0000u);
    out[2] = __uint_as_float(v.y << 16), out[3] = __uint_as_float(v.y & 0xffff0000u);
  } else {
    const unsigned v = __ldg(reinterpret_cast<const unsigned*>(p));
    out[0] = __uint_as_float(v << 16), out[1] = __uint_as_float(v & 0xffff0000u);
  }
}

struct SplitLayout {
  int first;     // first visible position
  int n_splits;  // splits of kPositionsPerSplit positions
};

template <int DK, int DV>
__global__ void __launch_bounds__(kWarps * 32)
    attention_split_kernel(const float* __restrict__ q, const std::uint16_t* __restrict__ k_cache,
                           const std::uint16_t* __restrict__ v_cache, int pos, int first,
                           int n_head_kv, int group, float scale, float softcap,
                           float* __restrict__ part) {
  constexpr int KPL = DK / 32, VPL = DV / 32;
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  __shared__ float warp_o[kWarps][DV];

  const int h = static_cast<int>(blockIdx.x), split = static_cast<int>(blockIdx.y);
  const int n_splits = static_cast<int>(gridDim.y);
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int kv_head = h / group;

  float qr[KPL];
#pragma unroll
  for (int i = 0; i < KPL; ++i) qr[i] = q[h * DK + lane * KPL + i];

  float m = -INFINITY, l = 0.0f, o[VPL];
#pragma unroll
  for (int i = 0; i < VPL; ++i) o[i] = 0.0f;

  const int begin = first + split * kPositionsPerSplit;
  const int end = min(pos + 1, begin + kPositionsPerSplit);
  for (int j = begin + warp; j < end; j += kWarps) {
    const std::size_t row = static_cast<std::size_t>(j) * n_head_kv + kv_head;
    float kr[KPL];
    load_bf16<KPL>(k_cache + row * DK + lane * KPL, kr);
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < KPL; ++i) dot = fmaf(qr[i], kr[i], dot);
    float s = warp_sum(dot) * scale;
    if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float e = expf(s - m_new);
    float vr[VPL];
    load_bf16<VPL>(v_cache + row * DV + lane * VPL, vr);
    l = l * correction + e;
#pragma unroll
    for (int i = 0; i < VPL; ++i) o[i] = fmaf(e, vr[i], o[i] * correction);
    m = m_new;
  }

  if (lane == 0) warp_m[warp] = m, warp_l[warp] = l;
#pragma unroll
  for (int i = 0; i < VPL; ++i) warp_o[warp][lane * VPL + i] = o[i];
  __syncthreads();

  float big = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) big = fmaxf(big, warp_m[w]);
  float weight[kWarps], total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = warp_m[w] == -INFINITY ? 0.0f : expf(warp_m[w] - big);  // empty warps weigh 0
    total += warp_l[w] * weight[w];
  }
  // part layout per (head, split): [max, sum, o[DV]]
  float* dst = part + (static_cast<std::size_t>(h) * n_splits + split) * (DV + 2);
  for (int d = static_cast<int>(threadIdx.x); d < DV; d += kWarps * 32) {
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) acc += warp_o[w][d] * weight[w];
    dst[2 + d] = acc;
  }
  if (threadIdx.x == 0) dst[0] = big, dst[1] = total;
}

template <int DV>
__global__ void attention_merge_kernel(const float* __restrict__ part, int n_splits,
                                       float* __restrict__ out) {
  const int h = static_cast<int>(blockIdx.x);
  const float* base = part + static_cast<std::size_t>(h) * n_splits * (DV + 2);
  float big = -INFINITY;
  for (int s = 0; s < n_splits; ++s) big = fmaxf(big, base[s * (DV + 2)]);
  float total = 0.0f;
  for (int s = 0; s < n_splits; ++s) total += base[s * (DV + 2) + 1] * expf(base[s * (DV + 2)] - big);
  const float inv = 1.0f / total;
  for (int d = static_cast<int>(threadIdx.x); d < DV; d += static_cast<int>(blockDim.x)) {
    float acc = 0.0f;
    for (int s = 0; s < n_splits; ++s) {
      acc += base[s * (DV + 2) + 2 + d] * expf(base[s * (DV + 2)] - big);
    }
    out[static_cast<std::size_t>(h) * DV + d] = acc * inv;
  }
}

template <int DK, int DV>
void launch(const float* q, const std::uint16_t* k_cache, const std::uint16_t* v_cache, int pos,
            int first, const AttentionParams& p, float* out, float* part, int n_splits,
            StreamHandle stream) {
  const dim3 grid(static_cast<unsigned>(p.n_head), static_cast<unsigned>(n_splits));
  attention_split_kernel<DK, DV><<<grid, kWarps * 32, 0, stream>>>(
      q, k_cache, v_cache, pos, first, p.n_head_kv, p.n_head / p.n_head_kv, p.scale, p.softcap,
      part);
  QFORGE_CUDA_CHECK_LAUNCH("attention_split_kernel");
  attention_merge_kernel<DV><<<static_cast<unsigned>(p.n_head), DV < 256 ? DV : 256, 0, stream>>>(
      part, n_splits, out);
  QFORGE_CUDA_CHECK_LAUNCH("attention_merge_kernel");
}

template <int DK>
void dispatch_dv(const float* q, const std::uint16_t* k, const std::uint16_t* v, int pos,
                 int first, const AttentionParams& p, float* out, float* part, int n_splits,
                 StreamHandle stream) {
  switch (p.head_dim_v) {
    case 64: return launch<DK, 64>(q, k, v, pos, first, p, out, part, n_splits, stream);
    case 128: return launch<DK, 128>(q, k, v, pos, first, p, out, part, n_splits, stream);
    case 256: return launch<DK, 256>(q, k, v, pos, first, p, out, part, n_splits, stream);
    case 512: return launch<DK, 512>(q, k, v, pos, first, p, out, part, n_splits, stream);
    default: cuda_fail("CUDA attention: head_dim_v ", p.head_dim_v, " is not 64/128/256/512");
  }
}

bool valid_dim(int d) { return d == 64 || d == 128 || d == 256 || d == 512; }

__global__ void store_kv_kernel(const float* __restrict__ src, std::size_t n, std::uint16_t* dst) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
}

}  // namespace

void store_kv_bf16(const float* k, const float* v, std::size_t n_tokens, int pos0,
                   const AttentionParams& p, std::uint16_t* k_cache, std::uint16_t* v_cache,
                   StreamHandle stream) {
  if (pos0 < 0) cuda_fail("CUDA store_kv: negative position ", pos0);
  const std::size_t nk = n_tokens * p.n_head_kv * p.head_dim_k;
  const std::size_t nv = n_tokens * p.n_head_kv * p.head_dim_v;
  const std::size_t k_off = static_cast<std::size_t>(pos0) * p.n_head_kv * p.head_dim_k;
  const std::size_t v_off = static_cast<std::size_t>(pos0) * p.n_head_kv * p.head_dim_v;
  constexpr unsigned kThreads = 256;
  if (nk > 0) {
    store_kv_kernel<<<static_cast<unsigned>((nk + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        k, nk, k_cache + k_off);
    QFORGE_CUDA_CHECK_LAUNCH("store_kv_kernel");
  }
  if (nv > 0) {
    store_kv_kernel<<<static_cast<unsigned>((nv + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        v, nv, v_cache + v_off);
    QFORGE_CUDA_CHECK_LAUNCH("store_kv_kernel");
  }
}

void attention_decode(const float* q, const std::uint16_t* k_cache, const std::uint16_t* v_cache,
                      int pos, const AttentionParams& p, float* out, DeviceBuffer<float>& scratch,
                      StreamHandle stream) {
  if (p.n_head <= 0 || p.n_head_kv <= 0 || p.n_head % p.n_head_kv != 0) {
    cuda_fail("CUDA attention: ", p.n_head, " query heads do not split into ", p.n_head_kv,
              " KV groups");
  }
  if (!valid_dim(p.head_dim_k) || !valid_dim(p.head_dim_v)) {
    cuda_fail("CUDA attention: head sizes ", p.head_dim_k, "/", p.head_dim_v,
              " must each be 64, 128, 256 or 512");
  }
  if (pos < 0) cuda_fail("CUDA attention: negative position ", pos);
  const int first = p.window > 0 && pos - p.window + 1 > 0 ? pos - p.window + 1 : 0;
  const int n_visible = pos - first + 1;
  const int n_splits = (n_visible + kPositionsPerSplit - 1) / kPositionsPerSplit;
  if (n_splits > 65535) cuda_fail("CUDA attention: ", n_visible, " positions are too many");
  scratch.reserve_discard(static_cast<std::size_t>(p.n_head) * n_splits * (p.head_dim_v + 2));
  float* part = scratch.data();
  switch (p.head_dim_k) {
    case 64: return dispatch_dv<64>(q, k_cache, v_cache, pos, first, p, out, part, n_splits, stream);
    case 128: return dispatch_dv<128>(q, k_cache, v_cache, pos, first, p, out, part, n_splits, stream);
    case 256: return dispatch_dv<256>(q, k_cache, v_cache, pos, first, p, out, part, n_splits, stream);
    default: return dispatch_dv<512>(q, k_cache, v_cache, pos, first, p, out, part, n_splits, stream);
  }
}

}  // namespace qforge::cuda
