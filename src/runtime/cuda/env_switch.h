// The CUDA backend's environment switches (docs/cuda.md, "Environment switches"): paths that are
// on by default and kept for side-by-side measurements. Host code; callers cache the answer.
#pragma once

namespace qforge::cuda {

// True unless the environment variable is set to "0".
bool switch_on(const char* variable);

}  // namespace qforge::cuda
