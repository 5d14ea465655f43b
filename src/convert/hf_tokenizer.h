// GGUF tokenizer metadata (tokenizer.ggml.*) from a Hugging Face checkpoint's tokenizer files:
// tokenizer.model (SentencePiece protobuf: pieces, scores, types) or tokenizer.json (BPE vocab and
// merges; byte-fallback SentencePiece-style BPE or byte-level GPT-2 style), special token ids and
// add_bos/add_eos from tokenizer_config.json / config.json / generation_config.json, and the chat
// template. Keys, value types and conventions follow llama.cpp's converter so llama.cpp loads them.
#pragma once

#include <string_view>
#include <vector>

#include "formats/gguf.h"
#include "formats/hf_checkpoint.h"

namespace qforge {

// `arch` is the GGUF architecture name ("llama", "gemma3", "gemma4") for arch-specific choices.
std::vector<GgufKV> tokenizer_metadata(const HfCheckpoint& checkpoint, std::string_view arch);

}  // namespace qforge
