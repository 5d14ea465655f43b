// JSON parsing with errors that say which file and where: nlohmann's parse_error carries the byte
// offset of the failure, which is what a user needs to find a stray comma in a 30 MB
// tokenizer.json.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/hf_checkpoint.h"
#include "formats/safetensors_internal.h"

namespace qforge {

nlohmann::json parse_json(std::string_view text, const std::string& what) {
  // nlohmann stops at a NUL byte as if the input ended there; JSON allows none anywhere.
  if (const auto nul = text.find('\0'); nul != std::string_view::npos)
    fail("{}: invalid JSON at byte {}: NUL byte", what, nul + 1);
  // Real configs and tokenizers nest a few levels; deeper values are dropped rather than built so
  // a pathological file cannot take gigabytes, and the file is refused.
  constexpr int kMaxDepth = 256;
  bool too_deep = false;
  const nlohmann::json::parser_callback_t limit_depth =
      [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
        if ((event == nlohmann::json::parse_event_t::object_start ||
             event == nlohmann::json::parse_event_t::array_start) &&
            depth >= kMaxDepth) {
          too_deep = true;
          return false;
        }
        return true;
      };
  try {
    nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), limit_depth);
    if (too_deep) fail("{}: JSON nests deeper than {} levels", what, kMaxDepth);
    return j;
  } catch (const nlohmann::json::parse_error& e) {
    fail("{}: invalid JSON at byte {}: {}", what, e.byte, st_detail::json_error_text(e));
  } catch (const nlohmann::json::exception& e) {  // e.g. a number too large for a double
    fail("{}: invalid JSON: {}", what, st_detail::json_error_text(e));
  }
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  const MappedFile file = MappedFile::open(path);
  const auto bytes = file.bytes();
  return parse_json(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                    path.string());
}

}  // namespace qforge
