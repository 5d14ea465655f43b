// Expert-grouped MoE GEMM instantiations for the 32-element block formats.
#include "runtime/cuda/moe_gemm_kernel.cuh"

namespace qforge::cuda::moe_gemm_tc {

bool run_legacy(GgmlType type, const Args& args) {
  if (args.q4_0x8) {
    run<gemm_tc::Q4_0x8Split>(args);
    return true;
  }
  return gemm_tc::with_legacy_decoder(type, args.split_loads, [&]<typename D>(D) { run<D>(args); });
}

}  // namespace qforge::cuda::moe_gemm_tc
