// Saved reference distributions for `qforge eval kld --save-ref / --ref-logits` (format in
// docs/eval.md). All integers and floats little-endian.
//
//   offset size  field
//   0      8     magic "QFREFLP\0"
//   8      4     u32 version (1)
//   12     4     u32 n_vocab
//   16     4     u32 n_ctx          window length
//   20     4     u32 n_chunks       windows
//   24     4     u32 top_k          K, 1 <= K <= n_vocab
//   28     4     u32 first          first scored position in a window (n_ctx / 2)
//   32     4     i32 bos            token that replaced each window's first token, -1: none
//   36     4     u32 reserved (0)
//   40     8     u64 vocab_hash     FNV-1a 64 of the reference vocabulary (vocab_fingerprint)
//   48     8     u64 tokens_hash    FNV-1a 64 of the token ids below (tokens_fingerprint)
//   56     8     u64 n_records      n_chunks * (n_ctx - 1 - first)
//   64     4*n_chunks*n_ctx         i32 text token ids (before the BOS substitution)
//   then n_records records of 8 + 8*K bytes, window by window, position by position:
//          f32 logp_next, f32 tail_mass, i32 ids[K], f32 logps[K]      (see TopKRef)
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "core/atomic_file.h"
#include "core/mapped_file.h"
#include "eval/kld.h"

namespace qforge {

struct Vocab;

inline constexpr std::uint32_t kRefLogitsVersion = 1;

struct RefLogitsHeader {
  std::uint32_t n_vocab = 0;
  std::uint32_t n_ctx = 0;
  std::uint32_t n_chunks = 0;
  std::uint32_t top_k = 0;
  std::uint32_t first = 0;
  std::int32_t bos = -1;
  std::uint64_t vocab_hash = 0;
  std::uint64_t tokens_hash = 0;
  std::uint64_t n_records = 0;
};

// FNV-1a 64 over each token's text followed by a 0 byte, in id order.
std::uint64_t vocab_fingerprint(const Vocab& vocab);
// FNV-1a 64 over the ids as little-endian int32.
std::uint64_t tokens_fingerprint(std::span<const std::int32_t> tokens);

class RefLogitsWriter {
 public:
  // `tokens` must hold n_chunks * n_ctx ids; the header's hashes and n_records are filled in.
  RefLogitsWriter(const std::filesystem::path& path, RefLogitsHeader header,
                  std::span<const std::int32_t> tokens);
  void write(const TopKRef& record);
  void finish();  // fails unless exactly n_records records were written

 private:
  RefLogitsHeader header_;
  AtomicFile out_;
  std::uint64_t written_ = 0;
};

class RefLogitsFile {
 public:
  // Maps and validates the whole file (sizes, ids, hashes); fails naming the path and offset.
  static RefLogitsFile open(const std::filesystem::path& path);

  const RefLogitsHeader& header() const { return header_; }
  std::span<const std::int32_t> tokens() const { return tokens_; }
  TopKRef record(std::uint64_t index) const;
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  RefLogitsHeader header_;
  std::vector<std::int32_t> tokens_;
  std::uint64_t records_offset_ = 0;
};

}  // namespace qforge
