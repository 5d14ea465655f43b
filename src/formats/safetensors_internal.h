// Helpers shared by the safetensors and HF-checkpoint sources (not part of the public API).
#pragma once

#include <cstddef>
#include <exception>
#include <string>
#include <string_view>

namespace qforge::st_detail {

// A name or value from an untrusted file, safe to put in an error message: control characters
// escaped, long strings cut.
std::string printable(std::string_view s, std::size_t max_chars = 120);

// nlohmann's exception text without its "[json.exception...]" prefix, shortened.
std::string json_error_text(const std::exception& e);

}  // namespace qforge::st_detail
