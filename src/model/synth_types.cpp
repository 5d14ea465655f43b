// Tensor types for `qforge synth`: what llama-quantize picks when asked for one target type
// (its rules for the LM head, token embeddings and tensors it never quantizes), plus its
// fallbacks for rows that the target's block size does not divide. docs/synth.md lists them.
#include <algorithm>
#include <map>
#include <tuple>

#include "convert/arch_common.h"
#include "core/error.h"
#include "model/synth_internal.h"

namespace qforge::synth::detail {
namespace {

bool is_float_type(GgmlType t) {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16;
}

// llama-quantize's LM-head rule: Q6_K unless the target is Q8_0 (kept) or its block size does not
// divide the row (Q8_0). Unquantized targets keep their type.
GgmlType default_head_type(GgmlType target, std::uint64_t row) {
  if (is_float_type(target)) return target;
  if (row % block_size(target) != 0) return GgmlType::Q8_0;
  if (target == GgmlType::Q8_0) return GgmlType::Q8_0;
  return GgmlType::Q6_K;
}

// llama-quantize's fallback for rows the block size does not divide. Types it has no fallback for
// (it refuses to quantize such a tensor) and fallbacks that still do not fit become F16.
GgmlType fallback_type(GgmlType t, std::uint64_t row) {
  if (row % block_size(t) == 0) return t;
  GgmlType r;
  switch (t) {
    case GgmlType::IQ1_S:
    case GgmlType::IQ1_M:
    case GgmlType::IQ2_XXS:
    case GgmlType::IQ2_XS:
    case GgmlType::IQ2_S:
    case GgmlType::IQ3_XXS:
    case GgmlType::IQ3_S:
    case GgmlType::IQ4_XS:
      r = GgmlType::IQ4_NL;
      break;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::TQ1_0:
    case GgmlType::TQ2_0:
      r = GgmlType::Q4_0;
      break;
    case GgmlType::Q4_K:
      r = GgmlType::Q5_0;
      break;
    case GgmlType::Q5_K:
      r = GgmlType::Q5_1;
      break;
    case GgmlType::Q6_K:
      r = GgmlType::Q8_0;
      break;
    default:
      r = GgmlType::F16;
      break;
  }
  return row % block_size(r) == 0 ? r : GgmlType::F16;
}

// The layer of "blk.N. ..." (N), or -1 for a tensor outside the blocks.
int layer_of(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  int layer = 0;
  for (std::size_t i = 4; i < name.size() && name[i] != '.'; ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    layer = layer * 10 + (name[i] - '0');
  }
  return layer;
}

// "blk.7.ffn_down_exps.weight" -> "blk.*.ffn_down_exps.weight", to report fallbacks once.
std::string name_pattern(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return name;
  const std::size_t dot = name.find('.', 4);
  return dot == std::string::npos ? name : "blk.*" + name.substr(dot);
}

}  // namespace

void assign_types(std::vector<SynthTensor>& tensors, const SynthTypeOptions& types, bool tied,
                  std::vector<std::string>& notes) {
  // (pattern, row, wanted, got) -> count, for one note per kind of fallback.
  std::map<std::tuple<std::string, std::uint64_t, GgmlType, GgmlType>, int> fallbacks;
  int n_layers = 0;
  for (const SynthTensor& t : tensors) n_layers = std::max(n_layers, layer_of(t.name) + 1);
  for (SynthTensor& t : tensors) {
    const std::uint64_t row = t.ne[0];
    GgmlType wanted = types.type;
    switch (t.role) {
      case SynthRole::kFloat32:
        wanted = GgmlType::F32;
        break;
      case SynthRole::kKeepSource:
        wanted = is_float_type(types.type) ? types.type : GgmlType::BF16;
        break;
      case SynthRole::kOutput:
        wanted = types.head_type.value_or(default_head_type(types.type, row));
        break;
      case SynthRole::kTokenEmbd:
        wanted = tied ? types.head_type.value_or(default_head_type(types.type, row))
                      : types.embd_type.value_or(types.type);
        break;
      case SynthRole::kWeight:
        wanted = preset_layer_type(types.preset, types.type,
                                   convert_detail::role_for(t.name, t.ne.size()), layer_of(t.name),
                                   n_layers);
        break;
    }
    t.type = fallback_type(wanted, row);
    if (t.type != wanted) ++fallbacks[{name_pattern(t.name), row, wanted, t.type}];
    if (!can_fill(t.type))
      fail("tensor '{}': qforge synth cannot generate type {} (no block generator or quantizer)",
           t.name, type_name(t.type));
  }
  for (const auto& [key, n] : fallbacks) {
    const auto& [pattern, row, wanted, got] = key;
    notes.push_back(fmt::format(
        "fallback {} -> {} for {} ({} tensors): rows of {} are not a "
        "multiple of {}'s block of {}",
        type_name(wanted), type_name(got), pattern, n, row, type_name(wanted), block_size(wanted)));
  }
}

std::uint32_t file_type_for(GgmlType type) {
  switch (type) {
    case GgmlType::F32:
      return 0;
    case GgmlType::F16:
      return 1;
    case GgmlType::Q4_0:
      return 2;
    case GgmlType::Q4_1:
      return 3;
    case GgmlType::Q8_0:
      return 7;
    case GgmlType::Q5_0:
      return 8;
    case GgmlType::Q5_1:
      return 9;
    case GgmlType::Q2_K:
      return 10;
    case GgmlType::Q3_K:
      return 11;  // Q3_K_S: the single-type Q3_K mix
    case GgmlType::Q4_K:
      return 14;  // Q4_K_S
    case GgmlType::Q5_K:
      return 16;  // Q5_K_S
    case GgmlType::Q6_K:
      return 18;
    case GgmlType::IQ2_XXS:
      return 19;
    case GgmlType::IQ2_XS:
      return 20;
    case GgmlType::IQ3_XXS:
      return 23;
    case GgmlType::IQ1_S:
      return 24;
    case GgmlType::IQ4_NL:
      return 25;
    case GgmlType::IQ3_S:
      return 26;
    case GgmlType::IQ2_S:
      return 28;
    case GgmlType::IQ4_XS:
      return 30;
    case GgmlType::IQ1_M:
      return 31;
    case GgmlType::BF16:
      return 32;
    case GgmlType::TQ1_0:
      return 36;
    case GgmlType::TQ2_0:
      return 37;
    case GgmlType::MXFP4:
      return 38;
    default:
      fail("--type {}: no llama.cpp file type corresponds to it", type_name(type));
  }
}

}  // namespace qforge::synth::detail
