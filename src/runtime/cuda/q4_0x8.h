// Q4_0 matrices regrouped at load time ("Q4_0x8"), for the decode GEMV (gemv_q4_0x8.cu) and the
// prompt GEMM (gemm_tc, the Q4_0x8 decoder).
//
// A GGUF Q4_0 block is 18 bytes (an f16 scale, then 16 bytes of codes), so its codes start at a
// 2-byte boundary and a kernel can only read them 2 bytes at a time: on an H100/H200 those loads,
// not HBM, limit a GEMV. Q4_0x8 keeps every byte and every row's size (18 bytes per 32 columns)
// but, per 256 columns (8 blocks, 144 bytes, a multiple of 16), stores the 8 scales first
// (16 bytes) and then the 8 code arrays (16 bytes each, in GGUF's order: byte j holds element j
// in its low nibble and element j + 16 in its high nibble). Each block's codes are then one
// aligned 16-byte load. Matrices whose rows are a multiple of 256 columns are regrouped in place;
// others of a multiple of 32 columns grow to q4_0x8_row_bytes (weight_layout.h) per row, a last
// partial group keeping the same header-then-codes order (the expert down stacks of Gemma 4
// 26B-A4B, 704 columns: 396 -> 400 bytes per row).
#pragma once

#include <cstddef>
#include <optional>

#include "model/config.h"
#include "quant/ggml_type.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/stream.h"
#include "runtime/cuda/weight_layout.h"

namespace qforge::cuda {

// The weights of the integer-plane decode GEMVs (gemv_q4_0x8 and its forms below): Q4_0 regrouped
// at load (WeightLayout::kQ4_0x8), or GGUF's Q4_K, Q8_0 or Q5_K as stored (rows of n_cols / 256
// x 144, 272 or 176 bytes: 16-byte aligned where n_cols is a multiple of 256).
// The expert down form (moe_gemv_q4_0x8) also takes GGUF Q8_0, Q5_0 and Q5_1 rows of any multiple
// of 32 columns, each row at a 4-byte boundary (34, 22 and 24 bytes per block): llama-quantize
// writes these for K-quant rows that are not whole 256-column super-blocks (Q6_K, Q4_K and Q5_K
// down projections of 704 columns in Gemma 4 26B-A4B).
enum class PlaneWeights { kQ4_0x8, kQ4_K, kQ8_0, kQ5_K, kQ8_0Rows, kQ5_0Rows, kQ5_1Rows };

// The widest rows the GEMV takes (its x planes and weight pipeline share one SM's shared memory).
constexpr std::size_t kMaxQ4_0x8Cols = 32768;

// True for Q4_0 with n_cols a positive multiple of 256 up to kMaxQ4_0x8Cols, unless QFORGE_Q4_0X8=0
// is set (for comparisons with the GGUF-layout kernels).
bool q4_0x8_applies(GgmlType type, std::size_t n_cols);

// Rewrites n_rows GGUF Q4_0 rows of n_cols columns at w (device memory, 16-byte aligned) into
// Q4_0x8 in place, through a scratch buffer of at most 64 MiB; returns when done.
void repack_q4_0x8(void* w, std::size_t n_rows, std::size_t n_cols, StreamHandle stream = nullptr);
// The same with a caller-owned scratch buffer, grown as needed, for a series of matrices.
void repack_q4_0x8(void* w, std::size_t n_rows, std::size_t n_cols,
                   DeviceBuffer<std::uint8_t>& scratch, StreamHandle stream = nullptr);

// True for Q4_K with n_cols a positive multiple of 256 up to kMaxQ4_0x8Cols, unless
// QFORGE_Q4_K_PLANES=0 is set (for comparisons with the row-tiled F32 kernel): such matrices take
// the integer-plane GEMVs with PlaneWeights::kQ4_K.
bool q4_k_planes_applies(GgmlType type, std::size_t n_cols);

// The form in which the integer-plane GEMVs take a GGUF-layout matrix of `type` and n_cols
// columns, if they take it: Q4_K (q4_k_planes_applies), Q8_0 or Q5_K with n_cols a positive
// multiple of 256 up to kMaxQ4_0x8Cols, unless QFORGE_Q8_0_PLANES=0 / QFORGE_Q5_K_PLANES=0 is set
// (for comparisons with the F32 GEMVs).
std::optional<PlaneWeights> gguf_plane_weights(GgmlType type, std::size_t n_cols);

// True for Q4_0 with n_cols a positive multiple of 32 up to kMaxQ4_0x8Cols, unless QFORGE_Q4_0X8=0.
bool q4_0x8_widened_applies(GgmlType type, std::size_t n_cols);
// Rewrites the n_rows GGUF Q4_0 rows at the start of w into Q4_0x8 rows of q4_0x8_row_bytes(n_cols)
// bytes; w must have room for n_rows of those (16-byte aligned, device memory). n_cols a multiple
// of 32 up to kMaxQ4_0x8Cols. Returns when done.
void repack_q4_0x8_widening(void* w, std::size_t n_rows, std::size_t n_cols,
                            DeviceBuffer<std::uint8_t>& scratch, StreamHandle stream = nullptr);

// y[t * ldy + r] = sum_k W[r, k] * x[t * n_cols + k] for r < n_rows, t < n_tokens (>= 1), with W
// in Q4_0x8 (16-byte aligned), x and y device arrays (x 16-byte aligned), ldy >= n_rows.
//
// Numerics: each 32-column block of x is written as s * (p0 + p1 / 254 + p2 / 254^2) with int8
// planes p0..p2 and an F32 scale s = max|x| / 127, so each value is represented to within
// max|x of its block| * 2^-24 (F32's rounding of the block's largest value), the code x plane
// products are exact integer sums (dp4a), and the block sums are combined in F32. With ordinary
// activations the result meets the F32 GEMV's (gemv.h) 1e-5 of sum |w x| bound; a tiny value
// beside an outlier of its block keeps the block's absolute accuracy rather than its own
// relative one (the bound is then 1e-5 of sum |w| * max|x| per block: still ~2^16 times finer than
// the int8 activations of llama.cpp's quantized GEMV). Non-finite x gives a non-finite result.
// QFORGE_Q4_0X8=0 keeps GGUF order and the F32 kernels.
// With PlaneWeights::kQ4_K, W is GGUF Q4_K (n_cols a multiple of 256, q4_k_planes_applies) and a
// sub-block's product is d sc (codes . x) - dmin m (sum x), the same planes and bound; likewise
// kQ5_K (5-bit codes) and kQ8_0 (d (codes . x), int8 codes), gguf_plane_weights.
void gemv_q4_0x8(const void* w, std::size_t n_rows, std::size_t n_cols, const float* x, float* y,
                 std::size_t ldy, int n_tokens, StreamHandle stream = nullptr,
                 PlaneWeights weights = PlaneWeights::kQ4_0x8);

// The gate/up product of a gated FFN with the activation applied to its result: W holds the n_ff
// gate rows and then the n_ff up rows (n_rows = 2 n_ff), and y[t * ldy + j] = act(gate_j . x_t) *
// (up_j . x_t) for j < n_ff (ldy >= n_ff), the values glu_rows (model_ops.h) would compute from
// the two products: the gate and up rows of an output are summed by the same warp, so no
// [gate | up] buffer is written and no separate activation kernel runs.
void gemv_q4_0x8_glu(FfnActivation act, const void* w, std::size_t n_rows, std::size_t n_cols,
                     const float* x, float* y, std::size_t ldy, int n_tokens,
                     StreamHandle stream = nullptr, PlaneWeights weights = PlaneWeights::kQ4_0x8);

// The input of a one-token GEMV given as the residual update and RMSNorm before it, which every
// CTA of the GEMV computes while it builds its planes of x (the values add_and_norm and
// residual_scale_norm in model_ops.h / gemma4_ops.h compute, in the same order of operations):
//   x' = (x + rms_norm(o) * o_norm) * scale    (o_norm null: x + o; o null: x * scale)
//   GEMV input = rms_norm(x') * norm,          rms_norm(v) = v / sqrt(mean(v^2) + eps)
// and CTA 0 stores x' to x_out (skipped if null; it must not be x, which every CTA reads). On a
// decode step this removes the one-CTA norm kernel before the Q/K/V and gate/up products, and
// its launch boundary. x, o, o_norm, norm and x_out are 16-byte aligned device arrays of n_cols
// floats (o, o_norm, x_out may be null; norm may not).
struct ResidualNormInput {
  const float* x = nullptr;
  const float* o = nullptr;
  const float* o_norm = nullptr;
  float scale = 1.0f;
  const float* norm = nullptr;
  float* x_out = nullptr;
  float eps = 0.0f;
};

// The widest input the normed GEMVs take (each thread of a CTA holds two 8-element chunks).
constexpr std::size_t kMaxNormedCols = 8192;
// n_cols a positive multiple of 256 up to kMaxNormedCols, whose launches with `weights` fit in the
// current device's shared memory.
bool gemv_q4_0x8_normed_applies(std::size_t n_cols, PlaneWeights weights = PlaneWeights::kQ4_0x8);

// gemv_q4_0x8 for one token whose x is the ResidualNormInput's GEMV input (y of n_rows floats).
void gemv_q4_0x8_normed(const void* w, std::size_t n_rows, std::size_t n_cols,
                        const ResidualNormInput& in, float* y, StreamHandle stream = nullptr,
                        PlaneWeights weights = PlaneWeights::kQ4_0x8);
// gemv_q4_0x8_glu for one token whose x is the ResidualNormInput's GEMV input (y of n_rows / 2).
void gemv_q4_0x8_glu_normed(FfnActivation act, const void* w, std::size_t n_rows,
                            std::size_t n_cols, const ResidualNormInput& in, float* y,
                            StreamHandle stream = nullptr,
                            PlaneWeights weights = PlaneWeights::kQ4_0x8);

// Expert form of gemv_q4_0x8_glu for one token (moe.h): for s < n_slots,
//   y[s * ldy + j] = act(gate_j . x) * (up_j . x),   j < w.rows / 2,
// with gate_j and up_j rows j and w.rows / 2 + j of expert ids[s] (each expert w.rows = 2 n_ff
// rows in Q4_0x8, w.layout kQ4_0x8, or GGUF Q4_K, Q8_0 or Q5_K where gguf_plane_weights takes
// them), zeros for ids outside [0, w.n_experts). The slots share x, as a token's k slots share
// their gate/up input; the ids may be written by the previous kernel.
// x_settled: a kernel two or more launches back wrote x and the previous one triggers after its
// PDL wait (pdl.cuh; the routing between the norm and this product), so the planes of x are
// built before the wait.
void moe_gemv_q4_0x8_glu(FfnActivation act, const ExpertStack& w, const int* ids, int n_slots,
                         const float* x, float* y, std::size_t ldy, StreamHandle stream = nullptr,
                         bool x_settled = false);

// Expert form of gemv_q4_0x8 with an input per slot, as the down products of one token's k slots:
//   y[s * ldy + r] = W_{ids[s]}[r, :] . x[s * w.cols + :],   r < w.rows, s < n_slots,
// zeros for ids outside [0, w.n_experts). w in the Q4_0x8 layout, w.cols a multiple of 32 (rows of
// q4_0x8_row_bytes(w.cols), widened where w.cols is not a multiple of 256), or GGUF Q8_0, Q5_0 or
// Q5_1 as stored where expert_down_plane_weights takes the stack; the numerics of gemv_q4_0x8. The
// ids may be written by the previous kernel, unless ids_settled: then a kernel two or more launches
// back wrote them and the previous one triggers after its PDL wait (pdl.cuh; the gate/up GEMV
// between the routing and this product), so the experts' weights start streaming before the wait
// for x.
void moe_gemv_q4_0x8(const ExpertStack& w, const int* ids, int n_slots, const float* x, float* y,
                     std::size_t ldy, StreamHandle stream = nullptr, bool ids_settled = false);

// The form in which moe_gemv_q4_0x8 takes a GGUF-layout expert stack, if it takes it: Q8_0, Q5_0
// or Q5_1 (kQ8_0Rows, kQ5_0Rows, kQ5_1Rows) with w.cols a positive multiple of 32 up to
// kMaxQ4_0x8Cols, the base and expert stride multiples of 16 bytes (so each row's start is known
// from its index alone), unless QFORGE_DOWN_PLANES=0 (for comparisons with the F32 GEMVs).
std::optional<PlaneWeights> expert_down_plane_weights(const ExpertStack& w);

// For measurements and tests: rows per warp task (1, 2 or 4; 0 = chosen from the shape).
void set_gemv_q4_0x8_rows(int rows);
// For measurements and tests: the weight stream by bulk copies (the default on compute
// capability 9.0 and newer, where the copy engine moves each row's step in one copy) or by
// cp.async, 16 bytes per thread (false; older devices always). Results are identical.
void set_gemv_q4_0x8_bulk(bool on);
// The choice set_gemv_q4_0x8_bulk last made (initially: unless QFORGE_GEMV_BULK=0).
bool gemv_q4_0x8_bulk_chosen();
// For measurements and tests: CTAs per cluster that share the work of the planes of x (1, 2 or
// 4 for every launch of the unnormed form; 0 = chosen per launch; compute capability 9.0 and
// newer, ignored before). Results are identical.
void set_gemv_q4_0x8_cluster(int size);
// The choice set_gemv_q4_0x8_cluster last made (initially: QFORGE_GEMV_CLUSTER, or 0).
int gemv_q4_0x8_cluster_chosen();
// For measurements and tests: column parts per row group (1, 2 or 4, at most the number of
// 1024-column steps; 0 = chosen from the shape).
void set_gemv_q4_0x8_parts(int parts);

}  // namespace qforge::cuda
