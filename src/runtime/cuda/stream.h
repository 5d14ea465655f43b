// CUDA streams and events as move-only RAII types. This header does not include the CUDA
// headers, so plain C++ code (tests, benchmarks, the model) can use it; the handle type is the
// runtime's opaque cudaStream_t. A null StreamHandle means the legacy default stream.
#pragma once

struct CUstream_st;
struct CUevent_st;

namespace qforge::cuda {

using StreamHandle = CUstream_st*;

class Stream {
 public:
  Stream();  // a non-blocking stream on the current device
  ~Stream();
  Stream(Stream&& other) noexcept : handle_(other.handle_) { other.handle_ = nullptr; }
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  StreamHandle get() const { return handle_; }
  void synchronize() const;  // throws qforge::Error with the first asynchronous error, if any

 private:
  StreamHandle handle_ = nullptr;
};

class Event {
 public:
  // timing = false makes a synchronization-only event (cheaper to record and wait on).
  explicit Event(bool timing = true);
  ~Event();
  Event(Event&& other) noexcept : handle_(other.handle_) { other.handle_ = nullptr; }
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  void record(StreamHandle stream = nullptr);
  // Work enqueued on `stream` from now on waits for the work the last record() captured. Inside
  // a stream capture, record + wait_in on another stream fork or join the captured graph.
  void wait_in(StreamHandle stream) const;
  void synchronize() const;
  // Milliseconds between two recorded events (start recorded first).
  static float elapsed_ms(const Event& start, const Event& stop);

 private:
  CUevent_st* handle_ = nullptr;
};

// Blocks until all work on the current device is done; rethrows asynchronous kernel errors.
void synchronize_device();

}  // namespace qforge::cuda
