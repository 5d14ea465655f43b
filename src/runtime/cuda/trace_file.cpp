// write_trace (cuda_trace.h): the traced records as one binary file, written atomically.
#include <cstring>
#include <span>

#include "core/atomic_file.h"
#include "runtime/cuda_trace.h"

namespace qforge::cuda {

void write_trace(const std::string& path, const std::vector<TraceRecord>& records) {
  AtomicFile file(path);
  std::byte header[16];
  const std::uint64_t count = records.size();
  std::memcpy(header, "QFTRACE1", 8);
  std::memcpy(header + 8, &count, 8);
  file.write(header);
  file.write(std::as_bytes(std::span(records)));
  file.commit();
}

}  // namespace qforge::cuda
