#include "runtime/cpu/attention.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "core/parallel.h"
#include "runtime/cpu/kernels.h"

namespace qforge::cpu {
namespace {

// Tokens per task: a task reads each K/V row once, converted to F32 once, for all its tokens and
// query heads, instead of once per (token, head) pair (the cache rows are BF16 by default, and
// converting them per query was most of a prompt's attention time).
constexpr std::size_t kTokenBlock = 8;

// Scores of up to 4 query rows against one key row: out[r] = q[r] . k. Each row's sum has the
// same order whatever the number of rows (8 lanes of partial sums, then a fixed reduction), so a
// prompt gives bit for bit the scores of the same tokens decoded one at a time (BF16 caches round
// K/V on store, which would turn the smallest difference into a visible one).
// Not inlined (nor accumulate_values): inside the task loop the compiler spilled their vector
// accumulators (Gemma 3 270M pp512: 725 -> 824 tokens/s out of line).
__attribute__((noinline)) void dot_rows(const float* k, const float* const* q, std::size_t n_rows,
                                        std::size_t n, float* out) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 kv = _mm256_loadu_ps(k + i);
    for (std::size_t r = 0; r < n_rows; ++r) {
      acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q[r] + i), kv, acc[r]);
    }
  }
  for (std::size_t r = 0; r < n_rows; ++r) {
    const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
    const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
    float sum = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
    for (std::size_t j = i; j < n; ++j) sum += q[r][j] * k[j];
    out[r] = sum;
  }
#else
  for (std::size_t r = 0; r < n_rows; ++r) {
    float acc[8] = {};
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      for (std::size_t l = 0; l < 8; ++l) acc[l] += q[r][i + l] * k[i + l];
    }
    float sum = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (; i < n; ++i) sum += q[r][i] * k[i];
    out[r] = sum;
  }
#endif
}

// o[i] += sum over j < n_pos of w[j] * v[j * dv + i], one FMA per (j, i) in increasing j (so a
// split of the positions into tiles does not change the result). With AVX2, 64 outputs stay in
// registers across all positions instead of being read and written back per position.
__attribute__((noinline)) void accumulate_values(const float* w, const float* v, std::size_t n_pos,
                                                 std::size_t dv, float* o) {
#if defined(__AVX2__) && defined(__FMA__)
  std::size_t c = 0;
  for (; c + 64 <= dv; c += 64) {
    __m256 acc[8];
    for (std::size_t u = 0; u < 8; ++u) acc[u] = _mm256_loadu_ps(o + c + 8 * u);
    for (std::size_t j = 0; j < n_pos; ++j) {
      const __m256 wv = _mm256_set1_ps(w[j]);
      const float* vr = v + j * dv + c;
      for (std::size_t u = 0; u < 8; ++u)
        acc[u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(vr + 8 * u), acc[u]);
    }
    for (std::size_t u = 0; u < 8; ++u) _mm256_storeu_ps(o + c + 8 * u, acc[u]);
  }
  for (; c + 8 <= dv; c += 8) {
    __m256 acc = _mm256_loadu_ps(o + c);
    for (std::size_t j = 0; j < n_pos; ++j) {
      acc = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), _mm256_loadu_ps(v + j * dv + c), acc);
    }
    _mm256_storeu_ps(o + c, acc);
  }
  for (; c < dv; ++c) {
    float acc = o[c];
    for (std::size_t j = 0; j < n_pos; ++j) acc = std::fma(w[j], v[j * dv + c], acc);
    o[c] = acc;
  }
#else
  for (std::size_t j = 0; j < n_pos; ++j) {
    for (std::size_t i = 0; i < dv; ++i) o[i] += w[j] * v[j * dv + i];
  }
#endif
}

// Positions per tile of converted V rows.
constexpr int kValueTile = 128;

}  // namespace

void attention(const CpuKvCache& cache, int layer, int pos0, std::size_t n_tokens,
               std::span<const float> q, const AttentionParams& p, std::span<float> out) {
  const auto n_head = static_cast<std::size_t>(p.n_head);
  const auto n_kv = static_cast<std::size_t>(p.n_head_kv);
  const auto dk = static_cast<std::size_t>(p.head_dim_k);
  const auto dv = static_cast<std::size_t>(p.head_dim_v);
  const std::size_t group = n_head / n_kv;
  const std::size_t n_blocks = (n_tokens + kTokenBlock - 1) / kTokenBlock;
  // A task: a block of tokens x the query heads of one KV head; or, when that leaves threads
  // idle (decode), a block of tokens x one query head.
  const bool whole_group = n_blocks * n_kv >= static_cast<std::size_t>(std::max(1, thread_count()));
  const std::size_t heads = whole_group ? group : 1;  // query heads per task
  const std::size_t parts = group / heads;            // tasks per (block, KV head)
  const auto first_visible = [&](int pos) {
    return p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
  };

  parallel_for(n_blocks * n_kv * parts, [&](std::size_t begin, std::size_t end) {
    std::vector<float> k_row(dk), v_tile(static_cast<std::size_t>(kValueTile) * dv), scores;
    for (std::size_t task = begin; task < end; ++task) {
      const std::size_t block = task / (n_kv * parts);
      const std::size_t kv_head = task / parts % n_kv;
      const std::size_t h0 = kv_head * group + task % parts * heads;  // first query head
      const std::size_t t0 = block * kTokenBlock;
      const std::size_t t1 = std::min(n_tokens, t0 + kTokenBlock);
      // Row r = (t - t0) * heads + i: token t, query head h0 + i; scores over [lo, hi], the
      // positions any token of the block sees.
      const std::size_t rows = (t1 - t0) * heads;
      const int lo = first_visible(pos0 + static_cast<int>(t0));
      const int hi = pos0 + static_cast<int>(t1) - 1;
      const auto span = static_cast<std::size_t>(hi - lo + 1);
      scores.assign(rows * span, 0.0f);
      const auto row_pos = [&](std::size_t r) { return pos0 + static_cast<int>(t0 + r / heads); };
      const auto row_offset = [&](std::size_t r) {
        return (t0 + r / heads) * n_head + h0 + r % heads;
      };
      const auto visible = [&](std::size_t r, int j) {
        return j >= first_visible(row_pos(r)) && j <= row_pos(r);
      };

      for (int j = lo; j <= hi; ++j) {
        cache.k_row_f32(layer, j, static_cast<int>(kv_head), k_row);
        // The rows that see position j, 4 at a time.
        const float* q_rows[4];
        std::size_t idx[4], n_q = 0;
        for (std::size_t r = 0; r < rows; ++r) {
          if (visible(r, j)) {
            q_rows[n_q] = q.data() + row_offset(r) * dk;
            idx[n_q++] = r;
          }
          if (n_q == 4 || (r + 1 == rows && n_q > 0)) {
            float dots[4];
            dot_rows(k_row.data(), q_rows, n_q, dk, dots);
            for (std::size_t i = 0; i < n_q; ++i) {
              scores[idx[i] * span + static_cast<std::size_t>(j - lo)] = dots[i] * p.scale;
            }
            n_q = 0;
          }
        }
      }
      for (std::size_t r = 0; r < rows; ++r) {
        const auto from = static_cast<std::size_t>(first_visible(row_pos(r)) - lo);
        const auto to = static_cast<std::size_t>(row_pos(r) - lo) + 1;
        const std::span<float> s = std::span(scores).subspan(r * span + from, to - from);
        softcap(s, p.softcap);
        softmax(s);
        std::fill_n(out.begin() + static_cast<std::ptrdiff_t>(row_offset(r) * dv), dv, 0.0f);
      }
      for (int jt = lo; jt <= hi; jt += kValueTile) {
        const int jt_end = std::min(hi + 1, jt + kValueTile);
        for (int j = jt; j < jt_end; ++j) {
          cache.v_row_f32(layer, j, static_cast<int>(kv_head),
                          std::span(v_tile).subspan(static_cast<std::size_t>(j - jt) * dv, dv));
        }
        for (std::size_t r = 0; r < rows; ++r) {
          const int from = std::max(jt, first_visible(row_pos(r)));
          const int to = std::min(jt_end, row_pos(r) + 1);
          if (from >= to) continue;
          accumulate_values(scores.data() + r * span + static_cast<std::size_t>(from - lo),
                            v_tile.data() + static_cast<std::size_t>(from - jt) * dv,
                            static_cast<std::size_t>(to - from), dv,
                            out.data() + row_offset(r) * dv);
        }
      }
    }
  });
}

}  // namespace qforge::cpu
