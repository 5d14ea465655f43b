// GGUF v3 writer: validates declarations up front, writes the header when the first tensor's bytes
// arrive (or at finish), then streams tensor data with zero padding to the alignment.
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/gguf_internal.h"

namespace qforge {
namespace {

using gguf_detail::is_power_of_two;
using gguf_detail::is_valid_utf8;

// Serializes into a memory buffer; the header is small next to tensor data.
class Encoder {
 public:
  template <typename T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    append(&v, sizeof(T));
  }
  void put_string(std::string_view s) {
    put<std::uint64_t>(s.size());
    append(s.data(), s.size());
  }
  void put_value(const GgufValue& v, std::uint32_t depth) {
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, bool>) {
            put<std::uint8_t>(x ? 1 : 0);
          } else if constexpr (std::is_same_v<T, std::string>) {
            put_string(x);
          } else if constexpr (std::is_same_v<T, std::shared_ptr<GgufArray>>) {
            put<std::uint32_t>(static_cast<std::uint32_t>(x->element_type));
            put<std::uint64_t>(x->items.size());
            for (const auto& item : x->items) put_value(item, depth + 1);
          } else {
            put<T>(x);
          }
        },
        v.value);
  }
  const std::vector<std::byte>& bytes() const { return buf_; }

 private:
  // resize + memcpy rather than insert(): GCC 12 reports a false stringop-overflow for the latter.
  void append(const void* p, std::size_t n) {
    if (n == 0) return;
    const std::size_t old = buf_.size();
    buf_.resize(old + n);
    std::memcpy(buf_.data() + old, p, n);
  }
  std::vector<std::byte> buf_;
};

// Checks a value before anything is written, so a bad value never yields a half-valid file.
void validate_value(const GgufValue& v, const std::string& what, std::uint32_t depth) {
  if (const auto* s = std::get_if<std::string>(&v.value)) {
    if (!is_valid_utf8(*s)) fail("{}: string is not valid UTF-8", what);
    return;
  }
  const auto* a = std::get_if<std::shared_ptr<GgufArray>>(&v.value);
  if (a == nullptr) return;
  if (!*a) fail("{}: null array", what);
  if (depth >= gguf_detail::kMaxArrayDepth)
    fail("{}: arrays nested deeper than {} levels", what, gguf_detail::kMaxArrayDepth);
  const GgufArray& arr = **a;
  for (std::size_t i = 0; i < arr.items.size(); ++i) {
    if (arr.items[i].type() != arr.element_type)
      fail("{} item {}: expected {}, got {}", what, i, gguf_value_type_name(arr.element_type),
           gguf_value_type_name(arr.items[i].type()));
    if (arr.element_type == GgufValueType::STRING || arr.element_type == GgufValueType::ARRAY)
      validate_value(arr.items[i], fmt::format("{} item {}", what, i), depth + 1);
  }
}

std::uint64_t align_up(std::uint64_t x, std::uint64_t alignment) {
  const std::uint64_t rem = x % alignment;
  return rem == 0 ? x : x + (alignment - rem);
}

}  // namespace

GgufWriter::GgufWriter(std::filesystem::path path)
    : path_(std::move(path)), out_(std::make_unique<AtomicFile>(path_)) {}

GgufWriter::~GgufWriter() = default;

void GgufWriter::add_kv(std::string key, GgufValue value) {
  if (header_written_) fail("{}: kv '{}' added after tensor data was written", path_.string(), key);
  if (!is_valid_utf8(key)) fail("{}: key is not valid UTF-8", path_.string());
  for (const auto& kv : kvs_)
    if (kv.key == key) fail("{}: duplicate key '{}'", path_.string(), key);
  validate_value(value, fmt::format("{}: kv '{}'", path_.string(), key), 0);
  if (key == gguf_detail::kAlignmentKey) {
    const std::string what = fmt::format("{}: kv '{}'", path_.string(), key);
    const std::uint64_t a = value.as_uint(what);
    if (!is_power_of_two(a)) fail("{}: alignment {} is not a non-zero power of two", what, a);
    alignment_ = a;
  }
  kvs_.push_back({std::move(key), std::move(value)});
}

void GgufWriter::add_tensor(std::string name, std::vector<std::uint64_t> shape, GgmlType type) {
  if (header_written_)
    fail("{}: tensor '{}' declared after tensor data was written", path_.string(), name);
  if (!is_valid_utf8(name)) fail("{}: tensor name is not valid UTF-8", path_.string());
  if (shape.size() > gguf_detail::kMaxDims)
    fail("{}: tensor '{}' has {} dimensions, at most {} are supported", path_.string(), name,
         shape.size(), gguf_detail::kMaxDims);
  for (const auto& t : tensors_)
    if (t.name == name) fail("{}: duplicate tensor name '{}'", path_.string(), name);
  GgufTensorInfo info;
  info.name = std::move(name);
  info.shape = std::move(shape);
  info.type = type;
  try {
    (void)info.n_bytes();  // checks block multiple and overflow
  } catch (const Error& e) {
    fail("{}: {}", path_.string(), e.what());
  }
  tensors_.push_back(std::move(info));
}

void GgufWriter::write_header() {
  // Offsets are assigned now, when the alignment is final.
  std::uint64_t offset = 0;
  for (auto& t : tensors_) {
    t.offset = offset;
    const std::uint64_t n = t.n_bytes();
    if (n > std::numeric_limits<std::uint64_t>::max() - offset - alignment_)
      fail("{}: tensor data exceeds 2^64 bytes", path_.string());
    offset = align_up(offset + n, alignment_);
  }
  Encoder e;
  e.put<std::uint32_t>(0x46554747u);  // "GGUF" read as a little-endian u32
  e.put<std::uint32_t>(3);
  e.put<std::uint64_t>(tensors_.size());
  e.put<std::uint64_t>(kvs_.size());
  for (const auto& kv : kvs_) {
    e.put_string(kv.key);
    e.put<std::uint32_t>(static_cast<std::uint32_t>(kv.value.type()));
    e.put_value(kv.value, 0);
  }
  for (const auto& t : tensors_) {
    e.put_string(t.name);
    e.put<std::uint32_t>(static_cast<std::uint32_t>(t.shape.size()));
    for (const std::uint64_t d : t.shape) e.put<std::uint64_t>(d);
    e.put<std::uint32_t>(static_cast<std::uint32_t>(t.type));
    e.put<std::uint64_t>(t.offset);
  }
  out_->write(e.bytes());
  data_start_ = align_up(out_->position(), alignment_);
  out_->write_zeros(static_cast<std::size_t>(data_start_ - out_->position()));
  header_written_ = true;
}

void GgufWriter::write_tensor_data(std::span<const std::byte> bytes) {
  if (!out_) fail("{}: write after finish()", path_.string());
  if (!header_written_) write_header();
  if (next_tensor_ >= tensors_.size())
    fail("{}: more tensor data than declared tensors ({})", path_.string(), tensors_.size());
  const GgufTensorInfo& t = tensors_[next_tensor_];
  const std::uint64_t n = t.n_bytes();
  if (bytes.size() != n)
    fail("{}: tensor '{}' ({} {}) needs exactly {} bytes, got {}", path_.string(), t.name,
         type_name(t.type), fmt::join(t.shape, "x"), n, bytes.size());
  const std::uint64_t start = data_start_ + t.offset;
  out_->write_zeros(static_cast<std::size_t>(start - out_->position()));
  out_->write(bytes);
  ++next_tensor_;
}

void GgufWriter::finish() {
  if (!out_) fail("{}: finish() called twice", path_.string());
  if (!header_written_) write_header();
  if (next_tensor_ != tensors_.size())
    fail("{}: tensor '{}' has no data ({} of {} tensors written)", path_.string(),
         tensors_[next_tensor_].name, next_tensor_, tensors_.size());
  out_->write_zeros(
      static_cast<std::size_t>(align_up(out_->position(), alignment_) - out_->position()));
  out_->commit();
  out_.reset();
}

}  // namespace qforge
