// A SentencePiece model file (tokenizer.model): the protobuf ModelProto that sentencepiece writes,
// read by a small hand-written wire-format parser (no protobuf dependency). Only the fields a GGUF
// vocabulary needs are kept; every other field is skipped by its wire type. Every varint, length
// and field is bounds-checked; errors name the file, the byte offset and what was expected.
//
// Field numbers (sentencepiece_model.proto): ModelProto { pieces = 1 (repeated SentencePiece),
// trainer_spec = 2, normalizer_spec = 3 }; SentencePiece { piece = 1, score = 2 (float),
// type = 3 (enum) }; TrainerSpec { model_type = 3, vocab_size = 4, byte_fallback = 35,
// unk_id = 40, bos_id = 41, eos_id = 42, pad_id = 43 }; NormalizerSpec { name = 1,
// add_dummy_prefix = 3, remove_extra_whitespaces = 4, escape_whitespaces = 5 }.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qforge {

// SentencePiece.Type; the values are the ones GGUF's tokenizer.ggml.token_type uses too.
enum class SpmPieceType : std::int32_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

struct SpmPiece {
  std::string piece;
  float score = 0.0f;
  SpmPieceType type = SpmPieceType::Normal;  // proto2 default when the field is absent
};

// TrainerSpec.ModelType
enum class SpmModelType : std::int32_t { Unigram = 1, Bpe = 2, Word = 3, Char = 4 };

// Defaults are sentencepiece's proto2 defaults, used when a field is absent.
struct SpmTrainerSpec {
  SpmModelType model_type = SpmModelType::Unigram;
  std::int32_t vocab_size = 8000;
  bool byte_fallback = false;
  std::int32_t unk_id = 0;
  std::int32_t bos_id = 1;
  std::int32_t eos_id = 2;
  std::int32_t pad_id = -1;
};

struct SpmNormalizerSpec {
  std::string name;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

struct SentencePieceModel {
  std::vector<SpmPiece> pieces;
  SpmTrainerSpec trainer_spec;
  SpmNormalizerSpec normalizer_spec;
  bool has_trainer_spec = false;
  bool has_normalizer_spec = false;

  // `name` is used in error messages (the file path). Fails on malformed protobuf, an unknown
  // piece type, or a model without pieces.
  static SentencePieceModel parse(std::span<const std::byte> bytes, std::string_view name);
  static SentencePieceModel load(const std::filesystem::path& path);
};

}  // namespace qforge
