// Reference CPU kernels of the forward pass. Everything is F32 with F32 accumulation; weights stay
// in their stored block format and are read through dot_row (src/quant/blocks.h).
#pragma once

#include <cstddef>
#include <span>

#include "model/config.h"
#include "model/weights.h"

namespace qforge::cpu {

// y[t, r] = dot(w.row(r), x[t, :]) for t < n_tokens, r < w.rows. x is [n_tokens x w.cols],
// y is [n_tokens x w.rows], both row-major. Parallel over the weight rows. One token uses the
// fused dot_row of the weight type; several tokens decode each weight row to F32 once and use F32
// dot products (same values up to F32 summation order, ~1e-6 relative).
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
