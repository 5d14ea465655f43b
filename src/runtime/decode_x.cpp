// The CUDA decode GEMVs' choice of x representation (cuda_device.h, DecodeX); backend-neutral, so
// that builds without CUDA parse and report the option too.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "runtime/cuda_device.h"

namespace qforge::cuda {
namespace {

std::atomic<DecodeX>& choice() {
  static std::atomic<DecodeX> x{[] {
    const char* env = std::getenv("QFORGE_DECODE_X");
    return env != nullptr && std::strcmp(env, "int8") == 0 ? DecodeX::kInt8 : DecodeX::kExact;
  }()};
  return x;
}

}  // namespace

void set_decode_x(DecodeX x) {
  choice().store(x);
}

DecodeX decode_x() {
  return choice().load();
}

const char* decode_x_name(DecodeX x) {
  return x == DecodeX::kInt8 ? "int8" : "exact";
}

DecodeX parse_decode_x(const std::string& name) {
  if (name == "exact") return DecodeX::kExact;
  if (name == "int8") return DecodeX::kInt8;
  fail("unknown decode x representation '{}' (expected exact or int8)", name);
}

}  // namespace qforge::cuda
