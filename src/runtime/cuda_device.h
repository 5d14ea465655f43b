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

}  // namespace qforge::cuda
