// libFuzzer target: JSON parsing and the HF checkpoint loader on arbitrary bytes. The same bytes
// are parsed in memory (parse_json, text_config(), architecture()) and written as every JSON file
// of a checkpoint directory (config.json, tokenizer_config.json, chat_template.json, the
// safetensors index), so one JSON object can reach every interpretation path. Only qforge::Error
// may escape.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "core/error.h"
#include "formats/hf_checkpoint.h"

namespace {

namespace fs = std::filesystem;

const fs::path& work_dir() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("qforge-fuzz-json-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

void write_file(const fs::path& p, std::string_view text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  bool is_object = false;
  try {
    qforge::HfCheckpoint ckpt;
    ckpt.config = qforge::parse_json(text, "fuzz.json");
    const nlohmann::json& tc = ckpt.text_config();
    if (&tc != &ckpt.config && !tc.is_object()) __builtin_trap();
    (void)ckpt.architecture();
    is_object = ckpt.config.is_object();
  } catch (const qforge::Error&) {
  }
  // Anything else fails at config.json the same way it failed above; skip the slow file path.
  if (!is_object) return 0;

  const fs::path& dir = work_dir();
  for (const char* name : {"config.json", "tokenizer_config.json", "chat_template.json",
                           "model.safetensors.index.json"}) {
    write_file(dir / name, text);
  }
  try {
    const qforge::HfCheckpoint ckpt = qforge::HfCheckpoint::open(dir);
    (void)ckpt.text_config();
    (void)ckpt.architecture();
    if (ckpt.chat_template) asm volatile("" : : "r"(ckpt.chat_template->size()));
  } catch (const qforge::Error&) {
  }
  return 0;
}
