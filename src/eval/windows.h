// The evaluation windows shared by perplexity, KL-divergence and imatrix runs, following
// llama.cpp's llama-perplexity: the tokenized text is cut into consecutive, non-overlapping
// windows of n_ctx tokens (a trailing partial window is dropped); each window is evaluated from
// an empty KV cache with its first token replaced by BOS when the vocabulary adds BOS; the
// positions j in [n_ctx/2, n_ctx - 1) are scored: the logits at j predict the token at j + 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"

namespace qforge {

class Tokenizer;
struct Vocab;

struct WindowPlan {
  int n_ctx = 0;
  int n_chunks = 0;                                       // windows evaluated
  int first() const { return n_ctx / 2; }                 // first scored position
  int n_scored() const { return n_ctx - 1 - n_ctx / 2; }  // scored positions per window
  std::size_t total_scored() const {
    return static_cast<std::size_t>(n_chunks) * static_cast<std::size_t>(n_scored());
  }
};

// Windows over `n_tokens` tokens: min(n_tokens / n_ctx, max_chunks) of them (max_chunks <= 0: no
// limit). Fails naming `source` when n_ctx < 2 or the text is shorter than one window.
WindowPlan plan_windows(std::size_t n_tokens, int n_ctx, int max_chunks, const std::string& source);

// The BOS that replaces each window's first token, or -1 when the vocabulary adds none.
std::int32_t window_bos(const Vocab& vocab);

// Tokenizes an evaluation text as llama.cpp does (special tokens added as the vocabulary says,
// special-token texts not parsed).
std::vector<std::int32_t> tokenize_eval_text(const Tokenizer& tokenizer, const std::string& text);

// Reads a whole text file; fails naming the path.
std::string read_text_file(const std::string& path);

// Model input of window `chunk`: its n_ctx text tokens, the first replaced by `bos` when bos >= 0.
std::vector<std::int32_t> window_input(std::span<const std::int32_t> tokens, const WindowPlan& plan,
                                       int chunk, std::int32_t bos);

// Rows of logits for positions pos0 .. pos0 + n_rows - 1 of the window, [n_rows x n_vocab].
using LogitsRows = std::function<void(int pos0, std::span<const float> logits, std::size_t n_rows)>;

// Runs one window from position 0 of `cache` in forward calls of at most `batch` tokens. Positions
// >= logits_from are returned through on_rows (batches are split at logits_from, and positions
// before it are run without computing their logits); logits_from >= input.size(): no logits.
void run_window(Model& model, KvCache& cache, std::span<const std::int32_t> input, int batch,
                int logits_from, const LogitsRows& on_rows);

}  // namespace qforge
