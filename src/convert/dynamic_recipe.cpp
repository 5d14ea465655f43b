#include "convert/dynamic_recipe.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>
#include <queue>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "convert/export_quantize.h"
#include "convert/tensor_rows.h"
#include "core/error.h"
#include "core/parallel.h"
#include "eval/kld.h"
#include "eval/ref_logits.h"
#include "eval/windows.h"
#include "formats/gguf.h"
#include "model/config.h"
#include "quant/blocks.h"
#include "runtime/cpu/cpu_model.h"
#include "tokenizer/tokenizer.h"

namespace qforge {
namespace {

using Clock = std::chrono::steady_clock;

// Rows used to estimate a candidate's error: every row of small tensors, an even sample of big
// ones (the error is scaled back to the whole tensor).
constexpr std::uint64_t kErrorSampleRows = 8192;

// Imatrix-weighted squared error of every candidate type, estimated on a row sample.
std::vector<double> candidate_errors(const TensorRows& v, const std::vector<GgmlType>& types,
                                     const std::vector<float>* imp) {
  const std::uint64_t rows = v.rows(), cols = v.cols();
  const std::uint64_t n = std::min(rows, kErrorSampleRows);
  std::vector<double> errors(types.size(), 0.0);
  std::mutex mutex;
  parallel_for(
      static_cast<std::size_t>(n),
      [&](std::size_t begin, std::size_t end) {
        std::vector<float> row(cols), back(cols);
        std::vector<std::byte> q(row_bytes(GgmlType::F32, cols));
        std::vector<double> local(types.size(), 0.0);
        for (std::size_t i = begin; i < end; ++i) {
          const std::uint64_t r = i * rows / n;
          v.read(r, row);
          const std::span<const float> w = v.importance_of_row(imp, r);
          for (std::size_t k = 0; k < types.size(); ++k) {
            const std::span<std::byte> dst = std::span(q).first(row_bytes(types[k], cols));
            quantize_row(types[k], row, dst, w);
            dequantize_row(types[k], dst, back);
            double e = 0;
            for (std::uint64_t c = 0; c < cols; ++c) {
              const double d = static_cast<double>(back[c]) - row[c];
              e += (w.empty() ? 1.0 : static_cast<double>(w[c])) * d * d;
            }
            local[k] += e;
          }
        }
        std::lock_guard lock(mutex);
        for (std::size_t k = 0; k < types.size(); ++k) errors[k] += local[k];
      },
      static_cast<std::size_t>(
          std::max<std::uint64_t>(1, 16384 / std::max<std::uint64_t>(1, cols))));
  const double scale = static_cast<double>(rows) / static_cast<double>(n);
  for (double& e : errors) e *= scale;
  return errors;
}

// The whole tensor encoded as `type` (for running the model with it).
std::vector<std::byte> encode_whole(const TensorRows& v, GgmlType type,
                                    const std::vector<float>* imp) {
  const std::uint64_t rows = v.rows(), cols = v.cols();
  const std::uint64_t rb = row_bytes(type, cols);
  std::vector<std::byte> out(rows * rb);
  parallel_for(
      static_cast<std::size_t>(rows),
      [&](std::size_t begin, std::size_t end) {
        std::vector<float> row(cols);
        for (std::size_t r = begin; r < end; ++r) {
          v.read(r, row);
          quantize_row(type, row, std::span(out).subspan(r * rb, rb), v.importance_of_row(imp, r));
        }
      },
      static_cast<std::size_t>(
          std::max<std::uint64_t>(1, 65536 / std::max<std::uint64_t>(1, cols))));
  return out;
}

// Reference distributions over the calibration windows and the KLD of a model against them.
class KldProbe {
 public:
  KldProbe(Model& ref, std::vector<std::int32_t> tokens, std::int32_t bos, int n_ctx, int chunks,
           const std::string& source)
      : tokens_(std::move(tokens)), bos_(bos) {
    plan_ = plan_windows(tokens_.size(), n_ctx, chunks, source);
    n_vocab_ = static_cast<std::size_t>(ref.config().n_vocab);
    ref_logp_.resize(plan_.total_scored() * n_vocab_);
    run(ref, [&](std::size_t s, std::span<const float> logits) {
      reference_log_probs(logits, std::span(ref_logp_).subspan(s * n_vocab_, n_vocab_));
    });
  }

  std::size_t n_vocab() const { return n_vocab_; }
  int n_scored() const { return static_cast<int>(plan_.total_scored()); }

  // Mean KLD(ref || model) over the scored positions.
  double mean_kld(Model& model) {
    std::vector<double> kld(plan_.total_scored(), 0.0);
    run(model, [&](std::size_t s, std::span<const float> logits) {
      // Clamped: a model equal to the reference may round to a tiny negative sum.
      kld[s] = std::max(
          kld_from_log_probs(std::span(ref_logp_).subspan(s * n_vocab_, n_vocab_), logits), 0.0);
    });
    double sum = 0;
    for (const double k : kld) sum += k;
    return sum / static_cast<double>(kld.size());
  }

 private:
  using RowFn = std::function<void(std::size_t scored_index, std::span<const float> logits)>;

  void run(Model& model, const RowFn& on_row) {
    if (static_cast<std::size_t>(model.config().n_vocab) != n_vocab_) {
      fail("vocabulary mismatch: the model has {} logits per token, the reference {}",
           model.config().n_vocab, n_vocab_);
    }
    const auto cache = model.new_cache(plan_.n_ctx, KvType::F32);
    const auto n_scored = static_cast<std::size_t>(plan_.n_scored());
    for (int chunk = 0; chunk < plan_.n_chunks; ++chunk) {
      cache->clear();
      const std::vector<std::int32_t> input = window_input(tokens_, plan_, chunk, bos_);
      run_window(model, *cache, input, plan_.n_ctx, plan_.first(),
                 [&](int pos0, std::span<const float> logits, std::size_t n_rows) {
                   parallel_for(
                       n_rows,
                       [&](std::size_t b, std::size_t e) {
                         for (std::size_t r = b; r < e; ++r) {
                           const std::size_t s = static_cast<std::size_t>(pos0 - plan_.first()) + r;
                           if (s >= n_scored) continue;  // the last position predicts nothing
                           on_row(static_cast<std::size_t>(chunk) * n_scored + s,
                                  logits.subspan(r * n_vocab_, n_vocab_));
                         }
                       },
                       1);
                 });
    }
  }

  std::vector<std::int32_t> tokens_;
  std::int32_t bos_;
  WindowPlan plan_;
  std::size_t n_vocab_ = 0;
  std::vector<float> ref_logp_;
};

std::unique_ptr<cpu::CpuModel> open_cpu_model(const std::filesystem::path& path) {
  auto gguf = std::make_unique<GgufReader>(GgufReader::open(path));
  ModelConfig config = read_model_config(*gguf);
  return std::make_unique<cpu::CpuModel>(std::move(gguf), std::move(config));
}

// Lower convex hull of (bytes, predicted KLD), cheapest first, KLD strictly decreasing.
std::vector<std::size_t> hull_of(const std::vector<DynamicCandidate>& c) {
  std::vector<std::size_t> order(c.size());
  for (std::size_t i = 0; i < c.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return c[a].bytes != c[b].bytes ? c[a].bytes < c[b].bytes
                                    : c[a].predicted_kld < c[b].predicted_kld;
  });
  std::vector<std::size_t> hull;
  for (const std::size_t i : order) {
    if (!hull.empty() && c[i].bytes == c[hull.back()].bytes) continue;  // same size, worse
    if (!hull.empty() && c[i].predicted_kld >= c[hull.back()].predicted_kld) continue;
    // Drop points above the segment from the one before to this one (not convex).
    while (hull.size() >= 2) {
      const auto& a = c[hull[hull.size() - 2]];
      const auto& b = c[hull.back()];
      const double slope_ab =
          (a.predicted_kld - b.predicted_kld) / static_cast<double>(b.bytes - a.bytes);
      const double slope_bi =
          (b.predicted_kld - c[i].predicted_kld) / static_cast<double>(c[i].bytes - b.bytes);
      if (slope_bi > slope_ab) {
        hull.pop_back();
      } else {
        break;
      }
    }
    hull.push_back(i);
  }
  return hull;
}

double median(std::vector<double> v) {
  if (v.empty()) return 1.0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

std::vector<GgmlType> dynamic_candidate_types(std::uint64_t cols) {
  std::vector<GgmlType> out;
  const bool k = cols % 256 == 0, b32 = cols % 32 == 0;
  if (k) out.push_back(GgmlType::Q3_K);
  if (k) out.push_back(GgmlType::IQ4_XS);
  if (b32) {
    out.push_back(GgmlType::IQ4_NL);
    out.push_back(GgmlType::Q4_0);
  }
  if (k) out.push_back(GgmlType::Q4_K);
  if (b32) out.push_back(GgmlType::Q4_1);
  if (b32) out.push_back(GgmlType::Q5_0);
  if (k) out.push_back(GgmlType::Q5_K);
  if (b32) out.push_back(GgmlType::Q5_1);
  if (k) out.push_back(GgmlType::Q6_K);
  if (b32) out.push_back(GgmlType::Q8_0);
  out.push_back(GgmlType::BF16);
  return out;
}

std::map<std::string, GgmlType> DynamicRecipe::types() const {
  std::map<std::string, GgmlType> out;
  for (const auto& t : tensors)
    if (!t.fixed) out[t.name] = t.type;
  return out;
}

std::string DynamicRecipe::to_json() const {
  nlohmann::ordered_json j;
  j["recipe"] = "dynamic";
  j["target_bpw"] = target_bpw;
  j["bpw"] = bpw;
  j["measured"] = measured;
  j["calib_tokens"] = calib_tokens;
  j["predicted_kld"] = predicted_kld;
  j["baseline_kld"] = baseline_kld;
  nlohmann::ordered_json tj = nlohmann::ordered_json::object();
  for (const auto& t : tensors) {
    if (t.fixed) continue;
    tj[t.name] = {{"type", type_name(t.type)}, {"gain", t.gain}, {"measured", t.measured}};
  }
  j["tensors"] = std::move(tj);
  nlohmann::ordered_json cj = nlohmann::ordered_json::array();
  for (const auto& c : checks)
    cj.push_back({{"tensor", c.name},
                  {"type", type_name(c.type)},
                  {"predicted_kld", c.predicted_kld},
                  {"measured_kld", c.measured_kld}});
  j["proxy_checks"] = std::move(cj);
  return j.dump();
}

DynamicRecipe plan_dynamic_recipe(const GgufReader& g, const Imatrix* imatrix,
                                  const std::map<std::string, FixedTensorType>& fixed,
                                  const DynamicRecipeOptions& options) {
  const auto start = Clock::now();
  const auto say = [&](const std::string& s) {
    if (options.progress) options.progress(s);
  };
  if (!(options.target_bpw > 0)) fail("--target-bpw must be positive (got {})", options.target_bpw);
  DynamicRecipe recipe;
  recipe.target_bpw = options.target_bpw;
  const auto& infos = g.tensors();
  std::uint64_t fixed_bytes = 0;
  for (const auto& t : infos) {
    DynamicTensor d;
    d.name = t.name;
    d.n_elements = t.n_elements();
    recipe.total_elements += d.n_elements;
    const TensorRows v{g, t};
    const auto it = fixed.find(t.name);
    if (it != fixed.end() || t.shape.size() < 2 || v.cols() % 32 != 0) {
      d.fixed = true;
      d.type = it != fixed.end() ? it->second.type : t.type;
      d.fixed_reason = it != fixed.end() ? it->second.reason : "not a block-quantizable matrix";
      d.bytes = row_bytes(d.type, v.cols()) * v.rows();
      fixed_bytes += d.bytes;
    }
    recipe.tensors.push_back(std::move(d));
  }

  // Candidate errors.
  std::size_t n_candidates = 0;
  for (std::size_t i = 0; i < infos.size(); ++i) {
    DynamicTensor& d = recipe.tensors[i];
    if (d.fixed) continue;
    ++n_candidates;
    const TensorRows v{g, infos[i]};
    say(fmt::format("errors {}", d.name));
    const std::vector<float>* imp = nullptr;
    if (imatrix) {
      const auto it = imatrix->importance.find(d.name);
      if (it != imatrix->importance.end() &&
          it->second.size() == v.cols() * (v.rows() / v.rows_per_matrix()))
        imp = &it->second;
    }
    const std::vector<GgmlType> types = dynamic_candidate_types(v.cols());
    const std::vector<double> errors = candidate_errors(v, types, imp);
    for (std::size_t k = 0; k < types.size(); ++k) {
      DynamicCandidate c;
      c.type = types[k];
      c.bytes = row_bytes(types[k], v.cols()) * v.rows();
      c.error = errors[k];
      d.candidates.push_back(c);
    }
    std::stable_sort(d.candidates.begin(), d.candidates.end(),
                     [](const auto& a, const auto& b) { return a.bytes < b.bytes; });
    d.gain = 1.0;
  }

  // Measured gains.
  const auto imp_of = [&](const std::string& name) -> const std::vector<float>* {
    if (!imatrix) return nullptr;
    const auto it = imatrix->importance.find(name);
    return it == imatrix->importance.end() ? nullptr : &it->second;
  };
  if (!options.text.empty() && n_candidates > 0) {
    recipe.measured = true;
    std::unique_ptr<cpu::CpuModel> model = open_cpu_model(g.path());
    std::unique_ptr<Model> ref_model;
    const bool separate_ref = !options.ref.empty();
    if (separate_ref) ref_model = open_cpu_model(options.ref);
    Model& ref = separate_ref ? *ref_model : *model;
    const Tokenizer tokenizer = Tokenizer::from_gguf(
        GgufReader::open(separate_ref ? options.ref : std::filesystem::path(g.path())));
    if (separate_ref) {
      const Tokenizer mine = Tokenizer::from_gguf(GgufReader::open(g.path()));
      if (mine.vocab().size() != tokenizer.vocab().size() ||
          vocab_fingerprint(mine.vocab()) != vocab_fingerprint(tokenizer.vocab()))
        fail("vocabulary mismatch: {} and the reference {} have different vocabularies", g.path(),
             options.ref.string());
    }
    const std::string text = read_text_file(options.text.string());
    const std::int32_t bos = window_bos(tokenizer.vocab());
    say("reference distributions");
    KldProbe probe(ref, tokenize_eval_text(tokenizer, text), bos, options.n_ctx, options.chunks,
                   options.text.string());
    recipe.calib_tokens = probe.n_scored();
    if (separate_ref) recipe.baseline_kld = probe.mean_kld(*model);
    std::vector<double> gains;
    std::size_t done = 0;
    for (std::size_t i = 0; i < infos.size(); ++i) {
      DynamicTensor& d = recipe.tensors[i];
      if (d.fixed) continue;
      ++done;
      const DynamicCandidate& low = d.candidates.front();
      say(fmt::format("[{}/{}] {} alone as {}", done, n_candidates, d.name, type_name(low.type)));
      const TensorRows v{g, infos[i]};
      const std::vector<std::byte> bytes = encode_whole(v, low.type, imp_of(d.name));
      if (model->replace_matrix(d.name, low.type, bytes) == 0) continue;  // not used by the model
      d.probe_kld = probe.mean_kld(*model);
      model->replace_matrix(d.name, infos[i].type, g.tensor_data(infos[i]));
      const double dk = std::max(d.probe_kld - recipe.baseline_kld, 0.0);
      if (low.error > 0) {
        d.gain = dk / low.error;
        d.measured = true;
        gains.push_back(d.gain);
      }
    }
    const double fallback = median(gains);
    for (auto& d : recipe.tensors)
      if (!d.fixed && !d.measured) d.gain = fallback;
    // Proxy check: tensors evenly spread over the measured ones, again at a mid-ladder type.
    std::vector<std::size_t> measured;
    for (std::size_t i = 0; i < infos.size(); ++i) {
      const DynamicTensor& d = recipe.tensors[i];
      if (!d.fixed && d.measured && d.candidates.size() >= 3) measured.push_back(i);
    }
    const std::size_t n_checks =
        std::min<std::size_t>(measured.size(), std::max(0, options.validate));
    for (std::size_t c_i = 0; c_i < n_checks; ++c_i) {
      const std::size_t i = measured[c_i * measured.size() / n_checks];
      DynamicTensor& d = recipe.tensors[i];
      const DynamicCandidate& mid = d.candidates[d.candidates.size() / 2 - 1];
      const TensorRows v{g, infos[i]};
      const std::vector<std::byte> bytes = encode_whole(v, mid.type, imp_of(d.name));
      model->replace_matrix(d.name, mid.type, bytes);
      ProxyCheck c{d.name, mid.type, d.gain * mid.error,
                   std::max(probe.mean_kld(*model) - recipe.baseline_kld, 0.0)};
      model->replace_matrix(d.name, infos[i].type, g.tensor_data(infos[i]));
      say(fmt::format("check {} as {}: predicted {:.3g}, measured {:.3g}", c.name,
                      type_name(c.type), c.predicted_kld, c.measured_kld));
      recipe.checks.push_back(std::move(c));
    }
  }
  for (auto& d : recipe.tensors)
    for (auto& c : d.candidates) c.predicted_kld = d.gain * c.error;

  // Greedy allocation along the convex hulls.
  const double budget = options.target_bpw * static_cast<double>(recipe.total_elements) / 8.0;
  std::vector<std::vector<std::size_t>> hulls(infos.size());
  std::vector<std::size_t> at(infos.size(), 0);
  double used = static_cast<double>(fixed_bytes);
  for (std::size_t i = 0; i < infos.size(); ++i) {
    if (recipe.tensors[i].fixed) continue;
    hulls[i] = hull_of(recipe.tensors[i].candidates);
    used += static_cast<double>(recipe.tensors[i].candidates[hulls[i][0]].bytes);
  }
  if (used > budget) {
    fail(
        "--target-bpw {}: below the smallest size the candidate types reach ({:.3f} bits per "
        "weight, {} fixed-type bytes included)",
        options.target_bpw, used * 8.0 / static_cast<double>(recipe.total_elements), fixed_bytes);
  }
  using Step = std::pair<double, std::size_t>;  // (KLD saved per byte, tensor)
  std::priority_queue<Step> queue;
  const auto push_next = [&](std::size_t i) {
    const auto& h = hulls[i];
    if (at[i] + 1 >= h.size()) return;
    const auto& c = recipe.tensors[i].candidates;
    const auto& a = c[h[at[i]]];
    const auto& b = c[h[at[i] + 1]];
    queue.emplace((a.predicted_kld - b.predicted_kld) / static_cast<double>(b.bytes - a.bytes), i);
  };
  for (std::size_t i = 0; i < infos.size(); ++i)
    if (!recipe.tensors[i].fixed) push_next(i);
  while (!queue.empty()) {
    const std::size_t i = queue.top().second;
    queue.pop();
    const auto& c = recipe.tensors[i].candidates;
    const double extra = static_cast<double>(c[hulls[i][at[i] + 1]].bytes) -
                         static_cast<double>(c[hulls[i][at[i]]].bytes);
    if (used + extra > budget) continue;  // this tensor stays; smaller steps may still fit
    used += extra;
    ++at[i];
    push_next(i);
  }
  recipe.total_bytes = fixed_bytes;
  for (std::size_t i = 0; i < infos.size(); ++i) {
    DynamicTensor& d = recipe.tensors[i];
    if (d.fixed) continue;
    const DynamicCandidate& c = d.candidates[hulls[i][at[i]]];
    d.type = c.type;
    d.bytes = c.bytes;
    recipe.total_bytes += c.bytes;
    recipe.predicted_kld += c.predicted_kld;
  }
  recipe.bpw =
      8.0 * static_cast<double>(recipe.total_bytes) / static_cast<double>(recipe.total_elements);
  recipe.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return recipe;
}

}  // namespace qforge
