#include "cli/report_output.h"

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "core/error.h"

namespace qforge::cli {

bool parse_qat(const std::string& qat) {
  if (qat != "auto" && qat != "off") fail("--qat '{}': expected auto or off", qat);
  return qat == "auto";
}

void check_report_path(const std::string& path) {
  if (path.empty()) return;
  const auto parent = std::filesystem::absolute(path).parent_path();
  std::error_code ec;
  if (!std::filesystem::is_directory(parent, ec))
    fail("{}: directory {} does not exist", path, parent.string());
}

void emit_report(const ConvertReport& report, const std::string& path, bool quiet) {
  if (!path.empty()) {
    std::ofstream out(path);
    out << report_to_json(report).dump(2) << '\n';
    if (!out) fail("{}: writing the report failed", path);
  }
  if (!quiet) fmt::print("{}", report_table(report));
}

}  // namespace qforge::cli
