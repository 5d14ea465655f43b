// `qforge quantize IN.gguf OUT.gguf --type T [--imatrix F] [--qat auto|off]
//  [--override REGEX=TYPE ...] [--report R.json] [--threads N] [--progress] [--quiet]`
#include <memory>

#include <fmt/format.h>

#include "cli/command.h"
#include "cli/report_output.h"
#include "convert/export_quantize.h"
#include "convert/type_policy.h"
#include "core/error.h"

namespace qforge::cli {
namespace {

struct QuantizeArgs {
  QuantizeOptions options;
  std::string qat = "auto";
  std::string report;
  bool quiet = false;
};

void run(QuantizeArgs& args) {
  args.options.qat = parse_qat(args.qat);
  check_report_path(args.report);
  const ConvertReport report = quantize_gguf(args.options);
  emit_report(report, args.report, args.quiet);
}

void setup(CLI::App& app) {
  auto args = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "quantize", "Requantize a GGUF to another type (same type policy as convert; QAT lattices "
                  "written exactly, same-type tensors copied)");
  cmd->add_option("input", args->options.input, "Input .gguf")->required();
  cmd->add_option("output", args->options.output, "Output .gguf")->required();
  cmd->add_option("--type", args->options.type,
                  "Output type (as convert --type: q8_0, q4_0, q4_k_m, bf16, ...)")
      ->required();
  cmd->add_option("--imatrix", args->options.imatrix, "llama.cpp imatrix GGUF (llama-imatrix output)");
  cmd->add_option("--qat", args->qat, "auto: write QAT lattice tensors exactly (default); off: never");
  cmd->add_option("--override", args->options.overrides,
                  "PATTERN=TYPE: tensors whose name matches the regex get TYPE (repeatable)");
  cmd->add_option("--report", args->report, "Write a JSON report of every tensor here");
  cmd->add_option("--threads", args->options.threads, "Worker threads (default: all cores)");
  cmd->add_flag("--progress", args->options.progress, "Progress line on stderr even when not a TTY");
  cmd->add_flag("-q,--quiet", args->quiet, "Do not print the tensor table");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(21, setup);

}  // namespace qforge::cli
