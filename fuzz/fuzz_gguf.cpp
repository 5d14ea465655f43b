// libFuzzer target: GgufReader::parse on arbitrary bytes must either succeed or throw
// qforge::Error; on success every tensor's data span must lie inside the input.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/error.h"
#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const qforge::GgufReader reader = qforge::GgufReader::parse(bytes, "fuzz.gguf");
    std::uint64_t checksum = 0;
    for (const auto& t : reader.tensors()) {
      const auto span = reader.tensor_data(t);
      if (!span.empty()) {
        if (span.data() < bytes.data() || span.data() + span.size() > bytes.data() + bytes.size())
          __builtin_trap();
        checksum +=
            static_cast<std::uint64_t>(span.front()) + static_cast<std::uint64_t>(span.back());
      }
    }
    (void)reader.architecture();
    for (const auto& kv : reader.metadata())
      checksum += static_cast<std::uint64_t>(kv.value.type());
    if (checksum == 0xdeadbeefcafef00dull)
      __builtin_trap();  // keeps the walk from being optimized out
  } catch (const qforge::Error&) {
  }
  return 0;
}
