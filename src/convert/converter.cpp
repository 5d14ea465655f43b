#include "convert/converter.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>

#include <fmt/format.h>

#include "convert/arch.h"
#include "convert/hf_tokenizer.h"
#include "convert/type_policy.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "formats/gguf.h"
#include "formats/hf_checkpoint.h"
#include "quant/blocks.h"

namespace qforge {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint32_t kQuantizationVersion = 2;  // GGML_QNT_VERSION
constexpr std::size_t kRowsPerStep = 16;           // rows converted per inner step of a worker

std::string dtype_label(const TensorPlan& t) {
  return t.source.tensor ? std::string(st_dtype_name(t.source.tensor->dtype)) : "generated";
}

// Produces the F32 values of one output row (transforms applied) from the mapped source.
class RowReader {
 public:
  explicit RowReader(const TensorPlan& t) : t_(t), cols_(t.cols()) {
    if (t.source.tensor) {
      const StTensor& s = *t.source.tensor;
      esize_ = st_dtype_size(s.dtype);
      if (s.n_elements() < t.n_elements() || s.data.size() < t.n_elements() * esize_)
        fail("{}: tensor '{}' holds {} values, {} needed for GGUF '{}'", s.file, s.name,
             s.n_elements(), t.n_elements(), t.name);
    } else if (t.source.generated.size() != t.n_elements()) {
      fail("internal error: generated tensor '{}' has {} values, {} declared", t.name,
           t.source.generated.size(), t.n_elements());
    }
  }

  void read(std::uint64_t row, std::span<float> out) const {
    if (!t_.source.tensor) {
      std::copy_n(t_.source.generated.begin() + static_cast<std::ptrdiff_t>(row * cols_), cols_,
                  out.begin());
      return;
    }
    const StTensor& s = *t_.source.tensor;
    const std::uint64_t src_row = t_.source_row(row);
    const std::byte* p = s.data.data() + src_row * cols_ * esize_;
    switch (s.dtype) {
      case StDtype::BF16:
        for (std::uint64_t c = 0; c < cols_; ++c) {
          std::uint16_t h;
          std::memcpy(&h, p + 2 * c, 2);
          out[c] = bf16_to_f32(h);
        }
        break;
      case StDtype::F16:
        for (std::uint64_t c = 0; c < cols_; ++c) {
          std::uint16_t h;
          std::memcpy(&h, p + 2 * c, 2);
          out[c] = f16_to_f32(h);
        }
        break;
      case StDtype::F32:
        std::memcpy(out.data(), p, cols_ * 4);
        break;
      default:
        fail("{}: tensor '{}': unsupported dtype", s.file, s.name);
    }
    if (t_.source.add != 0.0f)
      for (auto& v : out) v += t_.source.add;
  }

  // Fails naming the tensor and the element when a value is NaN or infinite.
  void check_finite(std::uint64_t row, std::span<const float> values) const {
    for (std::uint64_t c = 0; c < values.size(); ++c) {
      if (std::isfinite(values[c])) continue;
      const std::uint64_t src_row = t_.source_row(row);
      fail("tensor '{}' (GGUF '{}'): element {} (row {}, column {}) is {}; weights must be finite",
           t_.source_name, t_.name, src_row * cols_ + c, src_row, c,
           std::isnan(values[c]) ? "NaN" : "infinite");
    }
  }

 private:
  const TensorPlan& t_;
  std::uint64_t cols_;
  std::size_t esize_ = 4;
};

void release_source(const HfCheckpoint& ckpt, const TensorPlan& t) {
  if (!t.source.tensor) return;
  const StTensor& s = *t.source.tensor;
  for (const auto& f : ckpt.weights.files()) {
    if (f->path() == s.file) {
      f->mapping().release(static_cast<std::size_t>(s.data_offset), s.data.size());
      return;
    }
  }
}

// Lattice detection on evenly spaced whole rows (enough for ~8k blocks): bounded memory even
// for multi-GB embeddings.
LatticeDetection detect_on_sample(const TensorPlan& t) {
  const std::uint64_t rows = t.rows(), cols = t.cols();
  const std::uint64_t want_rows = std::max<std::uint64_t>(16, (8192 * 32 + cols - 1) / cols);
  const std::uint64_t n = std::min(rows, want_rows);
  std::vector<float> sample(n * cols);
  const RowReader reader(t);
  for (std::uint64_t i = 0; i < n; ++i)
    reader.read(i * rows / n, std::span(sample).subspan(i * cols, cols));
  return detect_lattice(sample, cols, 0.0, 4096);
}

void merge_stats(LatticeEncodeStats& into, const LatticeEncodeStats& s) {
  into.blocks += s.blocks;
  into.exact += s.exact;
  into.off_lattice += s.off_lattice;
  into.scale_unrepresentable += s.scale_unrepresentable;
  into.not_finite += s.not_finite;
  into.max_abs_error = std::max(into.max_abs_error, s.max_abs_error);
}

// Encodes rows [0, rows) of `t`; writes into `out` when it is non-empty (else a dry run).
// Returns the lattice stats (lattice path) and the max abs error vs the F32 source.
struct EncodeResult {
  LatticeEncodeStats stats;
  double max_abs_error = 0;
};

EncodeResult encode_tensor(const TensorPlan& t, GgmlType type, bool lattice, LatticeSpec spec,
                           std::span<std::byte> out) {
  const std::uint64_t rows = t.rows(), cols = t.cols();
  const std::uint64_t rb = row_bytes(type, cols);
  const RowReader reader(t);
  EncodeResult total;
  std::mutex mutex;
  parallel_for(
      static_cast<std::size_t>(rows),
      [&](std::size_t begin, std::size_t end) {
        std::vector<float> src(kRowsPerStep * cols), back(cols);
        std::vector<std::byte> scratch(out.empty() ? rb : 0);
        EncodeResult local;
        for (std::size_t r0 = begin; r0 < end; r0 += kRowsPerStep) {
          const std::size_t r1 = std::min<std::size_t>(end, r0 + kRowsPerStep);
          for (std::size_t r = r0; r < r1; ++r) {
            const auto row = std::span(src).subspan((r - r0) * cols, cols);
            reader.read(r, row);
            reader.check_finite(r, row);
            const std::span<std::byte> dst =
                out.empty() ? std::span<std::byte>(scratch) : out.subspan(r * rb, rb);
            if (lattice) {
              encode_lattice_row(row, spec, type, dst, local.stats);
              local.max_abs_error = std::max(local.max_abs_error, local.stats.max_abs_error);
            } else {
              quantize_row(type, row, dst);
              dequantize_row(type, dst, back);
              for (std::uint64_t c = 0; c < cols; ++c)
                local.max_abs_error =
                    std::max(local.max_abs_error, static_cast<double>(std::fabs(back[c] - row[c])));
            }
          }
        }
        std::lock_guard lock(mutex);
        merge_stats(total.stats, local.stats);
        total.max_abs_error = std::max(total.max_abs_error, local.max_abs_error);
      },
      static_cast<std::size_t>(
          std::max<std::uint64_t>(1, 65536 / std::max<std::uint64_t>(1, cols))));
  return total;
}

std::optional<std::uint64_t> real_vocab_size(const HfCheckpoint& ckpt) {
  // llama.cpp's Gemma converter keeps len(vocab) + len(added_tokens) embedding rows when it reads
  // tokenizer.json; with tokenizer.model it pads to vocab_size (nothing dropped).
  if (ckpt.tokenizer_model || !ckpt.tokenizer_json) return std::nullopt;
  const auto& tj = *ckpt.tokenizer_json;
  const auto model = tj.find("model");
  if (model == tj.end() || !model->is_object()) return std::nullopt;
  const auto vocab = model->find("vocab");
  if (vocab == model->end() || !(vocab->is_object() || vocab->is_array())) return std::nullopt;
  std::uint64_t n = vocab->size();
  if (const auto added = tj.find("added_tokens"); added != tj.end() && added->is_array())
    n += added->size();
  return n;
}

class Progress {
 public:
  Progress(bool enabled, std::size_t total)
      : enabled_(enabled), total_(total), start_(Clock::now()) {}
  void update(std::size_t i, const std::string& name, std::uint64_t bytes_done) {
    if (!enabled_) return;
    const double s = std::chrono::duration<double>(Clock::now() - start_).count();
    const double mbs = s > 0 ? static_cast<double>(bytes_done) / 1e6 / s : 0.0;
    fmt::print(stderr, "\r\x1b[2K[{}/{}] {:.1f} MB/s  {}", i, total_, mbs, name);
    std::fflush(stderr);
  }
  void done() {
    if (enabled_) fmt::print(stderr, "\n");
  }

 private:
  bool enabled_;
  std::size_t total_;
  Clock::time_point start_;
};

}  // namespace

ConvertReport convert_checkpoint(const ConvertOptions& options) {
  const auto start = Clock::now();
  if (options.threads > 0) set_thread_count(options.threads);
  const TypeRequest request = parse_type_request(options.type);
  std::vector<TypeOverride> overrides;
  for (const auto& spec : options.overrides) overrides.push_back(parse_override(spec));

  const HfCheckpoint ckpt = HfCheckpoint::open(options.input);
  if (ckpt.weights.tensors().empty())
    fail("{}: no safetensors weights found", options.input.string());
  PlanInputs inputs;
  inputs.n_vocab_real = real_vocab_size(ckpt);
  ArchPlan plan = plan_architecture(ckpt, inputs);

  std::vector<GgufKV> tokenizer_kvs;
  if (options.tokenizer) {
    if (!ckpt.tokenizer_json && !ckpt.tokenizer_model)
      fail(
          "{}: no tokenizer.json or tokenizer.model; llama.cpp needs the vocabulary (pass "
          "--no-tokenizer to convert the weights alone)",
          options.input.string());
    tokenizer_kvs = tokenizer_metadata(ckpt, plan.arch);
  }

  ConvertReport report;
  report.input = options.input.string();
  report.output = options.output.string();
  report.hf_arch = plan.hf_arch;
  report.arch = plan.arch;
  report.requested_type = request.name;
  report.file_type = request.file_type;
  report.qat_mode = options.qat;
  report.skipped = plan.skipped;
  report.threads = thread_count();

  // ---- pass 1: lattices, then types
  const bool want_lattice = options.qat && (!request.is_float() || !overrides.empty());
  std::vector<LatticeSpec> specs(plan.tensors.size());
  for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
    const TensorPlan& t = plan.tensors[i];
    TensorReport tr;
    tr.name = t.name;
    tr.source = t.source_name;
    tr.source_dtype = dtype_label(t);
    tr.ne = t.ne;
    tr.n_elements = t.n_elements();
    tr.source_bytes = t.source.tensor ? t.n_elements() * st_dtype_size(t.source.tensor->dtype) : 0;
    if (want_lattice && t.role != TensorRole::kFloat32 && t.source.tensor && t.ne.size() >= 2 &&
        t.cols() % 32 == 0) {
      tr.lattice_checked = true;
      tr.detection = detect_on_sample(t);
      tr.lattice_detected = tr.detection.spec.kind != LatticeKind::kNone &&
                            tr.detection.share() >= options.min_lattice_share;
      if (tr.lattice_detected) specs[i] = tr.detection.spec;
      release_source(ckpt, t);
    }
    report.qat_checkpoint = report.qat_checkpoint || tr.lattice_detected;
    report.tensors.push_back(std::move(tr));
  }

  TypeContext context;
  context.n_layers = plan.n_layers;
  context.tied_embeddings = plan.tied_embeddings;
  context.qat_checkpoint = report.qat_checkpoint;
  for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
    const TensorPlan& t = plan.tensors[i];
    TensorReport& tr = report.tensors[i];
    TypeDecision d = choose_type(t, request, overrides, specs[i], context);
    if (d.lattice) {
      // Dry run: every block must be writable exactly, else the tensor stays BF16 (exact too).
      const EncodeResult dry = encode_tensor(t, d.type, true, specs[i], {});
      release_source(ckpt, t);
      tr.lattice_stats = dry.stats;
      if (dry.stats.scale_unrepresentable > 0) {
        d.reason = fmt::format(
            "QAT lattice {}/{}: {} of {} block scales are not exact in F16: BF16 "
            "(exact)",
            lattice_kind_name(specs[i].kind), specs[i].group_size, dry.stats.scale_unrepresentable,
            dry.stats.blocks);
        d.type = GgmlType::BF16;
        d.lattice = false;
      }
    }
    tr.type = d.type;
    tr.lattice_encoded = d.lattice;
    tr.reason = std::move(d.reason);
  }

  // ---- header
  GgufWriter writer(options.output);
  plan.kvs.set("general.file_type", GgufValue{request.file_type});
  plan.kvs.set("general.quantization_version", GgufValue{kQuantizationVersion});
  for (auto& kv : tokenizer_kvs) plan.kvs.set(std::move(kv.key), std::move(kv.value));
  for (const auto& kv : plan.kvs.items()) writer.add_kv(kv.key, kv.value);
  for (std::size_t i = 0; i < plan.tensors.size(); ++i)
    writer.add_tensor(plan.tensors[i].name, plan.tensors[i].ne, report.tensors[i].type);

  // ---- pass 2: convert and write, one tensor at a time
  const bool progress_on = options.progress || ::isatty(STDERR_FILENO) == 1;
  Progress progress(progress_on, plan.tensors.size());
  for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
    const TensorPlan& t = plan.tensors[i];
    TensorReport& tr = report.tensors[i];
    progress.update(i + 1, t.name, report.input_bytes);
    tr.output_bytes = row_bytes(tr.type, t.cols()) * t.rows();
    // One output tensor in memory at a time (GgufWriter takes a tensor's bytes in one call).
    const auto n_out = static_cast<std::size_t>(tr.output_bytes);
    const auto storage = std::make_unique_for_overwrite<std::byte[]>(n_out);
    const std::span<std::byte> buffer(storage.get(), n_out);
    const EncodeResult r = encode_tensor(t, tr.type, tr.lattice_encoded, specs[i], buffer);
    if (tr.lattice_encoded) tr.lattice_stats = r.stats;
    tr.max_abs_error = r.max_abs_error;
    writer.write_tensor_data(buffer);
    release_source(ckpt, t);
    report.input_bytes += tr.source_bytes;
    report.tensor_bytes += tr.output_bytes;
    report.n_weights += tr.n_elements;
  }
  writer.finish();
  progress.done();
  std::error_code ec;
  report.output_file_bytes = std::filesystem::file_size(options.output, ec);
  report.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return report;
}

}  // namespace qforge
