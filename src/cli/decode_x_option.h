// The --decode-x option of the commands that run a model (bench, run): how the CUDA decode GEMVs
// take their activations (runtime/cuda_device.h, DecodeX).
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "core/error.h"
#include "model/model.h"
#include "runtime/cuda_device.h"

namespace qforge::cli {

inline void add_decode_x_option(CLI::App* cmd, std::string& value) {
  cmd->add_option("--decode-x", value,
                  "CUDA decode GEMVs' activations: exact (F32-accurate planes, the default) or int8 "
                  "(rounded per 32-block like llama.cpp's q8_1: faster, opt-in)");
}

// Sets the choice before the model loads; an empty value keeps it (QFORGE_DECODE_X, else exact).
inline void apply_decode_x(const std::string& value, Device device) {
  if (value.empty()) return;
  if (device != Device::Cuda) fail("--decode-x applies to --device cuda only");
  cuda::set_decode_x(cuda::parse_decode_x(value));
}

}  // namespace qforge::cli
