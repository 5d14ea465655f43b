// The CUDA entry points in a build without the CUDA backend: nothing is available.
#ifndef QFORGE_HAVE_CUDA
#include "core/error.h"
#include "runtime/cuda_device.h"
#include "runtime/cuda_trace.h"

namespace qforge::cuda {

bool built_with_cuda() { return false; }
bool available() { return false; }
std::vector<DeviceInfo> devices() { return {}; }
double measure_copy_bandwidth_gbs(int, std::size_t, int) {
  fail("CUDA backend not available: this qforge was built without CUDA");
}
bool gemv_trace_built() { return false; }
void gemv_trace_start(std::size_t) {
  fail("CUDA backend not available: this qforge was built without CUDA");
}
std::vector<TraceRecord> gemv_trace_stop() {
  fail("CUDA backend not available: this qforge was built without CUDA");
}
void write_trace(const std::string&, const std::vector<TraceRecord>&) {
  fail("CUDA backend not available: this qforge was built without CUDA");
}

}  // namespace qforge::cuda
#endif
