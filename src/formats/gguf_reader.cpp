// GGUF reader: parses the header of a mapped (or in-memory) file and validates every size,
// type and offset against the bytes actually present before it allocates or indexes anything.
#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "core/error.h"
#include "formats/gguf.h"
#include "formats/gguf_internal.h"

namespace qforge {
namespace {

using gguf_detail::is_power_of_two;
using gguf_detail::kMaxArrayDepth;
using gguf_detail::kMaxDims;

constexpr std::uint64_t kMaxI64 =
    static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());

// Describes the field being read, e.g. "kv 'tokenizer.ggml.tokens' item 17"; only formatted when
// an error is raised, so reading large arrays costs nothing extra.
struct Where {
  std::string_view what;
  const Where* parent = nullptr;
  std::uint64_t index = 0;
  bool has_index = false;

  std::string str() const {
    std::string out = parent != nullptr ? parent->str() + " " : std::string();
    out += what;
    if (has_index) out += fmt::format(" {}", index);
    return out;
  }
};

// Smallest number of bytes a value of each type can occupy; bounds counts before allocating.
std::uint64_t min_encoded_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8:
    case GgufValueType::INT8:
    case GgufValueType::BOOL:
      return 1;
    case GgufValueType::UINT16:
    case GgufValueType::INT16:
      return 2;
    case GgufValueType::UINT32:
    case GgufValueType::INT32:
    case GgufValueType::FLOAT32:
      return 4;
    case GgufValueType::UINT64:
    case GgufValueType::INT64:
    case GgufValueType::FLOAT64:
      return 8;
    case GgufValueType::STRING:
      return 8;  // u64 length
    case GgufValueType::ARRAY:
      return 12;  // u32 element type + u64 count
  }
  return 1;
}

class Cursor {
 public:
  Cursor(std::span<const std::byte> bytes, const std::string& file) : bytes_(bytes), file_(file) {}

  std::uint64_t offset() const { return pos_; }
  std::uint64_t remaining() const { return bytes_.size() - pos_; }

  [[noreturn]] void fail_at(std::uint64_t at, const Where& where, std::string_view problem) const {
    fail("{}: {} at offset {}: {}", file_, where.str(), at, problem);
  }

  void need(std::uint64_t n, const Where& where) const {
    if (n > remaining())
      fail_at(pos_, where,
              fmt::format("needs {} bytes but only {} remain in the file (truncated?)", n,
                          remaining()));
  }

  template <typename T>
  T read(const Where& where) {
    need(sizeof(T), where);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const Where& where) {
    const std::uint64_t at = pos_;
    const auto len = read<std::uint64_t>(where);
    if (len > remaining())
      fail_at(at, where,
              fmt::format("string length {} runs past the end of the file ({} bytes remain)", len,
                          remaining()));
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_),
                  static_cast<std::size_t>(len));
    const std::size_t bad = gguf_detail::first_invalid_utf8(s);
    if (bad != s.size())
      fail_at(pos_ + bad, where,
              fmt::format("string is not valid UTF-8 (byte {} of {})", bad, len));
    pos_ += len;
    return s;
  }

  // Checks that `count` items of at least `min_size` bytes each can still be present.
  void check_count(std::uint64_t at, std::uint64_t count, std::uint64_t min_size,
                   const Where& where) const {
    if (count > remaining() / min_size)
      fail_at(
          at, where,
          fmt::format("count {} cannot fit in the {} bytes left in the file", count, remaining()));
  }

  GgufValueType read_value_type(const Where& where) {
    const std::uint64_t at = pos_;
    const auto raw = read<std::uint32_t>(where);
    if (raw > static_cast<std::uint32_t>(GgufValueType::FLOAT64))
      fail_at(at, where, fmt::format("unknown value type {}", raw));
    return static_cast<GgufValueType>(raw);
  }

  GgufValue read_value(GgufValueType type, const Where& where, std::uint32_t depth) {
    switch (type) {
      case GgufValueType::UINT8:
        return {read<std::uint8_t>(where)};
      case GgufValueType::INT8:
        return {read<std::int8_t>(where)};
      case GgufValueType::UINT16:
        return {read<std::uint16_t>(where)};
      case GgufValueType::INT16:
        return {read<std::int16_t>(where)};
      case GgufValueType::UINT32:
        return {read<std::uint32_t>(where)};
      case GgufValueType::INT32:
        return {read<std::int32_t>(where)};
      case GgufValueType::FLOAT32:
        return {read<float>(where)};
      case GgufValueType::UINT64:
        return {read<std::uint64_t>(where)};
      case GgufValueType::INT64:
        return {read<std::int64_t>(where)};
      case GgufValueType::FLOAT64:
        return {read<double>(where)};
      case GgufValueType::BOOL: {
        const std::uint64_t at = pos_;
        const auto b = read<std::uint8_t>(where);
        if (b > 1) fail_at(at, where, fmt::format("BOOL must be 0 or 1, got {}", b));
        return {b == 1};
      }
      case GgufValueType::STRING:
        return {read_string(where)};
      case GgufValueType::ARRAY:
        return read_array(where, depth);
    }
    fail_at(pos_, where, "unknown value type");
  }

  GgufValue read_array(const Where& where, std::uint32_t depth) {
    const std::uint64_t at = pos_;
    if (depth >= kMaxArrayDepth)
      fail_at(at, where, fmt::format("arrays nested deeper than {} levels", kMaxArrayDepth));
    const GgufValueType element_type = read_value_type(where);
    const std::uint64_t count_at = pos_;
    const auto count = read<std::uint64_t>(where);
    check_count(count_at, count, min_encoded_size(element_type), where);
    auto array = std::make_shared<GgufArray>();
    array->element_type = element_type;
    array->items.reserve(static_cast<std::size_t>(count));
    Where item{"item", &where, 0, true};
    for (std::uint64_t i = 0; i < count; ++i) {
      item.index = i;
      array->items.push_back(read_value(element_type, item, depth + 1));
    }
    return GgufValue{std::move(array)};
  }

 private:
  std::span<const std::byte> bytes_;
  const std::string& file_;
  std::uint64_t pos_ = 0;
};

std::string describe_magic(std::span<const std::byte> b) {
  std::string out;
  for (std::size_t i = 0; i < 4 && i < b.size(); ++i)
    out += fmt::format("{:02x}", static_cast<unsigned>(b[i]));
  return out;
}

// Byte offsets of the fields of one tensor info, for error messages after the header is parsed.
struct TensorInfoOffsets {
  std::uint64_t info = 0;
  std::uint64_t offset_field = 0;
};

}  // namespace

GgufReader GgufReader::open(const std::filesystem::path& path) {
  MappedFile file = MappedFile::open(path);
  const std::span<const std::byte> bytes = file.bytes();
  GgufReader reader = parse(bytes, path.string());
  reader.file_ = std::move(file);  // the mapping's address does not change when moved
  return reader;
}

GgufReader GgufReader::parse(std::span<const std::byte> bytes, std::string name) {
  GgufReader r;
  r.bytes_ = bytes;
  r.name_ = std::move(name);
  Cursor in(bytes, r.name_);

  const Where magic_where{"magic"};
  if (bytes.size() < 4)
    in.fail_at(0, magic_where,
               fmt::format("file is {} bytes, too short to be a GGUF file", bytes.size()));
  if (std::memcmp(bytes.data(), "FUGG", 4) == 0)
    in.fail_at(0, magic_where, "this is a big-endian GGUF file, which is not supported");
  if (std::memcmp(bytes.data(), "GGUF", 4) != 0)
    in.fail_at(0, magic_where,
               fmt::format("not a GGUF file (expected magic 'GGUF', found bytes {})",
                           describe_magic(bytes)));
  in.read<std::uint32_t>(magic_where);

  const Where version_where{"version"};
  r.version_ = in.read<std::uint32_t>(version_where);
  if (r.version_ != 2 && r.version_ != 3) {
    const std::uint32_t swapped = __builtin_bswap32(r.version_);
    if (swapped >= 1 && swapped <= 3)
      in.fail_at(
          4, version_where,
          fmt::format("this is a big-endian GGUF v{} file, which is not supported", swapped));
    in.fail_at(4, version_where,
               fmt::format("unsupported GGUF version {} (only 2 and 3 are supported)", r.version_));
  }

  const Where tensor_count_where{"tensor_count"};
  const std::uint64_t tensor_count_at = in.offset();
  const auto tensor_count = in.read<std::uint64_t>(tensor_count_where);
  const Where kv_count_where{"kv_count"};
  const std::uint64_t kv_count_at = in.offset();
  const auto kv_count = in.read<std::uint64_t>(kv_count_where);
  // Minimum encodings: kv = key length + value type + 1 byte; tensor info = name length + n_dims
  // + type + offset.
  in.check_count(kv_count_at, kv_count, 8 + 4 + 1, kv_count_where);
  in.check_count(tensor_count_at, tensor_count, 8 + 4 + 4 + 8, tensor_count_where);

  // ---- metadata
  std::unordered_set<std::string> keys;
  std::vector<std::uint64_t> kv_offsets;
  r.kvs_.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(kv_count, 1024)));
  for (std::uint64_t i = 0; i < kv_count; ++i) {
    const std::uint64_t at = in.offset();
    const Where key_where{"key of kv", nullptr, i, true};
    std::string key = in.read_string(key_where);
    if (!keys.insert(key).second) in.fail_at(at, key_where, fmt::format("duplicate key '{}'", key));
    const std::string what = fmt::format("kv '{}'", key);
    const Where value_where{what};
    const GgufValueType type = in.read_value_type(value_where);
    kv_offsets.push_back(in.offset());
    GgufValue value = in.read_value(type, value_where, 0);
    r.kvs_.push_back({std::move(key), std::move(value)});
  }

  // ---- tensor infos
  std::vector<TensorInfoOffsets> info_offsets;
  r.tensors_.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(tensor_count, 4096)));
  for (std::uint64_t i = 0; i < tensor_count; ++i) {
    TensorInfoOffsets offs;
    offs.info = in.offset();
    GgufTensorInfo t;
    t.name = in.read_string(Where{"name of tensor", nullptr, i, true});
    if (r.tensor_index_.count(t.name) != 0)
      in.fail_at(offs.info, Where{"tensor", nullptr, i, true},
                 fmt::format("duplicate tensor name '{}'", t.name));
    const std::string what = fmt::format("tensor '{}'", t.name);
    const Where tensor_where{what};
    const Where n_dims_where{"n_dims", &tensor_where};
    const std::uint64_t n_dims_at = in.offset();
    const auto n_dims = in.read<std::uint32_t>(n_dims_where);
    if (n_dims > kMaxDims)
      in.fail_at(n_dims_at, n_dims_where,
                 fmt::format("{} dimensions, at most {} are supported", n_dims, kMaxDims));
    std::uint64_t elements = 1;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const Where dim_where{"dim", &tensor_where, d, true};
      const std::uint64_t dim_at = in.offset();
      const auto dim = in.read<std::uint64_t>(dim_where);
      if (dim > kMaxI64)
        in.fail_at(dim_at, dim_where, fmt::format("dimension {} is negative", dim));
      if (dim != 0 && elements > kMaxI64 / dim)
        in.fail_at(dim_at, dim_where, "element count overflows int64");
      elements = dim == 0 ? 0 : elements * dim;
      t.shape.push_back(dim);
    }
    const Where type_where{"type", &tensor_where};
    const std::uint64_t type_at = in.offset();
    const auto raw_type = in.read<std::uint32_t>(type_where);
    const auto type_traits = ggml_type_traits(raw_type);
    if (!type_traits)
      in.fail_at(type_at, type_where, fmt::format("unknown ggml type {}", raw_type));
    t.type = type_traits->type;
    if (!t.shape.empty() && t.shape[0] % type_traits->block_size != 0)
      in.fail_at(n_dims_at + 4, Where{"shape[0]", &tensor_where},
                 fmt::format("{} is not a multiple of the {} block size {}", t.shape[0],
                             type_traits->name, type_traits->block_size));
    if (t.shape.empty() && type_traits->block_size != 1)
      in.fail_at(n_dims_at, n_dims_where,
                 fmt::format("a scalar cannot have block type {}", type_traits->name));
    offs.offset_field = in.offset();
    t.offset = in.read<std::uint64_t>(Where{"offset", &tensor_where});
    r.tensor_index_.emplace(t.name, r.tensors_.size());
    r.tensors_.push_back(std::move(t));
    info_offsets.push_back(offs);
  }
  const std::uint64_t header_end = in.offset();

  // ---- alignment
  for (std::size_t k = 0; k < r.kvs_.size(); ++k) {
    if (r.kvs_[k].key != gguf_detail::kAlignmentKey) continue;
    const GgufValue& a = r.kvs_[k].value;
    const Where where{"kv 'general.alignment'"};
    const GgufValueType type = a.type();
    const bool integral = type == GgufValueType::UINT8 || type == GgufValueType::UINT16 ||
                          type == GgufValueType::UINT32 || type == GgufValueType::UINT64 ||
                          type == GgufValueType::INT8 || type == GgufValueType::INT16 ||
                          type == GgufValueType::INT32 || type == GgufValueType::INT64;
    if (!integral)
      in.fail_at(kv_offsets[k], where,
                 fmt::format("expected an unsigned integer, got {}", gguf_value_type_name(type)));
    const bool negative = type != GgufValueType::UINT64 && a.as_int("general.alignment") < 0;
    if (negative || !is_power_of_two(a.as_uint("general.alignment")))
      in.fail_at(kv_offsets[k], where,
                 fmt::format("alignment {} is not a non-zero power of two",
                             negative ? std::to_string(a.as_int("general.alignment"))
                                      : std::to_string(a.as_uint("general.alignment"))));
    r.alignment_ = a.as_uint("general.alignment");
  }

  // ---- data section and tensor placement
  const std::uint64_t rem = header_end % r.alignment_;
  const std::uint64_t pad = rem == 0 ? 0 : r.alignment_ - rem;
  const std::uint64_t file_size = bytes.size();
  if (pad > file_size - header_end) {
    if (!r.tensors_.empty())
      in.fail_at(header_end, Where{"data section"},
                 fmt::format("padding to the alignment {} runs past the end of the file ({} bytes)",
                             r.alignment_, file_size));
    r.data_offset_ = file_size;  // no tensors: nothing to point at
  } else {
    r.data_offset_ = header_end + pad;
  }
  const std::uint64_t data_size = file_size - r.data_offset_;
  for (std::size_t i = 0; i < r.tensors_.size(); ++i) {
    const GgufTensorInfo& t = r.tensors_[i];
    const std::string what = fmt::format("tensor '{}' offset", t.name);
    const Where where{what};
    if (t.offset % r.alignment_ != 0)
      in.fail_at(info_offsets[i].offset_field, where,
                 fmt::format("{} is not a multiple of the alignment {}", t.offset, r.alignment_));
    const std::uint64_t n = t.n_bytes();
    if (t.offset > data_size || n > data_size - t.offset)
      in.fail_at(info_offsets[i].offset_field, where,
                 fmt::format("data [{}, +{}) relative to the data section at {} runs past the end "
                             "of the file ({} bytes)",
                             t.offset, n, r.data_offset_, file_size));
  }
  std::vector<std::size_t> order(r.tensors_.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return r.tensors_[a].offset < r.tensors_[b].offset;
  });
  const GgufTensorInfo* prev = nullptr;
  std::uint64_t prev_end = 0;
  for (const std::size_t i : order) {
    const GgufTensorInfo& t = r.tensors_[i];
    const std::uint64_t n = t.n_bytes();
    if (n == 0) continue;
    if (prev != nullptr && t.offset < prev_end)
      in.fail_at(info_offsets[i].offset_field, Where{fmt::format("tensor '{}' offset", t.name)},
                 fmt::format("data [{}, {}) overlaps tensor '{}' at [{}, {})", t.offset,
                             t.offset + n, prev->name, prev->offset, prev_end));
    prev = &t;
    prev_end = t.offset + n;
  }
  return r;
}

const GgufValue* GgufReader::find(std::string_view key) const {
  for (const auto& kv : kvs_)
    if (kv.key == key) return &kv.value;
  return nullptr;
}

const GgufValue& GgufReader::get(std::string_view key) const {
  if (const GgufValue* v = find(key)) return *v;
  fail("{}: missing metadata key '{}'", name_, key);
}

const GgufTensorInfo* GgufReader::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> GgufReader::tensor_data(const GgufTensorInfo& t) const {
  const std::uint64_t n = t.n_bytes();
  if (data_offset_ > bytes_.size() || t.offset > bytes_.size() - data_offset_ ||
      n > bytes_.size() - data_offset_ - t.offset)
    fail("{}: tensor '{}' data [{}, +{}) is outside the file", name_, t.name, t.offset, n);
  return bytes_.subspan(static_cast<std::size_t>(data_offset_ + t.offset),
                        static_cast<std::size_t>(n));
}

std::string GgufReader::architecture() const {
  const GgufValue* v = find("general.architecture");
  if (v == nullptr || v->type() != GgufValueType::STRING) return {};
  return std::string(v->as_string());
}

}  // namespace qforge
