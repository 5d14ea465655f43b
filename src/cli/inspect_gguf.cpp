// The JSON report of a GGUF file for `qforge inspect`.
#include <algorithm>
#include <cmath>
#include <map>
#include <type_traits>

#include "cli/inspect_report.h"
#include "formats/gguf.h"

namespace qforge::cli {
namespace {

// JSON has no NaN or infinities: those become the strings "nan", "inf", "-inf".
Json float_json(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

Json value_json(const GgufValue& v, const InspectOptions& options);

Json array_items_json(const GgufArray& a, const InspectOptions& options) {
  Json items = Json::array();
  const std::size_t n =
      options.all_metadata ? a.items.size() : std::min(a.items.size(), options.array_items);
  for (std::size_t i = 0; i < n; ++i) items.push_back(value_json(a.items[i], options));
  return items;
}

// A plain JSON value (nested arrays become nested lists, truncated like the top level).
Json value_json(const GgufValue& v, const InspectOptions& options) {
  return std::visit(
      [&](const auto& x) -> Json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::shared_ptr<GgufArray>>) {
          return array_items_json(*x, options);
        } else if constexpr (std::is_floating_point_v<T>) {
          return float_json(static_cast<double>(x));
        } else {
          return x;
        }
      },
      v.value);
}

Json metadata_entry(const GgufValue& v, const InspectOptions& options) {
  Json e;
  e["type"] = std::string(gguf_value_type_name(v.type()));
  if (v.type() == GgufValueType::ARRAY) {
    const GgufArray& a = v.as_array();
    e["element_type"] = std::string(gguf_value_type_name(a.element_type));
    e["count"] = a.items.size();
    e["value"] = array_items_json(a, options);
    e["truncated"] = e["value"].size() < a.items.size();
  } else {
    e["value"] = value_json(v, options);
  }
  return e;
}

}  // namespace

Json gguf_report(const GgufReader& reader, const InspectOptions& options) {
  std::uint64_t parameters = 0;
  std::uint64_t tensor_bytes = 0;
  std::map<std::string, TypeTotals> by_type;
  Json tensors = Json::array();
  for (const GgufTensorInfo& t : reader.tensors()) {
    const std::uint64_t elements = t.n_elements();
    const std::uint64_t bytes = t.n_bytes();
    parameters += elements;
    tensor_bytes += bytes;
    TypeTotals& totals = by_type[std::string(type_name(t.type))];
    ++totals.tensors;
    totals.elements += elements;
    totals.bytes += bytes;
    Json j;
    j["name"] = t.name;
    j["type"] = std::string(type_name(t.type));
    j["shape"] = t.shape;
    j["elements"] = elements;
    j["bytes"] = bytes;
    j["bits_per_weight"] = bits_per_weight(bytes, elements);
    j["offset"] = t.offset;
    j["file_offset"] = reader.data_offset() + t.offset;
    tensors.push_back(std::move(j));
  }

  Json r;
  r["format"] = "gguf";
  r["path"] = reader.path();
  r["file_size"] = reader.file_size();
  r["gguf_version"] = reader.version();
  r["architecture"] = reader.architecture();
  r["alignment"] = reader.alignment();
  r["data_offset"] = reader.data_offset();
  r["tensor_count"] = reader.tensors().size();
  r["parameter_count"] = parameters;
  r["tensor_bytes"] = tensor_bytes;
  r["bits_per_weight"] = bits_per_weight(tensor_bytes, parameters);
  r["types"] = types_section({by_type.begin(), by_type.end()});
  r["metadata_count"] = reader.metadata().size();
  Json metadata = Json::object();
  for (const GgufKV& kv : reader.metadata()) metadata[kv.key] = metadata_entry(kv.value, options);
  r["metadata"] = std::move(metadata);
  r["tensors"] = std::move(tensors);
  return r;
}

}  // namespace qforge::cli
