// safetensors reader: dtype table and the header parser for one file. Every field of the JSON
// header is checked before a span into the data is made: sizes are overflow-checked products,
// offsets must lie inside the file and tensors must not share bytes.
#include "formats/safetensors.h"

#include <algorithm>
#include <array>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/safetensors_internal.h"

namespace qforge {
namespace {

struct DtypeInfo {
  StDtype dtype;
  std::string_view name;
  std::size_t size;
};

constexpr std::array<DtypeInfo, 15> kDtypes{{
    {StDtype::BOOL, "BOOL", 1},
    {StDtype::U8, "U8", 1},
    {StDtype::I8, "I8", 1},
    {StDtype::I16, "I16", 2},
    {StDtype::U16, "U16", 2},
    {StDtype::F16, "F16", 2},
    {StDtype::BF16, "BF16", 2},
    {StDtype::I32, "I32", 4},
    {StDtype::U32, "U32", 4},
    {StDtype::F32, "F32", 4},
    {StDtype::F64, "F64", 8},
    {StDtype::I64, "I64", 8},
    {StDtype::U64, "U64", 8},
    {StDtype::F8_E4M3, "F8_E4M3", 1},
    {StDtype::F8_E5M2, "F8_E5M2", 1},
}};

const DtypeInfo& info(StDtype d) {
  for (const auto& i : kDtypes) {
    if (i.dtype == d) return i;
  }
  fail("safetensors: invalid dtype enum value {}", static_cast<int>(d));
}

std::string supported_dtype_list() {
  std::string out;
  for (const auto& i : kDtypes) {
    if (!out.empty()) out += ' ';
    out += i.name;
  }
  return out;
}

// The reference implementation's limit: larger headers are refused before parsing.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
constexpr int kMaxHeaderDepth = 64;

std::uint64_t read_u64_le(std::span<const std::byte> b) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i)
    v = (v << 8) | std::to_integer<std::uint64_t>(b[static_cast<std::size_t>(i)]);
  return v;
}

// Parses the header, failing on duplicate top-level keys: a tensor name given twice is ambiguous
// (nlohmann would silently keep the last one).
nlohmann::json parse_header_json(std::string_view text, const std::string& file) {
  std::set<std::string> top_keys;
  std::string duplicate;
  bool too_deep = false;
  const nlohmann::json::parser_callback_t on_event = [&](int depth,
                                                         nlohmann::json::parse_event_t event,
                                                         nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::key && depth == 1 && parsed.is_string() &&
        !top_keys.insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    // A valid header nests 3 levels; deeper values are dropped instead of built (a 100 MB
    // "[[[[..." would otherwise take gigabytes) and the header is refused below.
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxHeaderDepth) {
      too_deep = true;
      return false;
    }
    return true;
  };
  // nlohmann stops at a NUL byte as if the input ended there; JSON allows none anywhere.
  if (const auto nul = text.find('\0'); nul != std::string_view::npos)
    fail("{}: header is not valid JSON: NUL at header byte {} (file offset {})", file, nul + 1,
         nul + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text.begin(), text.end(), on_event);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte counts the bytes read, the offending one included.
    fail("{}: header is not valid JSON (error at header byte {}, file offset {}): {}", file, e.byte,
         e.byte + 7, st_detail::json_error_text(e));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: header is not valid JSON: {}", file, st_detail::json_error_text(e));
  }
  if (too_deep) fail("{}: header nests JSON deeper than {} levels", file, kMaxHeaderDepth);
  if (!duplicate.empty())
    fail("{}: header lists '{}' twice", file, st_detail::printable(duplicate));
  return header;
}

std::uint64_t json_uint(const nlohmann::json& v, const std::string& file, const std::string& tensor,
                        std::string_view field) {
  if (!v.is_number_unsigned()) {
    const char* what = v.is_number_integer() ? "a negative integer"
                       : v.is_number_float() ? "not an integer"
                                             : v.type_name();
    fail("{}: tensor '{}': {} must hold non-negative integers, found {}{}", file, tensor, field,
         what, v.is_number() ? fmt::format(" ({})", v.dump()) : "");
  }
  return v.get<std::uint64_t>();
}

StTensor parse_entry(const std::string& name, const nlohmann::json& entry, const std::string& file,
                     std::span<const std::byte> data, std::uint64_t data_start,
                     std::uint64_t& begin_out) {
  const std::string shown = st_detail::printable(name);
  if (!entry.is_object())
    fail("{}: tensor '{}': entry is {}, expected an object with dtype, shape and data_offsets",
         file, shown, entry.type_name());
  StTensor t;
  t.name = name;
  t.file = file;

  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) fail("{}: tensor '{}': missing field dtype", file, shown);
  if (!dtype_it->is_string())
    fail("{}: tensor '{}': dtype is {}, expected a string", file, shown, dtype_it->type_name());
  const auto& dtype_name = dtype_it->get_ref<const std::string&>();
  const auto dtype = st_dtype_from_name(dtype_name);
  if (!dtype)
    fail("{}: tensor '{}': unknown dtype '{}' (supported: {})", file, shown,
         st_detail::printable(dtype_name), supported_dtype_list());
  t.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) fail("{}: tensor '{}': missing field shape", file, shown);
  if (!shape_it->is_array())
    fail("{}: tensor '{}': shape is {}, expected an array", file, shown, shape_it->type_name());
  std::uint64_t n_bytes = st_dtype_size(t.dtype);
  for (const auto& dim : *shape_it) {
    t.shape.push_back(json_uint(dim, file, shown, "shape"));
    if (__builtin_mul_overflow(n_bytes, t.shape.back(), &n_bytes))
      fail("{}: tensor '{}': shape {} overflows a 64-bit byte count", file, shown,
           shape_it->dump());
  }

  const auto off_it = entry.find("data_offsets");
  if (off_it == entry.end()) fail("{}: tensor '{}': missing field data_offsets", file, shown);
  if (!off_it->is_array() || off_it->size() != 2)
    fail("{}: tensor '{}': data_offsets must be an array [begin, end]", file, shown);
  const std::uint64_t begin = json_uint((*off_it)[0], file, shown, "data_offsets");
  const std::uint64_t end = json_uint((*off_it)[1], file, shown, "data_offsets");
  if (end < begin)
    fail("{}: tensor '{}': data_offsets [{}, {}] end before begin", file, shown, begin, end);
  if (end - begin != n_bytes)
    fail("{}: tensor '{}': data_offsets [{}, {}] span {} bytes, but {} {} needs {}", file, shown,
         begin, end, end - begin, st_dtype_name(t.dtype), shape_it->dump(), n_bytes);
  if (end > data.size())
    fail(
        "{}: tensor '{}': data_offsets [{}, {}] end past the data section ({} bytes from file "
        "offset {})",
        file, shown, begin, end, data.size(), data_start);
  t.data = data.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(n_bytes));
  t.data_offset = data_start + begin;
  begin_out = begin;
  return t;
}

}  // namespace

std::string_view st_dtype_name(StDtype d) {
  return info(d).name;
}

std::optional<StDtype> st_dtype_from_name(std::string_view name) {
  for (const auto& i : kDtypes) {
    if (i.name == name) return i.dtype;
  }
  return std::nullopt;
}

std::size_t st_dtype_size(StDtype d) {
  return info(d).size;
}

std::uint64_t StTensor::n_elements() const {
  std::uint64_t n = 1;
  for (const auto d : shape) n *= d;  // checked against the byte count when parsed
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  MappedFile mapped = MappedFile::open(path);
  SafetensorsFile file = parse(mapped.bytes(), path.string());
  file.file_ = std::move(mapped);  // the mapping moves; tensor spans keep pointing into it
  return file;
}

SafetensorsFile SafetensorsFile::parse(std::span<const std::byte> bytes, std::string name) {
  SafetensorsFile file;
  file.name_ = std::move(name);
  const std::string& fname = file.name_;
  if (bytes.size() < 8)
    fail("{}: file is {} bytes, too short for the 8-byte header length", fname, bytes.size());
  const std::uint64_t header_len = read_u64_le(bytes.first(8));
  if (header_len > kMaxHeaderBytes)
    fail("{}: header length {} (file offset 0) exceeds the {}-byte limit", fname, header_len,
         kMaxHeaderBytes);
  if (header_len > bytes.size() - 8)
    fail("{}: header length {} (file offset 0) runs past the end of the {}-byte file", fname,
         header_len, bytes.size());
  const auto header_bytes = bytes.subspan(8, static_cast<std::size_t>(header_len));
  const std::string_view header_text(reinterpret_cast<const char*>(header_bytes.data()),
                                     header_bytes.size());
  const nlohmann::json header = parse_header_json(header_text, fname);
  if (!header.is_object())
    fail("{}: header is a JSON {}, expected an object", fname, header.type_name());

  const std::uint64_t data_start = 8 + header_len;
  const auto data = bytes.subspan(static_cast<std::size_t>(data_start));
  std::vector<std::pair<std::uint64_t, StTensor>> by_offset;
  by_offset.reserve(header.size());
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object())
        fail("{}: __metadata__ is {}, expected an object of strings", fname, value.type_name());
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string())
          fail("{}: __metadata__ entry '{}' is {}, expected a string", fname,
               st_detail::printable(mkey), mvalue.type_name());
        file.metadata_.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    std::uint64_t begin = 0;
    StTensor t = parse_entry(key, value, fname, data, data_start, begin);
    by_offset.emplace_back(begin, std::move(t));
  }

  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    if (a.second.data.size() != b.second.data.size())
      return a.second.data.size() < b.second.data.size();
    return a.second.name < b.second.name;
  });
  // Empty tensors own no bytes and cannot overlap; every other tensor must start at or after the
  // end of the previous non-empty one.
  const StTensor* prev = nullptr;
  std::uint64_t prev_end = 0;
  for (const auto& [begin, t] : by_offset) {
    if (t.data.empty()) continue;
    if (prev != nullptr && begin < prev_end)
      fail("{}: tensors '{}' (data_offsets [{}, {}]) and '{}' (data_offsets [{}, {}]) overlap",
           fname, st_detail::printable(prev->name), prev_end - prev->data.size(), prev_end,
           st_detail::printable(t.name), begin, begin + t.data.size());
    prev = &t;
    prev_end = begin + t.data.size();
  }
  file.tensors_.reserve(by_offset.size());
  for (auto& entry : by_offset) file.tensors_.push_back(std::move(entry.second));
  return file;
}

const StTensor* SafetensorsFile::find(std::string_view name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace qforge
