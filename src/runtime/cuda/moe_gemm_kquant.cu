// Expert-grouped MoE GEMM instantiations for the K-quant formats.
#include "runtime/cuda/moe_gemm_kernel.cuh"

namespace qforge::cuda::moe_gemm_tc {

bool run_kquant(GgmlType type, const Args& args) {
  return gemm_tc::with_kquant_decoder(type, [&]<typename D>(D) { run<D>(args); });
}

}  // namespace qforge::cuda::moe_gemm_tc
