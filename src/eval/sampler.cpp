#include "eval/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"

namespace qforge {

void apply_penalties(std::span<float> logits, std::span<const std::int32_t> recent,
                     const SamplerParams& params) {
  const bool any = params.repeat_penalty != 1.0f || params.presence_penalty != 0.0f ||
                   params.frequency_penalty != 0.0f;
  if (!any || recent.empty()) return;
  std::map<std::int32_t, int> counts;
  for (const std::int32_t id : recent) {
    if (id >= 0 && static_cast<std::size_t>(id) < logits.size()) ++counts[id];
  }
  for (const auto& [id, count] : counts) {
    float& l = logits[static_cast<std::size_t>(id)];
    if (params.repeat_penalty != 1.0f) {
      l = l > 0.0f ? l / params.repeat_penalty : l * params.repeat_penalty;
    }
    l -= static_cast<float>(count) * params.frequency_penalty + params.presence_penalty;
  }
}

namespace {

// Probabilities of the candidates (sorted by decreasing logit) at temperature `temp`.
void normalise(std::vector<TokenCandidate>& cands, float temp) {
  if (cands.empty()) return;
  const float max = cands.front().logit;
  float sum = 0.0f;
  for (auto& c : cands) {
    c.p = std::exp((c.logit - max) / temp);
    sum += c.p;
  }
  for (auto& c : cands) c.p /= sum;
}

}  // namespace

std::vector<TokenCandidate> filter_candidates(std::span<const float> logits,
                                              const SamplerParams& params) {
  if (logits.empty()) fail("sampler: empty logits");
  std::vector<TokenCandidate> cands;
  cands.reserve(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) {
    if (!std::isnan(logits[i])) cands.push_back({static_cast<std::int32_t>(i), logits[i], 0.0f});
  }
  if (cands.empty()) fail("sampler: all logits are NaN");
  const auto by_logit = [](const TokenCandidate& a, const TokenCandidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  std::size_t keep = cands.size();
  if (params.top_k > 0) keep = std::min(keep, static_cast<std::size_t>(params.top_k));
  std::partial_sort(cands.begin(), cands.begin() + static_cast<std::ptrdiff_t>(keep), cands.end(),
                    by_logit);
  cands.resize(keep);

  if (params.top_p < 1.0f) {
    normalise(cands, 1.0f);
    // Smallest prefix whose mass reaches top_p (at least one token).
    float mass = 0.0f;
    std::size_t n = 0;
    while (n < cands.size()) {
      mass += cands[n].p;
      ++n;
      if (mass >= params.top_p) break;
    }
    cands.resize(n);
  }
  if (params.min_p > 0.0f) {
    normalise(cands, 1.0f);
    const float threshold = params.min_p * cands.front().p;
    std::size_t n = 1;
    while (n < cands.size() && cands[n].p >= threshold) ++n;
    cands.resize(n);
  }
  normalise(cands, params.temperature > 0.0f ? params.temperature : 1.0f);
  return cands;
}

Sampler::Sampler(SamplerParams params) : params_(params), rng_(params.seed) {}

void Sampler::reset() {
  rng_.seed(params_.seed);
  recent_.clear();
}

void Sampler::accept(std::int32_t token) {
  recent_.push_back(token);
  if (params_.penalty_last_n >= 0) {
    while (recent_.size() > static_cast<std::size_t>(params_.penalty_last_n)) recent_.pop_front();
  }
}

std::int32_t Sampler::sample(std::span<const float> logits) {
  scratch_.assign(logits.begin(), logits.end());
  const std::vector<std::int32_t> recent(recent_.begin(), recent_.end());
  apply_penalties(scratch_, recent, params_);
  if (params_.temperature <= 0.0f) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < scratch_.size(); ++i) {
      if (scratch_[i] > scratch_[best] || std::isnan(scratch_[best])) best = i;
    }
    return static_cast<std::int32_t>(best);
  }
  const std::vector<TokenCandidate> cands = filter_candidates(scratch_, params_);
  // Uniform in [0, 1) from the top 53 bits: identical on every standard library.
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  double cumulative = 0.0;
  for (const auto& c : cands) {
    cumulative += c.p;
    if (u < cumulative) return c.id;
  }
  return cands.back().id;  // rounding left a sliver of mass at the end
}

StopStrings::StopStrings(std::vector<std::string> stops) {
  for (auto& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

StopStrings::Result StopStrings::push(std::string_view piece) {
  pending_ += piece;
  std::size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    Result r{pending_.substr(0, first), true};
    pending_.clear();
    return r;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  std::size_t hold = 0;
  for (const auto& s : stops_) {
    for (std::size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  Result r{pending_.substr(0, pending_.size() - hold), false};
  pending_.erase(0, pending_.size() - hold);
  return r;
}

std::string StopStrings::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace qforge
