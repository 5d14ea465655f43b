#include "model/weights.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "formats/gguf.h"
#include "quant/blocks.h"

namespace qforge {
namespace {

const GgufTensorInfo& require_tensor(const GgufReader& gguf, const std::string& name) {
  const GgufTensorInfo* t = gguf.find_tensor(name);
  if (t == nullptr) fail("{}: tensor '{}' is missing", gguf.path(), name);
  return *t;
}

std::string shape_string(const std::vector<std::uint64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

WeightMatrix bind_matrix(const GgufReader& gguf, const GgufTensorInfo& t, std::size_t cols,
                         std::size_t rows) {
  const bool shape_ok = (t.shape.size() == 2 || (t.shape.size() == 3 && t.shape[2] == 1)) &&
                        t.shape[0] == cols && t.shape[1] == rows;
  if (!shape_ok) {
    fail("{}: tensor '{}' has shape {}, expected [{}, {}]", gguf.path(), t.name,
         shape_string(t.shape), cols, rows);
  }
  if (!can_dequantize(t.type)) {
    fail("{}: tensor '{}' has type {}, which the CPU backend cannot read", gguf.path(), t.name,
         type_name(t.type));
  }
  if (cols % block_size(t.type) != 0) {
    fail("{}: tensor '{}': row length {} is not a multiple of the {} block size {}", gguf.path(),
         t.name, cols, type_name(t.type), block_size(t.type));
  }
  WeightMatrix m;
  m.name = t.name;
  m.type = t.type;
  m.rows = rows;
  m.cols = cols;
  m.row_stride = row_bytes(t.type, cols);
  m.data = gguf.tensor_data(t);
  if (m.data.size() < m.row_stride * rows) {
    fail("{}: tensor '{}' data is {} bytes, expected {}", gguf.path(), t.name, m.data.size(),
         m.row_stride * rows);
  }
  return m;
}

WeightMatrix matrix(const GgufReader& gguf, const std::string& name, std::size_t cols,
                    std::size_t rows) {
  return bind_matrix(gguf, require_tensor(gguf, name), cols, rows);
}

std::vector<float> vector_from(const GgufReader& gguf, const GgufTensorInfo& t, std::size_t n) {
  if (t.shape.size() != 1 || t.shape[0] != n) {
    fail("{}: tensor '{}' has shape {}, expected [{}]", gguf.path(), t.name, shape_string(t.shape),
         n);
  }
  if (!can_dequantize(t.type) || n % block_size(t.type) != 0) {
    fail("{}: tensor '{}' has unsupported type {} for a vector", gguf.path(), t.name,
         type_name(t.type));
  }
  std::vector<float> out(n);
  dequantize_row(t.type, gguf.tensor_data(t).first(row_bytes(t.type, n)), out);
  return out;
}

std::vector<float> vector(const GgufReader& gguf, const std::string& name, std::size_t n) {
  return vector_from(gguf, require_tensor(gguf, name), n);
}

}  // namespace

ModelWeights bind_weights(const GgufReader& gguf, const ModelConfig& c) {
  const auto embd = static_cast<std::size_t>(c.n_embd);
  const auto ff = static_cast<std::size_t>(c.n_ff);
  const auto q_dim = static_cast<std::size_t>(c.n_head) * static_cast<std::size_t>(c.head_dim_k);
  const auto k_dim = static_cast<std::size_t>(c.n_head_kv) * static_cast<std::size_t>(c.head_dim_k);
  const auto v_dim = static_cast<std::size_t>(c.n_head_kv) * static_cast<std::size_t>(c.head_dim_v);
  const auto o_dim = static_cast<std::size_t>(c.n_head) * static_cast<std::size_t>(c.head_dim_v);

  ModelWeights w;
  w.token_embd = matrix(gguf, "token_embd.weight", embd, static_cast<std::size_t>(c.n_vocab));
  w.output_norm = vector(gguf, "output_norm.weight", embd);
  if (const GgufTensorInfo* out = gguf.find_tensor("output.weight")) {
    w.output = bind_matrix(gguf, *out, embd, static_cast<std::size_t>(c.n_vocab));
  } else {
    w.output = w.token_embd;  // tied embeddings
  }
  if (const GgufTensorInfo* freqs = gguf.find_tensor("rope_freqs.weight")) {
    w.rope_freqs = vector_from(gguf, *freqs, static_cast<std::size_t>(c.n_rot / 2));
  }
  w.layers.resize(static_cast<std::size_t>(c.n_layer));
  for (int il = 0; il < c.n_layer; ++il) {
    LayerWeights& l = w.layers[static_cast<std::size_t>(il)];
    auto name = [il](std::string_view suffix) { return fmt::format("blk.{}.{}.weight", il, suffix); };
    l.attn_norm = vector(gguf, name("attn_norm"), embd);
    l.wq = matrix(gguf, name("attn_q"), embd, q_dim);
    l.wk = matrix(gguf, name("attn_k"), embd, k_dim);
    l.wv = matrix(gguf, name("attn_v"), embd, v_dim);
    l.wo = matrix(gguf, name("attn_output"), o_dim, embd);
    if (c.qk_norm) {
      l.q_norm = vector(gguf, name("attn_q_norm"), static_cast<std::size_t>(c.head_dim_k));
      l.k_norm = vector(gguf, name("attn_k_norm"), static_cast<std::size_t>(c.head_dim_k));
    }
    l.ffn_norm = vector(gguf, name("ffn_norm"), embd);
    l.ffn_gate = matrix(gguf, name("ffn_gate"), embd, ff);
    l.ffn_up = matrix(gguf, name("ffn_up"), embd, ff);
    l.ffn_down = matrix(gguf, name("ffn_down"), ff, embd);
    if (c.post_norms) {
      l.post_attn_norm = vector(gguf, name("post_attention_norm"), embd);
      l.post_ffn_norm = vector(gguf, name("post_ffw_norm"), embd);
    }
  }
  return w;
}

}  // namespace qforge
