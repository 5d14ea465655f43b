// Tensor-core GEMM instantiations for the 32-element block formats.
#include "runtime/cuda/gemm_tc_kernel.cuh"

#include <cstdlib>
#include <cstring>

namespace qforge::cuda::gemm_tc {
namespace {

// Q4_0 with split loads (the next K step's weight loads issued before the tensor-core work,
// gemm_tc_decode.cuh) unless QFORGE_GEMM_SPLIT=0.
bool q4_0_split() {
  static const bool on = [] {
    const char* env = std::getenv("QFORGE_GEMM_SPLIT");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on;
}

}  // namespace

bool run_legacy(GgmlType type, const Args& args) {
  switch (type) {
    case GgmlType::Q4_0:
      if (q4_0_split()) {
        run<Q4_0Split>(args);
      } else {
        run<SmallBlocks<blocks::Q4_0>>(args);
      }
      return true;
    case GgmlType::Q4_1:
      run<SmallBlocks<blocks::Q4_1>>(args);
      return true;
    case GgmlType::Q5_0:
      run<SmallBlocks<blocks::Q5_0>>(args);
      return true;
    case GgmlType::Q8_0:
      run<SmallBlocks<blocks::Q8_0>>(args);
      return true;
    case GgmlType::IQ4_NL:
      run<SmallBlocks<blocks::IQ4_NL>>(args);
      return true;
    default:
      return false;
  }
}

}  // namespace qforge::cuda::gemm_tc
