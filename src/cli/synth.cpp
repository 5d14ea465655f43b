// `qforge synth --arch ARCH --config CONFIG.json -o OUT.gguf --type T [--seed S] [--head-type T]
// [--embd-type T]`: a random-weight GGUF with the tensor names, shapes, types and metadata of the
// real model (as llama.cpp's converter + llama-quantize would write it), for speed measurements
// at full size without the real weights. See docs/synth.md.
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>

#include <fmt/format.h>

#include "cli/command.h"
#include "convert/type_policy.h"
#include "core/error.h"
#include "model/synth.h"

namespace qforge::cli {
namespace {

struct SynthArgs {
  std::string arch;
  std::string config;
  std::string output;
  std::string type;
  std::optional<std::string> head_type;
  std::optional<std::string> embd_type;
  std::optional<std::string> name;
  std::uint64_t seed = 1;
  bool dry_run = false;
  bool quiet = false;
};

GgmlType parse_type(const std::string& option, const std::string& name) {
  const auto t = ggml_type_from_name(name);
  if (!t)
    fail("{} {}: unknown tensor type (expected a ggml type name such as Q4_0, Q6_K)", option, name);
  return *t;
}

// general.name: the config's "_name", else its directory name for ".../config.json", else the
// file stem.
std::string default_name(const synth::SynthConfig& cfg, const std::filesystem::path& path) {
  if (auto it = cfg.json.find("_name"); it != cfg.json.end() && it->is_string())
    return it->get<std::string>();
  const std::filesystem::path abs = std::filesystem::absolute(path);
  if (abs.filename() == "config.json" && abs.has_parent_path())
    return abs.parent_path().filename().string();
  return abs.stem().string();
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

void print_summary(const synth::SynthPlan& plan) {
  std::map<std::string, std::pair<std::size_t, std::uint64_t>> by_type;
  for (const auto& t : plan.tensors) {
    auto& [count, bytes] = by_type[std::string(type_name(t.type))];
    ++count;
    bytes += t.n_bytes();
  }
  fmt::print("{} tensors, {} metadata keys, {:.2f} GiB of tensor data\n", plan.tensors.size(),
             plan.kvs.size(), static_cast<double>(plan.total_bytes()) / kGiB);
  for (const auto& [type, cb] : by_type)
    fmt::print("  {:<6} {:>5} tensors {:>10.3f} GiB\n", type, cb.first,
               static_cast<double>(cb.second) / kGiB);
  for (const auto& note : plan.notes) fmt::print("  note: {}\n", note);
}

void run(const SynthArgs& args) {
  const auto arch = synth::parse_synth_arch(args.arch);
  if (!arch) fail("--arch {}: unknown architecture (expected llama, gemma3 or gemma4)", args.arch);
  synth::SynthTypeOptions types;
  // The presets (q4_k_m, q4_k_s, q5_k_m) as convert and quantize read them; else one type.
  std::string lower = args.type;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "q4_k_m" || lower == "q4_k_s" || lower == "q5_k_m") {
    const TypeRequest request = parse_type_request(lower);
    types.type = request.base;
    types.preset = request.preset;
    types.file_type = request.file_type;
  } else {
    types.type = parse_type("--type", args.type);
  }
  if (args.head_type) types.head_type = parse_type("--head-type", *args.head_type);
  if (args.embd_type) types.embd_type = parse_type("--embd-type", *args.embd_type);

  const synth::SynthConfig cfg = synth::read_synth_config(args.config);
  const std::string name = args.name.value_or(default_name(cfg, args.config));
  const synth::SynthPlan plan = synth::plan_synth_model(*arch, cfg, types, name);
  print_summary(plan);
  if (args.dry_run) return;

  const bool tty = isatty(fileno(stderr)) != 0;
  double last = -1.0;
  synth::SynthProgressFn progress;
  if (!args.quiet) {
    progress = [&](const synth::SynthProgress& p) {
      const bool done = p.tensors_done == p.tensors_total;
      if (!done && p.seconds - last < (tty ? 0.25 : 5.0)) return;
      last = p.seconds;
      fmt::print(stderr, "{}synth: {}/{} tensors, {:.2f}/{:.2f} GiB, {:.2f} GB/s{}",
                 tty ? "\r" : "", p.tensors_done, p.tensors_total,
                 static_cast<double>(p.bytes_done) / kGiB,
                 static_cast<double>(p.bytes_total) / kGiB,
                 p.seconds > 0 ? static_cast<double>(p.bytes_done) / p.seconds / 1e9 : 0.0,
                 tty && !done ? "" : "\n");
      std::fflush(stderr);
    };
  }
  const auto start = std::chrono::steady_clock::now();
  synth::write_synth_model(plan, args.output, args.seed, progress);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("wrote {} in {:.1f} s ({:.2f} GB/s)\n", args.output, seconds,
             seconds > 0 ? static_cast<double>(plan.total_bytes()) / seconds / 1e9 : 0.0);
}

void setup(CLI::App& app) {
  auto args = std::make_shared<SynthArgs>();
  CLI::App* cmd = app.add_subcommand(
      "synth", "Write a random-weight GGUF shaped like a real model (for speed measurements)");
  cmd->add_option("--arch", args->arch, "Architecture: llama, gemma3, gemma4")->required();
  cmd->add_option("--config", args->config, "Hugging Face config.json of the model")->required();
  cmd->add_option("-o,--output", args->output, "GGUF file to write")->required();
  cmd->add_option("--type", args->type,
                  "Type of the projection matrices (Q4_0, Q8_0, Q4_K, BF16 ...), or a "
                  "llama-quantize preset: Q4_K_M, Q4_K_S, Q5_K_M")
      ->required();
  cmd->add_option("--head-type", args->head_type,
                  "LM head type (and tied token embeddings); default as llama-quantize: Q6_K");
  cmd->add_option("--embd-type", args->embd_type, "Untied token embedding type; default --type");
  cmd->add_option("--seed", args->seed, "Random seed (same seed, same bytes)");
  cmd->add_option("--name", args->name, "general.name (default: the config's directory name)");
  cmd->add_flag("--dry-run", args->dry_run, "Print the plan (types, sizes) without writing");
  cmd->add_flag("-q,--quiet", args->quiet, "No progress on stderr");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(70, setup);

}  // namespace qforge::cli
