#include "runtime/cuda/buffer.h"
#include "runtime/cuda/check.cuh"

namespace qforge::cuda::detail {

void* device_alloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  const cudaError_t status = cudaMalloc(&ptr, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();  // an allocation failure is not sticky: clear it so later calls work
    cuda_fail("CUDA: cannot allocate ", bytes,
              " bytes of device memory: ", cudaGetErrorString(status));
  }
  return ptr;
}

void fail_range(const char* what, std::size_t count, std::size_t offset, std::size_t size) {
  cuda_fail("DeviceBuffer ", what, ": ", count, " elements at offset ", offset,
            " exceed the buffer of ", size, " elements");
}

void device_free(void* ptr) noexcept {
  if (ptr != nullptr) cudaFree(ptr);
}

void* pinned_alloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  const cudaError_t status = cudaMallocHost(&ptr, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    cuda_fail("CUDA: cannot allocate ", bytes,
              " bytes of page-locked host memory: ", cudaGetErrorString(status));
  }
  return ptr;
}

void pinned_free(void* ptr) noexcept {
  if (ptr != nullptr) cudaFreeHost(ptr);
}

void copy_to_device(void* dst, const void* src, std::size_t bytes, StreamHandle stream) {
  if (bytes == 0) return;
  if (stream == nullptr) {
    QFORGE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  } else {
    QFORGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  }
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, StreamHandle stream) {
  if (bytes == 0) return;
  if (stream == nullptr) {
    QFORGE_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  } else {
    QFORGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
  }
}

void copy_device_to_device(void* dst, const void* src, std::size_t bytes, StreamHandle stream) {
  if (bytes == 0) return;
  QFORGE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
}

void fill_bytes(void* dst, int value, std::size_t bytes, StreamHandle stream) {
  if (bytes == 0) return;
  QFORGE_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream));
  if (stream == nullptr) QFORGE_CUDA_CHECK(cudaStreamSynchronize(nullptr));
}

}  // namespace qforge::cuda::detail
