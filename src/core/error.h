// Errors that reach the user. Every failure the tool can explain (bad input, missing file, a tensor
// that does not fit) is a qforge::Error with a message naming the file, the field and the offset.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace qforge {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace qforge
