// Kernel timelines inside a running decode (cuda/kernel_trace.cuh): the decode GEMVs over Q4_0x8
// weights record, per CTA, when it started, left its PDL wait, had its inputs ready and ended.
// `QFORGE_GEMV_TRACE=FILE qforge bench --device cuda ...` writes 8 traced decode steps to FILE
// and tools/gemv_trace.py summarizes them. No CUDA headers here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace qforge::cuda {

struct TraceRecord {
  std::uint64_t t[4];  // %globaltimer ns: entry, PDL wait released, inputs ready, CTA end
  std::uint64_t tag;   // the launch's weight pointer (one per matrix; expert stacks: the stack)
  std::uint32_t smid, block, rows, cols;
};
static_assert(sizeof(TraceRecord) == 56);

// Whether this qforge was configured with -DQFORGE_KERNEL_TRACE=ON (otherwise the kernels carry
// no stamps and gemv_trace_start fails).
bool gemv_trace_built();
// Records up to `capacity` CTAs of the Q4_0x8 GEMV launches from now on (0: stop recording).
void gemv_trace_start(std::size_t capacity);
// Stops recording and returns what was recorded (synchronizes the device).
std::vector<TraceRecord> gemv_trace_stop();
// FILE: the 8-byte magic "QFTRACE1", a uint64 count, then the records as laid out above.
// Written to FILE.tmp, then renamed.
void write_trace(const std::string& path, const std::vector<TraceRecord>& records);

}  // namespace qforge::cuda
