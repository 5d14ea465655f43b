// Output file that appears under its final name only when complete: data goes to a temporary file
// beside the target, commit() flushes and renames it; destruction without commit() deletes it.
// A crash, an exception or a full disk therefore never leaves a half-written model behind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

namespace qforge {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  void write(std::span<const std::byte> bytes);
  void write_zeros(std::size_t count);
  std::uint64_t position() const { return position_; }
  void commit();

  const std::filesystem::path& target() const { return target_; }

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  std::uint64_t position_ = 0;
  bool committed_ = false;
};

}  // namespace qforge
