// Building blocks of `qforge inspect`: each input format becomes one JSON report (the --json
// output, schema in docs/cli.md); the text output is rendered from that same report.
#pragma once

#include <cstddef>
#include <filesystem>

#include <nlohmann/json.hpp>

namespace qforge {
class GgufReader;
}

namespace qforge::cli {

using Json = nlohmann::ordered_json;

struct InspectOptions {
  bool all_metadata = false;    // print arrays and long strings in full
  std::size_t array_items = 8;  // items shown per array otherwise
};

Json gguf_report(const GgufReader& reader, const InspectOptions& options);
// A .safetensors file, a model.safetensors.index.json, or a directory (HF checkpoint when it has
// config.json, else a directory of safetensors files).
Json safetensors_report(const std::filesystem::path& path, const InspectOptions& options);

void print_report_text(const Json& report, const InspectOptions& options);

// Accumulates per-type totals for the "types" section.
struct TypeTotals {
  std::uint64_t tensors = 0;
  std::uint64_t elements = 0;
  std::uint64_t bytes = 0;
};
double bits_per_weight(std::uint64_t bytes, std::uint64_t elements);
Json types_section(const std::vector<std::pair<std::string, TypeTotals>>& totals);

}  // namespace qforge::cli
