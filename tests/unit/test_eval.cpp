// Unit tests of src/eval: window scheduling, log-softmax statistics, KLD (full and top-K),
// the reference-logits file and the imatrix collector/writer. A fake Model whose logits are a
// known function of (token, position) lets the perplexity driver be checked by direct summation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "eval/imatrix.h"
#include "eval/kld.h"
#include "eval/kld_run.h"
#include "eval/perplexity.h"
#include "eval/ref_logits.h"
#include "eval/token_stats.h"
#include "eval/windows.h"
#include "formats/gguf.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;

fs::path temp_path(const std::string& name) {
  const fs::path dir = fs::path(QFORGE_TEST_TMP) / "eval";
  fs::create_directories(dir);
  return dir / name;
}

// Logits of token t at position p: a deterministic function of (t, p, v) and of every earlier
// token of the window (so KV-cache misuse, wrong positions or wrong BOS substitution show).
class FakeCache final : public KvCache {
 public:
  explicit FakeCache(int n) : n_ctx_(n) {}
  int n_ctx() const override { return n_ctx_; }
  KvType type() const override { return KvType::F32; }
  int n_filled() const override { return static_cast<int>(history.size()); }
  void clear() override { history.clear(); }
  std::vector<std::int32_t> history;

 private:
  int n_ctx_;
};

class FakeModel final : public Model {
 public:
  FakeModel(int n_vocab, float scale) : scale_(scale) {
    config_.n_vocab = n_vocab;
    config_.arch = "fake";
  }
  const ModelConfig& config() const override { return config_; }
  std::unique_ptr<KvCache> new_cache(int n_ctx, KvType) const override {
    return std::make_unique<FakeCache>(n_ctx);
  }
  std::vector<float> forward(std::span<const std::int32_t> tokens, int pos0, KvCache& base,
                             const ForwardOptions& options) override {
    auto& cache = dynamic_cast<FakeCache&>(base);
    EXPECT_EQ(pos0, cache.n_filled());
    std::vector<float> out;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      cache.history.push_back(tokens[i]);
      if (!options.all_logits && i + 1 != tokens.size()) continue;
      const std::vector<float> row = logits_for(cache.history);
      out.insert(out.end(), row.begin(), row.end());
    }
    return out;
  }
  std::vector<float> logits_for(const std::vector<std::int32_t>& history) const {
    double h = 0;
    for (std::size_t i = 0; i < history.size(); ++i) h += (i + 1) * 0.37 * history[i];
    std::vector<float> row(static_cast<std::size_t>(config_.n_vocab));
    for (std::size_t v = 0; v < row.size(); ++v) {
      row[v] = scale_ * static_cast<float>(std::sin(0.7 * v + h) + 0.3 * std::cos(1.3 * v * v));
    }
    return row;
  }

 private:
  ModelConfig config_;
  float scale_;
};

TEST(EvalWindows, PlanAndErrors) {
  const WindowPlan p = plan_windows(1000, 128, 0, "t");
  EXPECT_EQ(p.n_chunks, 7);
  EXPECT_EQ(p.first(), 64);
  EXPECT_EQ(p.n_scored(), 63);
  EXPECT_EQ(plan_windows(1000, 128, 3, "t").n_chunks, 3);
  EXPECT_THROW(plan_windows(100, 128, 0, "t"), Error);
  EXPECT_THROW(plan_windows(100, 1, 0, "t"), Error);
  const std::vector<std::int32_t> tokens = {5, 6, 7, 8, 9, 10, 11};
  const WindowPlan q = plan_windows(tokens.size(), 3, 0, "t");
  EXPECT_EQ(window_input(tokens, q, 1, 1), (std::vector<std::int32_t>{1, 9, 10}));
  EXPECT_EQ(window_input(tokens, q, 1, -1), (std::vector<std::int32_t>{8, 9, 10}));
}

TEST(EvalStats, LogSoftmaxMeanPercentile) {
  const std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f};
  const LogSoftmax ls = log_softmax(logits);
  double z = 0;
  for (float v : logits) z += std::exp(static_cast<double>(v));
  EXPECT_NEAR(ls.log_norm, std::log(z), 1e-12);
  EXPECT_EQ(ls.argmax, 1);  // first of the tied maxima
  const MeanSe m = mean_and_se(1 + 2 + 3 + 4, 1 + 4 + 9 + 16, 4);
  EXPECT_DOUBLE_EQ(m.mean, 2.5);
  EXPECT_NEAR(m.se, std::sqrt(1.25 / 3), 1e-12);
  const std::vector<double> sorted = {1, 2, 3, 4, 10};
  EXPECT_DOUBLE_EQ(percentile_sorted(sorted, 0.5), 3);
  EXPECT_DOUBLE_EQ(percentile_sorted(sorted, 0.9), 4 + 0.6 * 6);
  EXPECT_DOUBLE_EQ(percentile_sorted(sorted, 1.0), 10);
}

TEST(EvalPerplexity, MatchesDirectSummationOnFakeModel) {
  FakeModel model(17, 2.0f);
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 75; ++i) tokens.push_back((i * 7 + 3) % 17);
  PerplexityOptions options;
  options.n_ctx = 12;
  options.batch = 5;  // batches must split at the first scored position and still be exact
  const PerplexityResult r = compute_perplexity(model, tokens, /*bos=*/1, options, "t", {});
  ASSERT_EQ(r.plan.n_chunks, 6);
  double sum = 0, sum2 = 0;
  std::size_t n = 0;
  for (int c = 0; c < 6; ++c) {
    std::vector<std::int32_t> history;
    for (int j = 0; j < 12; ++j) {
      history.push_back(j == 0 ? 1 : tokens[static_cast<std::size_t>(c * 12 + j)]);
      if (j < 6 || j == 11) continue;
      const std::vector<float> row = model.logits_for(history);
      const LogSoftmax ls = log_softmax(row);
      const double nll = -log_prob(row, ls, tokens[static_cast<std::size_t>(c * 12 + j + 1)]);
      sum += nll;
      sum2 += nll * nll;
      ++n;
    }
  }
  EXPECT_EQ(r.n_scored, n);
  EXPECT_NEAR(r.mean_nll, sum / n, 1e-12);
  EXPECT_NEAR(r.ppl, std::exp(sum / n), 1e-9);
  EXPECT_NEAR(r.se_nll, mean_and_se(sum, sum2, n).se, 1e-12);
  ASSERT_EQ(r.running_ppl.size(), 6u);
  EXPECT_DOUBLE_EQ(r.running_ppl.back(), r.ppl);
}

std::vector<float> random_logits(std::mt19937& rng, std::size_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(EvalKld, FullAndTopK) {
  std::mt19937 rng(7);
  const std::size_t n = 300;
  const std::vector<float> p = random_logits(rng, n, 3.0f);
  std::vector<float> q = p;
  for (float& x : q) x += std::normal_distribution<float>(0.0f, 0.3f)(rng);

  const TokenComparison self = compare_full(p, p, 5);
  EXPECT_EQ(self.kld, 0.0);
  EXPECT_TRUE(self.same_top);
  EXPECT_EQ(self.dp, 0.0);

  // Direct definition.
  const LogSoftmax lp = log_softmax(p), lq = log_softmax(q);
  double kld = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double a = log_prob(p, lp, static_cast<std::int32_t>(i));
    kld += std::exp(a) * (a - log_prob(q, lq, static_cast<std::int32_t>(i)));
  }
  const TokenComparison full = compare_full(p, q, 5);
  EXPECT_NEAR(full.kld, kld, 1e-12);
  // From the reference's stored (single-precision) log-probabilities: the same sum.
  std::vector<float> logp(n);
  reference_log_probs(p, logp);
  EXPECT_NEAR(kld_from_log_probs(logp, q), kld, 1e-6 * kld);
  EXPECT_NEAR(kld_from_log_probs(logp, p), 0.0, 1e-6);
  std::vector<float> masked = p;  // a token the reference rules out contributes nothing
  masked[7] = -INFINITY;
  reference_log_probs(masked, logp);
  EXPECT_TRUE(std::isfinite(kld_from_log_probs(logp, q)));
  EXPECT_NEAR(kld_from_log_probs(logp, q), compare_full(masked, q, 5).kld, 1e-6);
  EXPECT_THROW(kld_from_log_probs(std::span(logp).first(n - 1), q), Error);
  EXPECT_NEAR(full.nll, -log_prob(q, lq, 5), 1e-12);
  EXPECT_NEAR(full.dp, std::exp(log_prob(q, lq, 5)) - std::exp(log_prob(p, lp, 5)), 1e-12);

  std::vector<unsigned char> scratch(n, 0);
  const TokenComparison all = compare_topk(make_topk_ref(p, 5, static_cast<int>(n)), q, 5, scratch);
  EXPECT_NEAR(all.kld, full.kld, 1e-6);
  EXPECT_EQ(all.same_top, full.same_top);
  for (int k : {1, 8, 32}) {
    const TopKRef ref = make_topk_ref(p, 5, k);
    ASSERT_EQ(ref.ids.size(), static_cast<std::size_t>(k));
    EXPECT_EQ(ref.ids[0], lp.argmax);
    const TokenComparison c = compare_topk(ref, q, 5, scratch);
    EXPECT_LE(c.kld, full.kld + 1e-7) << k;  // coarsening never increases the divergence
    EXPECT_GE(c.kld, -1e-7);
    EXPECT_NEAR(c.nll_ref, full.nll_ref, 1e-6);
    EXPECT_EQ(c.same_top, full.same_top);
    for (unsigned char s : scratch) ASSERT_EQ(s, 0);
  }
}

TEST(EvalRefLogits, RoundTripAndCorruption) {
  std::mt19937 rng(3);
  const fs::path path = temp_path("ref.qfref");
  RefLogitsHeader h;
  h.n_vocab = 40;
  h.n_ctx = 6;
  h.n_chunks = 2;
  h.top_k = 4;
  h.first = 3;
  h.bos = 1;
  h.vocab_hash = 1234;
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 12; ++i) tokens.push_back(i * 3 % 40);
  std::vector<TopKRef> written;
  {
    RefLogitsWriter w(path, h, tokens);
    for (int r = 0; r < 4; ++r) {
      written.push_back(make_topk_ref(random_logits(rng, 40, 2.0f), 7, 4));
      w.write(written.back());
    }
    w.finish();
  }
  const RefLogitsFile f = RefLogitsFile::open(path);
  EXPECT_EQ(f.header().n_records, 4u);
  EXPECT_EQ(f.header().vocab_hash, 1234u);
  EXPECT_EQ(f.header().bos, 1);
  EXPECT_EQ(std::vector<std::int32_t>(f.tokens().begin(), f.tokens().end()), tokens);
  for (int r = 0; r < 4; ++r) {
    const TopKRef got = f.record(r);
    EXPECT_EQ(got.ids, written[r].ids);
    EXPECT_EQ(got.logps, written[r].logps);
    EXPECT_EQ(got.tail_mass, written[r].tail_mass);
  }

  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto corrupt = [&](const std::string& name, const std::string& content) {
    const fs::path p = temp_path(name);
    std::ofstream(p, std::ios::binary) << content;
    EXPECT_THROW(RefLogitsFile::open(p), Error) << name;
  };
  corrupt("truncated", bytes.substr(0, bytes.size() - 3));
  std::string bad = bytes;
  bad[0] = 'X';
  corrupt("magic", bad);
  bad = bytes;
  bad[64] ^= 1;  // a token id: the hash no longer matches
  corrupt("tokens", bad);
  bad = bytes;
  const std::int32_t big = 1000;
  std::memcpy(bad.data() + 64 + 48 + 8, &big, 4);  // first id of the first record
  corrupt("id", bad);
}

TEST(EvalImatrix, CollectsSumsAndWritesLlamaCppLayout) {
  ImatrixCollector c;
  const std::vector<float> x = {1, 2, 3, -1, 0, 2};  // 2 rows x 3 cols
  c.on_matmul_input({"blk.0.attn_q.weight", x, 2, 3});
  c.on_matmul_input({"blk.0.attn_q.weight", std::span(x).first(3), 1, 3});
  c.on_matmul_input({"output.weight", x, 2, 3});  // not collected by default
  c.on_matmul_input({"blk.1.ffn_up_exps.weight", x, 2, 3, 2, 4});
  c.on_matmul_input({"blk.1.ffn_up_exps.weight[3]", x, 1, 3, 3, 4});  // engine-style label
  EXPECT_THROW(c.on_matmul_input({"blk.0.attn_q.weight", x, 3, 2}), Error);
  EXPECT_THROW(c.on_matmul_input({"blk.1.ffn_up_exps.weight", x, 1, 3, 4, 4}), Error);
  ASSERT_EQ(c.entries().size(), 2u);
  const ImatrixEntry& q = c.entries().at("blk.0.attn_q.weight");
  EXPECT_EQ(q.sums, (std::vector<double>{3, 8, 22}));  // 1+1+1, 4+0+4, 9+4+9
  EXPECT_EQ(q.counts, (std::vector<std::int64_t>{3}));
  const ImatrixEntry& e = c.entries().at("blk.1.ffn_up_exps.weight");
  EXPECT_EQ(e.counts, (std::vector<std::int64_t>{0, 0, 2, 1}));
  EXPECT_EQ(e.sums[6], 2);
  EXPECT_EQ(e.sums[8], 13);
  EXPECT_EQ(e.sums[9], 1);
  EXPECT_EQ(e.sums[11], 9);

  const fs::path path = temp_path("imatrix.gguf");
  write_imatrix_gguf(path, c.entries(), {{"a.txt"}, 3, 128});
  const GgufReader r = GgufReader::open(path);
  EXPECT_EQ(r.get("general.type").as_string(), "imatrix");
  EXPECT_EQ(r.get("imatrix.chunk_count").as_uint(), 3u);
  EXPECT_EQ(r.get("imatrix.chunk_size").as_uint(), 128u);
  EXPECT_EQ(r.get("imatrix.datasets").as_array().items.at(0).as_string(), "a.txt");
  ASSERT_EQ(r.tensors().size(), 4u);
  EXPECT_EQ(r.tensors()[0].name, "blk.0.attn_q.weight.in_sum2");
  EXPECT_EQ(r.tensors()[0].shape, (std::vector<std::uint64_t>{3, 1}));
  EXPECT_EQ(r.tensors()[3].name, "blk.1.ffn_up_exps.weight.counts");
  EXPECT_EQ(r.tensors()[3].shape, (std::vector<std::uint64_t>{1, 4}));
  float counts[4];
  std::memcpy(counts, r.tensor_data(r.tensors()[3]).data(), sizeof(counts));
  EXPECT_EQ(counts[2], 2.0f);
}

TEST(EvalKldRun, SelfIsZeroAndSavedMatchesDirect) {
  FakeModel ref(50, 3.0f), test(50, 2.5f);
  std::vector<std::int32_t> tokens;
  for (int i = 0; i < 40; ++i) tokens.push_back((i * 11 + 2) % 50);
  KldRunOptions o;
  o.n_ctx = 10;
  o.batch = 4;
  const KldRunResult self = run_kld_direct(ref, &ref, tokens, 1, 0, o, "t", {});
  EXPECT_EQ(self.summary.kld_mean, 0.0);
  EXPECT_EQ(self.summary.same_top, 1.0);
  EXPECT_EQ(self.summary.count, 4u * 4u);

  o.save_ref = temp_path("fake.qfref").string();
  o.top_k = 50;
  const KldRunResult direct = run_kld_direct(ref, &test, tokens, 1, 99, o, "t", {});
  const RefLogitsFile file = RefLogitsFile::open(o.save_ref);
  EXPECT_EQ(file.header().vocab_hash, 99u);
  const KldRunResult saved = run_kld_saved(test, file, o, {});
  EXPECT_GT(direct.summary.kld_mean, 0.01);
  EXPECT_NEAR(saved.summary.kld_mean, direct.summary.kld_mean, 1e-6);
  EXPECT_NEAR(saved.summary.ppl_ref, direct.summary.ppl_ref, 1e-5);
  EXPECT_DOUBLE_EQ(saved.summary.ppl, direct.summary.ppl);
  EXPECT_EQ(saved.summary.same_top, direct.summary.same_top);
}

}  // namespace
}  // namespace qforge
