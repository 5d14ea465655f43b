// Small typed readers of GGUF metadata shared by `qforge export-hf` and `qforge quantize`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf.h"

namespace qforge::export_detail {

std::optional<std::uint64_t> meta_uint(const GgufReader& g, std::string_view key);
std::optional<double> meta_float(const GgufReader& g, std::string_view key);
std::optional<std::string> meta_string(const GgufReader& g, std::string_view key);
std::optional<bool> meta_bool(const GgufReader& g, std::string_view key);
// Array of numbers or bools as int64 (bools 0/1); nullopt when absent. A scalar becomes a
// one-element vector so callers can treat "per-layer or global" keys alike.
std::optional<std::vector<std::int64_t>> meta_int_list(const GgufReader& g, std::string_view key);
std::vector<std::string> meta_string_array(const GgufReader& g, std::string_view key);
std::vector<float> meta_float_array(const GgufReader& g, std::string_view key);

// tokenizer.ggml.<what>_token_id: nullopt when absent or llama.cpp's "none" (-1 / 0xFFFFFFFF);
// fails when it lies outside a vocabulary of n_vocab tokens (n_vocab 0: unchecked).
std::optional<std::uint64_t> meta_token_id(const GgufReader& g, std::string_view what,
                                           std::uint64_t n_vocab);

std::uint64_t require_uint(const GgufReader& g, std::string_view key);

// The shortest decimal that reads back as the same float (1e-05, not 9.999999747378752e-06):
// metadata floats are F32, config.json values are written the way people write them.
double tidy_float(double v);

}  // namespace qforge::export_detail
