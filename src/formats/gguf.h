// GGUF v3 (also reads v2): metadata key/values, tensor info table, aligned tensor data.
// The reader maps the file and never trusts a size: every count, string length, dimension,
// type and offset is checked against the file, and errors name the file, the field and the offset.
// The writer streams: header first (all tensor infos are declared up front), then each tensor's
// bytes in declaration order, into an AtomicFile that is renamed into place by finish().
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "core/atomic_file.h"
#include "core/mapped_file.h"
#include "quant/ggml_type.h"

namespace qforge {

enum class GgufValueType : std::uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
std::string_view gguf_value_type_name(GgufValueType t);

struct GgufArray;

// One metadata value. bool is stored as bool; arrays may nest (arrays of arrays).
struct GgufValue {
  using Storage = std::variant<std::uint8_t, std::int8_t, std::uint16_t, std::int16_t, std::uint32_t,
                               std::int32_t, float, bool, std::string, std::shared_ptr<GgufArray>,
                               std::uint64_t, std::int64_t, double>;
  Storage value;

  GgufValueType type() const { return static_cast<GgufValueType>(value.index()); }

  // Typed access that fails with a clear error naming `what` when the type is wrong.
  std::string_view as_string(std::string_view what = "value") const;
  const GgufArray& as_array(std::string_view what = "value") const;
  bool as_bool(std::string_view what = "value") const;
  // Any integer type that fits; fails on negative or non-integers.
  std::uint64_t as_uint(std::string_view what = "value") const;
  std::int64_t as_int(std::string_view what = "value") const;
  double as_double(std::string_view what = "value") const;  // any numeric type

  static GgufValue make_array(GgufValueType element_type, std::vector<GgufValue> items);
};

// Elements share one type (element_type); for nested arrays each item is itself an ARRAY value.
struct GgufArray {
  GgufValueType element_type = GgufValueType::UINT8;
  std::vector<GgufValue> items;
};

struct GgufKV {
  std::string key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> shape;  // ggml order: shape[0] is the innermost (contiguous) dim
  GgmlType type = GgmlType::F32;
  std::uint64_t offset = 0;  // relative to the start of the data section
  std::uint64_t n_elements() const;
  std::uint64_t n_bytes() const;  // checked: shape[0] must be a multiple of the block size
};

class GgufReader {
 public:
  static GgufReader open(const std::filesystem::path& path);
  // Parse from memory (fuzzing, tests). The bytes must outlive the reader.
  static GgufReader parse(std::span<const std::byte> bytes, std::string name = "<memory>");

  std::uint32_t version() const { return version_; }
  const std::vector<GgufKV>& metadata() const { return kvs_; }
  const GgufValue* find(std::string_view key) const;
  const GgufValue& get(std::string_view key) const;  // fails naming the key when missing
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  std::span<const std::byte> tensor_data(const GgufTensorInfo& t) const;
  std::uint64_t alignment() const { return alignment_; }
  std::uint64_t data_offset() const { return data_offset_; }  // absolute file offset of data
  std::uint64_t file_size() const { return bytes_.size(); }
  const std::string& path() const { return name_; }
  std::string architecture() const;  // general.architecture or ""

 private:
  MappedFile file_;
  std::span<const std::byte> bytes_;
  std::string name_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_offset_ = 0;
  std::vector<GgufKV> kvs_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> tensor_index_;  // name -> index in tensors_
};

class GgufWriter {
 public:
  explicit GgufWriter(std::filesystem::path path);
  ~GgufWriter();

  // Phase 1: metadata and tensor declarations (any order; kept in insertion order).
  // "general.alignment" may be set as a UINT32 kv; it then governs tensor data alignment.
  void add_kv(std::string key, GgufValue value);
  void add_tensor(std::string name, std::vector<std::uint64_t> shape, GgmlType type);
  // Phase 2: tensor bytes, in declaration order, each exactly n_bytes() long.
  void write_tensor_data(std::span<const std::byte> bytes);
  // Writes remaining padding, flushes, renames into place. Fails if a tensor is still missing.
  void finish();

 private:
  void write_header();
  std::filesystem::path path_;
  std::unique_ptr<AtomicFile> out_;
  std::vector<GgufKV> kvs_;
  std::vector<GgufTensorInfo> tensors_;
  std::uint64_t alignment_ = 32;
  std::uint64_t data_start_ = 0;
  std::size_t next_tensor_ = 0;
  bool header_written_ = false;
};

}  // namespace qforge
