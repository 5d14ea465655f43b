// Loading a Hugging Face checkpoint directory. Only the files' structure is checked here (valid
// JSON, expected top-level types); what the fields mean is the converter's business.
#include "formats/hf_checkpoint.h"

#include <system_error>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/safetensors_internal.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

std::optional<nlohmann::json> read_optional_object(const fs::path& path) {
  if (!is_file(path)) return std::nullopt;
  nlohmann::json j = read_json_file(path);
  if (!j.is_object())
    fail("{}: top level is a JSON {}, expected an object", path.string(), j.type_name());
  return j;
}

// A chat_template value: a string, or a list of {"name", "template"} of which "default" is used
// (the form transformers writes when a tokenizer has several templates, e.g. "tool_use").
std::optional<std::string> template_from_value(const nlohmann::json& v, const std::string& where) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array())
    fail("{}: chat_template is {}, expected a string or a list of {{name, template}}", where,
         v.type_name());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const auto& item = v[i];
    const auto name = item.is_object() ? item.find("name") : item.end();
    const auto tmpl = item.is_object() ? item.find("template") : item.end();
    if (!item.is_object() || name == item.end() || !name->is_string() || tmpl == item.end() ||
        !tmpl->is_string())
      fail("{}: chat_template[{}] must be an object with string fields name and template", where,
           i);
    if (*name == "default") return tmpl->get<std::string>();
  }
  return std::nullopt;  // named templates only: none is the default one
}

std::optional<std::string> find_chat_template(const HfCheckpoint& ckpt) {
  // transformers lets a separate template file override the one in tokenizer_config.json.
  const fs::path jinja = ckpt.dir / "chat_template.jinja";
  if (is_file(jinja)) {
    const MappedFile file = MappedFile::open(jinja);
    const auto bytes = file.bytes();
    return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  const fs::path json_path = ckpt.dir / "chat_template.json";
  if (const auto j = read_optional_object(json_path)) {
    if (const auto it = j->find("chat_template"); it != j->end()) {
      if (auto t = template_from_value(*it, json_path.string())) return t;
    }
  }
  if (ckpt.tokenizer_config) {
    const auto& tc = *ckpt.tokenizer_config;
    if (const auto it = tc.find("chat_template"); it != tc.end())
      return template_from_value(*it, (ckpt.dir / "tokenizer_config.json").string());
  }
  return std::nullopt;
}

}  // namespace

HfCheckpoint HfCheckpoint::open(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail("{}: not a directory (expected a Hugging Face checkpoint directory)", dir.string());
  HfCheckpoint ckpt;
  ckpt.dir = dir;
  const fs::path config_path = dir / "config.json";
  if (!is_file(config_path))
    fail("{}: config.json not found (is this a Hugging Face checkpoint directory?)", dir.string());
  ckpt.config = *read_optional_object(config_path);
  if (ckpt.config.contains("text_config") && !ckpt.config["text_config"].is_object() &&
      !ckpt.config["text_config"].is_null())
    fail("{}: text_config is {}, expected an object", config_path.string(),
         ckpt.config["text_config"].type_name());

  ckpt.generation_config = read_optional_object(dir / "generation_config.json");
  ckpt.tokenizer_json = read_optional_object(dir / "tokenizer.json");
  ckpt.tokenizer_config = read_optional_object(dir / "tokenizer_config.json");
  if (is_file(dir / "tokenizer.model")) ckpt.tokenizer_model = dir / "tokenizer.model";
  ckpt.chat_template = find_chat_template(ckpt);

  // Weights are optional here (configs and tokenizer can be used alone); the converter checks that
  // the tensors it needs exist. PyTorch pickles are refused rather than silently ignored.
  bool has_safetensors = false;
  bool has_pickle = false;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    has_safetensors = has_safetensors || name.ends_with(".safetensors") ||
                      name.ends_with(".safetensors.index.json");
    has_pickle = has_pickle || (name.starts_with("pytorch_model") && name.ends_with(".bin"));
  }
  if (has_safetensors) {
    ckpt.weights = SafetensorsModel::open(dir);
  } else if (has_pickle) {
    fail(
        "{}: weights are only in PyTorch .bin files; qforge reads safetensors (re-save the model "
        "with safe_serialization=True)",
        dir.string());
  }
  return ckpt;
}

const nlohmann::json& HfCheckpoint::text_config() const {
  if (config.is_object()) {
    const auto it = config.find("text_config");
    if (it != config.end() && it->is_object()) return *it;
  }
  return config;
}

std::string HfCheckpoint::architecture() const {
  if (!config.is_object()) return "";
  const auto it = config.find("architectures");
  if (it == config.end() || !it->is_array() || it->empty() || !(*it)[0].is_string()) return "";
  return (*it)[0].get<std::string>();
}

}  // namespace qforge
