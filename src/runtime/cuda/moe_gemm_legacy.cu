// Expert-grouped MoE GEMM instantiations for the 32-element block formats.
#include "runtime/cuda/moe_gemm_kernel.cuh"

namespace qforge::cuda::moe_gemm_tc {

bool run_legacy(GgmlType type, const Args& args) {
  using gemm_tc::SmallBlocks;
  switch (type) {
    case GgmlType::Q4_0:
      if (args.split_loads) {
        run<gemm_tc::Q4_0Split>(args);
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

}  // namespace qforge::cuda::moe_gemm_tc
