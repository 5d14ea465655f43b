// The conversion report: JSON (--report) and the table printed on stdout.
#include <cmath>

#include <fmt/format.h>

#include "convert/converter.h"

namespace qforge {
namespace {

nlohmann::ordered_json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

std::string lattice_cell(const TensorReport& t) {
  if (!t.lattice_checked) return "-";
  if (t.detection.spec.kind == LatticeKind::kNone) return "none";
  return fmt::format("{}{}/{} {:.3f}", t.lattice_detected ? "" : "(",
                     lattice_kind_name(t.detection.spec.kind), t.detection.spec.group_size,
                     t.detection.share()) +
         (t.lattice_detected ? "" : ")");
}

std::string human_bytes(std::uint64_t b) {
  const double v = static_cast<double>(b);
  if (v >= 1e9) return fmt::format("{:.2f} GB", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f} MB", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f} kB", v / 1e3);
  return fmt::format("{} B", b);
}

}  // namespace

nlohmann::ordered_json report_to_json(const ConvertReport& r) {
  nlohmann::ordered_json j;
  j["input"] = r.input;
  j["output"] = r.output;
  j["hf_architecture"] = r.hf_arch;
  j["architecture"] = r.arch;
  j["type"] = r.requested_type;
  j["file_type"] = r.file_type;
  j["qat"] = r.qat_mode ? "auto" : "off";
  j["qat_checkpoint"] = r.qat_checkpoint;
  auto& tensors = j["tensors"] = nlohmann::ordered_json::array();
  for (const auto& t : r.tensors) {
    nlohmann::ordered_json e;
    e["name"] = t.name;
    e["source"] = t.source;
    e["source_dtype"] = t.source_dtype;
    e["shape"] = t.ne;
    if (t.lattice_checked) {
      e["lattice"] = {
          {"detected", t.lattice_detected},
          {"kind", std::string(lattice_kind_name(t.detection.spec.kind))},
          {"group", t.detection.spec.group_size},
          {"share", t.detection.share()},
          {"blocks_sampled", t.detection.blocks_sampled},
      };
    } else {
      e["lattice"] = nullptr;
    }
    e["type"] = std::string(type_name(t.type));
    e["lattice_encoded"] = t.lattice_encoded;
    e["reason"] = t.reason;
    if (t.lattice_detected) {
      e["blocks"] = {
          {"total", t.lattice_stats.blocks},
          {"exact", t.lattice_stats.exact},
          {"off_lattice", t.lattice_stats.off_lattice},
          {"scale_unrepresentable", t.lattice_stats.scale_unrepresentable},
          {"not_finite", t.lattice_stats.not_finite},
      };
    }
    e["max_abs_error"] = number_or_null(t.max_abs_error);
    e["n_elements"] = t.n_elements;
    e["source_bytes"] = t.source_bytes;
    e["output_bytes"] = t.output_bytes;
    tensors.push_back(std::move(e));
  }
  j["skipped"] = r.skipped;
  if (!r.recipe_json.empty()) j["recipe"] = nlohmann::ordered_json::parse(r.recipe_json);
  std::uint64_t lattice_tensors = 0, fallbacks = 0;
  for (const auto& t : r.tensors) {
    lattice_tensors += t.lattice_encoded;
    fallbacks += !t.reason.empty();
  }
  j["totals"] = {
      {"tensors", r.tensors.size()},
      {"lattice_tensors", lattice_tensors},
      {"tensors_with_reason", fallbacks},
      {"weights", r.n_weights},
      {"input_bytes", r.input_bytes},
      {"tensor_bytes", r.tensor_bytes},
      {"output_file_bytes", r.output_file_bytes},
      {"bits_per_weight", r.bits_per_weight()},
      {"seconds", r.seconds},
      {"input_mb_per_s",
       r.seconds > 0 ? static_cast<double>(r.input_bytes) / 1e6 / r.seconds : 0.0},
      {"threads", r.threads},
  };
  return j;
}

std::string report_table(const ConvertReport& r) {
  std::size_t wn = 4, ws = 5;
  std::vector<std::string> shapes;
  for (const auto& t : r.tensors) {
    wn = std::max(wn, t.name.size());
    shapes.push_back(fmt::format("{}", fmt::join(t.ne, "x")));
    ws = std::max(ws, shapes.back().size());
  }
  std::string out =
      fmt::format("{:<{}}  {:<{}}  {:<9}  {:<22}  {:<6}  {:>10}  {}\n", "tensor", wn, "shape", ws,
                  "source", "lattice (share)", "type", "max|err|", "note");
  for (std::size_t i = 0; i < r.tensors.size(); ++i) {
    const auto& t = r.tensors[i];
    std::string note = t.reason;
    if (t.lattice_detected)
      note = fmt::format("{}{}blocks exact {}/{}, off-lattice {}, scale-unrepresentable {}", note,
                         note.empty() ? "" : "; ", t.lattice_stats.exact, t.lattice_stats.blocks,
                         t.lattice_stats.off_lattice, t.lattice_stats.scale_unrepresentable);
    out +=
        fmt::format("{:<{}}  {:<{}}  {:<9}  {:<22}  {:<6}  {:>10.3g}  {}\n", t.name, wn, shapes[i],
                    ws, t.source_dtype, lattice_cell(t), type_name(t.type), t.max_abs_error, note);
  }
  out += fmt::format(
      "\n{} -> {} ({} -> {}), --type {}{}\n{} tensors, {} weights, {} of tensor data, file {}, "
      "{:.3f} bits/weight\nread {} in {:.2f} s ({:.1f} MB/s, {} threads)\n",
      r.hf_arch, r.arch, r.input, r.output, r.requested_type,
      r.qat_checkpoint ? " (QAT lattice checkpoint)" : "", r.tensors.size(), r.n_weights,
      human_bytes(r.tensor_bytes), human_bytes(r.output_file_bytes), r.bits_per_weight(),
      human_bytes(r.input_bytes), r.seconds,
      r.seconds > 0 ? static_cast<double>(r.input_bytes) / 1e6 / r.seconds : 0.0, r.threads);
  if (!r.skipped.empty())
    out += fmt::format("skipped {} non-text tensors (vision/audio towers, projectors)\n",
                       r.skipped.size());
  if (!r.recipe_json.empty()) {
    const auto j = nlohmann::ordered_json::parse(r.recipe_json);
    out += fmt::format(
        "dynamic recipe: target {:.3f} bpw, {} ({} scored calibration tokens), "
        "predicted KLD {:.4g}\n",
        j["target_bpw"].get<double>(),
        j["measured"].get<bool>() ? "measured sensitivities" : "error proxy only",
        j["calib_tokens"].get<int>(), j["predicted_kld"].get<double>());
    for (const auto& c : j["proxy_checks"])
      out += fmt::format("  proxy check {} as {}: predicted dKLD {:.4g}, measured {:.4g}\n",
                         c["tensor"].get<std::string>(), c["type"].get<std::string>(),
                         c["predicted_kld"].get<double>(), c["measured_kld"].get<double>());
  }
  return out;
}

}  // namespace qforge
