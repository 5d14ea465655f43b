// `qforge tokenize -m MODEL.gguf (-p TEXT | -f FILE) [--ids-only] [--no-bos] [--no-parse-special]`
// prints the token ids (and pieces) of a text; `--detokenize ID,ID,...` prints the text of ids;
// `--separator SEP` tokenizes each SEP-terminated string of the input separately.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/command.h"
#include "core/error.h"
#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"

namespace qforge::cli {
namespace {

struct TokenizeArgs {
  std::string model;
  std::optional<std::string> prompt;
  std::string file;
  std::string detokenize;
  std::string separator;
  bool ids_only = false;
  bool no_bos = false;
  bool no_parse_special = false;
  bool render_special = false;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: read error", path);
  return text;
}

std::vector<std::int32_t> parse_ids(const std::string& list) {
  std::vector<std::int32_t> ids;
  std::size_t pos = 0;
  while (pos <= list.size()) {
    std::size_t end = list.find_first_of(", ", pos);
    if (end == std::string::npos) end = list.size();
    const std::string item = list.substr(pos, end - pos);
    if (!item.empty()) {
      std::size_t used = 0;
      long long value = 0;
      try {
        value = std::stoll(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != item.size() || value < INT32_MIN || value > INT32_MAX)
        fail("--detokenize: '{}' is not a token id", item);
      ids.push_back(static_cast<std::int32_t>(value));
    }
    pos = end + 1;
  }
  return ids;
}

// Pieces may hold control characters or partial UTF-8; print them escaped and quoted.
std::string printable(const std::string& piece) {
  std::string out;
  for (const char c : piece) {
    const auto b = static_cast<unsigned char>(c);
    if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\\')
      out += "\\\\";
    else if (c == '\'')
      out += "\\'";
    else if (b < 0x20 || b == 0x7F)
      out += fmt::format("\\x{:02x}", b);
    else
      out.push_back(c);
  }
  return "'" + out + "'";
}

void run(const TokenizeArgs& args) {
  const GgufReader reader = GgufReader::open(args.model);
  const Tokenizer tokenizer = Tokenizer::from_gguf(reader);
  if (!args.detokenize.empty()) {
    const std::string text = tokenizer.decode(parse_ids(args.detokenize), args.render_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    return;
  }
  if (args.prompt.has_value() == !args.file.empty())
    fail("tokenize: give exactly one of -p TEXT, -f FILE or --detokenize IDS");
  const std::string text = args.prompt.has_value() ? *args.prompt : read_file(args.file);
  if (!args.separator.empty()) {
    // Batch mode (llama.cpp's test-vector layout): every string is followed by the separator.
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t end = text.find(args.separator, pos);
      if (end == std::string::npos) end = text.size();
      const auto ids = tokenizer.encode(std::string_view(text).substr(pos, end - pos), !args.no_bos,
                                        !args.no_parse_special);
      fmt::print("{}\n", fmt::join(ids, " "));
      pos = end + args.separator.size();
    }
    return;
  }
  const std::vector<std::int32_t> ids =
      tokenizer.encode(text, !args.no_bos, !args.no_parse_special);
  if (args.ids_only) {
    fmt::print("{}\n", fmt::join(ids, " "));
    return;
  }
  for (const std::int32_t id : ids) fmt::print("{:>8} {}\n", id, printable(tokenizer.piece(id)));
  fmt::print("{} tokens\n", ids.size());
}

void setup(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Turn text into token ids (or ids into text)");
  cmd->add_option("-m,--model", args->model, "GGUF file whose vocabulary to use")->required();
  cmd->add_option("-p,--prompt", args->prompt, "Text to tokenize");
  cmd->add_option("-f,--file", args->file, "Read the text to tokenize from a file (bytes as-is)");
  cmd->add_option("--detokenize", args->detokenize, "Comma-separated token ids to turn into text");
  cmd->add_option("--separator", args->separator,
                  "Tokenize each separator-terminated string of the input on its own; one line "
                  "of ids per string");
  cmd->add_flag("--ids-only", args->ids_only, "Print only the ids, space-separated, on one line");
  cmd->add_flag("--no-bos", args->no_bos,
                "Do not add BOS/EOS even if the vocabulary asks for them");
  cmd->add_flag("--no-parse-special", args->no_parse_special,
                "Treat control-token texts such as <bos> as plain text");
  cmd->add_flag("--render-special", args->render_special,
                "With --detokenize: print control tokens' texts instead of dropping them");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(60, setup);

}  // namespace qforge::cli
