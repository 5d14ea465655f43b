#include "convert/export_gguf_meta.h"

#include <cstdlib>

#include <fmt/format.h>

#include "core/error.h"

namespace qforge::export_detail {

std::optional<std::uint64_t> meta_uint(const GgufReader& g, std::string_view key) {
  const GgufValue* v = g.find(key);
  if (v == nullptr) return std::nullopt;
  return v->as_uint(key);
}

std::optional<double> meta_float(const GgufReader& g, std::string_view key) {
  const GgufValue* v = g.find(key);
  if (v == nullptr) return std::nullopt;
  return v->as_double(key);
}

std::optional<std::string> meta_string(const GgufReader& g, std::string_view key) {
  const GgufValue* v = g.find(key);
  if (v == nullptr) return std::nullopt;
  return std::string(v->as_string(key));
}

std::optional<bool> meta_bool(const GgufReader& g, std::string_view key) {
  const GgufValue* v = g.find(key);
  if (v == nullptr) return std::nullopt;
  return v->as_bool(key);
}

std::optional<std::vector<std::int64_t>> meta_int_list(const GgufReader& g, std::string_view key) {
  const GgufValue* v = g.find(key);
  if (v == nullptr) return std::nullopt;
  const auto one = [&](const GgufValue& x) -> std::int64_t {
    if (x.type() == GgufValueType::BOOL) return x.as_bool(key) ? 1 : 0;
    return x.as_int(key);
  };
  std::vector<std::int64_t> out;
  if (v->type() == GgufValueType::ARRAY) {
    for (const auto& item : v->as_array(key).items) out.push_back(one(item));
  } else {
    out.push_back(one(*v));
  }
  return out;
}

std::vector<std::string> meta_string_array(const GgufReader& g, std::string_view key) {
  std::vector<std::string> out;
  const GgufValue* v = g.find(key);
  if (v == nullptr) return out;
  const GgufArray& a = v->as_array(key);
  out.reserve(a.items.size());
  for (const auto& item : a.items) out.emplace_back(item.as_string(key));
  return out;
}

std::vector<float> meta_float_array(const GgufReader& g, std::string_view key) {
  std::vector<float> out;
  const GgufValue* v = g.find(key);
  if (v == nullptr) return out;
  const GgufArray& a = v->as_array(key);
  out.reserve(a.items.size());
  for (const auto& item : a.items) out.push_back(static_cast<float>(item.as_double(key)));
  return out;
}

std::optional<std::uint64_t> meta_token_id(const GgufReader& g, std::string_view what,
                                           std::uint64_t n_vocab) {
  const std::string key = fmt::format("tokenizer.ggml.{}_token_id", what);
  const GgufValue* v = g.find(key);
  if (v == nullptr) return std::nullopt;
  const std::int64_t id = v->type() == GgufValueType::UINT32 ? static_cast<std::int64_t>(v->as_uint(key))
                                                             : v->as_int(key);
  if (id < 0 || id == 0xffffffffLL) return std::nullopt;
  if (n_vocab > 0 && static_cast<std::uint64_t>(id) >= n_vocab)
    fail("{}: {} {} is outside the vocabulary of {} tokens", g.path(), key, id, n_vocab);
  return static_cast<std::uint64_t>(id);
}

std::uint64_t require_uint(const GgufReader& g, std::string_view key) {
  const auto v = meta_uint(g, key);
  if (!v) fail("{}: metadata key '{}' is missing", g.path(), key);
  return *v;
}

double tidy_float(double v) {
  const std::string s = fmt::format("{}", static_cast<float>(v));
  return std::strtod(s.c_str(), nullptr);
}

}  // namespace qforge::export_detail
