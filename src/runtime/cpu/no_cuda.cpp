// The CUDA entry points in a build without the CUDA backend: nothing is available.
#ifndef QFORGE_HAVE_CUDA
#include "core/error.h"
#include "runtime/cuda_device.h"

namespace qforge::cuda {

bool built_with_cuda() { return false; }
bool available() { return false; }
std::vector<DeviceInfo> devices() { return {}; }
double measure_copy_bandwidth_gbs(int, std::size_t, int) {
  fail("CUDA backend not available: this qforge was built without CUDA");
}

}  // namespace qforge::cuda
#endif
