// qforge: the thin command-line front end over libqforge.
#include <algorithm>
#include <cstdio>
#include <exception>

#include <fmt/format.h>

#include "cli/command.h"
#include "core/error.h"

namespace qforge::cli {

std::vector<CommandSpec>& command_registry() {
  static std::vector<CommandSpec> registry;
  return registry;
}

}  // namespace qforge::cli

int main(int argc, char** argv) {
  CLI::App app{"qforge: convert, quantize, run and measure 4-bit language models", "qforge"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "qforge 0.1.0");
  auto& registry = qforge::cli::command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const auto& a, const auto& b) { return a.order < b.order; });
  for (const auto& spec : registry) spec.setup(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const qforge::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "qforge: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "qforge: internal error: {}\n", e.what());
    return 2;
  }
  return 0;
}
