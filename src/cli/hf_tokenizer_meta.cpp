// `qforge hf-tokenizer-meta HF_DIR --arch ARCH [--json]` (hidden, for tests and debugging): the
// tokenizer.* GGUF metadata the converter would write for a Hugging Face checkpoint, without
// converting any weights. --json prints every key with its GGUF type and full value (arrays:
// item type and all items), in the order the converter writes them.
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "convert/hf_tokenizer.h"
#include "formats/gguf.h"
#include "formats/hf_checkpoint.h"

namespace qforge::cli {
namespace {

struct Options {
  std::string dir;
  std::string arch;
  bool json = false;
};

nlohmann::json scalar_json(const GgufValue& v) {
  return std::visit(
      [](const auto& x) -> nlohmann::json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::shared_ptr<GgufArray>>) {
          return nullptr;  // nested arrays are not produced here
        } else if constexpr (std::is_same_v<T, float>) {
          return static_cast<double>(x);
        } else {
          return x;
        }
      },
      v.value);
}

nlohmann::json entry_json(const GgufKV& kv) {
  nlohmann::json e;
  e["key"] = kv.key;
  e["type"] = std::string(gguf_value_type_name(kv.value.type()));
  if (kv.value.type() == GgufValueType::ARRAY) {
    const GgufArray& a = kv.value.as_array(kv.key);
    e["item_type"] = std::string(gguf_value_type_name(a.element_type));
    nlohmann::json items = nlohmann::json::array();
    for (const GgufValue& item : a.items) items.push_back(scalar_json(item));
    e["items"] = std::move(items);
  } else {
    e["value"] = scalar_json(kv.value);
  }
  return e;
}

std::string summary(const GgufKV& kv) {
  if (kv.value.type() == GgufValueType::ARRAY) {
    const GgufArray& a = kv.value.as_array(kv.key);
    return fmt::format("[{} x {}]", a.items.size(), gguf_value_type_name(a.element_type));
  }
  std::string text =
      scalar_json(kv.value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

void run(const Options& opts) {
  const HfCheckpoint ckpt = HfCheckpoint::open(opts.dir);
  const std::vector<GgufKV> kvs = tokenizer_metadata(ckpt, opts.arch);
  if (opts.json) {
    nlohmann::json out;
    out["arch"] = opts.arch;
    out["metadata"] = nlohmann::json::array();
    for (const GgufKV& kv : kvs) out["metadata"].push_back(entry_json(kv));
    // Token texts may hold invalid UTF-8 (byte pieces): replaced by U+FFFD as gguf-py does.
    fmt::print("{}\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return;
  }
  for (const GgufKV& kv : kvs)
    fmt::print("{:<40} {:<8} {}\n", kv.key, gguf_value_type_name(kv.value.type()), summary(kv));
}

void setup(CLI::App& app) {
  auto opts = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("hf-tokenizer-meta",
                                 "Print the tokenizer GGUF metadata for a Hugging Face checkpoint");
  cmd->group("");  // hidden from --help: a test and debugging aid
  cmd->add_option("dir", opts->dir, "Hugging Face checkpoint directory")->required();
  cmd->add_option("--arch", opts->arch, "GGUF architecture (llama, gemma3, gemma4, ...)")
      ->required();
  cmd->add_flag("--json", opts->json, "print every key with its type and full value as JSON");
  cmd->callback([opts] { run(*opts); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(950, setup);

}  // namespace qforge::cli
