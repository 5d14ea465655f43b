#include "eval/token_stats.h"

#include <algorithm>
#include <cmath>

namespace qforge {

LogSoftmax log_softmax(std::span<const float> logits) {
  LogSoftmax out;
  if (logits.empty()) return out;
  float max = logits[0];
  for (std::size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > max) {
      max = logits[i];
      out.argmax = static_cast<std::int32_t>(i);
    }
  }
  double sum = 0.0;
  for (const float v : logits) sum += std::exp(static_cast<double>(v) - max);
  out.log_norm = static_cast<double>(max) + std::log(sum);
  return out;
}

MeanSe mean_and_se(double sum, double sum2, std::size_t n) {
  MeanSe r;
  if (n == 0) return r;
  const auto count = static_cast<double>(n);
  r.mean = sum / count;
  const double variance = sum2 / count - r.mean * r.mean;
  if (n >= 2 && variance > 0) r.se = std::sqrt(variance / (count - 1));
  return r;
}

double covariance_of_means(double sum_a, double sum_b, double sum_ab, std::size_t n) {
  if (n < 2) return 0.0;
  const auto count = static_cast<double>(n);
  return (sum_ab / count - (sum_a / count) * (sum_b / count)) / (count - 1);
}

double percentile_sorted(std::span<const double> values, double fraction) {
  if (values.empty()) return 0.0;
  if (fraction <= 0) return values.front();
  if (fraction >= 1) return values.back();
  const double rank = fraction * static_cast<double>(values.size() - 1);
  const auto lo = static_cast<std::size_t>(rank);
  const std::size_t hi = std::min(lo + 1, values.size() - 1);
  const double t = rank - static_cast<double>(lo);
  return (1 - t) * values[lo] + t * values[hi];
}

}  // namespace qforge
