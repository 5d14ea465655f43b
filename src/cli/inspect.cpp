// `qforge inspect FILE_OR_DIR [--json] [--all-metadata]`: what is in a model file.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include <fmt/format.h>

#include "cli/command.h"
#include "cli/inspect_report.h"
#include "core/error.h"
#include "formats/gguf.h"

namespace qforge::cli {
namespace {

struct InspectArgs {
  std::string path;
  bool json = false;
  bool all_metadata = false;
};

bool starts_with_gguf_magic(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  if (!in.read(magic, 4)) return false;
  return std::memcmp(magic, "GGUF", 4) == 0 || std::memcmp(magic, "FUGG", 4) == 0;
}

Json build_report(const std::filesystem::path& path, const InspectOptions& options) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) fail("{}: no such file or directory", path.string());
  if (std::filesystem::is_directory(status)) return safetensors_report(path, options);
  const std::string ext = path.extension().string();
  if (!starts_with_gguf_magic(path) && (ext == ".safetensors" || ext == ".json"))
    return safetensors_report(path, options);
  // Anything else is read as GGUF, whose reader explains what is wrong with the file.
  const GgufReader reader = GgufReader::open(path);
  return gguf_report(reader, options);
}

void run(const InspectArgs& args) {
  InspectOptions options;
  options.all_metadata = args.all_metadata;
  const Json report = build_report(args.path, options);
  if (args.json) {
    fmt::print("{}\n",
               report.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
  } else {
    print_report_text(report, options);
  }
}

void setup(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* cmd = app.add_subcommand(
      "inspect", "Show what a GGUF file, safetensors file or HF checkpoint directory contains");
  cmd->add_option("path", args->path, "GGUF file, .safetensors file, index .json or directory")
      ->required();
  cmd->add_flag("--json", args->json, "Print one JSON object (schema in docs/cli.md)");
  cmd->add_flag("--all-metadata", args->all_metadata,
                "Print arrays and long strings in full instead of summarizing them");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(10, setup);

}  // namespace qforge::cli
