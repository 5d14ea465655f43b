// Text generation on top of Model: prompt prefill in batches, then one token at a time through
// the sampler, streaming decoded text (whole UTF-8 characters only) to a callback.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "eval/sampler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qforge {

struct GenerateOptions {
  int max_tokens = 128;              // tokens to generate at most
  SamplerParams sampling;
  std::vector<std::string> stop;     // stop strings (not printed)
  bool stop_at_eog = true;           // stop at EOS / end-of-turn tokens
  std::size_t prefill_batch = 256;   // prompt tokens per forward call
};

struct GenerateResult {
  std::vector<std::int32_t> tokens;  // generated ids (the end-of-generation token excluded)
  std::string text;
  std::string stop_reason;           // "length", "eog" or "stop string"
  int n_prompt = 0;
  double prompt_seconds = 0.0;
  int decode_steps = 0;              // single-token forward passes after the prompt
  double generation_seconds = 0.0;   // all forward + sampling time after the prompt
};

// End-of-generation tokens of a vocabulary: EOS plus known end-of-turn control tokens.
std::vector<std::int32_t> end_of_generation_tokens(const Vocab& vocab);

// Runs `prompt` (must be non-empty) from position 0 of `cache`, then samples up to max_tokens.
// on_text receives printable text as soon as it is known (may be null).
GenerateResult generate(Model& model, KvCache& cache, const Tokenizer& tokenizer,
                        std::span<const std::int32_t> prompt, const GenerateOptions& options,
                        const std::function<void(std::string_view)>& on_text);

// Length of the longest prefix of `s` that does not end inside a UTF-8 sequence.
std::size_t complete_utf8_prefix(std::string_view s);

}  // namespace qforge
