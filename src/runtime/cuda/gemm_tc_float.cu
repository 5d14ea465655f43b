// Tensor-core GEMM instantiations for the float formats.
#include "runtime/cuda/gemm_tc_kernel.cuh"

namespace qforge::cuda::gemm_tc {

bool run_float(GgmlType type, const Args& args) {
  return with_float_decoder(type, [&]<typename D>(D) { run<D>(args); });
}

}  // namespace qforge::cuda::gemm_tc
