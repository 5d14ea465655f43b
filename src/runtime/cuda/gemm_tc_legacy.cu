// Tensor-core GEMM instantiations for the 32-element block formats.
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/gemm_tc_kernel.cuh"

namespace qforge::cuda::gemm_tc {
namespace {

// Q4_0 with split loads (the next K step's weight loads issued before the tensor-core work,
// gemm_tc_decode.cuh) unless QFORGE_GEMM_SPLIT=0.
bool q4_0_split() {
  static const bool on = switch_on("QFORGE_GEMM_SPLIT");
  return on;
}

}  // namespace

bool run_legacy(GgmlType type, const Args& args) {
  if (args.q4_0x8) {
    run<Q4_0x8Split>(args);
    return true;
  }
  return with_legacy_decoder(type, q4_0_split(), [&]<typename D>(D) { run<D>(args); });
}

}  // namespace qforge::cuda::gemm_tc
