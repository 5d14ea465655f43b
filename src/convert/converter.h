// `qforge convert`: Hugging Face checkpoint -> GGUF that llama.cpp loads, with exact recovery of
// QAT lattices. Streaming: tensors are read one at a time from the mapped safetensors files,
// converted to F32 in row blocks on all cores, quantized (or lattice-encoded) and written with
// GgufWriter into a temporary file renamed into place at the end. Peak memory is about one output
// tensor plus small per-thread row buffers; mapped input pages are released after each tensor.
//
// Two passes: pass 1 finds the lattice of every candidate matrix (and, for those, dry-runs the
// exact encoding to learn whether every scale fits F16), so that every tensor's type is known
// before the GGUF header is written; pass 2 converts and writes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "quant/ggml_type.h"
#include "quant/lattice.h"

namespace qforge {

struct ConvertOptions {
  std::filesystem::path input;   // HF checkpoint directory
  std::filesystem::path output;  // .gguf
  std::string type = "bf16";
  bool qat = true;                     // --qat auto (true) / off
  std::vector<std::string> overrides;  // "REGEX=TYPE"
  int threads = 0;                     // 0: keep the pool's default
  bool progress = false;               // force the progress line even when stderr is not a TTY
  bool tokenizer = true;  // write tokenizer.ggml.* (from the checkpoint's tokenizer files)
  double min_lattice_share = 0.98;  // share of sampled blocks on the grid to call it a lattice
};

struct TensorReport {
  std::string name;          // GGUF name
  std::string source;        // HF name or "(generated ...)"
  std::string source_dtype;  // "BF16", "F16", "F32", "generated"
  std::vector<std::uint64_t> ne;
  bool lattice_checked = false;
  LatticeDetection detection;     // best hypothesis (kind kNone: no grid)
  bool lattice_detected = false;  // detection share >= min_lattice_share
  GgmlType type = GgmlType::F32;
  bool lattice_encoded = false;      // written with the exact lattice encoder
  std::string reason;                // why type differs from --type
  LatticeEncodeStats lattice_stats;  // for lattice-detected tensors (dry run / final)
  double max_abs_error = 0;          // output vs F32 source value
  std::uint64_t n_elements = 0;
  std::uint64_t source_bytes = 0;
  std::uint64_t output_bytes = 0;
};

struct ConvertReport {
  std::string input, output;
  std::string hf_arch, arch;
  std::string requested_type;
  std::uint32_t file_type = 0;
  bool qat_mode = true;
  bool qat_checkpoint = false;
  std::vector<TensorReport> tensors;
  std::vector<std::string> skipped;  // source tensors not converted on purpose
  std::string recipe_json;           // --recipe dynamic: the plan (DynamicRecipe::to_json)
  std::uint64_t input_bytes = 0;     // bytes of source tensors read
  std::uint64_t output_file_bytes = 0;
  std::uint64_t n_weights = 0;
  std::uint64_t tensor_bytes = 0;  // sum of output tensor data
  double seconds = 0;
  int threads = 0;
  double bits_per_weight() const {
    return n_weights ? 8.0 * static_cast<double>(tensor_bytes) / static_cast<double>(n_weights) : 0;
  }
};

// Converts; throws qforge::Error (and leaves no output file) on any problem.
ConvertReport convert_checkpoint(const ConvertOptions& options);

nlohmann::ordered_json report_to_json(const ConvertReport& report);
std::string report_table(const ConvertReport& report);

}  // namespace qforge
