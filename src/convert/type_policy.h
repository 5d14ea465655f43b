// Which GGML type each output tensor gets (`qforge convert --type T [--override RE=TYPE]`).
// The rules are documented in docs/convert.md; in short:
//   1. F32-role tensors (1-D, norms, routers, scales, generated tables) are always F32.
//   2. --override 'regex=type' (first match against the GGUF name) sets the type.
//   3. A tensor whose BF16 values sit on a QAT lattice is written exactly: Q4_0 (symmetric grids)
//      or Q4_1 (asymmetric) for every quantized --type, Q8_0 for --type q8_0 (symmetric grids).
//   4. In a checkpoint with lattice tensors, the other matrices are never forced below 8 bits:
//      Q8_0 (or the requested float type), BF16 when the row length is not a multiple of 32.
//   5. Otherwise: the head (and tied embeddings) Q6_K for sub-8-bit types, like llama-quantize;
//      presets (q4_k_m, q4_k_s, q5_k_m) raise attn_v / ffn_down in some layers; everything else
//      gets the requested type.
//   6. Row lengths that the chosen type's block does not divide fall back as llama-quantize does
//      (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0, IQ4_XS -> IQ4_NL) and then
//      to F16 when not even 32 divides the row.
#pragma once

#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "convert/arch.h"
#include "quant/ggml_type.h"
#include "quant/lattice.h"

namespace qforge {

enum class TypePreset : std::uint8_t { kNone, kQ4_K_M, kQ4_K_S, kQ5_K_M };

struct TypeRequest {
  std::string name;  // as given ("q4_k_m")
  GgmlType base = GgmlType::BF16;
  TypePreset preset = TypePreset::kNone;
  std::uint32_t file_type = 32;  // general.file_type (llama.cpp's LlamaFileType)
  bool is_float() const {
    return base == GgmlType::F32 || base == GgmlType::F16 || base == GgmlType::BF16;
  }
};

// Accepts f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k iq4_nl iq4_xs and the
// presets q4_k_m q4_k_s q5_k_m (case-insensitive); fails listing them otherwise.
TypeRequest parse_type_request(std::string_view name);
std::vector<std::string> supported_type_names();

struct TypeOverride {
  std::string pattern;
  std::regex regex;
  GgmlType type;
};
// "REGEX=TYPE" (the last '=' splits); TYPE is a ggml type name accepted by --type (no presets).
TypeOverride parse_override(std::string_view spec);

struct TypeContext {
  int n_layers = 0;
  bool tied_embeddings = false;
  bool qat_checkpoint = false;  // at least one tensor was found on a lattice
};

struct TypeDecision {
  GgmlType type = GgmlType::F32;
  bool lattice = false;  // write with encode_lattice_row (exact)
  std::string reason;    // why the type differs from the requested one (empty: it doesn't)
};

// `lattice` is the tensor's detection result (kind kNone when none or --qat off).
TypeDecision choose_type(const TensorPlan& tensor, const TypeRequest& request,
                         const std::vector<TypeOverride>& overrides, const LatticeSpec& lattice,
                         TypeContext& context);

// What a preset (q4_k_m, q4_k_s, q5_k_m) gives an attention value or MLP down projection (role
// kAttnV / kFfnDown) of layer `layer` of `n_layers`, as llama-quantize's rules do: Q6_K in the
// _M presets' chosen layers, Q5_K in Q4_K_S's first layers; `base` otherwise and for other roles.
GgmlType preset_layer_type(TypePreset preset, GgmlType base, TensorRole role, int layer,
                           int n_layers);

// The type actually usable for rows of `cols` elements, falling back as llama-quantize does;
// appends an explanation to `why` when it falls back.
GgmlType fallback_for_row_length(GgmlType type, std::uint64_t cols, std::string& why);

}  // namespace qforge
