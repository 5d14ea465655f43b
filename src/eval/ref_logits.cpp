#include "eval/ref_logits.h"

#include <cmath>
#include <cstring>
#include <string_view>

#include "core/error.h"
#include "tokenizer/vocab.h"

namespace qforge {
namespace {

constexpr char kMagic[8] = {'Q', 'F', 'R', 'E', 'F', 'L', 'P', '\0'};
constexpr std::size_t kHeaderBytes = 64;
constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ULL;

void fnv_bytes(std::uint64_t& h, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= kFnvPrime;
  }
}

std::uint64_t record_bytes(std::uint32_t top_k) {
  return 8 + 8ULL * top_k;
}

// Little-endian field packing (the supported hosts are little-endian, so memcpy is enough).
template <typename T>
void put(std::vector<std::byte>& buf, std::size_t offset, T value) {
  std::memcpy(buf.data() + offset, &value, sizeof(T));
}
template <typename T>
T get(std::span<const std::byte> bytes, std::uint64_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

}  // namespace

std::uint64_t vocab_fingerprint(const Vocab& vocab) {
  std::uint64_t h = kFnvOffset;
  const unsigned char zero = 0;
  for (const std::string& token : vocab.tokens) {
    fnv_bytes(h, token.data(), token.size());
    fnv_bytes(h, &zero, 1);
  }
  return h;
}

std::uint64_t tokens_fingerprint(std::span<const std::int32_t> tokens) {
  std::uint64_t h = kFnvOffset;
  fnv_bytes(h, tokens.data(), tokens.size_bytes());
  return h;
}

RefLogitsWriter::RefLogitsWriter(const std::filesystem::path& path, RefLogitsHeader header,
                                 std::span<const std::int32_t> tokens)
    : header_(header), out_(path) {
  const std::uint64_t n_tokens = std::uint64_t{header.n_chunks} * header.n_ctx;
  if (tokens.size() != n_tokens) {
    fail("{}: {} tokens given for {} windows of {}", path.string(), tokens.size(), header.n_chunks,
         header.n_ctx);
  }
  if (header.top_k < 1 || header.top_k > header.n_vocab) {
    fail("{}: top-k {} is not in [1, {}]", path.string(), header.top_k, header.n_vocab);
  }
  header_.tokens_hash = tokens_fingerprint(tokens);
  header_.n_records = std::uint64_t{header.n_chunks} * (header.n_ctx - 1 - header.first);
  std::vector<std::byte> buf(kHeaderBytes);
  std::memcpy(buf.data(), kMagic, sizeof(kMagic));
  put(buf, 8, kRefLogitsVersion);
  put(buf, 12, header_.n_vocab);
  put(buf, 16, header_.n_ctx);
  put(buf, 20, header_.n_chunks);
  put(buf, 24, header_.top_k);
  put(buf, 28, header_.first);
  put(buf, 32, header_.bos);
  put(buf, 36, std::uint32_t{0});
  put(buf, 40, header_.vocab_hash);
  put(buf, 48, header_.tokens_hash);
  put(buf, 56, header_.n_records);
  out_.write(buf);
  out_.write(std::as_bytes(tokens));
}

void RefLogitsWriter::write(const TopKRef& record) {
  if (record.ids.size() != header_.top_k || record.logps.size() != header_.top_k) {
    fail("{}: record {} has {} entries, expected top-k {}", out_.target().string(), written_,
         record.ids.size(), header_.top_k);
  }
  if (written_ >= header_.n_records) {
    fail("{}: more than the {} declared records", out_.target().string(), header_.n_records);
  }
  std::vector<std::byte> buf(record_bytes(header_.top_k));
  put(buf, 0, record.logp_next);
  put(buf, 4, record.tail_mass);
  std::memcpy(buf.data() + 8, record.ids.data(), 4ULL * header_.top_k);
  std::memcpy(buf.data() + 8 + 4ULL * header_.top_k, record.logps.data(), 4ULL * header_.top_k);
  out_.write(buf);
  ++written_;
}

void RefLogitsWriter::finish() {
  if (written_ != header_.n_records) {
    fail("{}: {} of {} records written", out_.target().string(), written_, header_.n_records);
  }
  out_.commit();
}

RefLogitsFile RefLogitsFile::open(const std::filesystem::path& path) {
  RefLogitsFile f;
  f.file_ = MappedFile::open(path);
  const std::span<const std::byte> bytes = f.file_.bytes();
  const std::string name = path.string();
  if (bytes.size() < kHeaderBytes || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    fail("{}: not a qforge reference-logits file (magic \"QFREFLP\" expected at offset 0)", name);
  }
  const auto version = get<std::uint32_t>(bytes, 8);
  if (version != kRefLogitsVersion) {
    fail("{}: version {} at offset 8, this build reads version {}", name, version,
         kRefLogitsVersion);
  }
  RefLogitsHeader& h = f.header_;
  h.n_vocab = get<std::uint32_t>(bytes, 12);
  h.n_ctx = get<std::uint32_t>(bytes, 16);
  h.n_chunks = get<std::uint32_t>(bytes, 20);
  h.top_k = get<std::uint32_t>(bytes, 24);
  h.first = get<std::uint32_t>(bytes, 28);
  h.bos = get<std::int32_t>(bytes, 32);
  h.vocab_hash = get<std::uint64_t>(bytes, 40);
  h.tokens_hash = get<std::uint64_t>(bytes, 48);
  h.n_records = get<std::uint64_t>(bytes, 56);
  if (h.n_vocab == 0 || h.n_vocab > (1U << 30))
    fail("{}: n_vocab {} at offset 12", name, h.n_vocab);
  if (h.n_ctx < 2 || h.n_ctx > (1U << 24)) fail("{}: n_ctx {} at offset 16", name, h.n_ctx);
  if (h.n_chunks == 0) fail("{}: n_chunks is 0 at offset 20", name);
  if (h.top_k < 1 || h.top_k > h.n_vocab) {
    fail("{}: top_k {} at offset 24 is not in [1, n_vocab {}]", name, h.top_k, h.n_vocab);
  }
  if (h.first != h.n_ctx / 2) fail("{}: first {} at offset 28, expected n_ctx / 2", name, h.first);
  if (h.bos < -1 || h.bos >= static_cast<std::int64_t>(h.n_vocab)) {
    fail("{}: bos {} at offset 32 is outside the vocabulary", name, h.bos);
  }
  const std::uint64_t n_tokens = std::uint64_t{h.n_chunks} * h.n_ctx;
  const std::uint64_t expected_records = std::uint64_t{h.n_chunks} * (h.n_ctx - 1 - h.first);
  if (h.n_records != expected_records) {
    fail("{}: n_records {} at offset 56, expected {} for {} windows of {}", name, h.n_records,
         expected_records, h.n_chunks, h.n_ctx);
  }
  f.records_offset_ = kHeaderBytes + 4 * n_tokens;
  const std::uint64_t expected_size = f.records_offset_ + h.n_records * record_bytes(h.top_k);
  if (bytes.size() != expected_size) {
    fail("{}: file is {} bytes, the header describes {} (truncated or not this format)", name,
         bytes.size(), expected_size);
  }
  f.tokens_.resize(n_tokens);
  std::memcpy(f.tokens_.data(), bytes.data() + kHeaderBytes, 4 * n_tokens);
  for (std::uint64_t i = 0; i < n_tokens; ++i) {
    if (f.tokens_[i] < 0 || static_cast<std::uint32_t>(f.tokens_[i]) >= h.n_vocab) {
      fail("{}: token {} = {} at offset {} is outside the vocabulary", name, i, f.tokens_[i],
           kHeaderBytes + 4 * i);
    }
  }
  if (tokens_fingerprint(f.tokens_) != h.tokens_hash) {
    fail("{}: the token ids do not match tokens_hash at offset 48 (corrupted file)", name);
  }
  for (std::uint64_t r = 0; r < h.n_records; ++r) {
    const std::uint64_t at = f.records_offset_ + r * record_bytes(h.top_k);
    const auto logp_next = get<float>(bytes, at);
    const auto tail = get<float>(bytes, at + 4);
    if (!(logp_next <= 1e-3f) || !std::isfinite(logp_next) || !(tail >= 0.0f && tail <= 1.001f)) {
      fail("{}: record {} at offset {}: logp_next {} / tail_mass {} out of range", name, r, at,
           logp_next, tail);
    }
    float previous = 1.0f;
    for (std::uint32_t j = 0; j < h.top_k; ++j) {
      const auto id = get<std::int32_t>(bytes, at + 8 + 4ULL * j);
      const auto logp = get<float>(bytes, at + 8 + 4ULL * (h.top_k + j));
      if (id < 0 || static_cast<std::uint32_t>(id) >= h.n_vocab || !std::isfinite(logp) ||
          logp > 1e-3f || logp > previous) {
        fail(
            "{}: record {} entry {} at offset {}: id {} / log-prob {} invalid (ids must be in "
            "the vocabulary, log-probs finite, <= 0 and non-increasing)",
            name, r, j, at, id, logp);
      }
      previous = logp;
    }
  }
  return f;
}

TopKRef RefLogitsFile::record(std::uint64_t index) const {
  if (index >= header_.n_records) {
    fail("{}: record {} requested, the file has {}", path(), index, header_.n_records);
  }
  const std::span<const std::byte> bytes = file_.bytes();
  const std::uint64_t at = records_offset_ + index * record_bytes(header_.top_k);
  TopKRef r;
  r.logp_next = get<float>(bytes, at);
  r.tail_mass = get<float>(bytes, at + 4);
  r.ids.resize(header_.top_k);
  r.logps.resize(header_.top_k);
  std::memcpy(r.ids.data(), bytes.data() + at + 8, 4ULL * header_.top_k);
  std::memcpy(r.logps.data(), bytes.data() + at + 8 + 4ULL * header_.top_k, 4ULL * header_.top_k);
  return r;
}

}  // namespace qforge
