// qforge eval ppl | kld: fidelity measurements (definitions in docs/eval.md).
//   ppl: perplexity over non-overlapping windows, second half of each window scored.
//   kld: KL-divergence of a model from a reference model (or from its saved top-K logits).
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/error.h"
#include "core/parallel.h"
#include "eval/kld_run.h"
#include "eval/perplexity.h"
#include "eval/ref_logits.h"
#include "eval/windows.h"
#include "formats/gguf.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qforge::cli {
namespace {

using Json = nlohmann::ordered_json;

struct CommonArgs {
  std::string model;
  std::string text;
  int ctx = 512;
  int batch = 512;
  int chunks = 0;
  int threads = 0;
  std::string kv_type = "f32";
  std::string device = "cpu";
  bool json = false;
};

void add_common(CLI::App* cmd, CommonArgs& a) {
  cmd->add_option("--ctx", a.ctx, "Window length in tokens")->capture_default_str();
  cmd->add_option("--batch", a.batch, "Tokens per forward pass")->capture_default_str();
  cmd->add_option("--chunks", a.chunks, "Evaluate at most this many windows (0: all)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", a.threads, "CPU threads (default: all cores)");
  cmd->add_option("--kv-type", a.kv_type, "KV cache type: f32, bf16 or q8_0")
      ->capture_default_str();
  cmd->add_option("--device", a.device, "cpu or cuda (both models of a KLD run)")
      ->capture_default_str();
  cmd->add_flag("--json", a.json, "Print one JSON object on stdout (progress goes to stderr)");
}

struct LoadedModel {
  std::unique_ptr<Model> model;
  std::optional<Tokenizer> tokenizer;
};

LoadedModel load(const std::string& path, const std::string& device) {
  LoadedModel m;
  m.model = load_model(path, {.device = parse_device(device)});
  m.tokenizer.emplace(Tokenizer::from_gguf(GgufReader::open(path)));
  if (m.tokenizer->vocab().size() > m.model->config().n_vocab) {
    fail("{}: the vocabulary has {} tokens but the model only {} logits per position", path,
         m.tokenizer->vocab().size(), m.model->config().n_vocab);
  }
  return m;
}

std::vector<std::int32_t> tokenize_file(const Tokenizer& tokenizer, const std::string& path) {
  const std::string text = read_text_file(path);
  std::vector<std::int32_t> tokens = tokenize_eval_text(tokenizer, text);
  fmt::print(stderr, "{}: {} bytes, {} tokens\n", path, text.size(), tokens.size());
  return tokens;
}

// ---- ppl

void run_ppl(const CommonArgs& a) {
  if (a.threads > 0) set_thread_count(a.threads);
  PerplexityOptions options;
  options.n_ctx = a.ctx;
  options.batch = a.batch;
  options.max_chunks = a.chunks;
  options.kv_type = parse_kv_type(a.kv_type);
  LoadedModel m = load(a.model, a.device);
  const std::vector<std::int32_t> tokens = tokenize_file(*m.tokenizer, a.text);
  const std::int32_t bos = window_bos(m.tokenizer->vocab());
  std::FILE* progress = a.json ? stderr : stdout;
  const WindowPlan plan = plan_windows(tokens.size(), options.n_ctx, options.max_chunks, a.text);
  fmt::print(stderr, "perplexity: {} windows of {} tokens, scoring the last {} of each\n",
             plan.n_chunks, plan.n_ctx, plan.n_scored());
  const PerplexityResult r =
      compute_perplexity(*m.model, tokens, bos, options, a.text, [&](int chunk, double running) {
        fmt::print(progress, "[{}]{:.4f},", chunk + 1, running);
        std::fflush(progress);
      });
  fmt::print(progress, "\n");
  if (a.json) {
    Json j;
    j["model"] = a.model;
    j["text"] = a.text;
    j["n_ctx"] = r.plan.n_ctx;
    j["n_chunks"] = r.plan.n_chunks;
    j["n_text_tokens"] = r.n_text_tokens;
    j["n_scored"] = r.n_scored;
    j["bos"] = bos;
    j["mean_nll"] = r.mean_nll;
    j["se_nll"] = r.se_nll;
    j["ppl"] = r.ppl;
    j["ppl_se"] = r.ppl_se;
    j["chunk_ppl"] = r.running_ppl;
    j["seconds"] = r.seconds;
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("Final estimate: PPL = {:.4f} +/- {:.5f}\n", r.ppl, r.ppl_se);
    fmt::print(stderr, "{} scored tokens, {:.2f} s ({:.1f} tokens/s evaluated)\n", r.n_scored,
               r.seconds,
               r.seconds > 0 ? r.plan.n_chunks * static_cast<double>(r.plan.n_ctx) / r.seconds : 0);
  }
}

// ---- kld

struct KldArgs {
  CommonArgs common;
  std::string ref;
  std::string ref_logits;
  std::string save_ref;
  int top_k = 32;
};

void check_same_vocab(const Vocab& a, const std::string& a_name, std::uint64_t b_hash,
                      std::size_t b_size, const std::string& b_name) {
  if (static_cast<std::size_t>(a.size()) != b_size || vocab_fingerprint(a) != b_hash) {
    fail(
        "vocabulary mismatch: {} has {} tokens, {} has {} (or the token texts differ); KLD "
        "needs both to share one vocabulary",
        a_name, a.size(), b_name, b_size);
  }
}

void print_chunk_line(int chunk, const KldSummary& s) {
  if (chunk == 0) {
    fmt::print(
        "chunk        PPL          ln(PPL/PPL_ref)        KLD                 "
        "RMS dp          same top\n");
  }
  fmt::print(
      "{:5d} {:9.4f} ± {:8.4f}  {:9.5f} ± {:8.5f}  {:9.6f} ± {:9.6f}  {:6.3f} ± {:5.3f} %  "
      "{:7.3f} ± {:5.3f} %\n",
      chunk + 1, s.ppl, s.ppl_se, s.ln_ppl_ratio, s.ln_ppl_ratio_se, s.kld_mean, s.kld_se,
      100 * s.dp_rms, 100 * s.dp_rms_se, 100 * s.same_top, 100 * s.same_top_se);
  std::fflush(stdout);
}

Json summary_json(const KldSummary& s) {
  Json j;
  j["n_scored"] = s.count;
  j["ppl"] = s.ppl;
  j["ppl_se"] = s.ppl_se;
  j["ppl_ref"] = s.ppl_ref;
  j["ppl_ref_se"] = s.ppl_ref_se;
  j["ln_ppl_ratio"] = s.ln_ppl_ratio;
  j["ln_ppl_ratio_se"] = s.ln_ppl_ratio_se;
  j["nll_correlation"] = s.nll_correlation;
  j["kld"] = {{"mean", s.kld_mean},     {"se", s.kld_se},   {"min", s.kld_min},
              {"median", s.kld_median}, {"p90", s.kld_p90}, {"p95", s.kld_p95},
              {"p99", s.kld_p99},       {"max", s.kld_max}};
  j["same_top"] = s.same_top;
  j["same_top_se"] = s.same_top_se;
  j["dp"] = {{"mean", s.dp_mean},
             {"mean_se", s.dp_mean_se},
             {"rms", s.dp_rms},
             {"rms_se", s.dp_rms_se},
             {"max_abs", s.dp_max_abs}};
  return j;
}

void print_summary(const KldSummary& s, const KldRunResult& r) {
  fmt::print("\n====== Perplexity ======\n");
  fmt::print("PPL(model)            : {:10.6f} ± {:10.6f}\n", s.ppl, s.ppl_se);
  fmt::print("PPL(ref)              : {:10.6f} ± {:10.6f}\n", s.ppl_ref, s.ppl_ref_se);
  fmt::print("ln(PPL(model)/PPL(ref)): {:10.6f} ± {:10.6f}\n", s.ln_ppl_ratio, s.ln_ppl_ratio_se);
  fmt::print("\n====== KL divergence ({}) ======\n",
             r.exact ? "full vocabulary" : fmt::format("saved top-{} + tail", r.top_k));
  fmt::print("Mean    KLD: {:10.6f} ± {:10.6f}\n", s.kld_mean, s.kld_se);
  fmt::print("Maximum KLD: {:10.6f}\n", s.kld_max);
  fmt::print("99.0%   KLD: {:10.6f}\n", s.kld_p99);
  fmt::print("95.0%   KLD: {:10.6f}\n", s.kld_p95);
  fmt::print("90.0%   KLD: {:10.6f}\n", s.kld_p90);
  fmt::print("Median  KLD: {:10.6f}\n", s.kld_median);
  fmt::print("Minimum KLD: {:10.6f}\n", s.kld_min);
  fmt::print("\n====== Token probability ======\n");
  fmt::print("Mean    dp : {:7.3f} ± {:5.3f} %\n", 100 * s.dp_mean, 100 * s.dp_mean_se);
  fmt::print("RMS     dp : {:7.3f} ± {:5.3f} %\n", 100 * s.dp_rms, 100 * s.dp_rms_se);
  fmt::print("Max    |dp|: {:7.3f} %\n", 100 * s.dp_max_abs);
  fmt::print("Same top p : {:7.3f} ± {:5.3f} %\n", 100 * s.same_top, 100 * s.same_top_se);
  fmt::print(stderr, "{} scored tokens, {:.2f} s\n", s.count, r.seconds);
}

void run_kld(const KldArgs& k, const CLI::App& cmd) {
  const CommonArgs& a = k.common;
  if (a.threads > 0) set_thread_count(a.threads);
  if (k.ref.empty() == k.ref_logits.empty()) fail("give exactly one of --ref or --ref-logits");
  if (!k.save_ref.empty() && k.ref.empty()) fail("--save-ref needs --ref (the model to save)");
  if (a.model.empty() && k.save_ref.empty())
    fail("-m/--model is required (unless only --save-ref)");
  if (!k.ref.empty() && a.text.empty()) fail("--ref needs -f/--file (the evaluation text)");

  KldRunOptions options;
  options.n_ctx = a.ctx;
  options.batch = a.batch;
  options.max_chunks = a.chunks;
  options.top_k = k.top_k;
  options.kv_type = parse_kv_type(a.kv_type);
  options.save_ref = k.save_ref;

  std::optional<LoadedModel> test;
  if (!a.model.empty()) test = load(a.model, a.device);
  const auto on_chunk = [&](int chunk, const KldSummary& s) {
    if (!test) {
      fmt::print(stderr, "[{}] reference saved\n", chunk + 1);
    } else if (a.json) {
      fmt::print(stderr, "[{}] KLD {:.6f}, same top {:.3f} %\n", chunk + 1, s.kld_mean,
                 100 * s.same_top);
    } else {
      print_chunk_line(chunk, s);
    }
  };

  KldRunResult result;
  if (!k.ref.empty()) {
    LoadedModel ref = load(k.ref, a.device);
    const Vocab& ref_vocab = ref.tokenizer->vocab();
    const std::uint64_t ref_hash = vocab_fingerprint(ref_vocab);
    if (test)
      check_same_vocab(test->tokenizer->vocab(), a.model, ref_hash, ref_vocab.tokens.size(), k.ref);
    const std::vector<std::int32_t> tokens = tokenize_file(*ref.tokenizer, a.text);
    result = run_kld_direct(*ref.model, test ? test->model.get() : nullptr, tokens,
                            window_bos(ref_vocab), ref_hash, options, a.text, on_chunk);
    if (!k.save_ref.empty()) {
      fmt::print(stderr, "saved the reference distributions (top-{}) to {}\n", result.top_k,
                 k.save_ref);
    }
    if (!test) return;
  } else {
    const RefLogitsFile ref = RefLogitsFile::open(k.ref_logits);
    const RefLogitsHeader& h = ref.header();
    check_same_vocab(test->tokenizer->vocab(), a.model, h.vocab_hash, h.n_vocab, k.ref_logits);
    if (cmd.count("--ctx") > 0 && static_cast<std::uint32_t>(a.ctx) != h.n_ctx) {
      fail("--ctx {} differs from the {} tokens per window of {}", a.ctx, h.n_ctx, k.ref_logits);
    }
    if (!a.text.empty()) {
      const std::vector<std::int32_t> tokens = tokenize_file(*test->tokenizer, a.text);
      const std::size_t used = ref.tokens().size();
      if (tokens.size() < used ||
          tokens_fingerprint(std::span(tokens).first(used)) != h.tokens_hash) {
        fail("{}: the text does not tokenize to the {} tokens {} was computed on", a.text, used,
             k.ref_logits);
      }
    }
    result = run_kld_saved(*test->model, ref, options, on_chunk);
  }
  if (a.json) {
    Json j;
    j["model"] = a.model;
    j["reference"] = k.ref.empty() ? k.ref_logits : k.ref;
    j["mode"] = k.ref.empty() ? "saved" : "direct";
    j["exact"] = result.exact;
    j["top_k"] = result.top_k;
    j["n_ctx"] = result.plan.n_ctx;
    j["n_chunks"] = result.plan.n_chunks;
    j.update(summary_json(result.summary));
    j["seconds"] = result.seconds;
    if (!k.save_ref.empty()) j["saved_ref"] = k.save_ref;
    fmt::print("{}\n", j.dump(2));
  } else {
    print_summary(result.summary, result);
  }
}

void setup(CLI::App& app) {
  CLI::App* eval = app.add_subcommand("eval", "Fidelity measurements: perplexity, KL-divergence");
  eval->require_subcommand(1);

  auto ppl = std::make_shared<CommonArgs>();
  CLI::App* p =
      eval->add_subcommand("ppl", "Perplexity over a text file (llama-perplexity scoring)");
  p->add_option("-m,--model", ppl->model, "GGUF model")->required();
  p->add_option("-f,--file", ppl->text, "Text file")->required();
  add_common(p, *ppl);
  p->callback([ppl] { run_ppl(*ppl); });

  auto kld = std::make_shared<KldArgs>();
  CLI::App* k = eval->add_subcommand(
      "kld", "KL-divergence of a model's next-token distributions from a reference model's");
  k->add_option("-m,--model", kld->common.model, "GGUF model under test");
  k->add_option("--ref", kld->ref, "Reference GGUF model (run on the same windows)");
  k->add_option("--ref-logits", kld->ref_logits, "Reference distributions saved by --save-ref");
  k->add_option("--save-ref", kld->save_ref, "Save the reference's top-K distributions here");
  k->add_option("--top-k", kld->top_k, "K of saved reference distributions")->capture_default_str();
  k->add_option("-f,--file", kld->common.text, "Text file (checked against --ref-logits if given)");
  add_common(k, kld->common);
  k->callback([kld, k] { run_kld(*kld, *k); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(55, setup);

}  // namespace qforge::cli
