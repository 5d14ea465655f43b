// safetensors writer: all tensors are declared first, so the header (with every offset) can be
// written before any data; data then streams in declaration order with no padding between tensors
// (the format has none: readers require contiguous data).
#include <cstring>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/safetensors.h"
#include "formats/safetensors_internal.h"

namespace qforge {

using st_detail::printable;

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path)
    : path_(std::move(path)), out_(std::make_unique<AtomicFile>(path_)) {}

SafetensorsWriter::~SafetensorsWriter() = default;  // an unfinished file is removed by AtomicFile

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  if (header_written_)
    fail("{}: metadata '{}' set after tensor data was written", path_.string(), printable(key));
  metadata_[std::move(key)] = std::move(value);
}

void SafetensorsWriter::add_tensor(std::string name, StDtype dtype,
                                   std::vector<std::uint64_t> shape) {
  if (header_written_)
    fail("{}: tensor '{}' declared after tensor data was written", path_.string(), printable(name));
  if (name == "__metadata__")
    fail("{}: '__metadata__' is reserved and cannot name a tensor", path_.string());
  for (const auto& d : decls_) {
    if (d.name == name) fail("{}: tensor '{}' declared twice", path_.string(), printable(name));
  }
  std::uint64_t bytes = st_dtype_size(dtype);
  for (const auto dim : shape) {
    if (__builtin_mul_overflow(bytes, dim, &bytes))
      fail("{}: tensor '{}': shape overflows a 64-bit byte count", path_.string(), printable(name));
  }
  decls_.push_back({std::move(name), dtype, std::move(shape), bytes});
}

void SafetensorsWriter::write_header() {
  // ordered_json keeps __metadata__ first and tensors in declaration (= data) order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    auto& meta = header["__metadata__"];
    meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
  }
  std::uint64_t offset = 0;
  for (const auto& d : decls_) {
    const std::uint64_t end = offset + d.bytes;
    if (end < offset) fail("{}: total tensor data overflows 64 bits", path_.string());
    header[d.name] = {
        {"dtype", st_dtype_name(d.dtype)}, {"shape", d.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // a name or value that is not valid UTF-8
    fail("{}: cannot write header: {}", path_.string(), st_detail::json_error_text(e));
  }
  // Pad with spaces so tensor data starts 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::byte len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<std::byte>((static_cast<std::uint64_t>(text.size()) >> (8 * i)) & 0xff);
  out_->write(len);
  out_->write(std::as_bytes(std::span(text.data(), text.size())));
  header_written_ = true;
}

void SafetensorsWriter::write_tensor_data(std::span<const std::byte> bytes) {
  if (!out_) fail("{}: write after finish()", path_.string());
  if (!header_written_) write_header();
  // Tensors with no bytes need no call: skip them unless this (empty) call is theirs.
  while (!bytes.empty() && next_ < decls_.size() && decls_[next_].bytes == 0) ++next_;
  if (next_ >= decls_.size())
    fail("{}: {} bytes of tensor data written after all {} declared tensors", path_.string(),
         bytes.size(), decls_.size());
  const Decl& d = decls_[next_];
  if (bytes.size() != d.bytes)
    fail("{}: tensor '{}' ({} {} elements): got {} bytes, expected {}", path_.string(),
         printable(d.name), st_dtype_name(d.dtype), d.bytes / st_dtype_size(d.dtype), bytes.size(),
         d.bytes);
  out_->write(bytes);
  ++next_;
}

void SafetensorsWriter::finish() {
  if (!out_) fail("{}: finish() called twice", path_.string());
  if (!header_written_) write_header();
  while (next_ < decls_.size() && decls_[next_].bytes == 0) ++next_;
  if (next_ != decls_.size())
    fail("{}: finish() with data for {} of {} tensors; '{}' has none", path_.string(), next_,
         decls_.size(), printable(decls_[next_].name));
  out_->commit();
  out_.reset();
}

}  // namespace qforge
