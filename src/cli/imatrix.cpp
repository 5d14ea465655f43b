// qforge imatrix: per-column mean squared activations entering every weight matrix, collected
// over windows of a calibration text, written in llama.cpp's imatrix GGUF format (eval/imatrix.h).
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/command.h"
#include "core/error.h"
#include "core/parallel.h"
#include "eval/imatrix.h"
#include "eval/windows.h"
#include "formats/gguf.h"
#include "model/model.h"
#include "runtime/cpu/activation_observer.h"
#include "tokenizer/tokenizer.h"

namespace qforge::cli {
namespace {

struct ImatrixArgs {
  std::string model;
  std::string text;
  std::string output;
  int ctx = 512;
  int batch = 512;
  int chunks = 0;
  int threads = 0;
  std::string kv_type = "f32";
  bool process_output = false;
};

void run(const ImatrixArgs& a) {
  if (a.threads > 0) set_thread_count(a.threads);
  const KvType kv_type = parse_kv_type(a.kv_type);
  std::unique_ptr<Model> model = load_model(a.model);  // CPU: the observer hook lives there
  const Tokenizer tokenizer = Tokenizer::from_gguf(GgufReader::open(a.model));
  const std::string text = read_text_file(a.text);
  const std::vector<std::int32_t> tokens = tokenize_eval_text(tokenizer, text);
  const WindowPlan plan = plan_windows(tokens.size(), a.ctx, a.chunks, a.text);
  const std::int32_t bos = window_bos(tokenizer.vocab());
  fmt::print(stderr, "{}: {} tokens; {} chunks of {} tokens\n", a.text, tokens.size(),
             plan.n_chunks, plan.n_ctx);

  ImatrixCollector collector(a.process_output);
  const cpu::ScopedActivationObserver installed(collector);
  auto cache = model->new_cache(plan.n_ctx, kv_type);
  const auto start = std::chrono::steady_clock::now();
  for (int chunk = 0; chunk < plan.n_chunks; ++chunk) {
    const std::vector<std::int32_t> input = window_input(tokens, plan, chunk, bos);
    // The output head sees every row only when all logits are requested.
    run_window(*model, *cache, input, a.batch, a.process_output ? 0 : plan.n_ctx,
               [](int, std::span<const float>, std::size_t) {});
    if (collector.calls() == 0) {
      fail(
          "{}: the CPU engine reported no matrix inputs: this build does not call "
          "cpu::notify_matmul_input (src/runtime/cpu/activation_observer.h)",
          a.model);
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "[{}/{}] {:.1f} s\n", chunk + 1, plan.n_chunks, seconds);
  }
  ImatrixMetadata meta;
  meta.datasets = {a.text};
  meta.chunk_count = static_cast<std::uint32_t>(plan.n_chunks);
  meta.chunk_size = static_cast<std::uint32_t>(plan.n_ctx);
  write_imatrix_gguf(a.output, collector.entries(), meta);
  fmt::print(stderr, "wrote {} entries ({} chunks of {} tokens) to {}\n",
             collector.entries().size(), plan.n_chunks, plan.n_ctx, a.output);
}

void setup(CLI::App& app) {
  auto args = std::make_shared<ImatrixArgs>();
  CLI::App* cmd = app.add_subcommand(
      "imatrix", "Collect an importance matrix (llama.cpp imatrix GGUF) over a calibration text");
  cmd->add_option("-m,--model", args->model, "GGUF model")->required();
  cmd->add_option("-f,--file", args->text, "Calibration text file")->required();
  cmd->add_option("-o,--output", args->output, "Output imatrix .gguf")->required();
  cmd->add_option("--ctx", args->ctx, "Chunk length in tokens")->capture_default_str();
  cmd->add_option("--batch", args->batch, "Tokens per forward pass")->capture_default_str();
  cmd->add_option("--chunks", args->chunks, "Use at most this many chunks (0: all)")
      ->capture_default_str();
  cmd->add_option("-t,--threads", args->threads, "CPU threads (default: all cores)");
  cmd->add_option("--kv-type", args->kv_type, "KV cache type: f32, bf16 or q8_0")
      ->capture_default_str();
  cmd->add_flag("--process-output", args->process_output,
                "Also collect the output head's input (llama.cpp --process-output)");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(56, setup);

}  // namespace qforge::cli
