#include "runtime/cuda/cuda_weights.h"

#include <map>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "runtime/cuda/env_switch.h"
#include "runtime/cuda/gemv.h"
#include "runtime/cuda/graph.h"
#include "runtime/cuda/moe.h"

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
  // The experts of a stacked tensor, back to back (one piece: they are contiguous in the GGUF),
  // with room for stored_expert_bytes (>= the GGUF size) per expert.
  std::size_t add_stack(const std::vector<WeightMatrix>& experts,
                        std::size_t stored_expert_bytes = 0) {
    const std::size_t start = size_;
    const WeightMatrix& first = experts.front();
    const std::size_t bytes = first.rows * first.row_stride;
    for (std::size_t e = 0; e < experts.size(); ++e) {
      const WeightMatrix& m = experts[e];
      if (m.type != first.type || m.rows != first.rows || m.cols != first.cols ||
          m.data.data() != first.data.data() + e * bytes) {
        fail("CUDA backend: the experts of '{}' are not one contiguous stack of one type",
             first.name);
      }
    }
    add_piece(std::span(first.data.data(), experts.size() * first.rows * first.row_stride), false);
    size_ = std::max(size_, start + experts.size() * stored_expert_bytes);
    size_ = align_up(size_);
    return start;
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
  if (m.present() && !gemv_supported(m.type)) {
    fail(
        "CUDA backend: tensor '{}' has type {}, which has no GPU kernel (supported: F32, F16, "
        "BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K)",
        m.name, type_name(m.type));
  }
}

// The present matrices of a group (absent optional ones are left out).
std::vector<const WeightMatrix*> present(std::initializer_list<const WeightMatrix*> group) {
  std::vector<const WeightMatrix*> out;
  for (const WeightMatrix* m : group) {
    if (m->present()) out.push_back(m);
  }
  return out;
}

bool same_type(const std::vector<const WeightMatrix*>& group) {
  for (const WeightMatrix* m : group) {
    if (m->type != group.front()->type || m->cols != group.front()->cols) return false;
  }
  return !group.empty();
}

// The experts of one stacked tensor lie back to back in the GGUF (bind_weights' matrix_stack);
// they are uploaded as one group, expert e at e * rows * row_stride bytes.
std::size_t expert_bytes(const std::vector<WeightMatrix>& experts) {
  return experts.front().rows * experts.front().row_stride;
}

// Whether a down stack of rows of row_stride bytes is regrouped into Q4_0x8 (regroup_q4_0), which
// Layout must know beforehand to leave room for rows that grow. Their decode GEMV
// (moe_gemv_q4_0x8) takes any multiple of 32 columns: the row-tiled GGUF kernel streamed the
// 2816 x 704 experts of Gemma 4 26B-A4B at ~0.9 TB/s.
bool regroups_down(GgmlType type, std::size_t cols, std::size_t row_stride) {
  return q4_0x8_widened_applies(type, cols) && row_stride == row_bytes(type, cols);
}

// A down stack's bytes per expert once regrouped (0: it stays in GGUF order).
std::size_t widened_expert_bytes(const std::vector<WeightMatrix>& experts) {
  const WeightMatrix& first = experts.front();
  if (!regroups_down(first.type, first.cols, first.row_stride)) return 0;
  return first.rows * q4_0x8_row_bytes(first.cols);
}

}  // namespace

DeviceWeights::DeviceWeights(const ModelWeights& host, const ModelConfig& config,
                             std::size_t reserve_bytes) {
  require_kernel(host.token_embd);
  require_kernel(host.output);
  require_kernel(host.per_layer_token_embd);
  require_kernel(host.per_layer_model_proj);
  for (const LayerWeights& l : host.layers) {
    for (const WeightMatrix* m :
         {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) {
      require_kernel(*m);
    }
    if (l.moe) {
      require_kernel(l.moe->router);
      for (const auto* stack : {&l.moe->gate_up, &l.moe->down}) {
        if (stack->empty() || static_cast<int>(stack->size()) != config.n_expert) {
          fail("CUDA backend: layer MoE tensors have {} experts, expected {}", stack->size(),
               config.n_expert);
        }
        if (!moe_gemv_supported(stack->front().type)) {
          fail(
              "CUDA backend: tensor '{}' has type {}, which has no GPU kernel (supported: F32, "
              "F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K)",
              stack->front().name, type_name(stack->front().type));
        }
      }
    }
    if (l.per_layer_input) {
      require_kernel(l.per_layer_input->gate);
      require_kernel(l.per_layer_input->proj);
    }
  }

  // Pass 1: offsets.
  struct MoeOffsets {
    std::size_t router, router_scale, expert_scale, pre_norm, post_dense, post_moe, gate_up, down;
  };
  struct LayerOffsets {
    std::size_t attn_norm, q_norm, k_norm, post_attn_norm, ffn_norm, post_ffn_norm;
    std::size_t q, k, v, o, gate, up, down;
    bool qkv_fused, qk_fused, gate_up_fused;
    MoeOffsets moe;
    std::size_t pl_gate, pl_proj, pl_norm;
  };
  Layout layout;
  const std::size_t embd_off = layout.add_matrix(host.token_embd);
  const std::size_t output_off = layout.add_matrix(host.output);
  const std::size_t output_norm_off = layout.add_vector(host.output_norm);
  const std::size_t freqs_off = layout.add_vector(host.rope_freqs);
  std::size_t pl_embd_off = 0, pl_proj_off = 0;
  if (host.per_layer_token_embd.present()) {
    pl_embd_off = layout.add_matrix(host.per_layer_token_embd);
    pl_proj_off = layout.add_matrix(host.per_layer_model_proj);
  }
  const std::size_t pl_norm_off = layout.add_vector(host.per_layer_proj_norm);
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
    const std::vector<const WeightMatrix*> qkv = present({&l.wq, &l.wk, &l.wv});
    o.qkv_fused = qkv.size() > 1 && same_type(qkv);
    // QFORGE_QK_STACK=0: Q and K apart, as before (measurements).
    static const bool stack_qk = switch_on("QFORGE_QK_STACK");
    o.qk_fused =
        stack_qk && !o.qkv_fused && l.wk.present() && l.wv.present() && same_type({&l.wq, &l.wk});
    if (o.qkv_fused) {
      o.q = layout.add_group({&l.wq, &l.wk, &l.wv});  // absent ones add no bytes
      o.k = o.q + l.wq.rows * l.wq.row_stride;
      o.v = o.k + l.wk.rows * l.wk.row_stride;
    } else if (o.qk_fused) {
      o.q = layout.add_group({&l.wq, &l.wk});
      o.k = o.q + l.wq.rows * l.wq.row_stride;
      o.v = layout.add_group({&l.wv});
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
    if (l.moe) {
      const MoeWeights& m = *l.moe;
      o.moe.router = layout.add_group({&m.router});
      o.moe.router_scale = layout.add_vector(m.router_scale);
      o.moe.expert_scale = layout.add_vector(m.expert_scale);
      o.moe.pre_norm = layout.add_vector(m.pre_norm);
      o.moe.post_dense = layout.add_vector(m.post_norm_dense);
      o.moe.post_moe = layout.add_vector(m.post_norm_moe);
      o.moe.gate_up = layout.add_stack(m.gate_up);
      // Q4_0 down stacks are regrouped into Q4_0x8 rows (regroup_q4_0), which grow where the
      // width is not a multiple of 256 columns: room for those.
      o.moe.down = layout.add_stack(m.down, widened_expert_bytes(m.down));
    }
    if (l.per_layer_input) {
      o.pl_gate = layout.add_group({&l.per_layer_input->gate});
      o.pl_proj = layout.add_group({&l.per_layer_input->proj});
      o.pl_norm = layout.add_vector(l.per_layer_input->post_norm);
    }
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
    if (!m.present()) return DeviceMatrix{m.name, m.type, 0, 0, nullptr};
    return DeviceMatrix{m.name, m.type, m.rows, m.cols, base + off};
  };
  auto stacked = [base](const WeightMatrix& first, std::size_t rows, std::size_t off,
                        std::string name) {
    return DeviceMatrix{std::move(name), first.type, rows, first.cols, base + off};
  };
  auto experts = [base](const std::vector<WeightMatrix>& stack, std::size_t off) {
    const WeightMatrix& first = stack.front();
    ExpertStack e{first.type, base + off,          first.rows,
                  first.cols, expert_bytes(stack), static_cast<int>(stack.size())};
    check_expert_stack(e, first.name.c_str());
    return e;
  };
  token_embd = mat(host.token_embd, embd_off);
  output = mat(host.output, output_off);
  output_norm = vec(output_norm_off);
  rope_freqs = vec(freqs_off);
  per_layer_token_embd = mat(host.per_layer_token_embd, pl_embd_off);
  per_layer_model_proj = mat(host.per_layer_model_proj, pl_proj_off);
  per_layer_proj_norm = vec(pl_norm_off);
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
    if (o.qk_fused) {
      d.qk = stacked(l.wq, l.wq.rows + l.wk.rows, o.q, fmt::format("blk.{}.attn_qk", il));
    }
    if (o.gate_up_fused) {
      d.gate_up = stacked(l.ffn_gate, l.ffn_gate.rows + l.ffn_up.rows, o.gate,
                          fmt::format("blk.{}.ffn_gate_up", il));
    }
    if (l.moe) {
      const MoeWeights& m = *l.moe;
      d.has_moe = true;
      d.moe.router = mat(m.router, o.moe.router);
      d.moe.router_scale = vec(o.moe.router_scale);
      d.moe.expert_scale = vec(o.moe.expert_scale);
      d.moe.pre_norm = vec(o.moe.pre_norm);
      d.moe.post_norm_dense = vec(o.moe.post_dense);
      d.moe.post_norm_moe = vec(o.moe.post_moe);
      d.moe.gate_up = experts(m.gate_up, o.moe.gate_up);
      d.moe.down = experts(m.down, o.moe.down);
    }
    if (l.per_layer_input) {
      d.has_per_layer_input = true;
      d.per_layer_input.gate = mat(l.per_layer_input->gate, o.pl_gate);
      d.per_layer_input.proj = mat(l.per_layer_input->proj, o.pl_proj);
      d.per_layer_input.post_norm = vec(o.pl_norm);
    }
    d.output_scale = l.output_scale;
  }
  regroup_q4_0();
}

// Q4_0 attention, FFN and expert gate/up matrices into Q4_0x8 where their width allows. A stacked
// group (qkv, gate_up) is regrouped once and its members share the layout.
void DeviceWeights::regroup_q4_0() {
  DeviceBuffer<std::uint8_t> scratch;         // one for every matrix
  auto writable = [this](const void* data) {  // the arena bytes behind a matrix's data pointer
    return arena_.data() + (static_cast<const std::byte*>(data) - arena_.data());
  };
  auto regroup = [&](DeviceMatrix& m) {
    if (m.empty() || !q4_0x8_applies(m.type, m.cols)) return;
    repack_q4_0x8(writable(m.data), m.rows, m.cols, scratch);
    m.layout = WeightLayout::kQ4_0x8;
  };
  for (DeviceLayer& d : layers) {
    if (!d.qkv.empty()) {
      regroup(d.qkv);
      d.wq.layout = d.wk.layout = d.wv.layout = d.qkv.layout;
    } else if (!d.qk.empty()) {
      regroup(d.qk);
      d.wq.layout = d.wk.layout = d.qk.layout;
      regroup(d.wv);
    } else {
      for (DeviceMatrix* m : {&d.wq, &d.wk, &d.wv}) regroup(*m);
    }
    regroup(d.wo);
    if (!d.gate_up.empty()) {
      regroup(d.gate_up);
      d.gate.layout = d.up.layout = d.gate_up.layout;
    } else {
      regroup(d.gate);
      regroup(d.up);
    }
    regroup(d.down);
    // Expert gate/up stacks too (moe_gemv_q4_0x8_glu for decode, moe_gemm for prompts).
    // The experts' rows follow each other (expert_bytes = rows * row size), so the stack is
    // regrouped as one matrix of n_experts * rows rows.
    ExpertStack& gu = d.moe.gate_up;
    if (d.has_moe && !gu.empty() && q4_0x8_applies(gu.type, gu.cols) &&
        gu.expert_bytes == gu.rows * row_bytes(gu.type, gu.cols) && gu.expert_bytes % 16 == 0) {
      repack_q4_0x8(writable(gu.data), gu.rows * static_cast<std::size_t>(gu.n_experts), gu.cols,
                    scratch);
      gu.layout = WeightLayout::kQ4_0x8;
    }
    // Down stacks (each slot its own x: moe_gemv_q4_0x8) into the room Layout left for them.
    ExpertStack& dn = d.moe.down;
    if (d.has_moe && !dn.empty() && regroups_down(dn.type, dn.cols, dn.expert_bytes / dn.rows)) {
      repack_q4_0x8_widening(writable(dn.data), dn.rows * static_cast<std::size_t>(dn.n_experts),
                             dn.cols, scratch);
      dn.expert_bytes = dn.rows * q4_0x8_row_bytes(dn.cols);
      dn.layout = WeightLayout::kQ4_0x8;
      check_expert_stack(dn, "down experts (Q4_0x8)");
    }
  }
}

}  // namespace qforge::cuda
