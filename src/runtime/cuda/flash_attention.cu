// Host side shared by the flash attention kernels: which shapes they take and the parameter check.
#include <cmath>
#include <cstdint>

#include "runtime/cuda/check.cuh"
#include "runtime/cuda/flash_attention.cuh"
#include "runtime/cuda/flash_attention.h"

namespace qforge::cuda {

bool flash_attention_supported(int head_dim_k, int head_dim_v) {
  return head_dim_k == head_dim_v &&
         (head_dim_k == 64 || head_dim_k == 128 || head_dim_k == 256 || head_dim_k == 512);
}

namespace {

bool heads_ok(const BatchAttention& p) {
  return p.n_head > 0 && p.kv.n_head_kv > 0 && p.n_head % p.kv.n_head_kv == 0;
}

}  // namespace

bool flash_prefill_supported(const BatchAttention& p) {
  return heads_ok(p) && flash_attention_supported(p.kv.head_dim_k, p.kv.head_dim_v);
}

bool flash_decode_supported(const BatchAttention& p) {
  return heads_ok(p) && flash_attention_supported(p.kv.head_dim_k, p.kv.head_dim_v);
}

namespace flash {

void check_params(const char* what, const void* q, const void* k_cache, const void* v_cache,
                  const int* pos0, const void* out, int n_tokens, const BatchAttention& p) {
  if (!heads_ok(p)) {
    cuda_fail(what, ": ", p.n_head, " query heads do not split into ", p.kv.n_head_kv,
              " KV groups");
  }
  if (!flash_attention_supported(p.kv.head_dim_k, p.kv.head_dim_v)) {
    cuda_fail(what, ": head sizes ", p.kv.head_dim_k, " (key) / ", p.kv.head_dim_v,
              " (value) are not supported (expected equal sizes of 64, 128, 256 or 512)");
  }
  if (n_tokens <= 0) cuda_fail(what, ": bad batch of ", n_tokens, " tokens");
  const auto q_row = static_cast<std::size_t>(p.n_head) * static_cast<std::size_t>(p.kv.head_dim_k);
  if (p.q_stride < q_row) {
    cuda_fail(what, ": q_stride ", p.q_stride, " is shorter than a query row of ", q_row,
              " floats");
  }
  if (!std::isfinite(p.scale) || !std::isfinite(p.softcap) || p.softcap < 0.0f || p.window < 0) {
    cuda_fail(what, ": bad scale ", p.scale, ", soft-cap ", p.softcap, " or window ", p.window);
  }
  if (q == nullptr || k_cache == nullptr || v_cache == nullptr || pos0 == nullptr ||
      out == nullptr) {
    cuda_fail(what, ": null pointer argument");
  }
  // K/V rows are read as 16-byte vectors.
  if (reinterpret_cast<std::uintptr_t>(k_cache) % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(v_cache) % 16 != 0) {
    cuda_fail(what, ": K/V cache pointers must be 16-byte aligned");
  }
}

}  // namespace flash
}  // namespace qforge::cuda
