#include "eval/windows.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace qforge {

std::int32_t window_bos(const Vocab& vocab) {
  return vocab.add_bos ? vocab.bos_id : -1;
}

WindowPlan plan_windows(std::size_t n_tokens, int n_ctx, int max_chunks,
                        const std::string& source) {
  if (n_ctx < 2) fail("--ctx {}: a window needs at least 2 tokens", n_ctx);
  const std::size_t available = n_tokens / static_cast<std::size_t>(n_ctx);
  if (available == 0) {
    fail("{}: the text has {} tokens, fewer than one window of --ctx {} tokens", source, n_tokens,
         n_ctx);
  }
  std::size_t chunks = available;
  if (max_chunks > 0) chunks = std::min(chunks, static_cast<std::size_t>(max_chunks));
  if (chunks > static_cast<std::size_t>(INT32_MAX)) chunks = INT32_MAX;
  return WindowPlan{n_ctx, static_cast<int>(chunks)};
}

std::vector<std::int32_t> tokenize_eval_text(const Tokenizer& tokenizer, const std::string& text) {
  return tokenizer.encode(text, /*add_special=*/true, /*parse_special=*/false);
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open the text file", path);
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) fail("{}: read error", path);
  return content.str();
}

std::vector<std::int32_t> window_input(std::span<const std::int32_t> tokens, const WindowPlan& plan,
                                       int chunk, std::int32_t bos) {
  const auto n = static_cast<std::size_t>(plan.n_ctx);
  const std::size_t start = static_cast<std::size_t>(chunk) * n;
  if (start + n > tokens.size()) {
    fail("window {} ends at token {}, past the {} tokens of the text", chunk, start + n,
         tokens.size());
  }
  std::vector<std::int32_t> input(tokens.begin() + static_cast<std::ptrdiff_t>(start),
                                  tokens.begin() + static_cast<std::ptrdiff_t>(start + n));
  if (bos >= 0) input[0] = bos;
  return input;
}

void run_window(Model& model, KvCache& cache, std::span<const std::int32_t> input, int batch,
                int logits_from, const LogitsRows& on_rows) {
  if (batch < 1) fail("--batch {}: must be at least 1", batch);
  const int n = static_cast<int>(input.size());
  cache.clear();
  int pos = 0;
  while (pos < n) {
    // Never let a batch straddle logits_from: before it no logits are needed at all.
    int end = std::min(n, pos + batch);
    if (pos < logits_from && end > logits_from) end = logits_from;
    const auto tokens =
        input.subspan(static_cast<std::size_t>(pos), static_cast<std::size_t>(end - pos));
    const bool want = pos >= logits_from;
    const std::vector<float> logits = model.forward(tokens, pos, cache, {.all_logits = want});
    if (want) on_rows(pos, logits, tokens.size());
    pos = end;
  }
}

}  // namespace qforge
