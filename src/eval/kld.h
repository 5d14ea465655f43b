// KL-divergence of a test model's next-token distributions from a reference model's, with the
// statistics of llama.cpp's `llama-perplexity --kl-divergence` (definitions in docs/eval.md).
//
// Per scored position, with P the reference distribution and Q the test one:
//   KLD      = sum_i P_i (log P_i - log Q_i)  over the whole vocabulary (exact mode), or over the
//              reference's top-K tokens plus one "tail" bucket (top-K mode, see TopKRef)
//   nll      = -log Q(next token), nll_ref = -log P(next token)
//   dp       = Q(next token) - P(next token)
//   same_top = argmax Q == argmax P (first index of the largest logit on each side)
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace qforge {

struct TokenComparison {
  double kld = 0.0;
  double nll = 0.0;      // test model
  double nll_ref = 0.0;  // reference model
  double dp = 0.0;
  bool same_top = false;
};

// The reference distribution of one position reduced to its K most likely tokens: ids sorted by
// logit (descending, lower id first on ties), their log-probabilities, the probability mass of
// all other tokens, and the exact log-probability of the token that actually follows.
struct TopKRef {
  float logp_next = 0.0f;
  float tail_mass = 0.0f;
  std::vector<std::int32_t> ids;
  std::vector<float> logps;
};

// Builds the top-K reduction of reference logits (1 <= top_k; clamped to the vocabulary size).
TopKRef make_topk_ref(std::span<const float> ref_logits, std::int32_t next, int top_k);

// Exact comparison from both models' full logits.
TokenComparison compare_full(std::span<const float> ref_logits, std::span<const float> logits,
                             std::int32_t next);

// For a reference scored against many test models (convert's dynamic recipe search): its
// log-probabilities once, out[i] = log P_i (out.size() == logits.size()), then per test model
// the full-vocabulary KLD(P || Q) from them and Q's logits, the sum compare_full computes (terms
// with P_i == 0 contribute 0), in single-precision log P_i.
void reference_log_probs(std::span<const float> logits, std::span<float> out);
double kld_from_log_probs(std::span<const float> ref_log_probs, std::span<const float> logits);

// Comparison against a top-K reduced reference. The KLD is that of the two distributions
// coarsened to {top-K tokens, everything else}:
//   sum_{i in K} P_i (log P_i - log Q_i) + P_tail (log P_tail - log Q_tail),  Q_tail = 1 - Q(K),
// which never exceeds the full-vocabulary KLD and equals it when K covers the vocabulary (or the
// tail distributions are proportional). nll_ref, dp and same_top are exact.
// `scratch` must hold logits.size() zero bytes; it is left zeroed.
TokenComparison compare_topk(const TopKRef& ref, std::span<const float> logits, std::int32_t next,
                             std::span<unsigned char> scratch);

struct KldSummary {
  std::size_t count = 0;
  double ppl = 0.0, ppl_se = 0.0;                    // test model
  double ppl_ref = 0.0, ppl_ref_se = 0.0;            // reference model
  double ln_ppl_ratio = 0.0, ln_ppl_ratio_se = 0.0;  // ln(PPL / PPL_ref)
  double nll_correlation = 0.0;                      // of the two mean-NLL estimates
  double kld_mean = 0.0, kld_se = 0.0;
  double kld_min = 0.0, kld_median = 0.0, kld_p90 = 0.0, kld_p95 = 0.0, kld_p99 = 0.0,
         kld_max = 0.0;
  double same_top = 0.0, same_top_se = 0.0;  // fractions (0..1)
  double dp_mean = 0.0, dp_mean_se = 0.0;
  double dp_rms = 0.0, dp_rms_se = 0.0;
  double dp_max_abs = 0.0;
};

class KldAccumulator {
 public:
  void add(const TokenComparison& c);
  KldSummary summary(bool with_percentiles = true) const;
  std::size_t count() const { return klds_.size(); }

 private:
  double sum_nll_ = 0, sum_nll2_ = 0, sum_nll_ref_ = 0, sum_nll_ref2_ = 0, sum_nll_cross_ = 0;
  double sum_kld_ = 0, sum_kld2_ = 0;
  double sum_dp_ = 0, sum_dp2_ = 0, sum_dp4_ = 0, max_abs_dp_ = 0;
  std::size_t same_top_ = 0;
  std::vector<double> klds_;
};

}  // namespace qforge
