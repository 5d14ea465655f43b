// qforge logits: run token ids (or a tokenized prompt) through the model and save the logits as
// a float32 .npy array [n_tokens, n_vocab] (or [1, n_vocab] for the last token only), the
// format oracle tests compare against reference implementations.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/command.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/parallel.h"
#include "formats/gguf.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qforge::cli {
namespace {

struct LogitsArgs {
  std::string model;
  std::string tokens;
  std::string prompt;
  bool prompt_given = false;
  std::string output;
  bool all = false;
  int threads = 0;
  std::string kv_type = "f32";
  std::string device = "cpu";
};

std::vector<std::int32_t> parse_token_list(const std::string& text) {
  std::vector<std::int32_t> ids;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const std::size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || end != item.c_str() + item.size() || v < 0 || v > INT32_MAX) {
      fail("--tokens: '{}' (item {}) is not a token id", item, ids.size());
    }
    ids.push_back(static_cast<std::int32_t>(v));
    pos = comma + 1;
  }
  return ids;
}

// .npy version 1.0: magic, version, little-endian u16 header length, a Python dict literal
// padded with spaces and a final newline so the data starts on a 64-byte boundary.
void write_npy(const std::string& path, std::span<const float> data, std::size_t rows,
               std::size_t cols) {
  std::string header =
      fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", rows, cols);
  const std::size_t prefix = 10;  // magic (6) + version (2) + header length (2)
  const std::size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header.push_back('\n');
  if (header.size() > 0xFFFF) fail("{}: npy header too long", path);
  std::string head = "\x93NUMPY";
  head.push_back('\x01');
  head.push_back('\x00');
  head.push_back(static_cast<char>(header.size() & 0xFF));
  head.push_back(static_cast<char>(header.size() >> 8));
  head += header;
  AtomicFile out(path);
  out.write(std::as_bytes(std::span(head)));
  out.write(std::as_bytes(data));  // x86-64 and aarch64 are little-endian, as '<f4' says
  out.commit();
}

void run(const LogitsArgs& args) {
  LoadOptions load;
  load.device = parse_device(args.device);
  const KvType kv_type = parse_kv_type(args.kv_type);
  if (args.threads > 0) set_thread_count(args.threads);
  if (args.tokens.empty() == !args.prompt_given) fail("give exactly one of --tokens or --prompt");

  std::unique_ptr<Model> model = load_model(args.model, load);
  std::vector<std::int32_t> tokens;
  if (!args.tokens.empty()) {
    tokens = parse_token_list(args.tokens);
  } else {
    const Tokenizer tokenizer = Tokenizer::from_gguf(GgufReader::open(args.model));
    tokens = tokenizer.encode(args.prompt, /*add_special=*/true, /*parse_special=*/true);
    if (tokens.empty()) fail("--prompt produced no tokens");
  }
  auto cache = model->new_cache(static_cast<int>(tokens.size()), kv_type);
  const std::vector<float> logits = model->forward(tokens, 0, *cache, {.all_logits = args.all});
  const auto n_vocab = static_cast<std::size_t>(model->config().n_vocab);
  write_npy(args.output, logits, logits.size() / n_vocab, n_vocab);
  fmt::print(stderr, "wrote {} x {} logits to {}\n", logits.size() / n_vocab, n_vocab, args.output);
}

void setup(CLI::App& app) {
  auto args = std::make_shared<LogitsArgs>();
  CLI::App* cmd = app.add_subcommand(
      "logits", "Save the logits of a token sequence as a float32 .npy array [n, n_vocab]");
  cmd->add_option("-m,--model", args->model, "GGUF model file")->required();
  cmd->add_option("--tokens", args->tokens, "Comma-separated token ids, e.g. 2,651,6037");
  cmd->add_option("-p,--prompt", args->prompt, "Text to tokenize instead (BOS added as the vocab says)")
      ->each([args](const std::string&) { args->prompt_given = true; });
  cmd->add_option("-o,--output", args->output, "Output .npy file")->required();
  cmd->add_flag("--all", args->all, "Logits for every token (default: the last token only)");
  cmd->add_option("-t,--threads", args->threads, "CPU threads (default: all cores)");
  cmd->add_option("--kv-type", args->kv_type, "KV cache type: f32, bf16 or q8_0")
      ->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(45, setup);

}  // namespace qforge::cli
