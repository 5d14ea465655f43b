// Causal attention of a batch of queries over the KV cache (prefill and decode), split-K:
// CTA (head h, token t, split s) runs an online softmax over its share of the visible positions,
// each of its 4 warps on every 4th position; a lane holds KPL consecutive elements of q, of each
// K row and of the output (so rows are read as contiguous vectors when head_dim == 32 * KPL).
// The share is computed from the position read on the device, so the grid does not depend on
// the position (one captured graph serves every decode step). The last CTA of a (token, head) to
// finish merges its splits (a counter per (token, head), reset by that CTA), which saves the
// separate merge launch every layer of a decode step paid.
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include "runtime/cuda/model_ops.h"
#include "runtime/cuda/prefetch.cuh"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {
namespace {

constexpr int kWarps = 4;

__device__ __forceinline__ float cache_value(std::uint16_t v) {
  return __uint_as_float(static_cast<unsigned>(v) << 16);
}
__device__ __forceinline__ float cache_value(float v) {
  return v;
}

// N elements from p (lane's slice) into out; elements at or past `valid` read as 0.
template <int N, typename T>
__device__ __forceinline__ void load_slice(const T* p, int valid, bool full, float* out) {
  if (full) {
    if constexpr (sizeof(T) == 2 && N >= 8) {
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
      return;
    } else if constexpr (sizeof(T) == 2 && N == 4) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
      out[0] = __uint_as_float(v.x << 16), out[1] = __uint_as_float(v.x & 0xffff0000u);
      out[2] = __uint_as_float(v.y << 16), out[3] = __uint_as_float(v.y & 0xffff0000u);
      return;
    } else if constexpr (sizeof(T) == 4 && N >= 4) {
#pragma unroll
      for (int c = 0; c < N / 4; ++c) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(p) + c);
        out[4 * c] = v.x, out[4 * c + 1] = v.y, out[4 * c + 2] = v.z, out[4 * c + 3] = v.w;
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = i < valid ? cache_value(__ldg(p + i)) : 0.0f;
}

struct Visible {
  int begin, end;  // this split's positions [begin, end)
};

__device__ __forceinline__ Visible split_range(int pos, int window, int split, int n_splits) {
  const int first = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
  const int n_visible = pos - first + 1;
  const int chunk = (n_visible + n_splits - 1) / n_splits;
  const int begin = first + split * chunk;
  return {begin, min(pos + 1, begin + chunk)};
}

constexpr int kMaxMergeSplits = 1024;

// out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M) over the splits of one (token, head), by
// the CTA's threads. The splits' (m, l) are read once into shared memory (m_sh, l_sh: at least
// n_splits + 4 floats each) and their weights e^(m_s - M) computed once per CTA (not once per
// output element), with the sums in the same order as a plain loop over s. Other CTAs wrote
// `base`: it is read through L2 (ld.global.cg).
__device__ void merge_splits(const float* base, int n_splits, int dv, float* __restrict__ dst,
                             float* m_sh, float* l_sh) {
  const auto stride = static_cast<std::size_t>(dv + 2);
  for (int s = static_cast<int>(threadIdx.x); s < n_splits; s += static_cast<int>(blockDim.x)) {
    m_sh[s] = __ldcg(base + s * stride);
    l_sh[s] = __ldcg(base + s * stride + 1);
  }
  __syncthreads();
  float big = -INFINITY;
  for (int s = 0; s < n_splits; ++s) big = fmaxf(big, m_sh[s]);
  __syncthreads();  // every thread has its maximum before m is overwritten with the weights
  for (int s = static_cast<int>(threadIdx.x); s < n_splits; s += static_cast<int>(blockDim.x)) {
    m_sh[s] = m_sh[s] == -INFINITY ? -1.0f : expf(m_sh[s] - big);  // -1: an empty split, left out
  }
  __syncthreads();
  float total = 0.0f;
  for (int s = 0; s < n_splits; ++s) {
    if (m_sh[s] >= 0.0f) total += l_sh[s] * m_sh[s];
  }
  const float inv = 1.0f / total;
  for (int d = static_cast<int>(threadIdx.x); d < dv; d += static_cast<int>(blockDim.x)) {
    float acc = 0.0f;
#pragma unroll 8
    for (int s = 0; s < n_splits; ++s) {
      if (m_sh[s] >= 0.0f) acc += __ldcg(base + s * stride + 2 + d) * m_sh[s];
    }
    dst[d] = acc * inv;
  }
}

template <int KPL, typename T>
__global__ void __launch_bounds__(kWarps * 32)
    batch_attention_split(const float* __restrict__ q, std::size_t q_stride,
                          const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                          const int* __restrict__ pos0, int n_head_kv, int group, int dk, int dv,
                          float scale, float softcap, int window, float* __restrict__ part,
                          int* __restrict__ counters, float* __restrict__ out) {
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  // 4 floats of padding: unrolled loops may load a few elements past n_splits ahead of the test
  // (flash_decode_merge, the same pattern, was caught doing so by compute-sanitizer).
  __shared__ float merge_m[kMaxMergeSplits + 4], merge_l[kMaxMergeSplits + 4];
  __shared__ bool last;
  __shared__ float warp_o[kWarps][32 * KPL];
  pdl_trigger_early();  // the output projection's GEMV streams its weights meanwhile
  const int h = static_cast<int>(blockIdx.x), t = static_cast<int>(blockIdx.y);
  const int split = static_cast<int>(blockIdx.z), n_splits = static_cast<int>(gridDim.z);
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  const int kv_head = h / group;
  const int pos = *pos0 + t;  // written before the step, by the host
  const Visible vis = split_range(pos, window, split, n_splits);
  // The cache rows of earlier steps (positions before *pos0) are not written by the previous
  // kernel (pdl.cuh) and have left L2 since: start fetching them into L2 before waiting for it.
  prefetch_kv_rows_l2(k_cache, v_cache, vis.begin, min(vis.end, *pos0), n_head_kv, kv_head, dk, dv);
  pdl_wait();

  const int k_valid = dk - lane * KPL, v_valid = dv - lane * KPL;
  const bool k_full = dk == 32 * KPL, v_full = dv == 32 * KPL;
  float qr[KPL];
  const float* qh = q + static_cast<std::size_t>(t) * q_stride + static_cast<std::size_t>(h) * dk;
#pragma unroll
  for (int i = 0; i < KPL; ++i) qr[i] = i < k_valid ? qh[lane * KPL + i] : 0.0f;

  float m = -INFINITY, l = 0.0f, o[KPL];
#pragma unroll
  for (int i = 0; i < KPL; ++i) o[i] = 0.0f;

#pragma unroll 2
  for (int j = vis.begin + warp; j < vis.end; j += kWarps) {
    const std::size_t row = static_cast<std::size_t>(j) * n_head_kv + kv_head;
    float kr[KPL], vr[KPL];
    load_slice<KPL>(k_cache + row * dk + lane * KPL, k_valid, k_full, kr);
    load_slice<KPL>(v_cache + row * dv + lane * KPL, v_valid, v_full, vr);
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < KPL; ++i) dot = fmaf(qr[i], kr[i], dot);
    float s = warp_sum(dot) * scale;
    if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first position (m = -inf)
    const float e = expf(s - m_new);
    l = l * correction + e;
#pragma unroll
    for (int i = 0; i < KPL; ++i) o[i] = fmaf(e, vr[i], o[i] * correction);
    m = m_new;
  }

  if (lane == 0) warp_m[warp] = m, warp_l[warp] = l;
#pragma unroll
  for (int i = 0; i < KPL; ++i) warp_o[warp][lane * KPL + i] = o[i];
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
  const int n_head = static_cast<int>(gridDim.x);
  const std::size_t pair = static_cast<std::size_t>(t) * n_head + h;
  float* base = part + pair * n_splits * (dv + 2);
  float* dst = base + static_cast<std::size_t>(split) * (dv + 2);
  for (int d = static_cast<int>(threadIdx.x); d < dv; d += kWarps * 32) {
    float acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) acc += warp_o[w][d] * weight[w];
    dst[2 + d] = acc;
  }
  if (threadIdx.x == 0) dst[0] = big, dst[1] = total;

  // The last split to finish merges: every thread's writes are made visible device-wide before
  // the CTA takes its ticket, and the last CTA resets the counter for the next call.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counters + pair, 1) == n_splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  merge_splits(base, n_splits, dv, out + pair * dv, merge_m, merge_l);
  if (threadIdx.x == 0) counters[pair] = 0;
}

int lanes_for(int dim) {
  if (dim <= 32) return 1;
  if (dim <= 64) return 2;
  if (dim <= 128) return 4;
  if (dim <= 256) return 8;
  if (dim <= 512) return 16;
  return 0;
}

template <int KPL, typename T>
void launch(const float* q, const void* k, const void* v, const int* pos0, int n_tokens,
            const BatchAttention& p, int n_splits, float* part, int* counters, float* out,
            StreamHandle stream) {
  const dim3 grid(static_cast<unsigned>(p.n_head), static_cast<unsigned>(n_tokens),
                  static_cast<unsigned>(n_splits));
  launch_pdl("batch_attention_split", batch_attention_split<KPL, T>, grid, kWarps * 32, 0, stream,
             q, p.q_stride, static_cast<const T*>(k), static_cast<const T*>(v), pos0,
             p.kv.n_head_kv, p.n_head / p.kv.n_head_kv, p.kv.head_dim_k, p.kv.head_dim_v, p.scale,
             p.softcap, p.window, part, counters, out);
  QFORGE_CUDA_CHECK_LAUNCH("batch_attention_split");
}

template <typename T>
void dispatch(const float* q, const void* k, const void* v, const int* pos0, int n_tokens,
              const BatchAttention& p, int n_splits, float* part, int* counters, float* out,
              StreamHandle stream) {
  switch (lanes_for(p.kv.head_dim_k)) {
    case 1:
      return launch<1, T>(q, k, v, pos0, n_tokens, p, n_splits, part, counters, out, stream);
    case 2:
      return launch<2, T>(q, k, v, pos0, n_tokens, p, n_splits, part, counters, out, stream);
    case 4:
      return launch<4, T>(q, k, v, pos0, n_tokens, p, n_splits, part, counters, out, stream);
    case 8:
      return launch<8, T>(q, k, v, pos0, n_tokens, p, n_splits, part, counters, out, stream);
    default:
      return launch<16, T>(q, k, v, pos0, n_tokens, p, n_splits, part, counters, out, stream);
  }
}

}  // namespace

bool batch_attention_supported(int head_dim_k, int head_dim_v) {
  return head_dim_k > 0 && head_dim_v > 0 && lanes_for(head_dim_k) != 0 &&
         lanes_for(head_dim_k) == lanes_for(head_dim_v);
}

void batch_attention(const float* q, const void* k_cache, const void* v_cache, const int* pos0,
                     int n_tokens, const BatchAttention& p, int n_splits, float* part,
                     int* counters, float* out, StreamHandle stream) {
  if (!batch_attention_supported(p.kv.head_dim_k, p.kv.head_dim_v)) {
    cuda_fail("CUDA attention: head sizes ", p.kv.head_dim_k, "/", p.kv.head_dim_v,
              " are not supported (each <= 512, both in the same power-of-two bucket)");
  }
  if (p.n_head <= 0 || p.kv.n_head_kv <= 0 || p.n_head % p.kv.n_head_kv != 0) {
    cuda_fail("CUDA attention: ", p.n_head, " query heads do not split into ", p.kv.n_head_kv,
              " KV groups");
  }
  if (n_tokens <= 0 || n_tokens > 65535 || n_splits <= 0 || n_splits > kMaxMergeSplits) {
    cuda_fail("CUDA attention: bad batch (", n_tokens, " tokens, ", n_splits, " splits)");
  }
  if (part == nullptr || counters == nullptr || out == nullptr) {
    cuda_fail("CUDA attention: part, counters and out must be device arrays");
  }
  if (p.kv.bf16) {
    dispatch<std::uint16_t>(q, k_cache, v_cache, pos0, n_tokens, p, n_splits, part, counters, out,
                            stream);
  } else {
    dispatch<float>(q, k_cache, v_cache, pos0, n_tokens, p, n_splits, part, counters, out, stream);
  }
}

}  // namespace qforge::cuda
