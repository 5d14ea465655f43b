// What the CUDA side of qforge can see: devices, their memory, and the device-to-device copy
// bandwidth measured in place (the roofline that decode speed is compared against). In builds
// without CUDA, or on machines without a GPU, available() is false and devices() is empty.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace qforge::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  std::size_t total_bytes = 0;
  std::size_t free_bytes = 0;
};

bool built_with_cuda();
bool available();                   // built with CUDA and at least one device answers
std::vector<DeviceInfo> devices();  // empty when !available()
// Copy `bytes` device-to-device repeatedly; returns (read + written bytes) / second in GB/s.
double measure_copy_bandwidth_gbs(int device, std::size_t bytes = std::size_t{1} << 30, int reps = 20);

// How the integer-form decode GEMVs (Q4_0 weights regrouped as Q4_0x8, the persistent decode
// step, the Q6_K LM head's integer form; docs/cuda.md, "Opt-in int8 x") take x:
//   kExact  three int8 planes per 32-block, x to within 2^-24 of the block's max |x| (the F32
//           GEMV's accuracy): the default;
//   kInt8   plane 0 alone: x rounded to int8 per 32-block (steps of max |x| / 127), as
//           llama.cpp's q8_1 quantizes it: opt-in, a third of the integer products.
// Read when a decode step's kernels are launched or captured: set it before a model's first
// decode step. The environment variable QFORGE_DECODE_X=int8 sets the initial choice (any other
// value: exact); the CLI's --decode-x checks its value (parse_decode_x).
enum class DecodeX { kExact, kInt8 };
void set_decode_x(DecodeX x);
DecodeX decode_x();
// "exact" or "int8"; parse_decode_x fails (qforge::Error) on any other name.
const char* decode_x_name(DecodeX x);
DecodeX parse_decode_x(const std::string& name);

}  // namespace qforge::cuda
