// The model's weights in GPU memory: one allocation, every tensor uploaded byte for byte in its
// stored type (small vectors as the F32 values bind_weights decoded). Q/K/V and gate/up matrices of
// the same type are placed back to back, so one GEMV launch computes all of them. Gemma 4 adds
// optional pieces: MoE blocks (router, stacked experts, their norms and scales), per-layer
// embedding inputs and layer output scales; absent matrices are empty (null data). The attention,
// dense FFN and expert gate/up matrices of Q4_0 layers are regrouped after the upload (q4_0x8.h)
// where their width allows; the embedding tables, the LM head and the down experts keep the GGUF
// layout.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/moe.h"
#include "runtime/cuda/q4_0x8.h"

namespace qforge::cuda {

struct DeviceMatrix {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::size_t rows = 0, cols = 0;
  const void* data = nullptr;
  WeightLayout layout = WeightLayout::kGguf;
  bool empty() const { return data == nullptr; }
};

// Gemma 4's mixture-of-experts block (see MoeWeights in model/weights.h).
struct DeviceMoe {
  DeviceMatrix router;                  // [n_expert x n_embd]
  const float* router_scale = nullptr;  // [n_embd]
  const float* expert_scale = nullptr;  // [n_expert]
  const float* pre_norm = nullptr;
  const float* post_norm_dense = nullptr;
  const float* post_norm_moe = nullptr;
  ExpertStack gate_up;  // per expert [2 * n_ff_exp x n_embd]: gate rows, then up rows
  ExpertStack down;     // per expert [n_embd x n_ff_exp]
};

// Per-layer embedding input of Gemma 4 E models.
struct DevicePerLayerInput {
  DeviceMatrix gate;                 // [n_embd_per_layer x n_embd]
  DeviceMatrix proj;                 // [n_embd x n_embd_per_layer]
  const float* post_norm = nullptr;  // [n_embd]
};

struct DeviceLayer {
  const float* attn_norm = nullptr;
  const float* q_norm = nullptr;  // null without QK-norm
  const float* k_norm = nullptr;
  const float* post_attn_norm = nullptr;  // null without post norms
  const float* ffn_norm = nullptr;
  const float* post_ffn_norm = nullptr;
  // wq, wk, wv stacked (those present: KV-sharing layers have only wq, V = K layers no wv), when
  // they share a type; else empty.
  DeviceMatrix qkv;
  // wq and wk stacked where they share a type and wv has another (llama-quantize's Q4_K_M gives
  // some layers a Q6_K attn_v): two launches instead of three; else empty.
  DeviceMatrix qk;
  DeviceMatrix wq, wk, wv, wo;
  DeviceMatrix gate_up;  // ffn_gate, ffn_up stacked, when they share a type; else empty
  DeviceMatrix gate, up, down;
  bool has_moe = false;
  DeviceMoe moe;
  bool has_per_layer_input = false;
  DevicePerLayerInput per_layer_input;
  float output_scale = 1.0f;
};

class DeviceWeights {
 public:
  // Plans the layout, checks it against the device's free memory (plus `reserve_bytes` the caller
  // needs beside the weights) and uploads. Fails naming the tensor whose type has no GPU kernel,
  // or with the bytes needed and free.
  DeviceWeights(const ModelWeights& host, const ModelConfig& config, std::size_t reserve_bytes);

  std::size_t bytes() const { return arena_.bytes(); }

  DeviceMatrix token_embd, output;
  const float* output_norm = nullptr;
  const float* rope_freqs = nullptr;  // null when the model has none
  // Per-layer embeddings (E models; empty / null otherwise).
  DeviceMatrix per_layer_token_embd, per_layer_model_proj;
  const float* per_layer_proj_norm = nullptr;
  std::vector<DeviceLayer> layers;

 private:
  void regroup_q4_0();
  DeviceBuffer<std::byte> arena_;
};

}  // namespace qforge::cuda
