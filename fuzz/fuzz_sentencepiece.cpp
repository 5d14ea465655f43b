// libFuzzer target: arbitrary bytes parsed as a SentencePiece ModelProto (tokenizer.model).
// Only qforge::Error may escape; the parse must never read out of bounds, hang or crash.
#include <cstddef>
#include <cstdint>
#include <span>

#include "convert/sentencepiece_model.h"
#include "core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const qforge::SentencePieceModel model = qforge::SentencePieceModel::parse(bytes, "<fuzz>");
    // Touch what was read so the values are used.
    std::size_t total = 0;
    for (const auto& piece : model.pieces) total += piece.piece.size();
    if (total > size) __builtin_trap();  // pieces are substrings of the input
  } catch (const qforge::Error&) {
  }
  return 0;
}
