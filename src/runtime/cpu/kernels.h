// Reference CPU kernels of the forward pass. Everything is F32 with F32 accumulation; weights stay
// in their stored block format and are read through dot_row (src/quant/blocks.h).
#pragma once

#include <cstddef>
#include <span>

#include "model/config.h"
#include "model/weights.h"

namespace qforge::cpu {

// How matmul feeds quantized weights: kQ8 quantizes each activation row once to 8-bit blocks
// (q8_act.h) and uses integer dot products (as llama.cpp does; ~0.1-1% relative difference per
// output from the activation rounding); kF32 keeps F32 activations (dot_row of the weight type).
// F32/F16/BF16 weights always use F32. Process-wide; the default is kQ8, or QFORGE_CPU_ACT=f32|q8
// read at first use.
enum class CpuActivations { kQ8, kF32 };
void set_cpu_activations(CpuActivations mode);
CpuActivations cpu_activations();

// Sets the mode for the lifetime of the object and restores the previous one (tests, tools that
// need the F32 reference path).
class ScopedCpuActivations {
 public:
  explicit ScopedCpuActivations(CpuActivations mode) : saved_(cpu_activations()) {
    set_cpu_activations(mode);
  }
  ~ScopedCpuActivations() { set_cpu_activations(saved_); }
  ScopedCpuActivations(const ScopedCpuActivations&) = delete;
  ScopedCpuActivations& operator=(const ScopedCpuActivations&) = delete;

 private:
  CpuActivations saved_;
};

// y[t, r] = dot(w.row(r), x[t, :]) for t < n_tokens, r < w.rows. x is [n_tokens x w.cols],
// y is [n_tokens x w.rows], both row-major. Parallel over the weight rows. With kQ8 activations
// (see above) and a supported weight type, the rows of x are quantized once and multiplied in
// register tiles of weight rows x tokens, each weight row decoded once per call; results do not
// depend on n_tokens. With F32 activations, one token uses the fused dot_row of the weight type;
// several tokens decode each weight row to F32 once and use F32 dot products.
void matmul(const WeightMatrix& w, std::span<const float> x, std::size_t n_tokens,
            std::span<float> y);

// Each row of `x` (rows of weight.size() elements) becomes x / sqrt(mean(x^2) + eps) * weight.
void rms_norm_rows(std::span<float> x, std::span<const float> weight, float eps);
// The same without a weight, for rows of row_len elements.
void rms_norm_rows(std::span<float> x, std::size_t row_len, float eps);

// Rotary embedding of one head vector in place. cos/sin hold n_rot / 2 entries (one per pair).
void apply_rope(std::span<float> head, int n_rot, RopeStyle style, std::span<const float> cos,
                std::span<const float> sin);

// cos/sin tables [n_positions x n_rot/2] for positions pos0.. : angle = pos * freq_scale *
// base^(-2i / n_rot) / freq_factors[i] (factors optional), computed in double then rounded.
void rope_tables(int pos0, std::size_t n_positions, int n_rot, const RopeParams& params,
                 std::span<const float> freq_factors, std::span<float> cos, std::span<float> sin);

// gate[i] = act(gate[i]) * up[i].
void glu(FfnActivation act, std::span<float> gate, std::span<const float> up);

float gelu_tanh(float x);
float silu(float x);

// In-place numerically stable softmax.
void softmax(std::span<float> x);

// x -> cap * tanh(x / cap); no-op when cap <= 0.
void softcap(std::span<float> x, float cap);

}  // namespace qforge::cpu
