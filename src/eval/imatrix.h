// Importance matrix collection in llama.cpp's imatrix GGUF format: for every weight matrix the
// per-column sum of squared input activations ("<weight>.in_sum2", F32 [cols, n_mat]) and the
// number of input rows that were summed ("<weight>.counts", F32 [1, n_mat]); n_mat is 1 for a
// plain matrix and the number of experts for a stacked-expert tensor (each expert counts only the
// rows routed to it). Metadata: general.type = "imatrix", imatrix.datasets (array of strings),
// imatrix.chunk_count and imatrix.chunk_size (u32). Tensors are written in name order.
// The per-column mean a consumer uses is in_sum2 / counts.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/cpu/activation_observer.h"

namespace qforge {

struct ImatrixEntry {
  std::size_t cols = 0;
  std::vector<double> sums;          // [n_mat x cols]
  std::vector<std::int64_t> counts;  // [n_mat]
};

class ImatrixCollector final : public cpu::ActivationObserver {
 public:
  // Weights whose name starts with "blk." are collected (llama.cpp's rule); the output head too
  // when include_output (its name is output.weight, or token_embd.weight for tied embeddings).
  explicit ImatrixCollector(bool include_output = false) : include_output_(include_output) {}

  void on_matmul_input(const cpu::MatmulInput& input) override;

  const std::map<std::string, ImatrixEntry>& entries() const { return entries_; }
  std::size_t calls() const { return calls_; }

 private:
  bool wanted(std::string_view name) const;
  bool include_output_;
  std::mutex mutex_;
  std::map<std::string, ImatrixEntry> entries_;
  std::size_t calls_ = 0;
};

struct ImatrixMetadata {
  std::vector<std::string> datasets;
  std::uint32_t chunk_count = 0;
  std::uint32_t chunk_size = 0;
};

void write_imatrix_gguf(const std::filesystem::path& path,
                        const std::map<std::string, ImatrixEntry>& entries,
                        const ImatrixMetadata& meta);

}  // namespace qforge
