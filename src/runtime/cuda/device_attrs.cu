// Per-device attribute cache (device_attrs.h).
#include "runtime/cuda/device_attrs.h"

#include <mutex>
#include <vector>

#include "runtime/cuda/check.cuh"

namespace qforge::cuda {
namespace {

struct Attrs {
  int sm_count = 0;
  int max_smem = 0;
  int cc_major = 0;
};

Attrs current_attrs() {
  static std::mutex mutex;
  static std::vector<Attrs> by_device;
  int device = 0;
  QFORGE_CUDA_CHECK(cudaGetDevice(&device));
  const std::lock_guard lock(mutex);
  if (static_cast<std::size_t>(device) >= by_device.size()) {
    by_device.resize(static_cast<std::size_t>(device) + 1);
  }
  Attrs& a = by_device[static_cast<std::size_t>(device)];
  if (a.sm_count == 0) {
    QFORGE_CUDA_CHECK(
        cudaDeviceGetAttribute(&a.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    QFORGE_CUDA_CHECK(
        cudaDeviceGetAttribute(&a.cc_major, cudaDevAttrComputeCapabilityMajor, device));
    QFORGE_CUDA_CHECK(cudaDeviceGetAttribute(&a.sm_count, cudaDevAttrMultiProcessorCount, device));
  }
  return a;
}

}  // namespace

int current_sm_count() {
  return current_attrs().sm_count;
}

int current_cc_major() {
  return current_attrs().cc_major;
}

std::size_t current_max_smem_per_block() {
  return static_cast<std::size_t>(current_attrs().max_smem);
}

std::size_t one_cta_per_sm_smem(std::size_t bytes) {
  const std::size_t floor = current_max_smem_per_block() / 2 + 1024;
  return bytes > floor ? bytes : floor;
}

}  // namespace qforge::cuda
