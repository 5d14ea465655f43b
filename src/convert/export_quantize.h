// `qforge quantize IN.gguf OUT.gguf --type T`: requantize a GGUF with the same type policy as
// `qforge convert` (convert/type_policy.h). Every tensor is dequantized to F32 and quantized to
// the chosen type, except:
//   - a tensor whose chosen type equals its current type is copied byte for byte (never
//     re-rounded: Q4_0 -> Q4_0 is lossless, F32 norms stay as they are);
//   - with --qat auto, BF16 tensors (and F32 tensors holding only BF16 values) whose blocks sit
//     on a QAT lattice are written exactly with encode_lattice_row, as convert does;
//   - --imatrix F (llama.cpp's imatrix GGUF: "<tensor>.in_sum2" / "<tensor>.counts") weights
//     the quantization error per input column.
// Metadata is copied with general.file_type updated; output is atomic (GgufWriter).
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "convert/converter.h"
#include "convert/dynamic_recipe.h"

namespace qforge {

struct QuantizeOptions {
  std::filesystem::path input;
  std::filesystem::path output;
  std::string type;
  std::filesystem::path imatrix;  // empty: none
  bool qat = true;
  std::vector<std::string> overrides;  // "REGEX=TYPE"
  int threads = 0;
  bool progress = false;
  double min_lattice_share = 0.98;
  // --recipe dynamic: a type per tensor under a size budget (convert/dynamic_recipe.h); `type`
  // may then be empty (general.file_type follows the type holding most weights).
  std::optional<DynamicRecipeOptions> dynamic;
};

// Reuses convert's report (TensorReport.source = "copied" / "requantized" / "lattice").
ConvertReport quantize_gguf(const QuantizeOptions& options);

// llama.cpp's imatrix GGUF: per tensor, the mean squared activation of every input column
// (in_sum2 / counts), one vector of ne0 values per expert matrix (concatenated).
struct Imatrix {
  std::map<std::string, std::vector<float>> importance;  // GGUF tensor name -> values
  std::map<std::string, std::uint64_t> matrices;         // number of matrices (experts) per entry
};
Imatrix read_imatrix(const std::filesystem::path& path);

}  // namespace qforge
