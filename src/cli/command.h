// Subcommands register themselves: each src/cli/<name>.cpp defines a setup function that adds its
// CLI::App subcommand and a callback, and a static QFORGE_REGISTER_COMMAND line. main() builds the
// app from the registry, so adding a command touches no other file.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace qforge::cli {

struct CommandSpec {
  int order;  // position in --help
  std::function<void(CLI::App&)> setup;
};

std::vector<CommandSpec>& command_registry();

struct CommandRegistration {
  CommandRegistration(int order, std::function<void(CLI::App&)> setup) {
    command_registry().push_back({order, std::move(setup)});
  }
};

}  // namespace qforge::cli

#define QFORGE_CONCAT_INNER(a, b) a##b
#define QFORGE_CONCAT(a, b) QFORGE_CONCAT_INNER(a, b)
#define QFORGE_REGISTER_COMMAND(order, fn) \
  static const ::qforge::cli::CommandRegistration QFORGE_CONCAT(qforge_command_, __LINE__)(order, fn)
