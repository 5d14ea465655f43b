#include "runtime/cuda/cuda_weights.h"

#include <map>

#include <fmt/format.h>

#include "core/error.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/graph.h"

namespace qforge::cuda {
namespace {

constexpr std::size_t kAlign = 256;

std::size_t align_up(std::size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

std::string gib(std::size_t bytes) {
  return fmt::format("{} bytes ({:.2f} GiB)", bytes, static_cast<double>(bytes) / (1u << 30));
}

// Host pieces and their offsets in the arena. Matrices of a group are contiguous (no padding
// between them), so a group reads as one taller matrix.
class Layout {
 public:
  // Returns the offset of the first matrix; the others follow at rows * row_stride steps.
  std::size_t add_group(std::initializer_list<const WeightMatrix*> group) {
    const std::size_t start = size_;
    for (const WeightMatrix* m : group) add_piece(m->data.first(m->rows * m->row_stride), false);
    size_ = align_up(size_);
    return start;
  }
  std::size_t add_matrix(const WeightMatrix& m) {
    // The tied output matrix reuses the embedding's copy.
    if (auto it = by_host_.find(m.data.data()); it != by_host_.end()) return it->second;
    const std::size_t offset = add_group({&m});
    by_host_.emplace(m.data.data(), offset);
    return offset;
  }
  std::size_t add_vector(const std::vector<float>& v) {
    if (v.empty()) return kNone;
    const std::size_t offset = size_;
    add_piece(std::as_bytes(std::span(v)), true);
    return offset;
  }
  std::size_t size() const { return size_; }
  void upload(DeviceBuffer<std::byte>& arena) const {
    for (const auto& [offset, bytes] : pieces_) arena.upload(bytes, offset);
  }
  static constexpr std::size_t kNone = ~std::size_t{0};

 private:
  void add_piece(std::span<const std::byte> bytes, bool pad) {
    pieces_.emplace_back(size_, bytes);
    size_ += bytes.size();
    if (pad) size_ = align_up(size_);
  }
  std::size_t size_ = 0;
  std::vector<std::pair<std::size_t, std::span<const std::byte>>> pieces_;
  std::map<const std::byte*, std::size_t> by_host_;
};

void require_kernel(const WeightMatrix& m) {
  if (!gemv_supported(m.type)) {
    fail(
        "CUDA backend: tensor '{}' has type {}, which has no GPU kernel (supported: F32, F16, "
        "BF16, Q4_0, Q4_1, Q5_0, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K)",
        m.name, type_name(m.type));
  }
}

bool same_type(std::initializer_list<const WeightMatrix*> group) {
  for (const WeightMatrix* m : group) {
    if (m->type != (*group.begin())->type || m->cols != (*group.begin())->cols) return false;
  }
  return true;
}

}  // namespace

DeviceWeights::DeviceWeights(const ModelWeights& host, const ModelConfig& config,
                             std::size_t reserve_bytes) {
  (void)config;
  require_kernel(host.token_embd);
  require_kernel(host.output);
  for (const LayerWeights& l : host.layers) {
    for (const WeightMatrix* m :
         {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) {
      require_kernel(*m);
    }
  }

  // Pass 1: offsets.
  struct LayerOffsets {
    std::size_t attn_norm, q_norm, k_norm, post_attn_norm, ffn_norm, post_ffn_norm;
    std::size_t q, k, v, o, gate, up, down;
    bool qkv_fused, gate_up_fused;
  };
  Layout layout;
  const std::size_t embd_off = layout.add_matrix(host.token_embd);
  const std::size_t output_off = layout.add_matrix(host.output);
  const std::size_t output_norm_off = layout.add_vector(host.output_norm);
  const std::size_t freqs_off = layout.add_vector(host.rope_freqs);
  std::vector<LayerOffsets> lo(host.layers.size());
  for (std::size_t il = 0; il < host.layers.size(); ++il) {
    const LayerWeights& l = host.layers[il];
    LayerOffsets& o = lo[il];
    o.attn_norm = layout.add_vector(l.attn_norm);
    o.q_norm = layout.add_vector(l.q_norm);
    o.k_norm = layout.add_vector(l.k_norm);
    o.post_attn_norm = layout.add_vector(l.post_attn_norm);
    o.ffn_norm = layout.add_vector(l.ffn_norm);
    o.post_ffn_norm = layout.add_vector(l.post_ffn_norm);
    o.qkv_fused = same_type({&l.wq, &l.wk, &l.wv});
    if (o.qkv_fused) {
      o.q = layout.add_group({&l.wq, &l.wk, &l.wv});
      o.k = o.q + l.wq.rows * l.wq.row_stride;
      o.v = o.k + l.wk.rows * l.wk.row_stride;
    } else {
      o.q = layout.add_group({&l.wq});
      o.k = layout.add_group({&l.wk});
      o.v = layout.add_group({&l.wv});
    }
    o.o = layout.add_group({&l.wo});
    o.gate_up_fused = same_type({&l.ffn_gate, &l.ffn_up});
    if (o.gate_up_fused) {
      o.gate = layout.add_group({&l.ffn_gate, &l.ffn_up});
      o.up = o.gate + l.ffn_gate.rows * l.ffn_gate.row_stride;
    } else {
      o.gate = layout.add_group({&l.ffn_gate});
      o.up = layout.add_group({&l.ffn_up});
    }
    o.down = layout.add_group({&l.ffn_down});
  }

  // Does it fit? Checked before allocating, so the message can say by how much it does not.
  const CurrentDevice dev = current_device();
  const std::size_t needed = layout.size() + reserve_bytes;
  if (needed > dev.free_bytes) {
    fail(
        "CUDA backend: the model needs {} of GPU memory ({} of weights + {} of buffers) but "
        "only {} are free on GPU {} ({})",
        gib(needed), gib(layout.size()), gib(reserve_bytes), gib(dev.free_bytes), dev.index,
        dev.name);
  }
  arena_ = DeviceBuffer<std::byte>(layout.size());
  layout.upload(arena_);

  // Pass 2: device pointers.
  std::byte* base = arena_.data();
  auto vec = [base](std::size_t off) -> const float* {
    return off == Layout::kNone ? nullptr : reinterpret_cast<const float*>(base + off);
  };
  auto mat = [base](const WeightMatrix& m, std::size_t off) {
    return DeviceMatrix{m.name, m.type, m.rows, m.cols, base + off};
  };
  auto stacked = [base](const WeightMatrix& first, std::size_t rows, std::size_t off,
                        std::string name) {
    return DeviceMatrix{std::move(name), first.type, rows, first.cols, base + off};
  };
  token_embd = mat(host.token_embd, embd_off);
  output = mat(host.output, output_off);
  output_norm = vec(output_norm_off);
  rope_freqs = vec(freqs_off);
  layers.resize(host.layers.size());
  for (std::size_t il = 0; il < host.layers.size(); ++il) {
    const LayerWeights& l = host.layers[il];
    const LayerOffsets& o = lo[il];
    DeviceLayer& d = layers[il];
    d.attn_norm = vec(o.attn_norm);
    d.q_norm = vec(o.q_norm);
    d.k_norm = vec(o.k_norm);
    d.post_attn_norm = vec(o.post_attn_norm);
    d.ffn_norm = vec(o.ffn_norm);
    d.post_ffn_norm = vec(o.post_ffn_norm);
    d.wq = mat(l.wq, o.q);
    d.wk = mat(l.wk, o.k);
    d.wv = mat(l.wv, o.v);
    d.wo = mat(l.wo, o.o);
    d.gate = mat(l.ffn_gate, o.gate);
    d.up = mat(l.ffn_up, o.up);
    d.down = mat(l.ffn_down, o.down);
    if (o.qkv_fused) {
      d.qkv =
          stacked(l.wq, l.wq.rows + l.wk.rows + l.wv.rows, o.q, fmt::format("blk.{}.attn_qkv", il));
    }
    if (o.gate_up_fused) {
      d.gate_up = stacked(l.ffn_gate, l.ffn_gate.rows + l.ffn_up.rows, o.gate,
                          fmt::format("blk.{}.ffn_gate_up", il));
    }
  }
}

}  // namespace qforge::cuda
