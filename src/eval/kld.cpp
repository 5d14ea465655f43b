#include "eval/kld.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "eval/token_stats.h"

namespace qforge {

TopKRef make_topk_ref(std::span<const float> ref_logits, std::int32_t next, int top_k) {
  if (top_k < 1) fail("--top-k {}: must be at least 1", top_k);
  const LogSoftmax ls = log_softmax(ref_logits);
  const std::size_t k = std::min(static_cast<std::size_t>(top_k), ref_logits.size());
  std::vector<std::int32_t> order(ref_logits.size());
  std::iota(order.begin(), order.end(), 0);
  const auto by_logit = [&](std::int32_t a, std::int32_t b) {
    const float la = ref_logits[static_cast<std::size_t>(a)];
    const float lb = ref_logits[static_cast<std::size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                    by_logit);
  TopKRef ref;
  ref.logp_next = static_cast<float>(log_prob(ref_logits, ls, next));
  ref.ids.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k));
  ref.logps.reserve(k);
  for (const std::int32_t id : ref.ids) {
    ref.logps.push_back(static_cast<float>(log_prob(ref_logits, ls, id)));
  }
  double tail = 0.0;
  for (std::size_t i = k; i < order.size(); ++i)
    tail += std::exp(log_prob(ref_logits, ls, order[i]));
  ref.tail_mass = static_cast<float>(tail);
  return ref;
}

namespace {

void fill_next_token_terms(TokenComparison& c, double logq_next, double logp_next) {
  c.nll = -logq_next;
  c.nll_ref = -logp_next;
  c.dp = std::exp(logq_next) - std::exp(logp_next);
}

// sum_i P_i (log P_i - log Q_i) over the vocabulary, log P_i = logp_of(i) in double, log Q_i from
// the logits and their softmax q; terms with P_i == 0 contribute 0 (0 * log 0 = 0).
template <typename LogP>
double kld_sum(std::span<const float> logits, const LogSoftmax& q, LogP logp_of) {
  double kld = 0.0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const double logp = logp_of(i);
    const double prob = std::exp(logp);
    if (prob == 0.0) continue;
    kld += prob * (logp - (static_cast<double>(logits[i]) - q.log_norm));
  }
  return kld;
}

}  // namespace

TokenComparison compare_full(std::span<const float> ref_logits, std::span<const float> logits,
                             std::int32_t next) {
  if (ref_logits.size() != logits.size()) {
    fail("KLD: reference has {} logits per position, the model {}", ref_logits.size(),
         logits.size());
  }
  const LogSoftmax p = log_softmax(ref_logits);
  const LogSoftmax q = log_softmax(logits);
  TokenComparison c;
  c.kld = kld_sum(logits, q,
                  [&](std::size_t i) { return static_cast<double>(ref_logits[i]) - p.log_norm; });
  fill_next_token_terms(c, log_prob(logits, q, next), log_prob(ref_logits, p, next));
  c.same_top = p.argmax == q.argmax;
  return c;
}

void reference_log_probs(std::span<const float> logits, std::span<float> out) {
  if (out.size() != logits.size()) {
    fail("KLD: {} log-probabilities for {} logits", out.size(), logits.size());
  }
  const LogSoftmax p = log_softmax(logits);
  for (std::size_t i = 0; i < logits.size(); ++i) {
    out[i] = static_cast<float>(static_cast<double>(logits[i]) - p.log_norm);
  }
}

double kld_from_log_probs(std::span<const float> ref_log_probs, std::span<const float> logits) {
  if (ref_log_probs.size() != logits.size()) {
    fail("KLD: reference has {} log-probabilities per position, the model {} logits",
         ref_log_probs.size(), logits.size());
  }
  return kld_sum(logits, log_softmax(logits),
                 [&](std::size_t i) { return static_cast<double>(ref_log_probs[i]); });
}

TokenComparison compare_topk(const TopKRef& ref, std::span<const float> logits, std::int32_t next,
                             std::span<unsigned char> scratch) {
  const LogSoftmax q = log_softmax(logits);
  double kld = 0.0;
  for (std::size_t j = 0; j < ref.ids.size(); ++j) {
    const auto id = static_cast<std::size_t>(ref.ids[j]);
    const double logp = ref.logps[j];
    kld += std::exp(logp) * (logp - (static_cast<double>(logits[id]) - q.log_norm));
    scratch[id] = 1;
  }
  // Q's mass outside the reference's top K, summed directly (1 - Q(K) would cancel badly).
  double q_tail = 0.0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    if (scratch[i] == 0) q_tail += std::exp(static_cast<double>(logits[i]) - q.log_norm);
  }
  for (const std::int32_t id : ref.ids) scratch[static_cast<std::size_t>(id)] = 0;
  const double p_tail = ref.tail_mass;
  if (p_tail > 0.0) kld += p_tail * (std::log(p_tail) - std::log(std::max(q_tail, DBL_MIN)));
  TokenComparison c;
  c.kld = kld;
  fill_next_token_terms(c, log_prob(logits, q, next), ref.logp_next);
  c.same_top = !ref.ids.empty() && ref.ids[0] == q.argmax;
  return c;
}

void KldAccumulator::add(const TokenComparison& c) {
  sum_nll_ += c.nll;
  sum_nll2_ += c.nll * c.nll;
  sum_nll_ref_ += c.nll_ref;
  sum_nll_ref2_ += c.nll_ref * c.nll_ref;
  sum_nll_cross_ += c.nll * c.nll_ref;
  sum_kld_ += c.kld;
  sum_kld2_ += c.kld * c.kld;
  const double dp2 = c.dp * c.dp;
  sum_dp_ += c.dp;
  sum_dp2_ += dp2;
  sum_dp4_ += dp2 * dp2;
  max_abs_dp_ = std::max(max_abs_dp_, std::fabs(c.dp));
  if (c.same_top) ++same_top_;
  klds_.push_back(c.kld);
}

KldSummary KldAccumulator::summary(bool with_percentiles) const {
  KldSummary s;
  const std::size_t n = klds_.size();
  s.count = n;
  if (n == 0) return s;
  const MeanSe nll = mean_and_se(sum_nll_, sum_nll2_, n);
  const MeanSe nll_ref = mean_and_se(sum_nll_ref_, sum_nll_ref2_, n);
  s.ppl = std::exp(nll.mean);
  s.ppl_se = s.ppl * nll.se;
  s.ppl_ref = std::exp(nll_ref.mean);
  s.ppl_ref_se = s.ppl_ref * nll_ref.se;
  const double cov = covariance_of_means(sum_nll_, sum_nll_ref_, sum_nll_cross_, n);
  s.ln_ppl_ratio = nll.mean - nll_ref.mean;
  s.ln_ppl_ratio_se = std::sqrt(std::max(0.0, nll.se * nll.se + nll_ref.se * nll_ref.se - 2 * cov));
  if (nll.se > 0 && nll_ref.se > 0) s.nll_correlation = cov / (nll.se * nll_ref.se);

  const MeanSe kld = mean_and_se(sum_kld_, sum_kld2_, n);
  s.kld_mean = kld.mean;
  s.kld_se = kld.se;
  if (with_percentiles) {
    std::vector<double> sorted = klds_;
    std::sort(sorted.begin(), sorted.end());
    s.kld_min = sorted.front();
    s.kld_median = percentile_sorted(sorted, 0.5);
    s.kld_p90 = percentile_sorted(sorted, 0.90);
    s.kld_p95 = percentile_sorted(sorted, 0.95);
    s.kld_p99 = percentile_sorted(sorted, 0.99);
    s.kld_max = sorted.back();
  }

  const double top = static_cast<double>(same_top_) / static_cast<double>(n);
  s.same_top = top;
  if (n >= 2) s.same_top_se = std::sqrt(top * (1 - top) / static_cast<double>(n - 1));

  const MeanSe dp = mean_and_se(sum_dp_, sum_dp2_, n);
  s.dp_mean = dp.mean;
  s.dp_mean_se = dp.se;
  const MeanSe dp2 = mean_and_se(sum_dp2_, sum_dp4_, n);
  s.dp_rms = std::sqrt(dp2.mean);
  if (s.dp_rms > 0) s.dp_rms_se = 0.5 / s.dp_rms * dp2.se;
  s.dp_max_abs = max_abs_dp_;
  return s;
}

}  // namespace qforge
