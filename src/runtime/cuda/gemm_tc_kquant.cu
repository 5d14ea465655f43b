// Tensor-core GEMM instantiations for the K-quant formats.
#include "runtime/cuda/gemm_tc_kernel.cuh"

namespace qforge::cuda::gemm_tc {

bool run_kquant(GgmlType type, const Args& args) {
  return with_kquant_decoder(type, [&]<typename D>(D) { run<D>(args); });
}

}  // namespace qforge::cuda::gemm_tc
