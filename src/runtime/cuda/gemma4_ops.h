// Row-wise kernels that Gemma 4 adds to the CUDA forward pass (cuda_model.cpp), in the order of
// the CPU reference (src/runtime/cpu/cpu_model.cpp): the MoE/dense output mix, the
// layer output scale and per-layer embeddings. All pointers are device pointers; every call is
// asynchronous on `stream`. F32 throughout.
#pragma once

#include <cstddef>

#include "model/config.h"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

// The residual update that follows a layer's FFN: residual_scale_norm's arguments but o.
struct ResidualNorm {
  float* x = nullptr;
  const float* o_norm = nullptr;
  float scale = 1.0f;
  const float* next_norm = nullptr;
  float* h = nullptr;
};

// o[r, :] = rms_norm(o[r, :]) * w_dense + rms_norm(e_r) * w_moe  (rows of n floats), where
// e_r = sum_{j < k} slot_weights[r * k + j] * y[(r * k + j) * n + :], summed in slot order: the
// MoE output of token r from its k expert slots (moe.h).
// With `then`, o is left as it is and the combined rows go on, in the same kernel, to
// residual_scale_norm(then->x, combined, then->o_norm, then->scale, then->next_norm, then->h):
// one launch instead of two on every MoE layer.
void moe_combine(float* o, const float* y, const float* slot_weights, int k, const float* w_dense,
                 const float* w_moe, int n_rows, std::size_t n, float eps, StreamHandle stream,
                 const ResidualNorm* then = nullptr);

// x[r, :] += (o_norm ? rms_norm(o[r, :]) * o_norm : o[r, :]) when o is not null; then
// x[r, :] *= scale; then, when next_norm is not null, h[r, :] = rms_norm(x[r, :]) * next_norm.
void residual_scale_norm(float* x, const float* o, const float* o_norm, float scale,
                         const float* next_norm, float* h, int n_rows, std::size_t n, float eps,
                         StreamHandle stream);

// Per-layer inputs of E models, per token t and slice s of n_pl floats of the [n_tokens x width]
// arrays: p = proj * proj_scale; p = rms_norm(p) * norm; proj = (p + token_rows) * mix_scale.
// token_rows holds the per-layer token embeddings already multiplied by sqrt(n_pl).
void per_layer_combine(float* proj, const float* token_rows, const float* norm, int n_tokens,
                       std::size_t width, int n_pl, float proj_scale, float mix_scale, float eps,
                       StreamHandle stream);

// g[t * n_pl + i] = act(g[t * n_pl + i]) * per_layer[t * width + offset + i].
void per_layer_gate(FfnActivation act, float* g, const float* per_layer, int n_tokens, int n_pl,
                    std::size_t width, std::size_t offset, StreamHandle stream);

}  // namespace qforge::cuda
