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

WeightMatrix optional_matrix(const GgufReader& gguf, const std::string& name, std::size_t cols,
                             std::size_t rows) {
  const GgufTensorInfo* t = gguf.find_tensor(name);
  return t == nullptr ? WeightMatrix{} : bind_matrix(gguf, *t, cols, rows);
}

// A 3-D tensor [cols, rows, n] (ggml order) as n matrices of rows x cols (MoE experts).
std::vector<WeightMatrix> matrix_stack(const GgufReader& gguf, const std::string& name,
                                       std::size_t cols, std::size_t rows, std::size_t n) {
  const GgufTensorInfo& t = require_tensor(gguf, name);
  if (t.shape.size() != 3 || t.shape[0] != cols || t.shape[1] != rows || t.shape[2] != n) {
    fail("{}: tensor '{}' has shape {}, expected [{}, {}, {}]", gguf.path(), t.name,
         shape_string(t.shape), cols, rows, n);
  }
  GgufTensorInfo one = t;  // as one 2-D matrix of n * rows rows, to reuse bind_matrix's checks
  one.shape = {cols, rows * n};
  WeightMatrix all = bind_matrix(gguf, one, cols, rows * n);
  std::vector<WeightMatrix> out(n, all);
  for (std::size_t e = 0; e < n; ++e) {
    out[e].name = fmt::format("{}[{}]", t.name, e);
    out[e].rows = rows;
    out[e].expert = static_cast<int>(e);
    out[e].n_experts = static_cast<int>(n);
    out[e].data = all.data.subspan(e * rows * all.row_stride, rows * all.row_stride);
  }
  return out;
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

MoeWeights bind_moe(const GgufReader& gguf, const ModelConfig& c, int il) {
  const auto embd = static_cast<std::size_t>(c.n_embd);
  const auto n_expert = static_cast<std::size_t>(c.n_expert);
  const auto ff_exp = static_cast<std::size_t>(c.n_ff_exp);
  auto name = [il](std::string_view suffix) { return fmt::format("blk.{}.{}", il, suffix); };
  MoeWeights m;
  m.router = matrix(gguf, name("ffn_gate_inp.weight"), embd, n_expert);
  m.router_scale = vector(gguf, name("ffn_gate_inp.scale"), embd);
  m.expert_scale = vector(gguf, name("ffn_down_exps.scale"), n_expert);
  m.pre_norm = vector(gguf, name("pre_ffw_norm_2.weight"), embd);
  m.post_norm_dense = vector(gguf, name("post_ffw_norm_1.weight"), embd);
  m.post_norm_moe = vector(gguf, name("post_ffw_norm_2.weight"), embd);
  m.gate_up = matrix_stack(gguf, name("ffn_gate_up_exps.weight"), embd, 2 * ff_exp, n_expert);
  m.down = matrix_stack(gguf, name("ffn_down_exps.weight"), ff_exp, embd, n_expert);
  return m;
}

void bind_per_layer_embeddings(const GgufReader& gguf, const ModelConfig& c, ModelWeights& w) {
  const auto embd = static_cast<std::size_t>(c.n_embd);
  const auto n_pl = static_cast<std::size_t>(c.n_embd_per_layer);
  const GgufTensorInfo& table = require_tensor(gguf, "per_layer_token_embd.weight");
  // All layers of the file are packed in one row (layer-major); the rows may be fewer than the
  // main vocabulary (vocab_size_per_layer_input).
  if (table.shape.size() != 2 || table.shape[0] % n_pl != 0 ||
      table.shape[0] < n_pl * static_cast<std::size_t>(c.n_layer) || table.shape[1] == 0) {
    fail("{}: tensor 'per_layer_token_embd.weight' has shape {}, expected [{} x {}, n_vocab]",
         gguf.path(), shape_string(table.shape), c.n_layer, n_pl);
  }
  const auto width = static_cast<std::size_t>(table.shape[0]);
  w.per_layer_token_embd =
      bind_matrix(gguf, table, width, static_cast<std::size_t>(table.shape[1]));
  w.per_layer_model_proj = matrix(gguf, "per_layer_model_proj.weight", embd, width);
  w.per_layer_proj_norm = vector(gguf, "per_layer_proj_norm.weight", n_pl);
}

}  // namespace

ModelWeights bind_weights(const GgufReader& gguf, const ModelConfig& c) {
  const auto embd = static_cast<std::size_t>(c.n_embd);
  const auto n_head = static_cast<std::size_t>(c.n_head);
  const bool k_eq_v_allowed = c.arch == "gemma4";  // full layers may have no attn_v (V = K)

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
  if (c.n_embd_per_layer > 0) bind_per_layer_embeddings(gguf, c, w);
  w.layers.resize(static_cast<std::size_t>(c.n_layer));
  for (int il = 0; il < c.n_layer; ++il) {
    LayerWeights& l = w.layers[static_cast<std::size_t>(il)];
    auto name = [il](std::string_view suffix) {
      return fmt::format("blk.{}.{}.weight", il, suffix);
    };
    const auto dk = static_cast<std::size_t>(c.head_dim_k_of(il));
    const auto dv = static_cast<std::size_t>(c.head_dim_v_of(il));
    const auto n_kv = static_cast<std::size_t>(c.n_head_kv_of(il));
    const auto ff = static_cast<std::size_t>(c.n_ff_of(il));
    l.attn_norm = vector(gguf, name("attn_norm"), embd);
    l.wq = matrix(gguf, name("attn_q"), embd, n_head * dk);
    if (c.has_kv(il)) {
      l.wk = matrix(gguf, name("attn_k"), embd, n_kv * dk);
      l.wv = k_eq_v_allowed ? optional_matrix(gguf, name("attn_v"), embd, n_kv * dv)
                            : matrix(gguf, name("attn_v"), embd, n_kv * dv);
      if (!l.wv.present() && dk != dv) {
        fail("{}: layer {} has no attn_v (V = K) but key length {} != value length {}", gguf.path(),
             il, dk, dv);
      }
    }
    l.wo = matrix(gguf, name("attn_output"), n_head * dv, embd);
    if (c.qk_norm) {
      l.q_norm = vector(gguf, name("attn_q_norm"), dk);
      if (c.has_kv(il)) l.k_norm = vector(gguf, name("attn_k_norm"), dk);
    }
    l.ffn_norm = vector(gguf, name("ffn_norm"), embd);
    l.ffn_gate = matrix(gguf, name("ffn_gate"), embd, ff);
    l.ffn_up = matrix(gguf, name("ffn_up"), embd, ff);
    l.ffn_down = matrix(gguf, name("ffn_down"), ff, embd);
    if (c.post_norms) {
      l.post_attn_norm = vector(gguf, name("post_attention_norm"), embd);
      l.post_ffn_norm = vector(gguf, name("post_ffw_norm"), embd);
    }
    if (c.n_expert > 0) l.moe = bind_moe(gguf, c, il);
    if (c.n_embd_per_layer > 0) {
      const auto n_pl = static_cast<std::size_t>(c.n_embd_per_layer);
      l.per_layer_input = PerLayerInputWeights{matrix(gguf, name("inp_gate"), embd, n_pl),
                                               matrix(gguf, name("proj"), n_pl, embd),
                                               vector(gguf, name("post_norm"), embd)};
    }
    if (const GgufTensorInfo* scale = gguf.find_tensor(name("layer_output_scale"))) {
      l.output_scale = vector_from(gguf, *scale, 1)[0];
    }
  }
  return w;
}

namespace {

// Calls fn on every WeightMatrix of the model (token_embd and output separately, even when tied).
template <typename Fn>
void for_each_matrix(ModelWeights& w, Fn&& fn) {
  fn(w.token_embd);
  fn(w.output);
  fn(w.per_layer_token_embd);
  fn(w.per_layer_model_proj);
  for (LayerWeights& l : w.layers) {
    for (WeightMatrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down})
      fn(*m);
    if (l.moe) {
      fn(l.moe->router);
      for (WeightMatrix& m : l.moe->gate_up) fn(m);
      for (WeightMatrix& m : l.moe->down) fn(m);
    }
    if (l.per_layer_input) {
      fn(l.per_layer_input->gate);
      fn(l.per_layer_input->proj);
    }
  }
}

}  // namespace

int replace_matrix(ModelWeights& weights, std::string_view name, GgmlType type,
                   std::span<const std::byte> data) {
  int changed = 0;
  for_each_matrix(weights, [&](WeightMatrix& m) {
    const bool stacked = m.expert >= 0 && m.name.size() > name.size() && m.name.starts_with(name) &&
                         m.name[name.size()] == '[';
    if (!m.present() || (m.name != name && !stacked)) return;
    const std::size_t stride = row_bytes(type, m.cols);
    const std::size_t offset = stacked ? static_cast<std::size_t>(m.expert) * m.rows * stride : 0;
    if (offset + m.rows * stride > data.size()) {
      fail("replace_matrix '{}': {} bytes given, {} x {} as {} needs {}", name, data.size(), m.rows,
           m.cols, type_name(type), offset + m.rows * stride);
    }
    m.type = type;
    m.row_stride = stride;
    m.data = data.subspan(offset, m.rows * stride);
    ++changed;
  });
  return changed;
}

}  // namespace qforge
