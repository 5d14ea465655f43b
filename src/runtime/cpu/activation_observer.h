// A hook that lets tools see the input of every matrix multiplication the CPU engine performs
// (qforge imatrix collects per-column sums of squared activations through it). The engine calls
// notify_matmul_input() just before it multiplies a weight matrix by a batch of rows; with no
// observer installed that costs one relaxed atomic load.
//
// The hook is process-wide on purpose: the forward pass needs no extra parameter, and a tool that
// installs an observer owns the whole run. Install it with ScopedActivationObserver.
#pragma once

#include <atomic>
#include <cstddef>
#include <span>
#include <string_view>

namespace qforge::cpu {

struct MatmulInput {
  std::string_view weight;   // GGUF tensor name of the weight, e.g. "blk.0.attn_q.weight"
  std::span<const float> x;  // [n_rows x cols] row-major, the rows about to be multiplied
  std::size_t n_rows = 0;
  std::size_t cols = 0;  // the weight's input dimension
  // For a tensor that stacks several experts ("blk.N.ffn_up_exps.weight"): which expert these
  // rows were routed to and how many experts the tensor holds. -1 / 0 for a plain 2-D weight.
  // With expert >= 0 the name may carry the engine's "[e]" suffix; observers strip it.
  int expert = -1;
  int n_experts = 0;
};

class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  // Called from the thread that runs the forward pass, never concurrently for one forward pass.
  // The span is only valid during the call.
  virtual void on_matmul_input(const MatmulInput& input) = 0;
};

namespace detail {
inline std::atomic<ActivationObserver*> g_activation_observer{nullptr};
}  // namespace detail

inline ActivationObserver* activation_observer() {
  return detail::g_activation_observer.load(std::memory_order_relaxed);
}

// What the engine calls (dense weights: expert = -1, n_experts = 0).
inline void notify_matmul_input(const MatmulInput& input) {
  if (ActivationObserver* observer = activation_observer()) observer->on_matmul_input(input);
}

// Installs `observer` for its lifetime and restores the previous one afterwards.
class ScopedActivationObserver {
 public:
  explicit ScopedActivationObserver(ActivationObserver& observer)
      : previous_(detail::g_activation_observer.exchange(&observer)) {}
  ScopedActivationObserver(const ScopedActivationObserver&) = delete;
  ScopedActivationObserver& operator=(const ScopedActivationObserver&) = delete;
  ~ScopedActivationObserver() { detail::g_activation_observer.store(previous_); }

 private:
  ActivationObserver* previous_;
};

}  // namespace qforge::cpu
