// A Hugging Face checkpoint directory: config.json (with nested text_config for multimodal
// checkpoints), generation_config.json, tokenizer files and safetensors weights. Parsed and
// exposed here; interpretation belongs to the converter.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/safetensors.h"

namespace qforge {

// Parse a JSON file with errors that name the file and the byte offset.
nlohmann::json read_json_file(const std::filesystem::path& path);
nlohmann::json parse_json(std::string_view text, const std::string& what);

struct HfCheckpoint {
  std::filesystem::path dir;
  nlohmann::json config;                         // config.json as written
  std::optional<nlohmann::json> generation_config;
  std::optional<nlohmann::json> tokenizer_json;   // tokenizer.json (HF tokenizers)
  std::optional<std::filesystem::path> tokenizer_model;  // tokenizer.model (SentencePiece)
  std::optional<nlohmann::json> tokenizer_config;  // tokenizer_config.json
  std::optional<std::string> chat_template;        // tokenizer_config or chat_template.jinja/.json
  SafetensorsModel weights;

  static HfCheckpoint open(const std::filesystem::path& dir);

  // The language-model part of config: config["text_config"] when present, else config.
  const nlohmann::json& text_config() const;
  std::string architecture() const;  // config["architectures"][0] or ""
};

}  // namespace qforge
