// Random tensor bytes for `qforge synth`. Quantized types are written as random blocks directly
// (random codes, random scales) rather than quantized from floats: a 16 GiB model is generated at
// memory speed. Every block scale gets a random sign: with one common sign, Q4_0's codes (-8..7,
// mean -0.5) would shift every weight the same way and bias every MoE router alike, collapsing
// expert choice. Scale magnitudes give each matrix a standard deviation of `scale`
// (1/sqrt(fan_in)), so activations keep their size through the layers.
//
// The bytes depend only on (seed, tensor index, chunk index): chunks have a fixed size per type,
// so the output is identical for any thread count.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/half.h"
#include "core/parallel.h"
#include "model/synth_internal.h"
#include "quant/blocks.h"

namespace qforge::synth {
namespace {

std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// SplitMix64: small, fast, and good enough for benchmark weights.
class Rng {
 public:
  Rng(std::uint64_t seed, std::uint64_t tensor, std::uint64_t chunk)
      : state_(mix64(mix64(seed + 0x9e3779b97f4a7c15ull * (tensor + 1)) ^
                     (0xd6e8feb86659fd93ull * (chunk + 1)))) {}
  std::uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ull;
    return mix64(state_);
  }
  float uniform() { return static_cast<float>(next() >> 40) * 0x1.0p-24f; }  // [0, 1)
  float symmetric() { return 2.0f * uniform() - 1.0f; }                      // [-1, 1)
  void bytes(std::byte* out, std::size_t n) {
    while (n >= 8) {
      const std::uint64_t r = next();
      std::memcpy(out, &r, 8);
      out += 8;
      n -= 8;
    }
    if (n > 0) {
      const std::uint64_t r = next();
      std::memcpy(out, &r, n);
    }
  }

 private:
  std::uint64_t state_;
};

void put_f16(std::byte* p, float v) {
  const std::uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// A block scale: random sign, magnitude `base` (target std / code RMS) within +-25 %, from one
// random draw.
float block_scale(Rng& rng, float base) {
  const std::uint64_t r = rng.next();
  const float jitter = 0.75f + 0.5f * static_cast<float>(r >> 40) * 0x1.0p-24f;
  return ((r & 1) != 0 ? -jitter : jitter) * base;
}

// RMS of the code part of each format for uniformly random codes (see the generators).
constexpr float kRms4 = 4.6368092f;          // q - 8, q in 0..15: sqrt(21.25 + 0.25)
constexpr float kRms4Centered = 4.6097722f;  // q - 7.5: sqrt(21.25)
constexpr float kRms5 = 9.2466210f;          // q - 16, q in 0..31: sqrt(85.25 + 0.25)
constexpr float kRms5Centered = 9.2331017f;  // q - 15.5
constexpr float kRms8 = 73.895535f;          // int8 q, -128 mapped to -127: sqrt(5460.5)
constexpr float kRms6 = 18.479719f;          // q - 32, q in 0..63: sqrt(341.25 + 0.25)
constexpr float kRmsSubScale = 48.389048f;   // K-quant sub-block scales uniform in 32..63

// Packs eight 6-bit (scale, min) pairs into the 12-byte K-quant layout (Q4_K, Q5_K).
void pack_k_scales(std::byte* out, const std::uint8_t* sc, const std::uint8_t* mn) {
  std::uint8_t s[12];
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<std::uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<std::uint8_t>((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<std::uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
  std::memcpy(out, s, 12);
}

// K-quant super-block with sub-block mins equal to their scales and dmin = centre * d, so every
// sub-block is centred: y = d * sc * (q - centre).
void k_block_header(Rng& rng, std::byte* p, float base, float centre) {
  const float d = block_scale(rng, base);
  put_f16(p, d);
  put_f16(p + 2, centre * d);
  std::uint8_t sc[8];
  rng.bytes(reinterpret_cast<std::byte*>(sc), 8);
  for (auto& x : sc) x = static_cast<std::uint8_t>(32 + (x & 31));
  pack_k_scales(p + 4, sc, sc);
}

// Writes `n` blocks of `type` with random codes and scales; false if the type has no generator.
bool random_blocks(GgmlType type, Rng& rng, float s, std::byte* p, std::size_t n) {
  const std::size_t bs = type_size(type);
  switch (type) {
    case GgmlType::Q4_0:  // f16 d, 16 bytes of 4-bit codes; y = d * (q - 8)
      for (std::size_t i = 0; i < n; ++i, p += bs) {
        put_f16(p, block_scale(rng, s / kRms4));
        rng.bytes(p + 2, 16);
      }
      return true;
    case GgmlType::Q4_1:  // f16 d, f16 m, 16 bytes; y = d * q + m, m = -7.5 d
      for (std::size_t i = 0; i < n; ++i, p += bs) {
        const float d = block_scale(rng, s / kRms4Centered);
        put_f16(p, d);
        put_f16(p + 2, -7.5f * d);
        rng.bytes(p + 4, 16);
      }
      return true;
    case GgmlType::Q5_0:  // f16 d, 4 bytes high bits, 16 bytes low nibbles; y = d * (q - 16)
      for (std::size_t i = 0; i < n; ++i, p += bs) {
        put_f16(p, block_scale(rng, s / kRms5));
        rng.bytes(p + 2, 20);
      }
      return true;
    case GgmlType::Q5_1:  // f16 d, f16 m, 4 + 16 bytes; y = d * q + m, m = -15.5 d
      for (std::size_t i = 0; i < n; ++i, p += bs) {
        const float d = block_scale(rng, s / kRms5Centered);
        put_f16(p, d);
        put_f16(p + 2, -15.5f * d);
        rng.bytes(p + 4, 20);
      }
      return true;
    case GgmlType::Q8_0:  // f16 d, 32 int8 codes; y = d * q
      for (std::size_t i = 0; i < n; ++i, p += bs) {
        put_f16(p, block_scale(rng, s / kRms8));
        rng.bytes(p + 2, 32);
        for (int j = 2; j < 34; ++j)  // -128 -> -127: codes stay symmetric in -127..127
          if (p[j] == std::byte{0x80}) p[j] = std::byte{0x81};
      }
      return true;
    case GgmlType::Q4_K:  // f16 d, f16 dmin, 12 bytes scales, 128 bytes codes
      for (std::size_t i = 0; i < n; ++i, p += bs) {
        k_block_header(rng, p, s / (kRms4Centered * kRmsSubScale), 7.5f);
        rng.bytes(p + 16, 128);
      }
      return true;
    case GgmlType::Q5_K:  // f16 d, f16 dmin, 12 bytes scales, 32 bytes high bits, 128 bytes
      for (std::size_t i = 0; i < n; ++i, p += bs) {
        k_block_header(rng, p, s / (kRms5Centered * kRmsSubScale), 15.5f);
        rng.bytes(p + 16, 160);
      }
      return true;
    case GgmlType::Q6_K:  // 128 bytes low bits, 64 high, 16 int8 scales, f16 d; y = d*sc*(q-32)
      for (std::size_t i = 0; i < n; ++i, p += bs) {
        rng.bytes(p, 208);
        for (int j = 192; j < 208; ++j) {  // sub-scales: random sign, magnitude 32..63
          const auto r = std::to_integer<int>(p[j]);
          const int mag = 32 + (r & 31);
          p[j] = static_cast<std::byte>(static_cast<std::int8_t>((r & 0x80) != 0 ? -mag : mag));
        }
        // Sub-scales already carry random signs; d stays positive.
        put_f16(p + 208, std::fabs(block_scale(rng, s / (kRms6 * kRmsSubScale))));
      }
      return true;
    default:
      return false;
  }
}

bool has_block_generator(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

bool is_float_type(GgmlType t) {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16;
}

float draw_value(const SynthTensor& t, Rng& rng, std::uint64_t i) {
  switch (t.fill) {
    case SynthFill::kMatrix:
      return rng.symmetric() * t.scale * 1.7320508f;  // uniform, std scale
    case SynthFill::kNearOne:
      return 0.9f + 0.2f * rng.uniform();
    case SynthFill::kExact:
      return t.values[i];
  }
  return 0.0f;
}

void put_float(GgmlType type, std::byte* base, std::uint64_t i, float v) {
  switch (type) {
    case GgmlType::F32:
      std::memcpy(base + 4 * i, &v, 4);
      break;
    case GgmlType::F16:
      put_f16(base + 2 * i, v);
      break;
    default: {  // BF16
      const std::uint16_t h = f32_to_bf16(v);
      std::memcpy(base + 2 * i, &h, 2);
    }
  }
}

// Units per chunk: fixed per type so that the bytes do not depend on the thread count.
constexpr std::uint64_t kFloatChunk = 1 << 16;  // elements
constexpr std::uint64_t kBlockChunk = 1 << 13;  // blocks
constexpr std::uint64_t kQuantChunkElems = 1 << 18;

}  // namespace

namespace detail {
bool can_fill(GgmlType type) {
  return is_float_type(type) || has_block_generator(type) || can_quantize(type);
}
}  // namespace detail

void fill_synth_tensor(const SynthTensor& t, std::uint64_t seed, std::size_t index,
                       std::span<std::byte> out) {
  if (out.size() != t.n_bytes())
    fail("synth: tensor '{}' needs {} bytes, buffer has {}", t.name, t.n_bytes(), out.size());
  const std::uint64_t n = t.n_elements();
  if (t.fill == SynthFill::kExact && t.values.size() != n)
    fail("synth: tensor '{}' has {} exact values for {} elements", t.name, t.values.size(), n);
  std::byte* base = out.data();

  if (is_float_type(t.type)) {
    const std::uint64_t n_chunks = (n + kFloatChunk - 1) / kFloatChunk;
    parallel_for(n_chunks, [&](std::size_t c0, std::size_t c1) {
      for (std::size_t c = c0; c < c1; ++c) {
        Rng rng(seed, index, c);
        const std::uint64_t e1 = std::min<std::uint64_t>(n, (c + 1) * kFloatChunk);
        std::uint64_t i = c * kFloatChunk;
        if (t.fill == SynthFill::kMatrix) {  // two 24-bit uniforms per draw
          const float a = t.scale * 1.7320508f * 0x1.0p-23f;
          for (; i + 1 < e1; i += 2) {
            const std::uint64_t r = rng.next();
            put_float(t.type, base, i, (static_cast<float>(r >> 40) - 0x1.0p23f) * a);
            put_float(t.type, base, i + 1,
                      (static_cast<float>((r >> 8) & 0xffffff) - 0x1.0p23f) * a);
          }
        }
        for (; i < e1; ++i) put_float(t.type, base, i, draw_value(t, rng, i));
      }
    });
    return;
  }
  if (t.fill != SynthFill::kMatrix)
    fail("synth: tensor '{}': only matrices can be quantized ({} requested)", t.name,
         type_name(t.type));

  if (has_block_generator(t.type)) {
    const std::uint64_t n_blocks = n / block_size(t.type);
    const std::uint64_t n_chunks = (n_blocks + kBlockChunk - 1) / kBlockChunk;
    const std::size_t bs = type_size(t.type);
    parallel_for(n_chunks, [&](std::size_t c0, std::size_t c1) {
      for (std::size_t c = c0; c < c1; ++c) {
        Rng rng(seed, index, c);
        const std::uint64_t b0 = c * kBlockChunk;
        const std::uint64_t b1 = std::min(n_blocks, b0 + kBlockChunk);
        random_blocks(t.type, rng, t.scale, base + b0 * bs, b1 - b0);
      }
    });
    return;
  }

  // Any other type the library can quantize: random floats per row, then quantize_row.
  if (!can_quantize(t.type))
    fail("synth: tensor '{}': cannot generate type {}", t.name, type_name(t.type));
  const std::uint64_t row = t.ne[0];
  const std::uint64_t n_rows = n / row;
  const std::uint64_t rows_per_chunk = std::max<std::uint64_t>(1, kQuantChunkElems / row);
  const std::uint64_t n_chunks = (n_rows + rows_per_chunk - 1) / rows_per_chunk;
  const std::uint64_t row_size = row_bytes(t.type, row);
  parallel_for(n_chunks, [&](std::size_t c0, std::size_t c1) {
    std::vector<float> values(row);
    for (std::size_t c = c0; c < c1; ++c) {
      Rng rng(seed, index, c);
      const std::uint64_t r1 = std::min(n_rows, (c + 1) * rows_per_chunk);
      for (std::uint64_t r = c * rows_per_chunk; r < r1; ++r) {
        for (auto& v : values) v = rng.symmetric() * t.scale * 1.7320508f;
        quantize_row(t.type, values, std::span<std::byte>(base + r * row_size, row_size));
      }
    }
  });
}

}  // namespace qforge::synth
