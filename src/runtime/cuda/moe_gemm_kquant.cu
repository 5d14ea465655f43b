// Expert-grouped MoE GEMM instantiations for the K-quant formats.
#include "runtime/cuda/moe_gemm_kernel.cuh"

namespace qforge::cuda::moe_gemm_tc {

bool run_kquant(GgmlType type, const Args& args) {
  switch (type) {
    case GgmlType::Q4_K:
      run<gemm_tc::KQuant64<blocks::Q4_K>>(args);
      return true;
    case GgmlType::Q5_K:
      run<gemm_tc::KQuant64<blocks::Q5_K>>(args);
      return true;
    case GgmlType::Q6_K:
      run<gemm_tc::Q6_K64>(args);
      return true;
    default:
      return false;
  }
}

}  // namespace qforge::cuda::moe_gemm_tc
