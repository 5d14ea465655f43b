// libFuzzer target: SafetensorsFile::parse on arbitrary bytes. Bad input must end in qforge::Error;
// accepted input must describe tensors that lie inside the buffer, match their dtype and shape,
// and do not share bytes (every byte is read, so ASan sees any span that escapes).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const qforge::SafetensorsFile file = qforge::SafetensorsFile::parse(bytes, "fuzz");
    std::vector<std::pair<const std::byte*, const std::byte*>> ranges;
    unsigned sum = 0;
    for (const auto& t : file.tensors()) {
      const std::byte* begin = t.data.data();
      const std::byte* end = begin + t.data.size();
      if (!t.data.empty() && (begin < bytes.data() || end > bytes.data() + bytes.size()))
        __builtin_trap();
      if (t.n_elements() * qforge::st_dtype_size(t.dtype) != t.data.size()) __builtin_trap();
      if (t.data_offset != static_cast<std::uint64_t>(begin - bytes.data()) && !t.data.empty())
        __builtin_trap();
      if (file.find(t.name) != &t) __builtin_trap();
      (void)qforge::st_dtype_name(t.dtype);
      for (const std::byte b : t.data) sum += std::to_integer<unsigned>(b);
      if (!t.data.empty()) ranges.emplace_back(begin, end);
    }
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].first < ranges[i - 1].second) __builtin_trap();
    }
    for (const auto& [k, v] : file.metadata()) sum += static_cast<unsigned>(k.size() + v.size());
    asm volatile("" : : "r"(sum));
  } catch (const qforge::Error&) {
  }
  return 0;
}
