// qforge st-rewrite IN [OUT] [--list-json]: reads a safetensors file, index or checkpoint
// directory through SafetensorsModel and writes every tensor (sorted by name) into one new
// safetensors file, merging the shards' metadata. --list-json prints what was read (names, dtypes,
// shapes and where each tensor's bytes are) so tests can compare it with another reader.
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/error.h"
#include "formats/safetensors.h"

namespace qforge::cli {
namespace {

struct StRewriteOptions {
  std::string input;
  std::string output;
  bool list_json = false;
};

nlohmann::json listing(const SafetensorsModel& model) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : model.files()) {
    files.push_back({{"path", f->path()}, {"metadata", f->metadata()}});
  }
  nlohmann::json tensors = nlohmann::json::array();
  for (const StTensor* t : model.tensors()) {
    tensors.push_back({{"name", t->name},
                       {"dtype", st_dtype_name(t->dtype)},
                       {"shape", t->shape},
                       {"file", t->file},
                       {"data_offset", t->data_offset},
                       {"nbytes", t->data.size()}});
  }
  return {{"files", files}, {"tensors", tensors}};
}

void rewrite(const SafetensorsModel& model, const std::string& output) {
  SafetensorsWriter writer(output);
  std::map<std::string, std::string> metadata;
  for (const auto& f : model.files()) {
    for (const auto& [k, v] : f->metadata()) metadata.emplace(k, v);  // first shard wins
  }
  for (const auto& [k, v] : metadata) writer.set_metadata(k, v);
  for (const StTensor* t : model.tensors()) writer.add_tensor(t->name, t->dtype, t->shape);
  for (const StTensor* t : model.tensors()) {
    writer.write_tensor_data(t->data);
    // Drop the pages just copied so a multi-GB rewrite keeps a small resident set.
    for (const auto& f : model.files()) {
      if (f->path() == t->file) f->mapping().release(t->data_offset, t->data.size());
    }
  }
  writer.finish();
}

void run(const StRewriteOptions& opts) {
  const SafetensorsModel model = SafetensorsModel::open(opts.input);
  if (opts.list_json) fmt::print("{}\n", listing(model).dump(1));
  if (!opts.output.empty()) rewrite(model, opts.output);
  if (!opts.list_json && opts.output.empty())
    fail("st-rewrite: give an output file, --list-json, or both");
}

void setup(CLI::App& app) {
  auto opts = std::make_shared<StRewriteOptions>();
  auto* cmd = app.add_subcommand(
      "st-rewrite", "Copy all tensors of a safetensors file or sharded checkpoint into one file");
  cmd->add_option("input", opts->input, "safetensors file, index .json, or checkpoint directory")
      ->required();
  cmd->add_option("output", opts->output, "safetensors file to write");
  cmd->add_flag("--list-json", opts->list_json,
                "print the tensors read (name, dtype, shape, file, data_offset, nbytes) as JSON");
  cmd->callback([opts] { run(*opts); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(900, setup);

}  // namespace qforge::cli
