// Tensor-core GEMM instantiations for the K-quant formats.
#include "runtime/cuda/gemm_tc_kernel.cuh"

namespace qforge::cuda::gemm_tc {

bool run_kquant(GgmlType type, const Args& args) {
  switch (type) {
    case GgmlType::Q4_K: run<KQuant64<blocks::Q4_K>>(args); return true;
    case GgmlType::Q5_K: run<KQuant64<blocks::Q5_K>>(args); return true;
    case GgmlType::Q6_K: run<Q6_K64>(args); return true;
    default: return false;
  }
}

}  // namespace qforge::cuda::gemm_tc
