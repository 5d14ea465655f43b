// Expert-grouped MoE GEMM instantiations for float weights (rounded to BF16 in shared memory).
#include "runtime/cuda/moe_gemm_kernel.cuh"

namespace qforge::cuda::moe_gemm_tc {

bool run_float(GgmlType type, const Args& args) {
  return gemm_tc::with_float_decoder(type, [&]<typename D>(D) { run<D>(args); });
}

}  // namespace qforge::cuda::moe_gemm_tc
