// The JSON report of a safetensors file, sharded checkpoint or HF checkpoint directory.
#include <map>

#include "cli/inspect_report.h"
#include "formats/hf_checkpoint.h"
#include "formats/safetensors.h"

namespace qforge::cli {
namespace {

Json weights_report(const SafetensorsModel& model, Json r) {
  std::uint64_t file_size = 0;
  Json files = Json::array();
  Json metadata = Json::object();
  for (const auto& f : model.files()) {
    file_size += f->mapping().size();
    Json j;
    j["path"] = f->path();
    j["file_size"] = f->mapping().size();
    j["tensor_count"] = f->tensors().size();
    files.push_back(std::move(j));
    for (const auto& [k, v] : f->metadata()) metadata[k] = v;
  }
  std::uint64_t parameters = 0;
  std::uint64_t tensor_bytes = 0;
  std::map<std::string, TypeTotals> by_type;
  Json tensors = Json::array();
  for (const StTensor* t : model.tensors()) {
    const std::uint64_t elements = t->n_elements();
    const std::uint64_t bytes = t->data.size();
    parameters += elements;
    tensor_bytes += bytes;
    TypeTotals& totals = by_type[std::string(st_dtype_name(t->dtype))];
    ++totals.tensors;
    totals.elements += elements;
    totals.bytes += bytes;
    Json j;
    j["name"] = t->name;
    j["type"] = std::string(st_dtype_name(t->dtype));
    j["shape"] = t->shape;
    j["elements"] = elements;
    j["bytes"] = bytes;
    j["bits_per_weight"] = bits_per_weight(bytes, elements);
    j["file"] = t->file;
    j["file_offset"] = t->data_offset;
    tensors.push_back(std::move(j));
  }
  r["file_size"] = file_size;
  r["files"] = std::move(files);
  r["tensor_count"] = model.tensors().size();
  r["parameter_count"] = parameters;
  r["tensor_bytes"] = tensor_bytes;
  r["bits_per_weight"] = bits_per_weight(tensor_bytes, parameters);
  r["types"] = types_section({by_type.begin(), by_type.end()});
  r["metadata_count"] = metadata.size();
  r["metadata"] = std::move(metadata);
  r["tensors"] = std::move(tensors);
  return r;
}

}  // namespace

Json safetensors_report(const std::filesystem::path& path, const InspectOptions& /*options*/) {
  std::error_code ec;
  Json r;
  if (std::filesystem::is_directory(path, ec) &&
      std::filesystem::is_regular_file(path / "config.json", ec)) {
    const HfCheckpoint ckpt = HfCheckpoint::open(path);
    r["format"] = "hf-checkpoint";
    r["path"] = path.string();
    r["architecture"] = ckpt.architecture();
    const auto& text = ckpt.text_config();
    const auto mt = text.is_object() ? text.find("model_type") : text.end();
    r["model_type"] = (mt != text.end() && mt->is_string()) ? mt->get<std::string>() : "";
    return weights_report(ckpt.weights, std::move(r));
  }
  const SafetensorsModel model = SafetensorsModel::open(path);
  r["format"] = "safetensors";
  r["path"] = path.string();
  r["architecture"] = "";
  return weights_report(model, std::move(r));
}

}  // namespace qforge::cli
