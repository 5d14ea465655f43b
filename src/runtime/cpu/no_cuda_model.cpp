// make_cuda_model in a build without the CUDA backend.
#ifndef QFORGE_HAVE_CUDA
#include "core/error.h"
#include "runtime/cuda_model.h"

namespace qforge {

std::unique_ptr<Model> make_cuda_model(std::unique_ptr<GgufReader>, ModelConfig) {
  fail("CUDA backend not available in this build");
}

}  // namespace qforge
#endif
