// Perplexity of a model over a tokenized text, scored as llama.cpp's llama-perplexity does (see
// eval/windows.h): PPL = exp(mean NLL) over all scored positions, with the standard error of the
// mean NLL propagated to PPL (se_ppl = PPL * se_nll).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "eval/windows.h"
#include "model/model.h"

namespace qforge {

struct PerplexityOptions {
  int n_ctx = 512;
  int batch = 512;     // tokens per forward call
  int max_chunks = 0;  // <= 0: every full window of the text
  KvType kv_type = KvType::F32;
};

struct PerplexityResult {
  WindowPlan plan;
  std::size_t n_text_tokens = 0;
  std::size_t n_scored = 0;
  double mean_nll = 0.0;
  double se_nll = 0.0;
  double ppl = 0.0;
  double ppl_se = 0.0;
  std::vector<double> running_ppl;  // PPL over windows 1..i, one entry per window
  double seconds = 0.0;             // model time (forward passes and scoring)
};

// on_chunk(i, running_ppl) is called after window i (0-based) has been scored (may be null).
PerplexityResult compute_perplexity(Model& model, std::span<const std::int32_t> tokens,
                                    std::int32_t bos, const PerplexityOptions& options,
                                    const std::string& source,
                                    const std::function<void(int, double)>& on_chunk);

}  // namespace qforge
