// `qforge convert HF_DIR -o OUT.gguf --type T [--qat auto|off] [--report R.json]
//  [--override PATTERN=TYPE ...] [--threads N] [--progress] [--no-tokenizer] [--quiet]`
#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "cli/command.h"
#include "cli/report_output.h"
#include "convert/converter.h"
#include "convert/type_policy.h"
#include "core/error.h"

namespace qforge::cli {
namespace {

struct ConvertArgs {
  ConvertOptions options;
  std::string qat = "auto";
  std::string report;
  bool quiet = false;
  bool no_tokenizer = false;
};

void run(ConvertArgs& args) {
  args.options.qat = parse_qat(args.qat);
  args.options.tokenizer = !args.no_tokenizer;
  check_report_path(args.report);
  const ConvertReport report = convert_checkpoint(args.options);
  emit_report(report, args.report, args.quiet);
}

void setup(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "Convert a Hugging Face checkpoint (Llama, Gemma 3, Gemma 4) to GGUF, recovering "
      "QAT 4-bit lattices exactly");
  cmd->add_option("input", args->options.input, "HF checkpoint directory")->required();
  cmd->add_option("-o,--output", args->options.output, "Output .gguf file")->required();
  cmd->add_option(
      "--type", args->options.type,
      fmt::format("Output type: {} (default bf16)", fmt::join(supported_type_names(), ", ")));
  cmd->add_option("--qat", args->qat,
                  "auto: write tensors found on a QAT lattice exactly (default); off: never");
  cmd->add_option("--report", args->report, "Write a JSON report of every tensor here");
  cmd->add_option("--override", args->options.overrides,
                  "PATTERN=TYPE: tensors whose GGUF name matches the regex get TYPE (repeatable)");
  cmd->add_option("--threads", args->options.threads, "Worker threads (default: all cores)");
  cmd->add_flag("--progress", args->options.progress,
                "Progress line on stderr even when not a TTY");
  cmd->add_flag("--no-tokenizer", args->no_tokenizer, "Do not write tokenizer.ggml.* metadata");
  cmd->add_flag("-q,--quiet", args->quiet, "Do not print the tensor table");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(20, setup);

}  // namespace qforge::cli
