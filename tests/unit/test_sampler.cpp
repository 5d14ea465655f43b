// Sampling chain: each filter checked against its definition on small hand-made distributions,
// seeded reproducibility, empirical frequencies vs softmax probabilities, and stop strings.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "eval/sampler.h"

namespace qforge {
namespace {

std::vector<float> log_probs(const std::vector<double>& probs) {
  std::vector<float> l;
  for (const double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
  Sampler s({.temperature = 0.0f});
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 3.0f, -2.0f, 3.0f}), 1);
}

TEST(Sampler, TopKKeepsTheKLargest) {
  const auto c = filter_candidates(log_probs({0.1, 0.4, 0.2, 0.3}), {.temperature = 1.0f, .top_k = 2});
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].id, 1);
  EXPECT_EQ(c[1].id, 3);
  EXPECT_NEAR(c[0].p, 0.4 / 0.7, 1e-6);
}

TEST(Sampler, TopPKeepsSmallestPrefixReachingMass) {
  const auto probs = log_probs({0.5, 0.25, 0.15, 0.1});
  EXPECT_EQ(filter_candidates(probs, {.temperature = 1.0f, .top_p = 0.7f}).size(), 2u);
  EXPECT_EQ(filter_candidates(probs, {.temperature = 1.0f, .top_p = 0.75f}).size(), 2u);
  EXPECT_EQ(filter_candidates(probs, {.temperature = 1.0f, .top_p = 0.8f}).size(), 3u);
  EXPECT_EQ(filter_candidates(probs, {.temperature = 1.0f, .top_p = 0.01f}).size(), 1u);
}

TEST(Sampler, MinPDropsTokensBelowFractionOfBest) {
  const auto probs = log_probs({0.5, 0.25, 0.15, 0.1});
  const auto c = filter_candidates(probs, {.temperature = 1.0f, .min_p = 0.29f});  // >= 0.145
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[2].id, 2);
  EXPECT_NEAR(c[2].p, 0.15 / 0.9, 1e-6);
  EXPECT_EQ(filter_candidates(probs, {.temperature = 1.0f, .min_p = 0.31f}).size(), 2u);
}

TEST(Sampler, TemperatureScalesLogits) {
  const std::vector<float> l{1.0f, 0.0f};
  const auto c = filter_candidates(l, {.temperature = 0.5f});
  const double expect = 1.0 / (1.0 + std::exp(-2.0));
  EXPECT_NEAR(c[0].p, expect, 1e-6);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  std::vector<float> l{2.0f, -2.0f, 1.0f};
  const std::vector<std::int32_t> recent{0, 1, 0};
  apply_penalties(l, recent, {.repeat_penalty = 2.0f});
  EXPECT_FLOAT_EQ(l[0], 1.0f);
  EXPECT_FLOAT_EQ(l[1], -4.0f);
  EXPECT_FLOAT_EQ(l[2], 1.0f);
}

TEST(Sampler, PresenceAndFrequencyPenalties) {
  std::vector<float> l{2.0f, 2.0f, 2.0f};
  const std::vector<std::int32_t> recent{0, 1, 1, 1};
  apply_penalties(l, recent, {.presence_penalty = 0.5f, .frequency_penalty = 0.25f});
  EXPECT_FLOAT_EQ(l[0], 2.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(l[1], 2.0f - 0.5f - 0.75f);
  EXPECT_FLOAT_EQ(l[2], 2.0f);
}

TEST(Sampler, PenaltyWindowForgetsOldTokens) {
  Sampler s({.temperature = 0.0f, .repeat_penalty = 100.0f, .penalty_last_n = 2});
  const std::vector<float> l{5.0f, 4.0f, 3.0f};
  s.accept(0);
  EXPECT_EQ(s.sample(l), 1);  // token 0 penalised
  s.accept(2);
  s.accept(2);                // token 0 left the window of 2
  EXPECT_EQ(s.sample(l), 0);
}

TEST(Sampler, SeedReproducesAndDiffers) {
  const std::vector<float> l(50, 0.0f);  // uniform
  auto draw = [&](std::uint64_t seed) {
    Sampler s({.temperature = 1.0f, .seed = seed});
    std::vector<std::int32_t> ids;
    for (int i = 0; i < 20; ++i) ids.push_back(s.sample(l));
    return ids;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
  Sampler s({.temperature = 1.0f, .seed = 7});
  const auto first = s.sample(l);
  s.reset();
  EXPECT_EQ(s.sample(l), first);
}

TEST(Sampler, FrequenciesFollowSoftmax) {
  const std::vector<double> probs{0.6, 0.3, 0.1};
  Sampler s({.temperature = 1.0f, .seed = 1});
  std::map<std::int32_t, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++counts[s.sample(log_probs(probs))];
  for (int id = 0; id < 3; ++id) {
    const double sd = std::sqrt(probs[id] * (1 - probs[id]) / n);
    EXPECT_NEAR(counts[id] / static_cast<double>(n), probs[id], 5 * sd) << id;
  }
}

TEST(StopStrings, HoldsBackPartialMatchesAndStops) {
  StopStrings stops({"\nUser:", "END"});
  auto r = stops.push("Hello");
  EXPECT_EQ(r.text, "Hello");
  EXPECT_FALSE(r.stopped);
  r = stops.push(" world\nUs");
  EXPECT_EQ(r.text, " world");  // "\nUs" might start "\nUser:"
  r = stops.push("ually");
  EXPECT_EQ(r.text, "\nUsually");
  r = stops.push(" E");
  EXPECT_EQ(r.text, " ");
  r = stops.push("NDING");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.text, "");
}

TEST(StopStrings, FlushReturnsHeldText) {
  StopStrings stops({"abc"});
  EXPECT_EQ(stops.push("xxab").text, "xx");
  EXPECT_EQ(stops.flush(), "ab");
  StopStrings none({});
  EXPECT_EQ(none.push("abc").text, "abc");
}

}  // namespace
}  // namespace qforge
