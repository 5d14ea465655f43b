#include "eval/perplexity.h"

#include <chrono>
#include <cmath>

#include "core/parallel.h"
#include "eval/token_stats.h"

namespace qforge {

PerplexityResult compute_perplexity(Model& model, std::span<const std::int32_t> tokens,
                                    std::int32_t bos, const PerplexityOptions& options,
                                    const std::string& source,
                                    const std::function<void(int, double)>& on_chunk) {
  PerplexityResult result;
  result.plan = plan_windows(tokens.size(), options.n_ctx, options.max_chunks, source);
  result.n_text_tokens = tokens.size();
  const WindowPlan& plan = result.plan;
  const auto n_vocab = static_cast<std::size_t>(model.config().n_vocab);
  const auto started = std::chrono::steady_clock::now();

  auto cache = model.new_cache(plan.n_ctx, options.kv_type);
  double sum = 0.0, sum2 = 0.0;
  std::size_t count = 0;
  std::vector<double> nll;
  for (int chunk = 0; chunk < plan.n_chunks; ++chunk) {
    const std::vector<std::int32_t> input = window_input(tokens, plan, chunk, bos);
    // The logits at position p predict the text token at p + 1 (never the BOS substitute).
    const std::size_t text0 =
        static_cast<std::size_t>(chunk) * static_cast<std::size_t>(plan.n_ctx);
    run_window(
        model, *cache, input, options.batch, plan.first(),
        [&](int pos0, std::span<const float> logits, std::size_t n_rows) {
          nll.assign(n_rows, 0.0);
          parallel_for(n_rows, [&](std::size_t begin, std::size_t end) {
            for (std::size_t r = begin; r < end; ++r) {
              const std::size_t pos = static_cast<std::size_t>(pos0) + r;
              if (pos + 1 >= static_cast<std::size_t>(plan.n_ctx)) continue;
              const auto row = logits.subspan(r * n_vocab, n_vocab);
              nll[r] = -log_prob(row, log_softmax(row), tokens[text0 + pos + 1]);
            }
          });
          for (std::size_t r = 0; r < n_rows; ++r) {
            if (static_cast<std::size_t>(pos0) + r + 1 >= static_cast<std::size_t>(plan.n_ctx)) {
              continue;
            }
            sum += nll[r];
            sum2 += nll[r] * nll[r];
            ++count;
          }
        });
    const double running = std::exp(sum / static_cast<double>(count));
    result.running_ppl.push_back(running);
    if (on_chunk) on_chunk(chunk, running);
  }
  const MeanSe m = mean_and_se(sum, sum2, count);
  result.n_scored = count;
  result.mean_nll = m.mean;
  result.se_nll = m.se;
  result.ppl = std::exp(m.mean);
  result.ppl_se = result.ppl * m.se;
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace qforge
