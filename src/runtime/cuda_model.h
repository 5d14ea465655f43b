// The CUDA implementation of Model, behind a plain C++ entry point: builds without CUDA get a
// stub that throws (src/runtime/cpu/no_cuda_model.cpp).
#pragma once

#include <memory>

#include "formats/gguf.h"
#include "model/config.h"
#include "model/model.h"

namespace qforge {

// Uploads every weight of `gguf` to the current GPU (byte for byte in its stored type) and
// returns a model whose forward pass runs there. Fails with a qforge::Error when the build has no
// CUDA, no device answers, a tensor type has no GPU kernel, or the weights do not fit the free
// device memory (the message gives the bytes needed and free).
std::unique_ptr<Model> make_cuda_model(std::unique_ptr<GgufReader> gguf, ModelConfig config);

}  // namespace qforge
