#include "runtime/cuda/check.cuh"
#include "runtime/cuda/stream.h"

namespace qforge::cuda {

Stream::Stream() {
  QFORGE_CUDA_CHECK(cudaStreamCreateWithFlags(&handle_, cudaStreamNonBlocking));
}

Stream::~Stream() {
  if (handle_ != nullptr) cudaStreamDestroy(handle_);
}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) cudaStreamDestroy(handle_);
    handle_ = other.handle_;
    other.handle_ = nullptr;
  }
  return *this;
}

void Stream::synchronize() const {
  QFORGE_CUDA_CHECK(cudaStreamSynchronize(handle_));
}

Event::Event(bool timing) {
  QFORGE_CUDA_CHECK(
      cudaEventCreateWithFlags(&handle_, timing ? cudaEventDefault : cudaEventDisableTiming));
}

Event::~Event() {
  if (handle_ != nullptr) cudaEventDestroy(handle_);
}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr) cudaEventDestroy(handle_);
    handle_ = other.handle_;
    other.handle_ = nullptr;
  }
  return *this;
}

void Event::record(StreamHandle stream) {
  QFORGE_CUDA_CHECK(cudaEventRecord(handle_, stream));
}

void Event::wait_in(StreamHandle stream) const {
  QFORGE_CUDA_CHECK(cudaStreamWaitEvent(stream, handle_, 0));
}

void Event::synchronize() const {
  QFORGE_CUDA_CHECK(cudaEventSynchronize(handle_));
}

float Event::elapsed_ms(const Event& start, const Event& stop) {
  float ms = 0.0f;
  QFORGE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.handle_, stop.handle_));
  return ms;
}

void synchronize_device() {
  QFORGE_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace qforge::cuda
