// Attributes of the current CUDA device that launch decisions read on every call (SM count,
// opt-in shared memory per block), queried once per device and process. Plain C++ header.
#pragma once

#include <cstddef>

namespace qforge::cuda {

int current_sm_count();
int current_cc_major();  // compute capability, major number
std::size_t current_max_smem_per_block();  // the opt-in maximum (cudaFuncSetAttribute)

// The dynamic shared memory to request for a kernel that must run one CTA per SM: `bytes`, raised
// to over half of current_max_smem_per_block() where it is less. Such kernels give each CTA a
// fixed stride of the work, and a CTA placed beside another (as the CTAs of a kernel launched
// early, pdl.cuh, may be where an earlier kernel's CTAs leave SMs free one by one) would run at
// half speed and hold back the whole launch. The per-CTA limit is an SM's shared memory less the
// 1 KiB reserved per CTA (sm_80 / sm_86 / sm_90), so two CTAs of this size never fit on one SM.
std::size_t one_cta_per_sm_smem(std::size_t bytes);

}  // namespace qforge::cuda
