// How a weight matrix's bytes are arranged on the device: as in the GGUF file, or Q4_0 regrouped
// per 256 columns (q4_0x8.h).
#pragma once

namespace qforge::cuda {

enum class WeightLayout { kGguf, kQ4_0x8 };

}  // namespace qforge::cuda
