// Read-only memory map of a whole file (RAII). Large model files are never read into memory:
// tensors are spans into the mapping and the kernel pages them in on demand.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>

namespace qforge {

class MappedFile {
 public:
  // Throws qforge::Error naming the path on failure. An empty file maps to an empty span.
  static MappedFile open(const std::filesystem::path& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(data_), size_}; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Hint that the range will not be read again soon (streaming conversion keeps RSS bounded).
  void release(std::size_t offset, std::size_t length) const;

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
  std::string path_;
};

}  // namespace qforge
