// `qforge quantize IN.gguf OUT.gguf --type T [--imatrix F] [--qat auto|off]
//  [--override REGEX=TYPE ...] [--report R.json] [--threads N] [--progress] [--quiet]`
// `qforge quantize IN.gguf OUT.gguf --recipe dynamic --target-bpw X [--imatrix F]
//  [--ref REF.gguf] [-f TEXT [--calib-ctx N] [--calib-chunks N] [--validate N]]`
#include <unistd.h>

#include <cstdio>
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
  std::string recipe;
  DynamicRecipeOptions dynamic;
  std::string qat = "auto";
  std::string report;
  bool quiet = false;
};

void run(QuantizeArgs& args) {
  args.options.qat = parse_qat(args.qat);
  check_report_path(args.report);
  if (args.recipe == "dynamic") {
    if (!(args.dynamic.target_bpw > 0)) fail("--recipe dynamic needs --target-bpw (e.g. 4.8)");
    if (!args.dynamic.ref.empty() && args.dynamic.text.empty())
      fail("--ref needs a calibration text (-f): the reference is only used to measure KLD");
    args.dynamic.qat = args.options.qat;
    const bool progress = args.options.progress || ::isatty(STDERR_FILENO) == 1;
    args.dynamic.progress = [progress](const std::string& line) {
      if (!progress) return;
      fmt::print(stderr, "\r\x1b[2Kdynamic recipe: {}", line);
      std::fflush(stderr);
    };
    args.options.dynamic = args.dynamic;
  } else if (!args.recipe.empty()) {
    fail("--recipe '{}': the only recipe is 'dynamic'", args.recipe);
  } else if (args.options.type.empty()) {
    fail("--type is required (or --recipe dynamic --target-bpw X)");
  }
  const ConvertReport report = quantize_gguf(args.options);
  emit_report(report, args.report, args.quiet);
}

void setup(CLI::App& app) {
  auto args = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "Requantize a GGUF to another type (same type policy as convert; QAT lattices "
      "written exactly, same-type tensors copied)");
  cmd->add_option("input", args->options.input, "Input .gguf")->required();
  cmd->add_option("output", args->options.output, "Output .gguf")->required();
  cmd->add_option("--type", args->options.type,
                  "Output type (as convert --type: q8_0, q4_0, q4_k_m, bf16, ...)");
  cmd->add_option("--recipe", args->recipe,
                  "dynamic: choose a type per tensor under --target-bpw from measured sensitivity");
  cmd->add_option("--target-bpw", args->dynamic.target_bpw,
                  "Size budget of --recipe dynamic in bits per weight (all tensors)");
  cmd->add_option("-f,--file", args->dynamic.text,
                  "Calibration text for --recipe dynamic (measures each tensor's KLD; without it "
                  "the imatrix-weighted error alone decides)");
  cmd->add_option("--ref", args->dynamic.ref,
                  "Reference model for the KLD measurements (default: the input)");
  cmd->add_option("--calib-ctx", args->dynamic.n_ctx, "Calibration window length (default 256)");
  cmd->add_option("--calib-chunks", args->dynamic.chunks, "Calibration windows (default 2)");
  cmd->add_option("--validate", args->dynamic.validate,
                  "Re-measure this many tensors at a second type to check the error proxy");
  cmd->add_option("--imatrix", args->options.imatrix,
                  "llama.cpp imatrix GGUF (llama-imatrix output)");
  cmd->add_option("--qat", args->qat,
                  "auto: write QAT lattice tensors exactly (default); off: never");
  cmd->add_option("--override", args->options.overrides,
                  "PATTERN=TYPE: tensors whose name matches the regex get TYPE (repeatable)");
  cmd->add_option("--report", args->report, "Write a JSON report of every tensor here");
  cmd->add_option("--threads", args->options.threads, "Worker threads (default: all cores)");
  cmd->add_flag("--progress", args->options.progress,
                "Progress line on stderr even when not a TTY");
  cmd->add_flag("-q,--quiet", args->quiet, "Do not print the tensor table");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(21, setup);

}  // namespace qforge::cli
