// The gated-FFN activations, one definition for every kernel that applies them (glu / glu_rows,
// the Gemma 4 per-layer gate, and the Q4_0x8 gate/up GEMV that applies them to its sums), so all of
// them give the same values.
#pragma once

namespace qforge::cuda {

__device__ __forceinline__ float silu(float x) {
  return x / (1.0f + expf(-x));
}
__device__ __forceinline__ float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

}  // namespace qforge::cuda
