// The fused one-token kernels of q8_act_gemv.h. The kernel bodies live in q8_act_gemv_body.inc,
// compiled once for AVX2 and once under an AVX512-VNNI target (used only when the CPU has it).
// Everything here has internal linkage, so the VNNI copy cannot leak into code run elsewhere.
#include "quant/q8_act_gemv.h"

#include <cstddef>
#include <cstdint>

#include "quant/block_common.h"

namespace qforge::q8act {
namespace {

#ifdef QFORGE_BLOCKS_AVX2
namespace avx2 {
#define QFORGE_GEMV_VNNI 0
#include "quant/q8_act_gemv_body.inc"
#undef QFORGE_GEMV_VNNI
}  // namespace avx2

#if defined(__clang__)
#define QFORGE_GEMV_HAS_VNNI 1
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#define QFORGE_GEMV_HAS_VNNI 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#endif
#ifdef QFORGE_GEMV_HAS_VNNI
namespace vnni {
#define QFORGE_GEMV_VNNI 1
#include "quant/q8_act_gemv_body.inc"
#undef QFORGE_GEMV_VNNI
}  // namespace vnni
#endif
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif  // QFORGE_BLOCKS_AVX2

}  // namespace

GemvFn gemv_kernel([[maybe_unused]] Q8Isa isa, [[maybe_unused]] GgmlType type) {
#ifdef QFORGE_BLOCKS_AVX2
  if (isa == Q8Isa::kAvx2) return avx2::pick(type);
#ifdef QFORGE_GEMV_HAS_VNNI
  if (isa == Q8Isa::kAvx512Vnni) return vnni::pick(type);
#endif
#endif
  return nullptr;
}

}  // namespace qforge::q8act
