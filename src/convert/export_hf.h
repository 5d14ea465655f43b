// `qforge export-hf`: GGUF -> Hugging Face checkpoint directory (the inverse of `qforge convert`
// and of llama.cpp's convert_hf_to_gguf.py) for Llama, Gemma 3 and Gemma 4 text models.
//
// Every tensor is dequantized to F32 and written as BF16 (or F32) safetensors, undoing the
// converter's transforms: Llama's Q/K rotary row permutation, Gemma 3's "+1" on RMSNorm weights;
// generated tensors (rope_freqs) are dropped. config.json and generation_config.json are rebuilt
// from the GGUF metadata, tokenizer.json / tokenizer_config.json from the GGUF vocabulary.
// The directory appears atomically: everything is written into a sibling temporary directory
// that is renamed into place at the end (a failure leaves nothing behind).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/gguf.h"

namespace qforge {

struct ExportHfOptions {
  std::filesystem::path input;       // .gguf
  std::filesystem::path output_dir;  // must not exist, or be an empty directory
  std::string dtype = "bf16";        // bf16 | f32
  // Shard the weights (model-0000i-of-0000n.safetensors + index) when they exceed this size.
  std::uint64_t max_shard_bytes = 4ull << 30;
  bool tokenizer = true;  // write tokenizer files (needs tokenizer.ggml.* metadata)
  int threads = 0;        // 0: keep the pool's default
};

struct ExportTensorReport {
  std::string gguf_name;
  std::string hf_name;
  std::string gguf_type;
  std::vector<std::uint64_t> hf_shape;
  std::string transform;  // "", "unpermute(n_head)", "-1 (Gemma 3 norm)"
};

struct ExportHfReport {
  std::string input, output_dir;
  std::string arch, hf_arch;
  std::vector<ExportTensorReport> tensors;
  std::vector<std::string> dropped;  // GGUF tensors not exported (generated tables)
  std::vector<std::string> files;    // written files, relative to output_dir
  std::vector<std::string> notes;    // approximations worth telling the user about
  std::uint64_t weight_bytes = 0;
  int shards = 1;
  double seconds = 0;
};

ExportHfReport export_hf(const ExportHfOptions& options);
std::string export_report_text(const ExportHfReport& report);

// ---- pieces, exposed for tests

// config.json (and generation_config.json) from the GGUF metadata; `hf_arch` is the
// transformers class name written to "architectures".
struct HfConfigFiles {
  std::string hf_arch;
  nlohmann::ordered_json config;
  nlohmann::ordered_json generation_config;
  std::vector<std::string> notes;
};
HfConfigFiles hf_config_from_gguf(const GgufReader& gguf, const std::string& torch_dtype);

// tokenizer.json and tokenizer_config.json from tokenizer.ggml.*. SentencePiece ("llama",
// "gemma4" without merges) vocabularies become a byte-fallback BPE whose merges are rebuilt from
// the scores (see docs/quantize.md, "export-hf tokenizer").
struct HfTokenizerFiles {
  // tokenizer.json without its model.vocab (a placeholder string): ordered_json objects insert
  // in linear time, too slow for 262k tokens. tokenizer_json_text() splices `vocab` in.
  nlohmann::ordered_json tokenizer;
  std::vector<std::pair<std::string, std::uint64_t>> vocab;  // id order, first id of duplicates
  nlohmann::ordered_json tokenizer_config;
  std::vector<std::string> notes;
};
HfTokenizerFiles hf_tokenizer_from_gguf(const GgufReader& gguf, const std::string& hf_arch,
                                        std::uint64_t max_length);

std::string tokenizer_json_text(const HfTokenizerFiles& files);

// Merges for a SentencePiece vocabulary: every split of a normal token into two normal tokens,
// ordered by the merged token's score (descending), then its id, then the left piece's length.
std::vector<std::pair<std::string, std::string>> merges_from_scores(
    const std::vector<std::string>& tokens, const std::vector<float>& scores,
    const std::vector<std::int32_t>& types);

}  // namespace qforge
