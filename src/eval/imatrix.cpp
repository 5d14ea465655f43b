#include "eval/imatrix.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "formats/gguf.h"

namespace qforge {

namespace {

// The GGUF tensor name: an engine may label one expert of a stacked tensor "name[e]".
std::string_view entry_name(const cpu::MatmulInput& in) {
  std::string_view name = in.weight;
  if (in.expert >= 0 && name.ends_with(']')) {
    const std::size_t open = name.rfind('[');
    if (open != std::string_view::npos) name = name.substr(0, open);
  }
  return name;
}

}  // namespace

bool ImatrixCollector::wanted(std::string_view name) const {
  if (name.starts_with("blk.")) return true;
  return include_output_ && (name == "output.weight" || name == "token_embd.weight");
}

void ImatrixCollector::on_matmul_input(const cpu::MatmulInput& in) {
  if (!wanted(in.weight)) return;
  if (in.x.size() < in.n_rows * in.cols) {
    fail("imatrix: {} rows of {} columns reported for {} but only {} values given", in.n_rows,
         in.cols, in.weight, in.x.size());
  }
  const bool expert = in.expert >= 0;
  const std::size_t n_mat = expert ? static_cast<std::size_t>(in.n_experts) : 1;
  if (expert && in.expert >= in.n_experts) {
    fail("imatrix: expert {} of {} reported for {}", in.expert, in.n_experts, in.weight);
  }
  std::lock_guard lock(mutex_);
  ++calls_;
  ImatrixEntry& e = entries_[std::string(entry_name(in))];
  if (e.sums.empty()) {
    e.cols = in.cols;
    e.sums.assign(n_mat * in.cols, 0.0);
    e.counts.assign(n_mat, 0);
  } else if (e.cols != in.cols || e.counts.size() != n_mat) {
    fail("imatrix: {} seen with {} columns x {} matrices, earlier {} x {}", in.weight, in.cols,
         n_mat, e.cols, e.counts.size());
  }
  const std::size_t m = expert ? static_cast<std::size_t>(in.expert) : 0;
  double* sums = e.sums.data() + m * in.cols;
  for (std::size_t r = 0; r < in.n_rows; ++r) {
    const float* row = in.x.data() + r * in.cols;
    for (std::size_t c = 0; c < in.cols; ++c) {
      const double v = row[c];
      sums[c] += v * v;
    }
  }
  for (std::size_t c = 0; c < in.cols; ++c) {
    if (!std::isfinite(sums[c])) {
      fail("imatrix: non-finite activation sum in {} column {} (the model produced inf/nan)",
           in.weight, c);
    }
  }
  e.counts[m] += static_cast<std::int64_t>(in.n_rows);
}

void write_imatrix_gguf(const std::filesystem::path& path,
                        const std::map<std::string, ImatrixEntry>& entries,
                        const ImatrixMetadata& meta) {
  if (entries.empty()) fail("{}: no activations were collected, nothing to write", path.string());
  GgufWriter w(path);
  w.add_kv("general.type", GgufValue{std::string("imatrix")});
  std::vector<GgufValue> datasets;
  for (const std::string& d : meta.datasets) datasets.push_back(GgufValue{d});
  w.add_kv("imatrix.datasets", GgufValue::make_array(GgufValueType::STRING, std::move(datasets)));
  w.add_kv("imatrix.chunk_count", GgufValue{meta.chunk_count});
  w.add_kv("imatrix.chunk_size", GgufValue{meta.chunk_size});
  // std::map iterates in name order, the order llama.cpp writes.
  for (const auto& [name, e] : entries) {
    const auto n_mat = static_cast<std::uint64_t>(e.counts.size());
    w.add_tensor(name + ".in_sum2", {e.cols, n_mat}, GgmlType::F32);
    w.add_tensor(name + ".counts", {1, n_mat}, GgmlType::F32);
  }
  for (const auto& [name, e] : entries) {
    std::vector<float> sums(e.sums.begin(), e.sums.end());
    std::vector<float> counts(e.counts.begin(), e.counts.end());
    w.write_tensor_data(std::as_bytes(std::span(sums)));
    w.write_tensor_data(std::as_bytes(std::span(counts)));
  }
  w.finish();
}

}  // namespace qforge
