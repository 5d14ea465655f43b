// A captured CUDA graph (RAII, move-only) and the memory/SM facts of the current device. Plain
// C++ header: the CUDA types stay opaque.
#pragma once

#include <cstddef>
#include <string>

#include "runtime/cuda/stream.h"

struct CUgraph_st;
struct CUgraphExec_st;

namespace qforge::cuda {

class Graph {
 public:
  Graph() = default;
  ~Graph() { reset(); }
  Graph(Graph&& other) noexcept;
  Graph& operator=(Graph&& other) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // Everything `record` enqueues on `stream` (which must be a non-default stream) becomes the
  // graph, instead of running. If `record` throws, capture is abandoned and the graph stays
  // empty.
  template <typename Fn>
  void capture(StreamHandle stream, Fn&& record) {
    reset();
    begin_capture(stream);
    try {
      record();
    } catch (...) {
      abandon_capture(stream);
      throw;
    }
    end_capture(stream);
  }
  bool ready() const { return exec_ != nullptr; }
  void launch(StreamHandle stream) const;
  void reset();

 private:
  void begin_capture(StreamHandle stream);
  void end_capture(StreamHandle stream);
  static void abandon_capture(StreamHandle stream) noexcept;

  CUgraph_st* graph_ = nullptr;
  CUgraphExec_st* exec_ = nullptr;
};

struct CurrentDevice {
  int index = 0;
  std::string name;
  int sm_count = 0;
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
};
CurrentDevice current_device();  // fails when no device answers

}  // namespace qforge::cuda
