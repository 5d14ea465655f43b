// Mixture-of-experts kernels (see moe.h).
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include <cstdint>

#include "runtime/cuda/block_decode.cuh"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/gemv_mma.h"
#include "runtime/cuda/gemv_tiled.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {
namespace {

constexpr int kWarpsPerCta = 4;
constexpr int kMaxExperts = 4096;

// ---- expert GEMV: one warp per (output row, slot); grid (row groups, slots) -----------------
// The lanes walk the decode units of the row in order (coalesced weight loads), as the first
// GEMV kernel of gemv.cu; the expert is picked per slot from device memory.
template <typename Fmt>
__global__ void __launch_bounds__(kWarpsPerCta * 32)
    expert_gemv_kernel(const std::uint8_t* __restrict__ w, std::size_t expert_bytes, int n_experts,
                       std::size_t n_rows, std::size_t n_cols, const int* __restrict__ ids,
                       int x_group, const float* __restrict__ x, float* __restrict__ y,
                       std::size_t ldy) {
  pdl_wait();
  pdl_trigger();
  __shared__ float table[16];
  if constexpr (blocks::UsesTable<Fmt>) {
    if (threadIdx.x < 16) table[threadIdx.x] = blocks::kIq4NlLevels[threadIdx.x];
    __syncthreads();
  }
  const std::size_t row = static_cast<std::size_t>(blockIdx.x) * kWarpsPerCta + threadIdx.x / 32;
  if (row >= n_rows) return;
  const int slot = static_cast<int>(blockIdx.y);
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int e = ids[slot];
  float* dst = y + static_cast<std::size_t>(slot) * ldy + row;
  if (e < 0 || e >= n_experts) {
    if (lane == 0) *dst = 0.0f;
    return;
  }
  const std::size_t n_blocks = n_cols / Fmt::kBlockElems;
  const std::uint8_t* row_ptr =
      w + static_cast<std::size_t>(e) * expert_bytes + row * n_blocks * Fmt::kBlockBytes;
  const float* xs = x + static_cast<std::size_t>(slot / x_group) * n_cols;
  const int n_units = static_cast<int>(n_blocks) * Fmt::kUnitsPerBlock;

  float acc = 0.0f;
#pragma unroll 2
  for (int u = lane; u < n_units; u += 32) {
    const int b = u / Fmt::kUnitsPerBlock;
    float wv[4 * Fmt::kRuns];
    int start[Fmt::kRuns];
    Fmt::decode(row_ptr + static_cast<std::size_t>(b) * Fmt::kBlockBytes, u % Fmt::kUnitsPerBlock,
                wv, start, table);
    const float* xb = xs + static_cast<std::size_t>(b) * Fmt::kBlockElems;
#pragma unroll
    for (int r = 0; r < Fmt::kRuns; ++r) {
      const float4 xv = __ldg(reinterpret_cast<const float4*>(xb + start[r]));
      acc = fmaf(wv[4 * r], xv.x, acc);
      acc = fmaf(wv[4 * r + 1], xv.y, acc);
      acc = fmaf(wv[4 * r + 2], xv.z, acc);
      acc = fmaf(wv[4 * r + 3], xv.w, acc);
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) *dst = acc;
}

// ---- routing: one warp per token -----------------------------------------------------------
// Lane l owns the experts l, l + 32, ... (their probabilities in shared memory) and keeps the
// best of them; each of the k rounds is one warp arg-max over the lanes' bests, after which only
// the winner's lane rescans its experts. The chosen experts are then put in increasing index
// order by rank, every lane placing its own (the first version did k full scans and a serial
// insertion sort plus k dependent global loads on lane 0: ~7 us of every MoE layer's step).
__device__ __forceinline__ void lane_best(const float* p, int n_expert, int lane, float& best,
                                          int& best_i) {
  best = -2.0f;  // below every probability; chosen experts hold -inf, NaN never compares greater
  best_i = 0x7fffffff;
  for (int i = lane; i < n_expert; i += 32) {
    if (p[i] > best) best = p[i], best_i = i;  // strict: the lowest index of a lane wins ties
  }
}

// The routing of one token by one warp (lane = threadIdx.x % 32), from its n_expert logits l
// (read through L2: in router_route_kernel other CTAs wrote them). `shared` holds n_expert + 2k
// floats.
__device__ void route_token(const float* l, int n_expert, int k,
                            const float* __restrict__ expert_scale, int* __restrict__ ids,
                            float* __restrict__ weights, float* shared, int t) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  float* p = shared;                                   // n_expert probabilities
  float* chosen_p = shared + n_expert;                 // k, in the order chosen
  int* chosen = reinterpret_cast<int*>(chosen_p + k);  // k

  float mx = -INFINITY;
#pragma unroll 4
  for (int i = lane; i < n_expert; i += 32) {  // loads batched, read from global memory once
    const float v = __ldcg(l + i);
    p[i] = v;
    mx = fmaxf(mx, v);
  }
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int i = lane; i < n_expert; i += 32) {
    const float v = expf(p[i] - mx);
    p[i] = v;
    sum += v;
  }
  sum = warp_sum(sum);
  const float inv = 1.0f / sum;
  for (int i = lane; i < n_expert; i += 32) p[i] *= inv;

  float mine;
  int mine_i;
  lane_best(p, n_expert, lane, mine, mine_i);
  for (int j = 0; j < k; ++j) {
    float best = mine;
    int best_i = mine_i;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, off);
      const int oi = __shfl_xor_sync(0xffffffffu, best_i, off);
      if (ob > best || (ob == best && oi < best_i)) best = ob, best_i = oi;
    }
    // NaN logits match nothing: the slot gets id -1 (zero output, zero weight).
    const bool found = best_i < n_expert;
    if (lane == 0) {
      chosen[j] = found ? best_i : -1;
      chosen_p[j] = found ? best : 0.0f;
    }
    if (found && lane == best_i % 32) {
      p[best_i] = -INFINITY;
      lane_best(p, n_expert, lane, mine, mine_i);
    }
  }
  __syncwarp();
  float total = 0.0f;  // in order of decreasing probability, as the CPU reference
  for (int j = 0; j < k; ++j) total += chosen_p[j];
  // Slot of chosen expert j: its rank in increasing expert index (ids -1 first, in the order
  // chosen).
  for (int j = lane; j < k; j += 32) {
    const int e = chosen[j];
    int rank = 0;
    for (int i = 0; i < k; ++i) rank += chosen[i] < e || (chosen[i] == e && i < j) ? 1 : 0;
    ids[t * k + rank] = e;
    weights[t * k + rank] = e < 0 ? 0.0f : chosen_p[j] / total * expert_scale[e];
  }
}

// The routing of one token by a whole CTA of at least n_expert threads, thread i for expert i
// (router_route_kernel's last CTA, for up to kRouterThreads experts). Every chosen expert
// finds its place at once: its rank among the logits (greater first, the lower index first among
// equals, as the warp version's arg-max rounds and a stable sort) decides whether it is chosen,
// and its rank by index among the chosen its slot. The softmax over all experts cancels in the
// renormalized weights, exp(l_e - max) / sum over the chosen of exp(l_c - max), whose sum is
// taken in decreasing order of probability as in route_token. Returns false, having written no
// ids or weights, where a logit is not finite (NaN or inf): route_token handles those.
// scale_e: expert_scale[threadIdx.x] where threadIdx.x < n_expert. `shared` as route_token's.
__device__ bool route_token_ranked(const float* l, int n_expert, int k, float scale_e,
                                   int* __restrict__ ids, float* __restrict__ weights,
                                   float* shared, int t) {
  const int i = static_cast<int>(threadIdx.x);
  float* lg = shared;                                  // n_expert logits
  float* chosen_x = shared + n_expert;                 // k values exp(l - max), by rank
  int* chosen = reinterpret_cast<int*>(chosen_x + k);  // k experts, by rank
  const bool mine = i < n_expert;
  const float v = mine ? __ldcg(l + i) : 0.0f;
  if (mine) lg[i] = v;
  if (!__syncthreads_and(isfinite(v))) return false;
  int rank = k;
  if (mine) {
    rank = 0;
    for (int j = 0; j < n_expert; ++j) {
      const float o = lg[j];
      rank += o > v || (o == v && j < i) ? 1 : 0;
    }
    if (rank < k) chosen[rank] = i;
  }
  __syncthreads();
  float x = 0.0f;
  if (rank < k) {
    x = expf(v - lg[chosen[0]]);
    chosen_x[rank] = x;
  }
  __syncthreads();
  if (rank >= k) return true;
  float total = 0.0f;
  int slot = 0;
  for (int j = 0; j < k; ++j) {
    total += chosen_x[j];
    slot += chosen[j] < i ? 1 : 0;
  }
  ids[t * k + slot] = i;
  weights[t * k + slot] = x / total * scale_e;
  return true;
}

__global__ void route_kernel(const float* __restrict__ logits, int n_expert, int k,
                             const float* __restrict__ expert_scale, int* __restrict__ ids,
                             float* __restrict__ weights) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ float shared[];
  const int t = static_cast<int>(blockIdx.x);
  route_token(logits + static_cast<std::size_t>(t) * n_expert, n_expert, k, expert_scale, ids,
              weights, shared, t);
}

// ---- F32 router GEMV and routing in one launch: grid (experts, tokens) --------------------
// One CTA per (expert, token) logit, so that each thread has only a few of the row's loads (a
// warp per logit took 14 us for 128 x 2816 on an H200, against 5 us for the row-tiled GEMV).
// The CTA that finishes a token last (counted in counters[t], which it sets back to zero) routes
// it: the logits other CTAs wrote are visible to it after their __threadfence and its atomic
// (the threadfence-reduction pattern).
constexpr int kRouterThreads = 128;
constexpr int kRouterEarly = 8;

__global__ void __launch_bounds__(kRouterThreads)
    router_route_kernel(const float* __restrict__ w, int n_expert, int n_cols,
                        const float* __restrict__ x, float* __restrict__ logits, int k,
                        const float* __restrict__ expert_scale, int* __restrict__ ids,
                        float* __restrict__ weights, unsigned* __restrict__ counters,
                        bool use_ranked) {
  extern __shared__ float shared[];
  __shared__ float scratch[32];
  __shared__ bool last;
  const int t = static_cast<int>(blockIdx.y), e = static_cast<int>(blockIdx.x);
  float* lt = logits + static_cast<std::size_t>(t) * n_expert;
  const float4* wr = reinterpret_cast<const float4*>(w + static_cast<std::size_t>(e) * n_cols);
  const float4* xr = reinterpret_cast<const float4*>(x + static_cast<std::size_t>(t) * n_cols);
  const int n4 = n_cols / 4;
  // The row's first kRouterEarly * kRouterThreads float4 (all of a row up to 4096 columns) are
  // loaded before the wait, so their HBM latency overlaps the kernels before this one (weights:
  // no kernel writes them, pdl.cuh).
  float4 early[kRouterEarly];
#pragma unroll
  for (int j = 0; j < kRouterEarly; ++j) {
    const int i = static_cast<int>(threadIdx.x) + j * kRouterThreads;
    early[j] = i < n4 ? __ldg(wr + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  // Expert scales for the ranked routing (route_token_ranked), also loaded early.
  const bool ranked = n_expert <= kRouterThreads && k <= n_expert;
  const float scale_e =
      ranked && static_cast<int>(threadIdx.x) < n_expert ? __ldg(expert_scale + threadIdx.x) : 0.0f;
  pdl_wait();
  pdl_trigger();
  float acc = 0.0f;
  const auto add = [&](const float4& a, const float4& b) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    acc = fmaf(a.w, b.w, acc);
  };
#pragma unroll
  for (int j = 0; j < kRouterEarly; ++j) {
    const int i = static_cast<int>(threadIdx.x) + j * kRouterThreads;
    if (i < n4) add(early[j], __ldg(xr + i));
  }
#pragma unroll 8
  for (int i = static_cast<int>(threadIdx.x) + kRouterEarly * kRouterThreads; i < n4;
       i += kRouterThreads) {
    add(__ldg(wr + i), __ldg(xr + i));
  }
  acc = block_reduce<false>(acc, scratch);
  if (threadIdx.x == 0) {
    lt[e] = acc;
    __threadfence();
    last = atomicAdd(counters + t, 1u) == gridDim.x - 1;
    if (last) counters[t] = 0;  // ready for the next launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (ranked && use_ranked &&
      route_token_ranked(lt, n_expert, k, scale_e, ids, weights, shared, t)) {
    return;
  }
  if (threadIdx.x >= 32) return;
  route_token(lt, n_expert, k, expert_scale, ids, weights, shared, t);
}

}  // namespace

bool moe_gemv_supported(GgmlType type) {
  return blocks::with_format(type, [](auto) {});
}

void check_expert_stack(const ExpertStack& w, const char* what) {
  bool ok = false;
  blocks::with_format(w.type, [&]<typename Fmt>(Fmt) {
    if (w.cols == 0 || w.cols % Fmt::kBlockElems != 0 || w.cols % 4 != 0) {
      cuda_fail("CUDA MoE: ", what, ": ", w.cols, " columns are not a positive multiple of ",
                Fmt::kBlockElems, " (", type_name(w.type), ")");
    }
    if (reinterpret_cast<std::uintptr_t>(w.data) % Fmt::kAlign != 0 ||
        w.expert_bytes % Fmt::kAlign != 0) {
      cuda_fail("CUDA MoE: ", what, ": ", type_name(w.type), " experts of ", w.expert_bytes,
                " bytes at ", w.data, " break the format's ", Fmt::kAlign, "-byte alignment");
    }
    ok = true;
  });
  if (!ok) {
    cuda_fail("CUDA MoE: ", what, " has type ", type_name(w.type),
              ", which has no GPU kernel (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
              "IQ4_NL, Q4_K, Q5_K, Q6_K)");
  }
  if (w.rows == 0 || w.rows > 0x7fffffffu || w.n_experts <= 0) {
    cuda_fail("CUDA MoE: ", what, ": bad shape (", w.rows, " rows, ", w.n_experts, " experts)");
  }
  if (w.layout == WeightLayout::kQ4_0x8 &&
      (w.type != GgmlType::Q4_0 || w.cols % 32 != 0 ||
       reinterpret_cast<std::uintptr_t>(w.data) % 16 != 0 || w.expert_bytes % 16 != 0 ||
       w.expert_bytes < w.rows * q4_0x8_row_bytes(w.cols))) {
    cuda_fail("CUDA MoE: ", what, ": the Q4_0x8 layout needs Q4_0 experts of 32-column multiples",
              " (", w.cols, ") at 16-byte aligned addresses (", w.expert_bytes,
              " bytes each, rows of ", q4_0x8_row_bytes(w.cols), ")");
  }
}

void moe_gemv(const ExpertStack& w, const int* ids, int n_slots, int x_group, const float* x,
              float* y, std::size_t ldy, StreamHandle stream) {
  if (n_slots <= 0) return;
  if (n_slots > 65535 || x_group <= 0 || ldy < w.rows) {
    cuda_fail("CUDA MoE gemv: bad batch (", n_slots, " slots, group ", x_group, ", ldy ", ldy,
              " for ", w.rows, " rows)");
  }
  if (reinterpret_cast<std::uintptr_t>(x) % 16 != 0) {
    cuda_fail("CUDA MoE gemv: x must be 16-byte aligned");
  }
  if (w.layout != WeightLayout::kGguf) {
    cuda_fail("CUDA MoE gemv: experts in the Q4_0x8 layout take moe_gemv_q4_0x8_glu (q4_0x8.h)");
  }
  // The same kernel choice as gemv(): with the row-tiled family selected, the tensor-core kernel
  // where it applies, else the row-tiled kernel where it decodes the type (2816 x 704 Q4_0 down
  // experts of Gemma 4 26B-A4B: bench_cuda.cpp's BM_CudaMoeGemv), else one warp per row.
  const bool tiled = gemv_kernel() == GemvKernel::kTiled;
  if (tiled && detail::gemv_mma_applies(w.type, w.data, w.cols, 1) && w.expert_bytes % 16 == 0) {
    detail::moe_gemv_mma(w.data, w.expert_bytes, w.n_experts, w.rows, w.cols, ids, n_slots, x_group,
                         x, y, ldy, stream);
    return;
  }
  if (tiled && detail::gemv_tiled_supported(w.type)) {
    detail::moe_gemv_tiled(w.type, w.data, w.expert_bytes, w.n_experts, w.rows, w.cols, ids,
                           n_slots, x_group, x, y, ldy, stream);
    return;
  }
  const dim3 grid(static_cast<unsigned>((w.rows + kWarpsPerCta - 1) / kWarpsPerCta),
                  static_cast<unsigned>(n_slots));
  const bool ok = blocks::with_format(w.type, [&]<typename Fmt>(Fmt) {
    launch_pdl("expert_gemv_kernel", expert_gemv_kernel<Fmt>, grid, kWarpsPerCta * 32, 0, stream,
               static_cast<const std::uint8_t*>(w.data), w.expert_bytes, w.n_experts, w.rows,
               w.cols, ids, x_group, x, y, ldy);
  });
  if (!ok) cuda_fail("CUDA MoE gemv: no kernel for weight type ", type_name(w.type));
  QFORGE_CUDA_CHECK_LAUNCH("expert_gemv_kernel");
}

namespace {

void check_route_shape(int n_expert, int k) {
  if (n_expert <= 0 || n_expert > kMaxExperts || k <= 0 || k > n_expert) {
    cuda_fail("CUDA MoE routing: ", k, " of ", n_expert, " experts is not supported (at most ",
              kMaxExperts, " experts)");
  }
}

}  // namespace

void moe_route(const float* logits, int n_tokens, int n_expert, int k, const float* expert_scale,
               int* ids, float* weights, StreamHandle stream) {
  if (n_tokens <= 0) return;
  check_route_shape(n_expert, k);
  const std::size_t shared = sizeof(float) * static_cast<std::size_t>(n_expert + 2 * k);
  launch_pdl("route_kernel", route_kernel, static_cast<unsigned>(n_tokens), 32, shared, stream,
             logits, n_expert, k, expert_scale, ids, weights);
  QFORGE_CUDA_CHECK_LAUNCH("route_kernel");
}

namespace {

// The ranked routing in router_route_kernel: on, unless QFORGE_MOE_RANKED_ROUTE=0 (for
// measurements).
bool ranked_routing() {
  static const bool on = switch_on("QFORGE_MOE_RANKED_ROUTE");
  return on;
}

}  // namespace

void moe_router_route(const float* w, int n_cols, const float* x, int n_tokens, int n_expert, int k,
                      const float* expert_scale, float* logits, int* ids, float* weights,
                      unsigned* counters, StreamHandle stream) {
  if (n_tokens <= 0) return;
  check_route_shape(n_expert, k);
  if (n_tokens > 65535 || n_cols <= 0 || n_cols % 4 != 0 ||
      reinterpret_cast<std::uintptr_t>(w) % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(x) % 16 != 0) {
    cuda_fail("CUDA MoE router: ", n_tokens, " tokens of ", n_cols,
              " columns (a multiple of 4, 16-byte aligned rows expected)");
  }
  const std::size_t shared = sizeof(float) * static_cast<std::size_t>(n_expert + 2 * k);
  const dim3 grid(static_cast<unsigned>(n_expert), static_cast<unsigned>(n_tokens));
  launch_pdl("router_route_kernel", router_route_kernel, grid, kRouterThreads, shared, stream, w,
             n_expert, n_cols, x, logits, k, expert_scale, ids, weights, counters,
             ranked_routing());
  QFORGE_CUDA_CHECK_LAUNCH("router_route_kernel");
}

}  // namespace qforge::cuda
