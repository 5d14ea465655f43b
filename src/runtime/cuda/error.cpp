// Compiled by the host C++ compiler (not nvcc), so it may use qforge::Error's fmt-based header.
#include <string>

#include "core/error.h"

namespace qforge::cuda {

[[noreturn]] void throw_error(const std::string& message) {
  throw Error(message);
}

}  // namespace qforge::cuda
