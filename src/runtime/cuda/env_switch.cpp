#include "runtime/cuda/env_switch.h"

#include <cstdlib>
#include <cstring>

namespace qforge::cuda {

bool switch_on(const char* variable) {
  const char* env = std::getenv(variable);
  return env == nullptr || std::strcmp(env, "0") != 0;
}

long env_number(const char* variable, long fallback) {
  const char* env = std::getenv(variable);
  return env == nullptr ? fallback : std::strtol(env, nullptr, 10);
}

}  // namespace qforge::cuda
