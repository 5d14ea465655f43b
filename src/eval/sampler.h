// Next-token sampling. The chain follows llama.cpp's default order: penalties -> top-k -> top-p ->
// min-p -> temperature -> draw. Top-p and min-p look at the probabilities before temperature.
// temperature <= 0 means greedy (argmax of the penalised logits; lowest id wins ties).
// Draws use std::mt19937_64 and the top 53 bits of each output, so a seed reproduces a run on
// every platform.
#pragma once

#include <cstdint>
#include <deque>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qforge {

struct SamplerParams {
  float temperature = 0.0f;
  int top_k = 0;          // <= 0: off
  float top_p = 1.0f;     // >= 1: off
  float min_p = 0.0f;     // <= 0: off
  float repeat_penalty = 1.0f;    // 1: off. logit > 0 is divided by it, logit < 0 multiplied
  float presence_penalty = 0.0f;  // subtracted once from every token seen in the window
  float frequency_penalty = 0.0f; // subtracted per occurrence in the window
  int penalty_last_n = 64;        // window of recent tokens the penalties look at (<0: all)
  std::uint64_t seed = 0;
};

// One surviving candidate of the chain. p is the probability within the surviving set.
struct TokenCandidate {
  std::int32_t id;
  float logit;
  float p;
};

// Penalises `logits` in place for the tokens in `recent` (each distinct id once, except the
// frequency term, which counts occurrences).
void apply_penalties(std::span<float> logits, std::span<const std::int32_t> recent,
                     const SamplerParams& params);

// The candidate set after top-k / top-p / min-p / temperature, sorted by decreasing logit with
// p normalised over the set. Exposed for tests; sample() draws from it.
std::vector<TokenCandidate> filter_candidates(std::span<const float> logits,
                                              const SamplerParams& params);

class Sampler {
 public:
  explicit Sampler(SamplerParams params);

  // Chooses the next token from one row of logits (penalties use the accepted history).
  std::int32_t sample(std::span<const float> logits);
  // Records a token (prompt or generated) in the penalty history.
  void accept(std::int32_t token);
  void reset();

  const SamplerParams& params() const { return params_; }

 private:
  SamplerParams params_;
  std::mt19937_64 rng_;
  std::deque<std::int32_t> recent_;
  std::vector<float> scratch_;
};

// Watches generated text for stop strings. push() returns the text that can be shown now: text
// that might still become the start of a stop string is held back until it can't.
class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);

  struct Result {
    std::string text;      // safe to print
    bool stopped = false;  // a stop string was found; text ends right before it
  };
  Result push(std::string_view piece);
  std::string flush();  // the held-back text, at the end of generation

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace qforge
