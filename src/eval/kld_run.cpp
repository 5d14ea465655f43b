#include "eval/kld_run.h"

#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace qforge {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Logits rows of the scored positions first .. n_ctx - 2 of one window, [n_scored x n_vocab].
std::vector<float> scored_logits(Model& model, KvCache& cache, std::span<const std::int32_t> input,
                                 const WindowPlan& plan, int batch) {
  const auto n_vocab = static_cast<std::size_t>(model.config().n_vocab);
  const auto n_scored = static_cast<std::size_t>(plan.n_scored());
  std::vector<float> rows(n_scored * n_vocab);
  run_window(model, cache, input, batch, plan.first(),
             [&](int pos0, std::span<const float> logits, std::size_t n_rows) {
               for (std::size_t r = 0; r < n_rows; ++r) {
                 const std::size_t s = static_cast<std::size_t>(pos0 - plan.first()) + r;
                 if (s >= n_scored) continue;  // the last position predicts nothing
                 std::copy_n(logits.begin() + static_cast<std::ptrdiff_t>(r * n_vocab), n_vocab,
                             rows.begin() + static_cast<std::ptrdiff_t>(s * n_vocab));
               }
             });
  return rows;
}

std::int32_t next_token(std::span<const std::int32_t> tokens, const WindowPlan& plan, int chunk,
                        std::size_t scored_index) {
  return tokens[static_cast<std::size_t>(chunk) * static_cast<std::size_t>(plan.n_ctx) +
                static_cast<std::size_t>(plan.first()) + scored_index + 1];
}

void check_vocab_size(const Model& model, std::size_t n_vocab, const std::string& what) {
  if (static_cast<std::size_t>(model.config().n_vocab) != n_vocab) {
    fail("vocabulary mismatch: the model has {} logits per token, {} has {}",
         model.config().n_vocab, what, n_vocab);
  }
}

}  // namespace

KldRunResult run_kld_direct(Model& ref, Model* test, std::span<const std::int32_t> tokens,
                            std::int32_t bos, std::uint64_t vocab_hash,
                            const KldRunOptions& options, const std::string& source,
                            const KldChunkCallback& on_chunk) {
  const auto start = Clock::now();
  KldRunResult result;
  result.plan = plan_windows(tokens.size(), options.n_ctx, options.max_chunks, source);
  const WindowPlan& plan = result.plan;
  const auto n_vocab = static_cast<std::size_t>(ref.config().n_vocab);
  if (test != nullptr) check_vocab_size(*test, n_vocab, "the reference model");
  if (options.top_k < 1) fail("--top-k {}: must be at least 1", options.top_k);
  const int top_k = static_cast<int>(std::min<std::size_t>(options.top_k, n_vocab));

  std::optional<RefLogitsWriter> writer;
  if (!options.save_ref.empty()) {
    RefLogitsHeader h;
    h.n_vocab = static_cast<std::uint32_t>(n_vocab);
    h.n_ctx = static_cast<std::uint32_t>(plan.n_ctx);
    h.n_chunks = static_cast<std::uint32_t>(plan.n_chunks);
    h.top_k = static_cast<std::uint32_t>(top_k);
    h.first = static_cast<std::uint32_t>(plan.first());
    h.bos = bos;
    h.vocab_hash = vocab_hash;
    const std::size_t n_used = static_cast<std::size_t>(plan.n_chunks) * plan.n_ctx;
    writer.emplace(options.save_ref, h, tokens.first(n_used));
    result.top_k = top_k;
  }

  auto ref_cache = ref.new_cache(plan.n_ctx, options.kv_type);
  std::unique_ptr<KvCache> test_cache;
  if (test != nullptr) test_cache = test->new_cache(plan.n_ctx, options.kv_type);
  KldAccumulator acc;
  const auto n_scored = static_cast<std::size_t>(plan.n_scored());
  std::vector<TokenComparison> compared(n_scored);
  std::vector<TopKRef> records(n_scored);
  for (int chunk = 0; chunk < plan.n_chunks; ++chunk) {
    const std::vector<std::int32_t> input = window_input(tokens, plan, chunk, bos);
    const std::vector<float> ref_rows = scored_logits(ref, *ref_cache, input, plan, options.batch);
    std::vector<float> test_rows;
    if (test != nullptr) test_rows = scored_logits(*test, *test_cache, input, plan, options.batch);
    parallel_for(n_scored, [&](std::size_t begin, std::size_t end) {
      for (std::size_t s = begin; s < end; ++s) {
        const auto ref_row = std::span(ref_rows).subspan(s * n_vocab, n_vocab);
        const std::int32_t next = next_token(tokens, plan, chunk, s);
        if (writer) records[s] = make_topk_ref(ref_row, next, top_k);
        if (test != nullptr) {
          compared[s] =
              compare_full(ref_row, std::span(test_rows).subspan(s * n_vocab, n_vocab), next);
        }
      }
    });
    if (writer) {
      for (const TopKRef& r : records) writer->write(r);
    }
    if (test != nullptr) {
      for (const TokenComparison& c : compared) acc.add(c);
      if (on_chunk) on_chunk(chunk, acc.summary(/*with_percentiles=*/false));
    } else if (on_chunk) {
      on_chunk(chunk, KldSummary{});
    }
  }
  if (writer) writer->finish();
  result.summary = acc.summary();
  result.exact = true;
  result.seconds = seconds_since(start);
  return result;
}

KldRunResult run_kld_saved(Model& test, const RefLogitsFile& ref, const KldRunOptions& options,
                           const KldChunkCallback& on_chunk) {
  const auto start = Clock::now();
  const RefLogitsHeader& h = ref.header();
  check_vocab_size(test, h.n_vocab, ref.path());
  KldRunResult result;
  result.plan = WindowPlan{static_cast<int>(h.n_ctx), static_cast<int>(h.n_chunks)};
  result.exact = false;
  result.top_k = static_cast<int>(h.top_k);
  const WindowPlan& plan = result.plan;
  const auto n_vocab = static_cast<std::size_t>(h.n_vocab);
  const auto n_scored = static_cast<std::size_t>(plan.n_scored());
  const std::span<const std::int32_t> tokens = ref.tokens();

  auto cache = test.new_cache(plan.n_ctx, options.kv_type);
  KldAccumulator acc;
  std::vector<TokenComparison> compared(n_scored);
  for (int chunk = 0; chunk < plan.n_chunks; ++chunk) {
    const std::vector<std::int32_t> input = window_input(tokens, plan, chunk, h.bos);
    const std::vector<float> rows = scored_logits(test, *cache, input, plan, options.batch);
    const std::uint64_t record0 = static_cast<std::uint64_t>(chunk) * n_scored;
    parallel_for(n_scored, [&](std::size_t begin, std::size_t end) {
      std::vector<unsigned char> scratch(n_vocab, 0);
      for (std::size_t s = begin; s < end; ++s) {
        compared[s] =
            compare_topk(ref.record(record0 + s), std::span(rows).subspan(s * n_vocab, n_vocab),
                         next_token(tokens, plan, chunk, s), scratch);
      }
    });
    for (const TokenComparison& c : compared) acc.add(c);
    if (on_chunk) on_chunk(chunk, acc.summary(/*with_percentiles=*/false));
  }
  result.summary = acc.summary();
  result.seconds = seconds_since(start);
  return result;
}

}  // namespace qforge
