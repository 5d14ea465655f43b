// Human-readable rendering of an inspect report, and helpers shared by the report builders.
#include <algorithm>
#include <string>

#include <fmt/format.h>

#include "cli/inspect_report.h"

namespace qforge::cli {
namespace {

constexpr std::size_t kMaxTextValue = 100;  // characters of a value shown without --all-metadata

std::string grouped(std::uint64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string human_bytes(std::uint64_t n) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  std::size_t unit = 0;
  while (v >= 1024.0 && unit + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", n) : fmt::format("{:.1f} {}", v, kUnits[unit]);
}

std::string human_count(std::uint64_t n) {
  if (n >= 1'000'000'000) return fmt::format("{:.2f} B", static_cast<double>(n) / 1e9);
  if (n >= 1'000'000) return fmt::format("{:.2f} M", static_cast<double>(n) / 1e6);
  if (n >= 1'000) return fmt::format("{:.2f} K", static_cast<double>(n) / 1e3);
  return std::to_string(n);
}

std::string dump(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string clip(std::string s, const InspectOptions& options) {
  if (options.all_metadata || s.size() <= kMaxTextValue) return s;
  // Cut on a UTF-8 character boundary.
  std::size_t cut = kMaxTextValue;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;
  return fmt::format("{}... ({} bytes)", s.substr(0, cut), s.size());
}

// FLOAT32 values are exact doubles in the report; show them as the shortest float that round-trips.
std::string value_text(const Json& v, bool float32, const InspectOptions& options) {
  if (float32 && v.is_number_float()) return fmt::format("{}", static_cast<float>(v.get<double>()));
  return clip(dump(v), options);
}

std::string metadata_text(const Json& entry, const InspectOptions& options) {
  if (!entry.is_object()) return clip(dump(entry), options);  // safetensors: plain strings
  const std::string type = entry["type"].get<std::string>();
  if (type != "ARRAY")
    return fmt::format("{:<8} {}", type, value_text(entry["value"], type == "FLOAT32", options));
  const bool float32 = entry["element_type"] == "FLOAT32";
  std::string items;
  for (const auto& item : entry["value"]) {
    if (!items.empty()) items += ", ";
    items += value_text(item, float32, options);
  }
  const std::uint64_t count = entry["count"].get<std::uint64_t>();
  if (entry["truncated"].get<bool>())
    items += fmt::format(", ... ({} more)", count - entry["value"].size());
  return fmt::format("[{} x {}] [{}]", entry["element_type"].get<std::string>(), count, items);
}

std::string shape_text(const Json& shape) {
  std::string out;
  for (const auto& d : shape) {
    if (!out.empty()) out += " x ";
    out += std::to_string(d.get<std::uint64_t>());
  }
  return out.empty() ? "scalar" : out;
}

}  // namespace

double bits_per_weight(std::uint64_t bytes, std::uint64_t elements) {
  return elements == 0 ? 0.0 : 8.0 * static_cast<double>(bytes) / static_cast<double>(elements);
}

Json types_section(const std::vector<std::pair<std::string, TypeTotals>>& totals) {
  auto sorted = totals;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto& a, const auto& b) { return a.second.bytes > b.second.bytes; });
  Json out = Json::object();
  for (const auto& [name, t] : sorted) {
    Json j;
    j["tensors"] = t.tensors;
    j["elements"] = t.elements;
    j["bytes"] = t.bytes;
    j["bits_per_weight"] = bits_per_weight(t.bytes, t.elements);
    out[name] = std::move(j);
  }
  return out;
}

void print_report_text(const Json& r, const InspectOptions& options) {
  const std::string format = r["format"].get<std::string>();
  fmt::print("{:<17}{}\n", "path:", r["path"].get<std::string>());
  if (format == "gguf") {
    fmt::print("{:<17}GGUF v{}\n", "format:", r["gguf_version"].get<std::uint32_t>());
  } else {
    fmt::print("{:<17}{}\n", "format:", format);
  }
  if (!r["architecture"].get<std::string>().empty())
    fmt::print("{:<17}{}\n", "architecture:", r["architecture"].get<std::string>());
  if (r.contains("model_type") && !r["model_type"].get<std::string>().empty())
    fmt::print("{:<17}{}\n", "model type:", r["model_type"].get<std::string>());
  if (r.contains("alignment"))
    fmt::print("{:<17}{}\n", "alignment:", r["alignment"].get<std::uint64_t>());
  const auto params = r["parameter_count"].get<std::uint64_t>();
  fmt::print("{:<17}{} ({})\n", "parameters:", grouped(params), human_count(params));
  fmt::print("{:<17}{}\n", "tensors:", r["tensor_count"].get<std::uint64_t>());
  const auto tbytes = r["tensor_bytes"].get<std::uint64_t>();
  fmt::print("{:<17}{} ({})\n", "tensor bytes:", grouped(tbytes), human_bytes(tbytes));
  const auto fsize = r["file_size"].get<std::uint64_t>();
  fmt::print("{:<17}{} ({})\n", "file size:", grouped(fsize), human_bytes(fsize));
  fmt::print("{:<17}{:.3f}\n", "bits per weight:", r["bits_per_weight"].get<double>());
  if (r.contains("files") && r["files"].size() > 1) {
    fmt::print("\nfiles ({}):\n", r["files"].size());
    for (const auto& f : r["files"])
      fmt::print("  {}  {} tensors, {}\n", f["path"].get<std::string>(),
                 f["tensor_count"].get<std::uint64_t>(),
                 human_bytes(f["file_size"].get<std::uint64_t>()));
  }

  fmt::print("\ntypes:\n  {:<9} {:>8} {:>15} {:>15} {:>8}\n", "TYPE", "TENSORS", "ELEMENTS",
             "BYTES", "BPW");
  for (const auto& [name, t] : r["types"].items())
    fmt::print("  {:<9} {:>8} {:>15} {:>15} {:>8.3f}\n", name, t["tensors"].get<std::uint64_t>(),
               grouped(t["elements"].get<std::uint64_t>()),
               grouped(t["bytes"].get<std::uint64_t>()), t["bits_per_weight"].get<double>());

  const auto& metadata = r["metadata"];
  std::size_t key_width = 8;
  for (const auto& [key, value] : metadata.items()) key_width = std::max(key_width, key.size());
  key_width = std::min<std::size_t>(key_width, 48);
  fmt::print("\nmetadata ({} keys):\n", metadata.size());
  for (const auto& [key, value] : metadata.items())
    fmt::print("  {:<{}} {}\n", key, key_width, metadata_text(value, options));

  std::size_t name_width = 4;
  for (const auto& t : r["tensors"])
    name_width = std::max(name_width, t["name"].get_ref<const std::string&>().size());
  fmt::print("\ntensors ({}):\n  {:<{}} {:<8} {:<24} {:>13} {:>7}\n", r["tensors"].size(), "NAME",
             name_width, "TYPE", "SHAPE", "BYTES", "BPW");
  for (const auto& t : r["tensors"])
    fmt::print("  {:<{}} {:<8} {:<24} {:>13} {:>7.3f}\n", t["name"].get<std::string>(), name_width,
               t["type"].get<std::string>(), shape_text(t["shape"]),
               grouped(t["bytes"].get<std::uint64_t>()), t["bits_per_weight"].get<double>());
}

}  // namespace qforge::cli
