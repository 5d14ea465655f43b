// Per-position probability arithmetic (all in double) and the summary statistics used by the
// perplexity and KL-divergence reports.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace qforge {

// log-softmax of one row of logits: log p_i = logits[i] - log_norm.
struct LogSoftmax {
  double log_norm = 0.0;    // max + log(sum exp(logit - max))
  std::int32_t argmax = 0;  // first index of the largest logit
};
LogSoftmax log_softmax(std::span<const float> logits);

inline double log_prob(std::span<const float> logits, const LogSoftmax& ls, std::int32_t id) {
  return static_cast<double>(logits[static_cast<std::size_t>(id)]) - ls.log_norm;
}

// Mean of n samples given their sum and sum of squares, with the standard error of the mean
// sqrt((mean(x^2) - mean^2) / (n - 1)) (0 when n < 2 or the variance rounds to <= 0).
struct MeanSe {
  double mean = 0.0;
  double se = 0.0;
};
MeanSe mean_and_se(double sum, double sum2, std::size_t n);

// Sample covariance of two means' estimates: (mean(ab) - mean(a) mean(b)) / (n - 1).
double covariance_of_means(double sum_a, double sum_b, double sum_ab, std::size_t n);

// Linear interpolation between closest ranks: value at fraction * (n - 1) of sorted `values`.
// Fraction 0.5 is therefore the usual median. Empty input gives 0.
double percentile_sorted(std::span<const double> values, double fraction);

}  // namespace qforge
