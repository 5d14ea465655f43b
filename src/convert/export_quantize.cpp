#include "convert/export_quantize.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>

#include <fmt/format.h>

#include "convert/arch_common.h"
#include "convert/tensor_rows.h"
#include "convert/type_policy.h"
#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "formats/gguf.h"
#include "quant/blocks.h"

namespace qforge {
namespace {

constexpr std::uint32_t kQuantizationVersion = 2;  // GGML_QNT_VERSION

bool is_bf16_exact(float v) {
  std::uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return (bits & 0xffffu) == 0;
}

int layer_of(std::string_view name) {
  if (!name.starts_with("blk.")) return -1;
  int v = 0;
  std::size_t i = 4;
  if (i >= name.size() || name[i] < '0' || name[i] > '9') return -1;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) v = v * 10 + (name[i] - '0');
  return v;
}

// Lattice candidates hold exact BF16 values: BF16 tensors, or F32 ones whose sampled rows are
// all BF16-representable.
LatticeDetection detect_on_sample(const TensorRows& s, bool& bf16_values) {
  const std::uint64_t rows = s.rows(), cols = s.cols();
  const std::uint64_t want_rows = std::max<std::uint64_t>(16, (8192 * 32 + cols - 1) / cols);
  const std::uint64_t n = std::min(rows, want_rows);
  std::vector<float> sample(n * cols);
  for (std::uint64_t i = 0; i < n; ++i)
    s.read(i * rows / n, std::span(sample).subspan(i * cols, cols));
  bf16_values = std::all_of(sample.begin(), sample.end(), is_bf16_exact);
  if (!bf16_values) return {};
  return detect_lattice(sample, cols, 0.0, 4096);
}

struct EncodeResult {
  LatticeEncodeStats stats;
  double max_abs_error = 0;
};

// Quantizes (or lattice-encodes) every row; writes into `out` unless it is empty (dry run).
EncodeResult encode_tensor(const TensorRows& s, GgmlType type, bool lattice, LatticeSpec spec,
                           const std::vector<float>* importance, std::span<std::byte> out) {
  const std::uint64_t rows = s.rows(), cols = s.cols();
  const std::uint64_t rb = row_bytes(type, cols);
  EncodeResult total;
  std::mutex mutex;
  parallel_for(
      static_cast<std::size_t>(rows),
      [&](std::size_t begin, std::size_t end) {
        std::vector<float> row(cols), back(cols);
        std::vector<std::byte> scratch(out.empty() ? rb : 0);
        EncodeResult local;
        for (std::size_t r = begin; r < end; ++r) {
          s.read(r, row);
          for (std::uint64_t c = 0; c < cols; ++c)
            if (!std::isfinite(row[c]))
              fail("{}: tensor '{}': element {} (row {}, column {}) is not finite", s.g.path(),
                   s.t.name, r * cols + c, r, c);
          const std::span<std::byte> dst =
              out.empty() ? std::span<std::byte>(scratch) : out.subspan(r * rb, rb);
          if (lattice) {
            encode_lattice_row(row, spec, type, dst, local.stats);
            local.max_abs_error = std::max(local.max_abs_error, local.stats.max_abs_error);
            continue;
          }
          quantize_row(type, row, dst, s.importance_of_row(importance, r));
          dequantize_row(type, dst, back);
          for (std::uint64_t c = 0; c < cols; ++c)
            local.max_abs_error =
                std::max(local.max_abs_error, static_cast<double>(std::fabs(back[c] - row[c])));
        }
        std::lock_guard lock(mutex);
        total.stats.blocks += local.stats.blocks;
        total.stats.exact += local.stats.exact;
        total.stats.off_lattice += local.stats.off_lattice;
        total.stats.scale_unrepresentable += local.stats.scale_unrepresentable;
        total.stats.not_finite += local.stats.not_finite;
        total.stats.max_abs_error = std::max(total.stats.max_abs_error, local.stats.max_abs_error);
        total.max_abs_error = std::max(total.max_abs_error, local.max_abs_error);
      },
      static_cast<std::size_t>(
          std::max<std::uint64_t>(1, 65536 / std::max<std::uint64_t>(1, cols))));
  return total;
}

}  // namespace

Imatrix read_imatrix(const std::filesystem::path& path) {
  {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("{}: cannot open the imatrix file", path.string());
    char magic[4] = {};
    f.read(magic, 4);
    if (f.gcount() != 4 || std::string_view(magic, 4) != "GGUF")
      fail(
          "{}: not a GGUF imatrix; the legacy .dat imatrix format is not supported (convert it "
          "with `llama-imatrix --in-file {} -o imatrix.gguf`)",
          path.string(), path.filename().string());
  }
  const GgufReader g = GgufReader::open(path);
  Imatrix out;
  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> pairs;
  for (const auto& t : g.tensors()) {
    if (t.name.ends_with(".in_sum2")) {
      pairs[t.name.substr(0, t.name.size() - 8)].first = &t;
    } else if (t.name.ends_with(".counts")) {
      pairs[t.name.substr(0, t.name.size() - 7)].second = &t;
    }
  }
  const auto floats = [&](const GgufTensorInfo& t) {
    if (t.type != GgmlType::F32)
      fail("{}: imatrix tensor '{}' is {}, expected F32", path.string(), t.name, type_name(t.type));
    const auto bytes = g.tensor_data(t);
    std::vector<float> v(bytes.size() / 4);
    std::memcpy(v.data(), bytes.data(), v.size() * 4);
    return v;
  };
  for (const auto& [name, p] : pairs) {
    if (!p.first || !p.second)
      fail("{}: imatrix entry '{}' needs both '{}.in_sum2' and '{}.counts'", path.string(), name,
           name, name);
    std::vector<float> sums = floats(*p.first);
    const std::vector<float> counts = floats(*p.second);
    if (counts.empty() || sums.size() % counts.size() != 0)
      fail("{}: imatrix entry '{}': {} sums do not split into {} matrices", path.string(), name,
           sums.size(), counts.size());
    const std::size_t per = sums.size() / counts.size();
    for (std::size_t m = 0; m < counts.size(); ++m) {
      const float c = counts[m] > 0 ? counts[m] : 1.0f;
      for (std::size_t j = 0; j < per; ++j) {
        float& v = sums[m * per + j];
        v = std::isfinite(v) && v > 0 ? v / c : 0.0f;
      }
    }
    out.matrices[name] = counts.size();
    out.importance[name] = std::move(sums);
  }
  if (out.importance.empty())
    fail("{}: no '<tensor>.in_sum2' entries: not an imatrix GGUF", path.string());
  return out;
}

ConvertReport quantize_gguf(const QuantizeOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.threads > 0) set_thread_count(options.threads);
  TypeRequest request =
      parse_type_request(options.type.empty() && options.dynamic ? "q4_k_m" : options.type);
  std::vector<TypeOverride> overrides;
  for (const auto& spec : options.overrides) overrides.push_back(parse_override(spec));
  std::error_code ec;
  if (std::filesystem::exists(options.output, ec) &&
      std::filesystem::equivalent(options.input, options.output, ec))
    fail("{}: output is the input file", options.output.string());

  const GgufReader g = GgufReader::open(options.input);
  std::optional<Imatrix> imatrix;
  if (!options.imatrix.empty()) imatrix = read_imatrix(options.imatrix);
  const std::string arch = g.architecture();

  ConvertReport report;
  report.input = options.input.string();
  report.output = options.output.string();
  report.hf_arch = fmt::format("GGUF {}", arch.empty() ? "?" : arch);
  report.arch = arch;
  report.requested_type = request.name;
  report.file_type = request.file_type;
  report.qat_mode = options.qat;
  report.threads = thread_count();

  const auto& infos = g.tensors();
  std::vector<TensorPlan> plans(infos.size());
  std::vector<LatticeSpec> specs(infos.size());
  std::vector<const std::vector<float>*> importance(infos.size(), nullptr);
  const bool want_lattice = options.qat && (!request.is_float() || !overrides.empty());
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const GgufTensorInfo& t = infos[i];
    if (!can_dequantize(t.type))
      fail("{}: tensor '{}' has type {}, which qforge cannot dequantize", g.path(), t.name,
           type_name(t.type));
    TensorPlan& p = plans[i];
    p.name = t.name;
    p.ne = t.shape;
    p.role = convert_detail::role_for(t.name, t.shape.size());
    p.layer = layer_of(t.name);
    p.source_name = t.name;
    TensorReport tr;
    tr.name = t.name;
    tr.source_dtype = std::string(type_name(t.type));
    tr.ne = t.shape;
    tr.n_elements = t.n_elements();
    tr.source_bytes = t.n_bytes();
    const TensorRows s{g, t};
    if (want_lattice && p.role != TensorRole::kFloat32 && t.shape.size() >= 2 &&
        s.cols() % 32 == 0 && (t.type == GgmlType::BF16 || t.type == GgmlType::F32)) {
      bool bf16_values = false;
      const LatticeDetection det = detect_on_sample(s, bf16_values);
      if (bf16_values) {
        tr.lattice_checked = true;
        tr.detection = det;
        tr.lattice_detected =
            det.spec.kind != LatticeKind::kNone && det.share() >= options.min_lattice_share;
        if (tr.lattice_detected) specs[i] = det.spec;
      }
    }
    if (imatrix) {
      const auto it = imatrix->importance.find(t.name);
      if (it != imatrix->importance.end()) {
        const std::uint64_t matrices = t.shape.size() >= 3 ? t.shape[2] : 1;
        if (it->second.size() != s.cols() * matrices)
          fail(
              "{}: imatrix entry '{}' has {} values, tensor {} needs {} ({} columns x {} matrices)",
              options.imatrix.string(), t.name, it->second.size(), options.input.string(),
              s.cols() * matrices, s.cols(), matrices);
        importance[i] = &it->second;
      }
    }
    report.qat_checkpoint = report.qat_checkpoint || tr.lattice_detected;
    report.tensors.push_back(std::move(tr));
  }

  TypeContext context;
  const std::string block_key = arch + ".block_count";
  if (const GgufValue* v = g.find(block_key))
    context.n_layers = static_cast<int>(v->as_uint(block_key));
  context.tied_embeddings = g.find_tensor("output.weight") == nullptr;
  context.qat_checkpoint = report.qat_checkpoint;
  std::optional<DynamicRecipe> recipe;
  std::map<std::string, GgmlType> dynamic_types;
  if (options.dynamic) {
    // F32-role, lattice and odd-length tensors keep the policy's type; the recipe chooses for
    // the other matrices.
    std::map<std::string, FixedTensorType> fixed;
    for (std::size_t i = 0; i < infos.size(); ++i) {
      const bool candidate = plans[i].role != TensorRole::kFloat32 &&
                             !report.tensors[i].lattice_detected && infos[i].shape.size() >= 2 &&
                             infos[i].shape[0] % 32 == 0;
      if (candidate) continue;
      TypeContext c = context;
      const TypeDecision d = choose_type(plans[i], request, {}, specs[i], c);
      fixed[infos[i].name] = {d.type, d.reason};
    }
    recipe = plan_dynamic_recipe(g, imatrix ? &*imatrix : nullptr, fixed, *options.dynamic);
    dynamic_types = recipe->types();
    report.recipe_json = recipe->to_json();
    // general.file_type: llama.cpp's file type of the type that holds the most weights.
    std::map<GgmlType, std::uint64_t> weight_of;
    for (const auto& t : recipe->tensors) weight_of[t.type] += t.n_elements;
    GgmlType most = GgmlType::F32;
    for (const auto& [type, n] : weight_of)
      if (type != GgmlType::F32 && (most == GgmlType::F32 || n > weight_of[most])) most = type;
    if (options.type.empty() && most != GgmlType::F32) {
      try {
        request.file_type = parse_type_request(type_name(most)).file_type;
      } catch (const Error&) {  // keep q4_k_m's for types without a llama.cpp file type
      }
    }
    request.name = fmt::format("dynamic {:.2f} bpw", options.dynamic->target_bpw);
    report.requested_type = request.name;
    report.file_type = request.file_type;
  }

  std::vector<bool> copy(infos.size(), false);
  std::uint64_t matrices_without_imatrix = 0;
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const GgufTensorInfo& t = infos[i];
    TensorReport& tr = report.tensors[i];
    TypeDecision d = choose_type(plans[i], request, overrides, specs[i], context);
    if (const auto it = dynamic_types.find(t.name); it != dynamic_types.end()) {
      const DynamicTensor& dt = recipe->tensors[i];
      d.type = it->second;
      d.lattice = false;
      d.reason = fmt::format("dynamic: {} gain {:.3g}, predicted dKLD {:.3g}",
                             dt.measured ? "measured" : "assumed", dt.gain, [&] {
                               for (const auto& c : dt.candidates)
                                 if (c.type == d.type) return c.predicted_kld;
                               return 0.0;
                             }());
    }
    const TensorRows s{g, t};
    if (d.lattice) {
      const EncodeResult dry = encode_tensor(s, d.type, true, specs[i], nullptr, {});
      tr.lattice_stats = dry.stats;
      if (dry.stats.scale_unrepresentable > 0) {
        d.reason = fmt::format(
            "QAT lattice {}/{}: {} of {} block scales are not exact in F16: BF16 (exact)",
            lattice_kind_name(specs[i].kind), specs[i].group_size, dry.stats.scale_unrepresentable,
            dry.stats.blocks);
        d.type = GgmlType::BF16;
        d.lattice = false;
      }
    }
    if (!d.lattice && d.type == t.type) {
      copy[i] = true;  // same type: the bytes are already the best encoding
      d.reason += d.reason.empty() ? "copied (already this type)" : "; copied (already this type)";
    }
    if (!copy[i] && !d.lattice && importance[i] == nullptr && imatrix &&
        plans[i].role != TensorRole::kFloat32)
      ++matrices_without_imatrix;
    tr.type = d.type;
    tr.lattice_encoded = d.lattice;
    tr.source = copy[i]         ? "copied"
                : d.lattice     ? "lattice"
                : importance[i] ? "requantized+imatrix"
                                : "requantized";
    tr.reason = std::move(d.reason);
  }
  if (matrices_without_imatrix > 0)
    report.skipped.push_back(
        fmt::format("{} requantized matrices have no imatrix entry (plain "
                    "quantization)",
                    matrices_without_imatrix));

  GgufWriter writer(options.output);
  for (const auto& kv : g.metadata()) {
    if (kv.key == "general.file_type" || kv.key == "general.quantization_version" ||
        kv.key.starts_with("qforge.quantize."))
      continue;
    writer.add_kv(kv.key, kv.value);
  }
  writer.add_kv("general.file_type", GgufValue{request.file_type});
  writer.add_kv("general.quantization_version", GgufValue{kQuantizationVersion});
  if (recipe) {
    writer.add_kv("qforge.quantize.recipe", GgufValue{std::string("dynamic")});
    writer.add_kv("qforge.quantize.target_bpw", GgufValue{static_cast<float>(recipe->target_bpw)});
    writer.add_kv("qforge.quantize.recipe_json", GgufValue{report.recipe_json});
  }
  for (std::size_t i = 0; i < infos.size(); ++i)
    writer.add_tensor(infos[i].name, infos[i].shape, report.tensors[i].type);

  const bool progress = options.progress || ::isatty(STDERR_FILENO) == 1;
  for (std::size_t i = 0; i < infos.size(); ++i) {
    const GgufTensorInfo& t = infos[i];
    TensorReport& tr = report.tensors[i];
    if (progress) {
      fmt::print(stderr, "\r\x1b[2K[{}/{}] {}", i + 1, infos.size(), t.name);
      std::fflush(stderr);
    }
    const TensorRows s{g, t};
    tr.output_bytes = row_bytes(tr.type, s.cols()) * s.rows();
    if (copy[i]) {
      writer.write_tensor_data(g.tensor_data(t));
    } else {
      const auto n = static_cast<std::size_t>(tr.output_bytes);
      const auto storage = std::make_unique_for_overwrite<std::byte[]>(n);
      const std::span<std::byte> buffer(storage.get(), n);
      const EncodeResult r =
          encode_tensor(s, tr.type, tr.lattice_encoded, specs[i], importance[i], buffer);
      if (tr.lattice_encoded) tr.lattice_stats = r.stats;
      tr.max_abs_error = r.max_abs_error;
      writer.write_tensor_data(buffer);
    }
    report.input_bytes += tr.source_bytes;
    report.tensor_bytes += tr.output_bytes;
    report.n_weights += tr.n_elements;
  }
  writer.finish();
  if (progress) fmt::print(stderr, "\n");
  report.output_file_bytes = std::filesystem::file_size(options.output, ec);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace qforge
