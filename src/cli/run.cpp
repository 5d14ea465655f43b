// qforge run: generate text from a prompt, streaming it to stdout; speeds go to stderr.
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/command.h"
#include "cli/decode_x_option.h"
#include "core/error.h"
#include "core/parallel.h"
#include "formats/gguf.h"
#include "model/generate.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qforge::cli {
namespace {

struct RunArgs {
  std::string model;
  std::string prompt;
  int n_predict = 128;
  float temperature = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int repeat_last_n = 64;
  std::int64_t seed = -1;
  int ctx = 0;
  int threads = 0;
  std::string kv_type = "bf16";
  std::string device = "cpu";
  std::string decode_x;  // CUDA decode GEMVs' x: exact or int8 (empty: QFORGE_DECODE_X or exact)
  std::vector<std::string> stop;
  bool ignore_eos = false;
};

double per_second(double count, double seconds) { return seconds > 0 ? count / seconds : 0.0; }

void run(const RunArgs& args) {
  LoadOptions load;
  load.device = parse_device(args.device);
  const KvType kv_type = parse_kv_type(args.kv_type);
  if (args.threads > 0) set_thread_count(args.threads);
  if (args.n_predict < 0) fail("-n must be >= 0");
  apply_decode_x(args.decode_x, load.device);

  std::unique_ptr<Model> model = load_model(args.model, load);
  const Tokenizer tokenizer = Tokenizer::from_gguf(GgufReader::open(args.model));
  const ModelConfig& config = model->config();

  std::vector<std::int32_t> prompt = tokenizer.encode(args.prompt, /*add_special=*/true,
                                                      /*parse_special=*/true);
  if (prompt.empty()) {
    // Nothing to condition on: start from BOS like a fresh document.
    const std::int32_t bos = tokenizer.vocab().bos_id >= 0 ? tokenizer.vocab().bos_id : config.bos_token;
    if (bos < 0) fail("{}: the prompt is empty and the vocabulary has no BOS token", args.model);
    prompt.push_back(bos);
  }

  int n_ctx = args.ctx;
  if (n_ctx <= 0) n_ctx = config.n_ctx_train > 0 ? std::min(config.n_ctx_train, 4096) : 4096;
  if (static_cast<int>(prompt.size()) > n_ctx) {
    fail("the prompt has {} tokens but the context holds {} (use a larger --ctx)", prompt.size(),
         n_ctx);
  }
  auto cache = model->new_cache(n_ctx, kv_type);

  GenerateOptions options;
  options.max_tokens = args.n_predict;
  options.stop = args.stop;
  options.stop_at_eog = !args.ignore_eos;
  options.sampling.temperature = args.temperature;
  options.sampling.top_k = args.top_k;
  options.sampling.top_p = args.top_p;
  options.sampling.min_p = args.min_p;
  options.sampling.repeat_penalty = args.repeat_penalty;
  options.sampling.presence_penalty = args.presence_penalty;
  options.sampling.frequency_penalty = args.frequency_penalty;
  options.sampling.penalty_last_n = args.repeat_last_n;
  options.sampling.seed =
      args.seed >= 0 ? static_cast<std::uint64_t>(args.seed) : std::random_device{}();

  const int room = n_ctx - static_cast<int>(prompt.size());
  if (options.max_tokens > room + 1) {
    // The last sampled token needs no forward pass, hence room + 1 tokens fit.
    fail("-n {} does not fit: the context of {} tokens has room for {} after the {}-token prompt "
         "(use a larger --ctx)",
         options.max_tokens, n_ctx, room + 1, prompt.size());
  }

  bool ends_with_newline = true;
  const GenerateResult result =
      generate(*model, *cache, tokenizer, prompt, options, [&](std::string_view text) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
        ends_with_newline = text.back() == '\n';
      });
  if (!ends_with_newline) std::fputs("\n", stdout);
  std::fflush(stdout);

  fmt::print(stderr, "\nprompt: {} tokens in {:.3f} s, {:.2f} tokens/s\n", result.n_prompt,
             result.prompt_seconds, per_second(result.n_prompt, result.prompt_seconds));
  fmt::print(stderr, "generation: {} tokens, {} decode steps in {:.3f} s, {:.2f} tokens/s\n",
             result.tokens.size(), result.decode_steps, result.generation_seconds,
             per_second(result.decode_steps, result.generation_seconds));
  fmt::print(stderr, "stop: {}; seed {}; threads {}; kv {}; ctx {}\n", result.stop_reason,
             options.sampling.seed, thread_count(), kv_type_name(kv_type), n_ctx);
}

void setup(CLI::App& app) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand("run", "Generate text with a GGUF model");
  cmd->add_option("-m,--model", args->model, "GGUF model file")->required();
  cmd->add_option("-p,--prompt", args->prompt, "Prompt text (empty: start from BOS)");
  cmd->add_option("-n,--n-predict", args->n_predict, "Tokens to generate at most")
      ->capture_default_str();
  cmd->add_option("--temp", args->temperature, "Temperature (<= 0: greedy)")->capture_default_str();
  cmd->add_option("--top-k", args->top_k, "Top-k (0: off)")->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "Top-p (1: off)")->capture_default_str();
  cmd->add_option("--min-p", args->min_p, "Min-p (0: off)")->capture_default_str();
  cmd->add_option("--repeat-penalty", args->repeat_penalty, "Repetition penalty (1: off)")
      ->capture_default_str();
  cmd->add_option("--presence-penalty", args->presence_penalty, "Presence penalty (0: off)")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", args->frequency_penalty, "Frequency penalty (0: off)")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", args->repeat_last_n,
                  "Recent tokens the penalties look at (-1: all)")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "Sampling seed (default: random, printed on stderr)");
  cmd->add_option("--ctx", args->ctx, "Context size in tokens (default: min(train ctx, 4096))");
  cmd->add_option("-t,--threads", args->threads, "CPU threads (default: all cores)");
  cmd->add_option("--kv-type", args->kv_type, "KV cache type: bf16, f32 or q8_0")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  add_decode_x_option(cmd, args->decode_x);
  cmd->add_option("--stop", args->stop, "Stop string (repeatable); not printed");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Keep generating after end-of-generation tokens");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(40, setup);

}  // namespace qforge::cli
