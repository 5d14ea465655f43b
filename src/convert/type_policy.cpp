#include "convert/type_policy.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>

#include "core/error.h"

namespace qforge {
namespace {

struct TypeEntry {
  const char* name;
  GgmlType base;
  TypePreset preset;
  std::uint32_t file_type;  // llama.cpp LlamaFileType
};

// Plain K-quant names map to the "_S" file types: every matrix gets that type.
constexpr TypeEntry kTypes[] = {
    {"f32", GgmlType::F32, TypePreset::kNone, 0},
    {"f16", GgmlType::F16, TypePreset::kNone, 1},
    {"bf16", GgmlType::BF16, TypePreset::kNone, 32},
    {"q8_0", GgmlType::Q8_0, TypePreset::kNone, 7},
    {"q4_0", GgmlType::Q4_0, TypePreset::kNone, 2},
    {"q4_1", GgmlType::Q4_1, TypePreset::kNone, 3},
    {"q5_0", GgmlType::Q5_0, TypePreset::kNone, 8},
    {"q5_1", GgmlType::Q5_1, TypePreset::kNone, 9},
    {"q2_k", GgmlType::Q2_K, TypePreset::kNone, 10},
    {"q3_k", GgmlType::Q3_K, TypePreset::kNone, 11},
    {"q4_k", GgmlType::Q4_K, TypePreset::kNone, 14},
    {"q5_k", GgmlType::Q5_K, TypePreset::kNone, 16},
    {"q6_k", GgmlType::Q6_K, TypePreset::kNone, 18},
    {"iq4_nl", GgmlType::IQ4_NL, TypePreset::kNone, 25},
    {"iq4_xs", GgmlType::IQ4_XS, TypePreset::kNone, 30},
    {"q4_k_m", GgmlType::Q4_K, TypePreset::kQ4_K_M, 15},
    {"q4_k_s", GgmlType::Q4_K, TypePreset::kQ4_K_S, 14},
    {"q5_k_m", GgmlType::Q5_K, TypePreset::kQ5_K_M, 17},
};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// llama-quantize's choice of layers that get more bits in the _M presets.
bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

void add_reason(std::string& reason, std::string_view more) {
  if (!reason.empty()) reason += "; ";
  reason += more;
}

}  // namespace

GgmlType preset_layer_type(TypePreset preset, GgmlType base, TensorRole role, int layer,
                           int n_layers) {
  if (role != TensorRole::kAttnV && role != TensorRole::kFfnDown) return base;
  const int il = std::max(layer, 0);
  const int n = std::max(n_layers, 1);
  switch (preset) {
    case TypePreset::kQ4_K_M:
    case TypePreset::kQ5_K_M:
      return use_more_bits(il, n) ? GgmlType::Q6_K : base;
    case TypePreset::kQ4_K_S:
      return (role == TensorRole::kAttnV && il < 4) || (role == TensorRole::kFfnDown && il < n / 8)
                 ? GgmlType::Q5_K
                 : base;
    case TypePreset::kNone:
      break;
  }
  return base;
}

TypeRequest parse_type_request(std::string_view name) {
  const std::string l = lower(name);
  for (const auto& e : kTypes) {
    if (l == e.name) return {l, e.base, e.preset, e.file_type};
  }
  fail("--type '{}' is not supported; choose one of {}", name,
       fmt::join(supported_type_names(), ", "));
}

std::vector<std::string> supported_type_names() {
  std::vector<std::string> out;
  for (const auto& e : kTypes) out.emplace_back(e.name);
  return out;
}

TypeOverride parse_override(std::string_view spec) {
  const std::size_t eq = spec.rfind('=');
  if (eq == std::string_view::npos || eq == 0 || eq + 1 == spec.size())
    fail(
        "--override '{}': expected PATTERN=TYPE (a regular expression over GGUF tensor names, "
        "e.g. 'ffn_down=q8_0')",
        spec);
  const std::string pattern(spec.substr(0, eq));
  const std::string type_name(spec.substr(eq + 1));
  const TypeRequest request = parse_type_request(type_name);
  if (request.preset != TypePreset::kNone)
    fail("--override '{}': {} is a preset, not a tensor type", spec, type_name);
  try {
    return {pattern, std::regex(pattern, std::regex::ECMAScript), request.base};
  } catch (const std::regex_error& e) {
    fail("--override '{}': invalid regular expression '{}': {}", spec, pattern, e.what());
  }
}

GgmlType fallback_for_row_length(GgmlType type, std::uint64_t cols, std::string& why) {
  if (cols % block_size(type) == 0) return type;
  GgmlType next = GgmlType::F16;
  switch (type) {
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
      next = GgmlType::Q4_0;
      break;
    case GgmlType::Q4_K:
      next = GgmlType::Q5_0;
      break;
    case GgmlType::Q5_K:
      next = GgmlType::Q5_1;
      break;
    case GgmlType::Q6_K:
      next = GgmlType::Q8_0;
      break;
    case GgmlType::IQ4_XS:
      next = GgmlType::IQ4_NL;
      break;
    default:
      break;
  }
  if (cols % block_size(next) != 0) next = GgmlType::F16;
  add_reason(why, fmt::format("row length {} is not a multiple of {}'s block of {}: {}", cols,
                              type_name(type), block_size(type), type_name(next)));
  return next;
}

TypeDecision choose_type(const TensorPlan& tensor, const TypeRequest& request,
                         const std::vector<TypeOverride>& overrides, const LatticeSpec& lattice,
                         TypeContext& context) {
  TypeDecision d;
  if (tensor.role == TensorRole::kFloat32) {
    d.type = GgmlType::F32;
    if (request.base != GgmlType::F32) d.reason = "1-D / norm / router / scale: always F32";
    return d;
  }
  const bool on_lattice = lattice.kind != LatticeKind::kNone;
  const std::string lattice_name =
      fmt::format("{}/{}", lattice_kind_name(lattice.kind), lattice.group_size);

  for (const auto& ov : overrides) {
    if (!std::regex_search(tensor.name, ov.regex)) continue;
    d.type = ov.type;
    d.reason = fmt::format("--override '{}'", ov.pattern);
    if (on_lattice && lattice_target_supported(ov.type, lattice.kind)) {
      d.lattice = true;
      add_reason(d.reason, fmt::format("QAT lattice {} written exactly", lattice_name));
    }
    d.type = fallback_for_row_length(d.type, tensor.cols(), d.reason);
    return d;
  }

  if (request.is_float()) {
    d.type = request.base;
    return d;
  }

  if (on_lattice) {
    d.lattice = true;
    if (request.base == GgmlType::Q8_0 && lattice_target_supported(GgmlType::Q8_0, lattice.kind)) {
      d.type = GgmlType::Q8_0;
      d.reason = fmt::format("QAT lattice {}: exact Q8_0", lattice_name);
    } else {
      d.type = lattice.kind == LatticeKind::kAsymmetric ? GgmlType::Q4_1 : GgmlType::Q4_0;
      d.reason = fmt::format("QAT lattice {}: exact {}", lattice_name, type_name(d.type));
    }
    return d;
  }

  if (context.qat_checkpoint) {
    // Tensors that QAT did not put on a grid were trained at full precision: keep 8 bits.
    d.type = GgmlType::Q8_0;
    if (request.base != GgmlType::Q8_0)
      d.reason = "QAT checkpoint, tensor not on the lattice: kept at Q8_0";
    if (tensor.cols() % block_size(GgmlType::Q8_0) != 0) {
      d.type = GgmlType::BF16;
      d.reason = fmt::format(
          "QAT checkpoint, tensor not on the lattice; row length {} is not a "
          "multiple of 32: BF16 (exact)",
          tensor.cols());
    }
    return d;
  }

  d.type = request.base;
  const bool is_head = tensor.role == TensorRole::kOutput ||
                       (context.tied_embeddings && tensor.role == TensorRole::kTokenEmbd);
  if (is_head) {
    if (request.base != GgmlType::Q8_0) {
      d.type = GgmlType::Q6_K;
      d.reason = "output head: Q6_K (as llama-quantize)";
    }
  } else {
    d.type = preset_layer_type(request.preset, request.base, tensor.role, tensor.layer,
                               context.n_layers);
    if (d.type != request.base) {
      d.reason = fmt::format("{}: more bits for this layer's {}", request.name,
                             tensor.role == TensorRole::kAttnV ? "attn_v" : "ffn_down");
    }
  }
  d.type = fallback_for_row_length(d.type, tensor.cols(), d.reason);
  return d;
}

}  // namespace qforge
