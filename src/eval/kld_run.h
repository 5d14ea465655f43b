// Drivers of `qforge eval kld`: a reference model (or its saved top-K distributions) and a test
// model evaluated on the same windows (eval/windows.h), compared position by position (eval/kld.h).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "eval/kld.h"
#include "eval/ref_logits.h"
#include "eval/windows.h"
#include "model/model.h"

namespace qforge {

struct KldRunOptions {
  int n_ctx = 512;
  int batch = 512;
  int max_chunks = 0;  // <= 0: every full window
  int top_k = 32;      // K of saved reference distributions
  KvType kv_type = KvType::F32;
  std::string save_ref;  // when set, the reference distributions are saved here
};

struct KldRunResult {
  WindowPlan plan;
  KldSummary summary;  // empty (count 0) when no test model ran
  bool exact = true;   // full-vocabulary KLD; false when read from top-K saved logits
  int top_k = 0;       // K of the saved reference (0: none involved)
  double seconds = 0.0;
};

// Called after each window with the statistics so far (percentiles not filled in).
using KldChunkCallback = std::function<void(int chunk, const KldSummary& running)>;

// Runs `ref` and, when `test` is not null, `test` on every window. `vocab_hash` is the
// reference vocabulary's fingerprint (stored when saving).
KldRunResult run_kld_direct(Model& ref, Model* test, std::span<const std::int32_t> tokens,
                            std::int32_t bos, std::uint64_t vocab_hash,
                            const KldRunOptions& options, const std::string& source,
                            const KldChunkCallback& on_chunk);

// Runs `test` on the windows stored in `ref` and compares with the saved distributions.
// options.n_ctx / max_chunks are ignored (the file decides); batch and kv_type apply.
KldRunResult run_kld_saved(Model& test, const RefLogitsFile& ref, const KldRunOptions& options,
                           const KldChunkCallback& on_chunk);

}  // namespace qforge
