// Expert-grouped MoE GEMM instantiations for float weights (rounded to BF16 in shared memory).
#include "runtime/cuda/moe_gemm_kernel.cuh"

namespace qforge::cuda::moe_gemm_tc {

bool run_float(GgmlType type, const Args& args) {
  using gemm_tc::SmallBlocks;
  switch (type) {
    case GgmlType::F32:
      run<SmallBlocks<blocks::F32>>(args);
      return true;
    case GgmlType::F16:
      run<SmallBlocks<blocks::F16>>(args);
      return true;
    case GgmlType::BF16:
      run<SmallBlocks<blocks::BF16>>(args);
      return true;
    default:
      return false;
  }
}

}  // namespace qforge::cuda::moe_gemm_tc
