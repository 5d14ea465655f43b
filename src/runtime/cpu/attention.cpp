#include "runtime/cpu/attention.h"

#include <algorithm>
#include <vector>

#include "core/parallel.h"
#include "runtime/cpu/kernels.h"

namespace qforge::cpu {

void attention(const CpuKvCache& cache, int layer, int pos0, std::size_t n_tokens,
               std::span<const float> q, const AttentionParams& p, std::span<float> out) {
  const auto n_head = static_cast<std::size_t>(p.n_head);
  const auto dk = static_cast<std::size_t>(p.head_dim_k);
  const auto dv = static_cast<std::size_t>(p.head_dim_v);
  const int group = p.n_head / p.n_head_kv;
  parallel_for(n_tokens * n_head, [&](std::size_t begin, std::size_t end) {
    std::vector<float> scores;
    for (std::size_t task = begin; task < end; ++task) {
      const std::size_t t = task / n_head;
      const std::size_t h = task % n_head;
      const int pos = pos0 + static_cast<int>(t);
      const int first = p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
      const int kv_head = static_cast<int>(h) / group;
      const std::span<const float> qh = q.subspan((t * n_head + h) * dk, dk);
      scores.resize(static_cast<std::size_t>(pos - first + 1));
      for (int j = first; j <= pos; ++j) {
        scores[static_cast<std::size_t>(j - first)] = cache.dot_k(layer, j, kv_head, qh) * p.scale;
      }
      softcap(scores, p.softcap);
      softmax(scores);
      const std::span<float> oh = out.subspan((t * n_head + h) * dv, dv);
      std::fill(oh.begin(), oh.end(), 0.0f);
      for (int j = first; j <= pos; ++j) {
        cache.add_scaled_v(layer, j, kv_head, scores[static_cast<std::size_t>(j - first)], oh);
      }
    }
  });
}

}  // namespace qforge::cpu
