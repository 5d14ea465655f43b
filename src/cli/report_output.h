// What `convert` and `quantize` share on the command line: the --qat switch and the conversion
// report (checked path before the work starts, JSON file and table after).
#pragma once

#include <string>

#include "convert/converter.h"

namespace qforge::cli {

bool parse_qat(const std::string& qat);  // "auto" -> true, "off" -> false, else an error
// Fails on a report path in a missing directory before minutes are spent converting.
void check_report_path(const std::string& path);
void emit_report(const ConvertReport& report, const std::string& path, bool quiet);

}  // namespace qforge::cli
