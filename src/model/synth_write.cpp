// Streaming output of `qforge synth`: tensor i+1 is generated (on the thread pool) while tensor i
// is written by a second thread, so at most two tensors are in memory and generation overlaps the
// disk. GgufWriter writes into a temporary file that is renamed into place by finish().
#include <chrono>
#include <future>
#include <memory>

#include "core/error.h"
#include "model/synth.h"

namespace qforge::synth {
namespace {

// A reusable buffer that is never zero-filled (every byte is overwritten by the generator).
class Buffer {
 public:
  std::span<std::byte> get(std::size_t n) {
    if (n > capacity_) {
      data_.reset();
      data_ = std::make_unique_for_overwrite<std::byte[]>(n);
      capacity_ = n;
    }
    return {data_.get(), n};
  }

 private:
  std::unique_ptr<std::byte[]> data_;
  std::size_t capacity_ = 0;
};

}  // namespace

void write_synth_model(const SynthPlan& plan, const std::filesystem::path& out, std::uint64_t seed,
                       const SynthProgressFn& progress) {
  const auto start = std::chrono::steady_clock::now();
  GgufWriter writer(out);
  for (const GgufKV& kv : plan.kvs) writer.add_kv(kv.key, kv.value);
  for (const SynthTensor& t : plan.tensors) writer.add_tensor(t.name, t.ne, t.type);

  SynthProgress p;
  p.tensors_total = plan.tensors.size();
  p.bytes_total = plan.total_bytes();
  auto report = [&] {
    if (!progress) return;
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress(p);
  };

  Buffer buffers[2];
  std::future<void> pending;  // the write of the previous tensor
  std::uint64_t pending_bytes = 0;
  auto finish_pending = [&] {
    if (!pending.valid()) return;
    pending.get();  // rethrows a write error
    ++p.tensors_done;
    p.bytes_done += pending_bytes;
    report();
  };
  for (std::size_t i = 0; i < plan.tensors.size(); ++i) {
    const SynthTensor& t = plan.tensors[i];
    // This buffer's previous tensor (i - 2) was written before tensor i - 1's write started.
    std::span<std::byte> bytes = buffers[i % 2].get(static_cast<std::size_t>(t.n_bytes()));
    fill_synth_tensor(t, seed, i, bytes);
    finish_pending();
    pending_bytes = bytes.size();
    pending = std::async(std::launch::async, [&writer, bytes] { writer.write_tensor_data(bytes); });
  }
  finish_pending();
  writer.finish();
}

}  // namespace qforge::synth
