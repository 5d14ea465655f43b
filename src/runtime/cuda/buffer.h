// DeviceBuffer<T>: an owning, move-only array in GPU memory. Allocation failures and copy errors
// throw qforge::Error carrying CUDA's message. No CUDA headers here, so plain C++ can use it.
#pragma once

#include <cstddef>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/cuda/stream.h"

namespace qforge::cuda {

namespace detail {
void* device_alloc(std::size_t bytes);  // cudaMalloc; nullptr for 0 bytes
void device_free(void* ptr) noexcept;
void* pinned_alloc(std::size_t bytes);  // cudaMallocHost; nullptr for 0 bytes
void pinned_free(void* ptr) noexcept;
void copy_to_device(void* dst, const void* src, std::size_t bytes, StreamHandle stream);
void copy_to_host(void* dst, const void* src, std::size_t bytes, StreamHandle stream);
void copy_device_to_device(void* dst, const void* src, std::size_t bytes, StreamHandle stream);
void fill_bytes(void* dst, int value, std::size_t bytes, StreamHandle stream);
[[noreturn]] void fail_range(const char* what, std::size_t count, std::size_t offset,
                             std::size_t size);
}  // namespace detail

template <typename T>
class DeviceBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "device buffers hold trivially copyable types");

 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count)
      : data_(static_cast<T*>(detail::device_alloc(count * sizeof(T)))), size_(count) {}
  // Allocates and uploads (synchronously) a copy of host data.
  explicit DeviceBuffer(std::span<const T> host) : DeviceBuffer(host.size()) { upload(host); }

  ~DeviceBuffer() { detail::device_free(data_); }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      detail::device_free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

  // Grows (discarding the contents) when fewer than `count` elements are held.
  void reserve_discard(std::size_t count) {
    if (count > size_) *this = DeviceBuffer(count);
  }

  // Host <-> device copies of host.size() elements starting at element `offset`. With a stream
  // the copy is asynchronous (the host memory must stay valid until the stream reaches it).
  void upload(std::span<const T> host, std::size_t offset = 0, StreamHandle stream = nullptr) {
    check_range(host.size(), offset, "upload");
    detail::copy_to_device(data_ + offset, host.data(), host.size_bytes(), stream);
  }
  void download(std::span<T> host, std::size_t offset = 0, StreamHandle stream = nullptr) const {
    check_range(host.size(), offset, "download");
    detail::copy_to_host(host.data(), data_ + offset, host.size_bytes(), stream);
  }
  std::vector<T> to_host() const {
    std::vector<T> out(size_);
    download(out);
    return out;
  }
  // Sets every byte to `value` (tests poison outputs with 0xff = NaN for floats).
  void fill_bytes(int value, StreamHandle stream = nullptr) {
    detail::fill_bytes(data_, value, bytes(), stream);
  }

 private:
  void check_range(std::size_t count, std::size_t offset, const char* what) const {
    if (offset > size_ || count > size_ - offset) detail::fail_range(what, count, offset, size_);
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
};

// PinnedBuffer<T>: an owning, move-only array in page-locked host memory, for the copies of every
// decode step (token in, logits out): a copy from pageable memory is staged by the driver and,
// device to host, synchronous, while a page-locked one is a plain DMA transfer.
template <typename T>
class PinnedBuffer {
  static_assert(std::is_trivially_copyable_v<T>, "pinned buffers hold trivially copyable types");

 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t count)
      : data_(static_cast<T*>(detail::pinned_alloc(count * sizeof(T)))), size_(count) {}
  ~PinnedBuffer() { detail::pinned_free(data_); }
  PinnedBuffer(PinnedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept {
    if (this != &other) {
      detail::pinned_free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  std::span<T> span() { return {data_, size_}; }
  std::span<const T> span() const { return {data_, size_}; }
  std::size_t size() const { return size_; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace qforge::cuda
