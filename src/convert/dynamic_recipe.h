// `qforge quantize --recipe dynamic --target-bpw X`: a type per tensor chosen under a size budget
// from measured sensitivity (docs/quantize.md, "Dynamic recipe").
//
// For every weight matrix that is neither F32-role nor on a QAT lattice (those are fixed: F32 /
// exact lattice encoding), each candidate type t (block formats whose block divides the row) has
//   bytes(t)  and  err(t) = sum_rows sum_c imp_c (w_rc - deq(quant_t(w))_rc)^2,
// the imatrix-weighted squared error (imp = 1 without an imatrix), which is the expected squared
// error the quantization adds to that matrix's outputs. The KLD the tensor adds when quantized to
// t is modelled as  dKLD(t) = gain * err(t), with `gain` measured: the tensor alone is quantized
// to its cheapest candidate (the "probe") inside the model, a calibration text is run, and the
// mean KLD against the reference distributions divided by err(probe) is the gain. (Without a
// calibration text every gain is 1: a pure error proxy.) Contributions are taken as additive and
// the sum is minimised under the byte budget by a greedy walk along each tensor's lower convex
// hull of (bytes, dKLD), best dKLD saved per byte first.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "quant/ggml_type.h"

namespace qforge {

class GgufReader;
struct Imatrix;

// A tensor the recipe does not choose for (F32 role, QAT lattice), with the type it gets.
struct FixedTensorType {
  GgmlType type = GgmlType::F32;
  std::string reason;
};

struct DynamicRecipeOptions {
  double target_bpw = 0;       // bits per weight over all tensors (as llama.cpp reports BPW)
  std::filesystem::path text;  // calibration text; empty: no measurement (error proxy only)
  std::filesystem::path ref;   // reference model (default: the input itself)
  int n_ctx = 256;             // calibration window length
  int chunks = 2;              // calibration windows
  int validate = 0;            // measure this many tensors again at a second type (proxy check)
  bool qat = true;             // keep QAT lattice tensors exact (never candidates)
  double min_lattice_share = 0.98;
  std::function<void(const std::string&)> progress;  // status lines (may be empty)
};

struct DynamicCandidate {
  GgmlType type = GgmlType::F32;
  std::uint64_t bytes = 0;
  double error = 0;          // imatrix-weighted squared error
  double predicted_kld = 0;  // gain * error
};

struct DynamicTensor {
  std::string name;
  std::uint64_t n_elements = 0;
  bool fixed = false;  // F32 role or QAT lattice: not chosen by the recipe
  std::string fixed_reason;
  GgmlType type = GgmlType::F32;  // the choice
  std::uint64_t bytes = 0;
  double gain = 0;        // dKLD per unit of error
  bool measured = false;  // gain from a measurement (else the median measured gain or 1)
  double probe_kld = 0;   // measured mean KLD with only this tensor at the probe type
  std::vector<DynamicCandidate> candidates;  // sorted by bytes
};

struct ProxyCheck {  // one --validate measurement
  std::string name;
  GgmlType type = GgmlType::F32;
  double predicted_kld = 0, measured_kld = 0;
};

struct DynamicRecipe {
  std::vector<DynamicTensor> tensors;  // in file order
  std::uint64_t total_bytes = 0, total_elements = 0;
  double bpw = 0, target_bpw = 0;
  double predicted_kld = 0;  // sum over the chosen types
  double baseline_kld = 0;   // input vs reference before any quantization
  bool measured = false;
  int calib_tokens = 0;  // scored positions per measurement
  std::vector<ProxyCheck> checks;
  double seconds = 0;
  std::map<std::string, GgmlType> types() const;  // chosen type of every non-fixed tensor
  std::string to_json() const;                    // compact record for metadata and reports
};

// Plans the recipe for `input` (tensors in `fixed`, 1-D tensors and rows not divisible by 32 keep
// their type). Fails when the target is below the smallest reachable size (naming both), for a
// calibration text shorter than one window, or a reference whose vocabulary differs.
DynamicRecipe plan_dynamic_recipe(const GgufReader& input, const Imatrix* imatrix,
                                  const std::map<std::string, FixedTensorType>& fixed,
                                  const DynamicRecipeOptions& options);

// The candidate types for rows of `cols` elements, cheapest first.
std::vector<GgmlType> dynamic_candidate_types(std::uint64_t cols);

}  // namespace qforge
