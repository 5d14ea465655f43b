// Error checking for CUDA runtime calls inside the CUDA backend (.cu files only). A failing call
// becomes a qforge::Error naming the call, the source location and CUDA's own message.
//
// .cu files must not include fmt (core/error.h): with nvcc 13 + g++ 12, fmt 9 disables its
// constexpr support under __NVCC__ yet keeps `constexpr` functions that call the disabled ones, and
// the host pass fails. So messages are built here with operator<< and thrown from error.cpp.
#pragma once

#include <cuda_runtime.h>

#include <sstream>
#include <string>

namespace qforge::cuda {

[[noreturn]] void throw_error(const std::string& message);  // throws qforge::Error

// cuda_fail("gemv: ", n, " rows") -> qforge::Error("gemv: 3 rows")
template <typename... Args>
[[noreturn]] void cuda_fail(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  throw_error(out.str());
}

inline void check_status(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess) {
    cuda_fail("CUDA: ", what, " failed at ", file, ":", line, ": ", cudaGetErrorString(status),
              " (", cudaGetErrorName(status), ")");
  }
}

}  // namespace qforge::cuda

#define QFORGE_CUDA_CHECK(expr) ::qforge::cuda::check_status((expr), #expr, __FILE__, __LINE__)
// After a kernel launch: launch-configuration errors surface here, execution errors at the next
// synchronizing call.
#define QFORGE_CUDA_CHECK_LAUNCH(name) \
  ::qforge::cuda::check_status(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)
