// A tokenizer vocabulary as GGUF stores it (llama.cpp's tokenizer.ggml.* conventions).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qforge {

class GgufReader;

// Values of tokenizer.ggml.token_type.
enum class TokenType : std::uint8_t {
  Undefined = 0,  // treated like Normal
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

enum class VocabModel : std::uint8_t {
  SentencePiece,  // tokenizer.ggml.model "llama": merges by piece score, byte fallback
  ByteLevelBpe,   // tokenizer.ggml.model "gpt2": regex pre-tokenizer, ranked merges over bytes
  Gemma4Bpe,      // tokenizer.ggml.model "gemma4": ' ' -> U+2581, ranked merges over UTF-8
                  // characters, <0xXX> byte fallback (a SentencePiece vocabulary run as HF BPE)
};

struct Vocab {
  VocabModel model = VocabModel::SentencePiece;
  std::string model_name = "llama";  // as stored in tokenizer.ggml.model
  std::string pre = "default";       // tokenizer.ggml.pre (BPE pre-tokenizer name)
  std::vector<std::string> tokens;
  std::vector<float> scores;        // same length as tokens (0 when the file has none)
  std::vector<TokenType> types;     // same length as tokens (Normal when the file has none)
  std::vector<std::string> merges;  // "left right", highest priority first (BPE only)
  std::int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1, sep_id = -1;  // -1: none
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;

  std::int32_t size() const { return static_cast<std::int32_t>(tokens.size()); }
  // Checks lengths, ids and types; throws qforge::Error naming `source` and the field.
  void validate(std::string_view source) const;
};

// Builds a Vocab from a GGUF file's tokenizer.ggml.* keys. Defaults follow llama.cpp: for
// "llama" add_bos and add_space_prefix are true and bos/eos/unk default to 1/2/0 when their
// keys are absent; "gemma4" always adds BOS (llama.cpp overrides a stored false too). Ids stored
// as 0xFFFFFFFF (or -1) mean "none". Throws qforge::Error for a missing tokenizer, an
// unsupported tokenizer model, or inconsistent arrays.
Vocab load_vocab(const GgufReader& reader);

}  // namespace qforge
