// general.size_label as llama.cpp's converter computes it: the parameter count rounded to three
// significant digits with a K/M/B/T suffix, or "<experts>x<params per expert path>" for MoE files
// (expert tensors are named "*_exps.*" and stacked along ne[2]).
#pragma once

#include <cstdint>
#include <string>

#include <fmt/format.h>

namespace qforge {

// 1.234e9 -> "1.2B", 268e6 -> "268M" (Python round(): ties to even).
std::string rounded_parameter_count(double n);

// Tensors: anything with .name, .ne (GGUF order) and .n_elements().
template <typename Tensors>
std::string gguf_size_label(const Tensors& tensors) {
  std::uint64_t total = 0, shared = 0, expert = 0, expert_sum = 0, n_expert_tensors = 0;
  for (const auto& t : tensors) {
    const std::uint64_t size = t.n_elements();
    if (t.name.find("_exps.") != std::string::npos && t.ne.size() >= 3 && t.ne[2] > 0) {
      expert += size / t.ne[2];
      expert_sum += t.ne[2];
      ++n_expert_tensors;
    } else {
      shared += size;
    }
    total += size;
  }
  const std::uint64_t expert_count = n_expert_tensors ? expert_sum / n_expert_tensors : 0;
  if (expert_count > 0)
    return fmt::format("{}x{}", expert_count,
                       rounded_parameter_count(static_cast<double>(shared + expert)));
  return rounded_parameter_count(static_cast<double>(total));
}

}  // namespace qforge
