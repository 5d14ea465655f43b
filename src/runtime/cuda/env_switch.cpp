#include "runtime/cuda/env_switch.h"

#include <cstdlib>
#include <cstring>

namespace qforge::cuda {

bool switch_on(const char* variable) {
  const char* env = std::getenv(variable);
  return env == nullptr || std::strcmp(env, "0") != 0;
}

}  // namespace qforge::cuda
