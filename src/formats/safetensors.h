// safetensors: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets}, "__metadata__": {str: str}}, then the raw tensor bytes (row-major, outer dim
// first). Single files and sharded checkpoints (model.safetensors.index.json). The reader maps the
// files and checks every offset, shape and dtype; the writer streams into an AtomicFile.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/atomic_file.h"
#include "core/mapped_file.h"

namespace qforge {

enum class StDtype { BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2 };
std::string_view st_dtype_name(StDtype d);
std::optional<StDtype> st_dtype_from_name(std::string_view name);
std::size_t st_dtype_size(StDtype d);

struct StTensor {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<std::uint64_t> shape;  // row-major: shape[0] is the outermost dim
  std::span<const std::byte> data;   // into the mapped file
  std::string file;                  // which file holds it (for error messages)
  std::uint64_t data_offset = 0;     // absolute offset in that file
  std::uint64_t n_elements() const;
};

class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);
  static SafetensorsFile parse(std::span<const std::byte> bytes, std::string name = "<memory>");

  const std::vector<StTensor>& tensors() const { return tensors_; }
  const StTensor* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return name_; }
  const MappedFile& mapping() const { return file_; }

 private:
  MappedFile file_;
  std::string name_;
  std::vector<StTensor> tensors_;  // in data-offset order
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint: one model.safetensors, or the shards listed by
// model.safetensors.index.json (every shard must exist; the index must match the shards' contents).
class SafetensorsModel {
 public:
  // path: a .safetensors file, an index .json, or a directory holding either.
  static SafetensorsModel open(const std::filesystem::path& path);

  const std::vector<const StTensor*>& tensors() const { return all_; }  // sorted by name
  const StTensor* find(std::string_view name) const;
  const StTensor& get(std::string_view name) const;  // fails naming the tensor
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<const StTensor*> all_;
};

class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::filesystem::path path);
  ~SafetensorsWriter();
  void set_metadata(std::string key, std::string value);
  void add_tensor(std::string name, StDtype dtype, std::vector<std::uint64_t> shape);
  void write_tensor_data(std::span<const std::byte> bytes);  // declaration order
  void finish();

 private:
  struct Decl {
    std::string name;
    StDtype dtype;
    std::vector<std::uint64_t> shape;
    std::uint64_t bytes;
  };
  void write_header();
  std::filesystem::path path_;
  std::unique_ptr<AtomicFile> out_;
  std::map<std::string, std::string> metadata_;
  std::vector<Decl> decls_;
  std::size_t next_ = 0;
  bool header_written_ = false;
};

}  // namespace qforge
