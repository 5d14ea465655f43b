#include "runtime/cuda/check.cuh"
#include "runtime/cuda_device.h"

namespace qforge::cuda {
namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) cuda_fail("CUDA: ", what, " failed: ", cudaGetErrorString(status));
}

}  // namespace

bool built_with_cuda() {
  return true;
}

bool available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::vector<DeviceInfo> devices() {
  std::vector<DeviceInfo> out;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return out;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, i), "cudaGetDeviceProperties");
    DeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.cc_major = prop.major;
    info.cc_minor = prop.minor;
    info.sm_count = prop.multiProcessorCount;
    check(cudaSetDevice(i), "cudaSetDevice");
    check(cudaMemGetInfo(&info.free_bytes, &info.total_bytes), "cudaMemGetInfo");
    out.push_back(info);
  }
  return out;
}

double measure_copy_bandwidth_gbs(int device, std::size_t bytes, int reps) {
  check(cudaSetDevice(device), "cudaSetDevice");
  void* src = nullptr;
  void* dst = nullptr;
  check(cudaMalloc(&src, bytes), "cudaMalloc");
  if (cudaMalloc(&dst, bytes) != cudaSuccess) {
    cudaFree(src);
    cuda_fail("CUDA: cannot allocate ", bytes, " bytes for the bandwidth probe");
  }
  cudaEvent_t start{}, stop{};
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  check(cudaMemset(src, 1, bytes), "cudaMemset");
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "warm-up copy");
  check(cudaEventRecord(start), "cudaEventRecord");
  for (int r = 0; r < reps; ++r)
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice), "copy");
  check(cudaEventRecord(stop), "cudaEventRecord");
  check(cudaEventSynchronize(stop), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(src);
  cudaFree(dst);
  return 2.0 * static_cast<double>(bytes) * reps / (ms * 1e-3) / 1e9;
}

}  // namespace qforge::cuda
