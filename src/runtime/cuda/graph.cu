#include "runtime/cuda/check.cuh"
#include "runtime/cuda/graph.h"

#include <utility>

namespace qforge::cuda {

Graph::Graph(Graph&& other) noexcept
    : graph_(std::exchange(other.graph_, nullptr)), exec_(std::exchange(other.exec_, nullptr)) {}

Graph& Graph::operator=(Graph&& other) noexcept {
  if (this != &other) {
    reset();
    graph_ = std::exchange(other.graph_, nullptr);
    exec_ = std::exchange(other.exec_, nullptr);
  }
  return *this;
}

void Graph::reset() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  if (graph_ != nullptr) cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
}

void Graph::begin_capture(StreamHandle stream) {
  if (stream == nullptr) cuda_fail("CUDA graph: capture needs a non-default stream");
  QFORGE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
}

void Graph::end_capture(StreamHandle stream) {
  cudaGraph_t graph = nullptr;
  QFORGE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph_, 0);
  if (status != cudaSuccess) {
    reset();
    check_status(status, "cudaGraphInstantiate", __FILE__, __LINE__);
  }
  exec_ = exec;
}

void Graph::abandon_capture(StreamHandle stream) noexcept {
  cudaGraph_t graph = nullptr;
  if (cudaStreamEndCapture(stream, &graph) == cudaSuccess && graph != nullptr) {
    cudaGraphDestroy(graph);
  }
  cudaGetLastError();  // a failed capture leaves a sticky-free error behind: clear it
}

void Graph::launch(StreamHandle stream) const {
  if (exec_ == nullptr) cuda_fail("CUDA graph: launch before a successful capture");
  QFORGE_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
}

CurrentDevice current_device() {
  CurrentDevice d;
  QFORGE_CUDA_CHECK(cudaGetDevice(&d.index));
  cudaDeviceProp prop{};
  QFORGE_CUDA_CHECK(cudaGetDeviceProperties(&prop, d.index));
  d.name = prop.name;
  d.sm_count = prop.multiProcessorCount;
  QFORGE_CUDA_CHECK(cudaMemGetInfo(&d.free_bytes, &d.total_bytes));
  return d;
}

}  // namespace qforge::cuda
