// Attributes of the current CUDA device that launch decisions read on every call (SM count,
// opt-in shared memory per block), queried once per device and process. Plain C++ header.
#pragma once

#include <cstddef>

namespace qforge::cuda {

int current_sm_count();
std::size_t current_max_smem_per_block();  // the opt-in maximum (cudaFuncSetAttribute)

}  // namespace qforge::cuda
