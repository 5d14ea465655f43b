// The CUDA backend's environment switches (docs/cuda.md, "Environment switches"): paths that are
// on by default and numeric choices, kept for side-by-side measurements. Host code; callers cache
// the answer.
#pragma once

namespace qforge::cuda {

// True unless the environment variable is set to "0".
bool switch_on(const char* variable);

// The variable's value read as a base-10 number (strtol: a non-number reads as 0), or fallback
// where it is not set.
long env_number(const char* variable, long fallback);

}  // namespace qforge::cuda
