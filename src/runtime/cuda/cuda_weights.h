// The model's weights in GPU memory: one allocation, every tensor uploaded byte for byte in its
// stored type (small vectors as the F32 values bind_weights decoded). Q/K/V and gate/up matrices of
// the same type are placed back to back, so one GEMV launch computes all of them.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "runtime/cuda/buffer.h"

namespace qforge::cuda {

struct DeviceMatrix {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::size_t rows = 0, cols = 0;
  const void* data = nullptr;
  bool empty() const { return data == nullptr; }
};

struct DeviceLayer {
  const float* attn_norm = nullptr;
  const float* q_norm = nullptr;  // null without QK-norm
  const float* k_norm = nullptr;
  const float* post_attn_norm = nullptr;  // null without post norms
  const float* ffn_norm = nullptr;
  const float* post_ffn_norm = nullptr;
  DeviceMatrix qkv;  // wq, wk, wv stacked, when the three share a type; else empty
  DeviceMatrix wq, wk, wv, wo;
  DeviceMatrix gate_up;  // ffn_gate, ffn_up stacked, when they share a type; else empty
  DeviceMatrix gate, up, down;
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
  std::vector<DeviceLayer> layers;

 private:
  DeviceBuffer<std::byte> arena_;
};

}  // namespace qforge::cuda
