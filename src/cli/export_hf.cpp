// `qforge export-hf IN.gguf OUT_DIR [--dtype bf16|f32] [--max-shard-size BYTES] [--no-tokenizer]
//  [--threads N] [--quiet]`: dequantize a GGUF into a Hugging Face checkpoint directory.
#include <memory>

#include <fmt/format.h>

#include "cli/command.h"
#include "convert/export_hf.h"

namespace qforge::cli {
namespace {

struct ExportArgs {
  ExportHfOptions options;
  bool no_tokenizer = false;
  bool quiet = false;
};

void setup(CLI::App& app) {
  auto args = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export-hf", "Dequantize a GGUF (Llama, Gemma 3, Gemma 4) into a Hugging Face checkpoint "
                   "directory (config, safetensors, tokenizer)");
  cmd->add_option("input", args->options.input, "Input .gguf")->required();
  cmd->add_option("output", args->options.output_dir, "Output directory (new or empty)")->required();
  cmd->add_option("--dtype", args->options.dtype, "Weight dtype: bf16 (default) or f32");
  cmd->add_option("--max-shard-size", args->options.max_shard_bytes,
                  "Split the weights into shards of at most this many bytes (default 4 GiB)");
  cmd->add_option("--threads", args->options.threads, "Worker threads (default: all cores)");
  cmd->add_flag("--no-tokenizer", args->no_tokenizer, "Do not write tokenizer files");
  cmd->add_flag("-q,--quiet", args->quiet, "Do not print the tensor table");
  cmd->callback([args] {
    args->options.tokenizer = !args->no_tokenizer;
    const ExportHfReport report = export_hf(args->options);
    if (!args->quiet) fmt::print("{}", export_report_text(report));
  });
}

}  // namespace

QFORGE_REGISTER_COMMAND(22, setup);

}  // namespace qforge::cli
