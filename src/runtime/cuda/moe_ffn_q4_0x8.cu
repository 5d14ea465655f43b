// The routed experts' FFN of one decode token in one launch (moe_ffn_q4_0x8, q4_0x8.h): the
// gated gate/up product of every slot, then the down product of every slot, over Q4_0x8 experts.
//
// As two launches (moe_gemv_q4_0x8_glu, then moe_gemv_q4_0x8) the down product cannot start
// until the last CTA of the gate/up product has ended: the SMs that finish early idle through its
// tail, then every CTA of the down launch enters, refills its weight ring and builds the planes of
// all slots' activations before streaming again. Here each warp walks the gate/up tasks and then
// the down tasks with one ring of bulk copies (gemv_q4_0x8.cu describes the ring and the integer
// planes), so its first down stages stream while it finishes its last gate/up task. A slot's
// activations are complete once each of its gate/up tasks has published its output (a release
// add on the slot's counter); the first warp of a CTA to start a down task of slot s waits for
// that count and builds the planes of slot s's activations for the whole CTA. The gate/up
// tasks of the first slots come first in every warp's order, so the down tasks of those slots can
// start while the gate/up product's last round (of the last slots) still runs.
//
// Waiting on other CTAs inside a kernel needs them to make progress: the grid has at most one CTA
// per SM (each takes over half an SM's shared memory), and nothing that a CTA of this kernel could
// wait behind waits for this kernel, so every CTA is resident eventually. The results are those
// of the two launches, bit for bit: the same task shapes (one gate/up pair, four down rows per
// warp task), the same planes and the same order of additions.
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/pdl.cuh"

#include <algorithm>

#include "runtime/cuda/bulk_copy.cuh"
#include "runtime/cuda/device_attrs.h"
#include "runtime/cuda/glu.cuh"
#include "runtime/cuda/q4_0x8.h"
#include "runtime/cuda/q4_0x8_dot.cuh"
#include "runtime/cuda/reduce.cuh"

namespace qforge::cuda {
namespace {

using q4_0x8_dot::block_dot;
using q4_0x8_dot::build_planes;
using q4_0x8_dot::store_chunk_planes;
using q4_0x8_dot::token_bytes;

constexpr int kWarps = 16, kThreads = 32 * kWarps;
constexpr int kGateUpRows = 2;  // one (gate, up) pair per warp task, as moe_gemv_q4_0x8_glu
constexpr int kDownRows = 4;    // four rows per warp task, as moe_gemv_q4_0x8
// Ring stages per warp: three in flight while one is computed. With 5 the kernel took 156 KB of
// shared memory, another carveout than the kernels around it in the decode graph (1% slower).
constexpr int kStages = 4;
constexpr int kStepBytes = 576;  // 32 blocks of a Q4_0x8 row: one ring stage per row
// The lane that publishes gate/up outputs and claims slots (lane 0 issues the weight stream).
constexpr int kSyncLane = 31;

// One expert stack as the kernel walks it (rows and columns per expert).
struct Matrix {
  const std::uint8_t* w = nullptr;
  std::size_t expert_bytes = 0, row_bytes = 0;
  int rows = 0, cols = 0, n_blocks = 0, n_steps = 0;
  int stage_row = 0;   // bytes between a stage's rows: min(576, row_bytes), a multiple of 16
  int slot_tasks = 0;  // warp tasks per slot
};

struct FfnArgs {
  Matrix gate_up, down;
  const int* ids = nullptr;
  int n_experts = 0, n_slots = 0;
  const float* x = nullptr;
  std::uint64_t* h = nullptr;  // n_slots rows of down.cols tagged activations (tagged())
  float* y = nullptr;
  std::size_t ldy = 0;
  std::uint64_t* launches = nullptr;  // 2^32 times the launches so far (launch_tag())
  int slot_bytes = 0;                 // bytes of one ring stage
  bool x_settled = false;
  bool evict_first = true;
};

// An activation as this launch publishes it: the launch's tag in the high word, the value's bits
// in the low. A 64-bit store is single-copy atomic, so a reader that sees the tag sees the value:
// no fence between the value and a flag, and no counter that thousands of tasks update. The tag is
// 1 + the number of launches before this one (launch_tag), so a zeroed buffer or a previous
// launch's values never match it.
__device__ __forceinline__ void publish(std::uint64_t* dst, float v, unsigned tag) {
  const std::uint64_t word = static_cast<std::uint64_t>(tag) << 32 | __float_as_uint(v);
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(dst), "l"(word) : "memory");
}

// This launch's tag, by one thread per CTA. Each CTA adds its share of 2^32 to the launch count
// (the shares of a grid sum to 2^32 exactly, whatever its size), so every CTA of launch L reads a
// value in [L 2^32, (L + 1) 2^32). Launch L + 1 starts only after every CTA of launch L has added
// its share: they add before their PDL trigger. No count at the end of the kernel, which would
// keep each CTA resident for one more round trip.
__device__ __forceinline__ unsigned launch_tag(std::uint64_t* launches) {
  const std::uint64_t grid = gridDim.x, cta = blockIdx.x;
  const std::uint64_t share = ((cta + 1) << 32) / grid - (cta << 32) / grid;
  const auto old = static_cast<unsigned long long>(
      atomicAdd(reinterpret_cast<unsigned long long*>(launches), share));
  return static_cast<unsigned>(old >> 32) + 1u;
}

__device__ __forceinline__ void load_published(const std::uint64_t* src, std::uint64_t (&w)[2]) {
  asm volatile("ld.relaxed.gpu.global.v2.b64 {%0, %1}, [%2];"
               : "=l"(w[0]), "=l"(w[1])
               : "l"(src)
               : "memory");
}

// The planes of one slot's activations (n_cols tagged words at h, published by warps of any CTA
// during this launch), built by one warp: a batch of kChunks chunks per lane is loaded together
// (one L2 round trip per 512 columns). A batch with a word not yet published is loaded again
// (wait) or ends the attempt (returns false; the planes are then incomplete).
__device__ bool build_slot_planes(const std::uint64_t* h, unsigned tag, int n_cols, int n_blocks,
                                  std::uint8_t* planes, int lane, bool wait) {
  constexpr int kChunks = 3;  // 4 raised the kernel to 128 registers
  const int total = n_cols / 8;
  for (int base = 0; base < total;) {  // uniform: shuffles below
    float v[kChunks][8];
    bool published = true;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int i = base + 32 * j + lane;
#pragma unroll
      for (int k = 0; k < 8; ++k) v[j][k] = 0.0f;
      if (i < total) {
#pragma unroll
        for (int k = 0; k < 8; k += 2) {
          std::uint64_t w[2];
          load_published(h + 8 * i + k, w);
          published &=
              static_cast<unsigned>(w[0] >> 32) == tag && static_cast<unsigned>(w[1] >> 32) == tag;
          v[j][k] = __uint_as_float(static_cast<unsigned>(w[0]));
          v[j][k + 1] = __uint_as_float(static_cast<unsigned>(w[1]));
        }
      }
    }
    if (!__all_sync(0xffffffffu, published)) {  // a gate/up task still runs
      if (!wait) return false;
      __nanosleep(64);
      continue;
    }
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      store_chunk_planes(v[j], base + 32 * j + lane, total, total, n_blocks, planes);
    }
    base += 32 * kChunks;
  }
  return true;
}

// Per-CTA planes of the slots' activations in shared memory, each built once by one warp. A
// slot's state: 0 not built, 1 being built, 2 ready.
struct SlotPlanes {
  int* state;
  std::uint8_t* planes;  // slot s at s * bytes
  std::size_t bytes;
  const std::uint64_t* h;  // slot s at s * n_cols
  unsigned tag;
  int n_cols, n_blocks;

  // The warp claims slot s if nobody has (returns true) and builds its planes, waiting for the
  // activations (wait) or giving the slot back if some are not published yet.
  __device__ bool claim_and_build(int s, int lane, bool wait, bool& built) const {
    int old = 0;
    if (lane == kSyncLane) old = atomicCAS(state + s, 0, 1);
    old = __shfl_sync(0xffffffffu, old, kSyncLane);
    if (old != 0) return false;
    built = build_slot_planes(h + static_cast<std::size_t>(s) * n_cols, tag, n_cols, n_blocks,
                              planes + s * bytes, lane, wait);
    __syncwarp();
    __threadfence_block();  // the planes before the mark
    if (lane == kSyncLane) atomicExch(state + s, built ? 2 : 0);
    return true;
  }

  // Slot s's planes, ready: built by this warp if no other warp has claimed them.
  __device__ const std::uint8_t* ready(int s, int lane) const {
    for (;;) {
      bool built = false;
      if (claim_and_build(s, lane, true, built)) break;
      int st = 0;
      if (lane == kSyncLane) st = atomicAdd(state + s, 0);
      if (__shfl_sync(0xffffffffu, st, kSyncLane) == 2) break;
      __nanosleep(32);  // being built, or an attempt ahead of time that gave it back
    }
    __threadfence_block();  // the mark before the planes
    return planes + s * bytes;
  }

  // Slot s's planes ahead of their use, if the slot is free and its activations are all there.
  __device__ void try_ahead(int s, int lane) const {
    bool built = false;
    claim_and_build(s, lane, false, built);
  }
};

template <bool kGelu>
__global__ void __launch_bounds__(kThreads) moe_ffn_kernel(FfnArgs a) {
  extern __shared__ uint4 smem_words[];
  auto* smem = reinterpret_cast<std::uint8_t*>(smem_words);
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int n_ff = a.down.cols;
  std::uint8_t* ring = smem + static_cast<std::size_t>(warp) * kStages * a.slot_bytes;
  std::uint8_t* x_planes = smem + static_cast<std::size_t>(kWarps) * kStages * a.slot_bytes;
  const std::size_t h_bytes = token_bytes(a.down.n_blocks);
  std::uint8_t* h_planes = x_planes + token_bytes(a.gate_up.n_blocks);  // slot s at s * h_bytes
  auto* bars = reinterpret_cast<std::uint64_t*>(h_planes + a.n_slots * h_bytes) + kStages * warp;
  int* slot_state = reinterpret_cast<int*>(bars - kStages * warp + kStages * kWarps);

  const int tasks_gu = a.n_slots * a.gate_up.slot_tasks, tasks_dn = a.n_slots * a.down.slot_tasks;
  const int first = static_cast<int>(blockIdx.x) * kWarps + warp;
  const int stride = static_cast<int>(gridDim.x) * kWarps;
  auto my_tasks = [&](int n) { return first < n ? (n - first + stride - 1) / stride : 0; };
  const int items_gu = my_tasks(tasks_gu) * a.gate_up.n_steps;
  const int items = items_gu + my_tasks(tasks_dn) * a.down.n_steps;

  if (lane == 0) {
    for (int k = 0; k < kStages; ++k) mbar_init(bars + k);
    mbar_init_fence();
  }
  for (int s = static_cast<int>(threadIdx.x); s < a.n_slots; s += kThreads) slot_state[s] = 0;
  __syncwarp();  // (the CTA-wide barrier before the products covers slot_state)

  // The rows of a task of either product (expert 0 for an id out of range, whose sums are then
  // discarded). Fields are selected one by one: a reference to either Matrix would copy the
  // kernel's arguments to local memory.
  auto task_rows = [&](bool gu, int task, const std::uint8_t** rows) {
    const int slot_tasks = gu ? a.gate_up.slot_tasks : a.down.slot_tasks;
    const int slot = min(task / slot_tasks, a.n_slots - 1), e = a.ids[slot];
    task -= slot * slot_tasks;
    const std::uint8_t* base = gu ? a.gate_up.w : a.down.w;
    if (e >= 0 && e < a.n_experts) {
      base += static_cast<std::size_t>(e) * (gu ? a.gate_up.expert_bytes : a.down.expert_bytes);
    }
    const std::size_t row_bytes = gu ? a.gate_up.row_bytes : a.down.row_bytes;
#pragma unroll
    for (int r = 0; r < kDownRows; ++r) {
      const int row =
          gu ? (r == 0 ? task : n_ff + task) : min(task * kDownRows + r, a.down.rows - 1);
      rows[r] = base + static_cast<std::size_t>(row) * row_bytes;
    }
  };

  // Issue side: item k of the warp (its gate/up items, then its down items) goes to stage k % S.
  int issued = 0, issue_step = 0, issue_task = first, issue_slot = 0;
  bool issue_gu = items_gu > 0;
  const unsigned long long policy = l2_stream_policy(a.evict_first);
  const std::uint8_t* issue_rows[kDownRows];
  auto issue = [&] {
    if (issued < items) {
      if (lane == 0) {
        std::uint8_t* stage = ring + issue_slot * a.slot_bytes;
        const std::size_t off = static_cast<std::size_t>(issue_step) * kStepBytes;
        const std::size_t row_bytes = issue_gu ? a.gate_up.row_bytes : a.down.row_bytes;
        const int stage_row = issue_gu ? a.gate_up.stage_row : a.down.stage_row;
        const int n_rows = issue_gu ? kGateUpRows : kDownRows;
        const auto bytes =
            static_cast<std::uint32_t>(min(std::size_t{kStepBytes}, row_bytes - off));
        mbar_expect(bars + issue_slot, n_rows * bytes);
#pragma unroll
        for (int r = 0; r < kDownRows; ++r) {
          if (r < n_rows) {
            bulk_copy(stage + r * stage_row, issue_rows[r] + off, bytes, bars + issue_slot, policy);
          }
        }
      }
      ++issued;
      if (++issue_step == (issue_gu ? a.gate_up.n_steps : a.down.n_steps)) {
        issue_step = 0;
        issue_task += stride;
        if (issue_gu && issue_task >= tasks_gu) issue_gu = false, issue_task = first;
        if (issued < items) task_rows(issue_gu, issue_task, issue_rows);
      }
    }
    if (++issue_slot == kStages) issue_slot = 0;
  };

  __shared__ unsigned cta_tag;
  if (threadIdx.x == 0) cta_tag = launch_tag(a.launches);
  // x: written two or more launches back when settled (the routing between), so its planes are
  // built before the wait; the ids are the previous kernel's output.
  if (a.x_settled) build_planes<kThreads>(a.x, 1, a.gate_up.cols, a.gate_up.n_blocks, x_planes);
  pdl_wait();
  if (items > 0) task_rows(issue_gu, first, issue_rows);
#pragma unroll
  for (int k = 0; k < kStages - 1; ++k) issue();
  pdl_trigger();
  if (!a.x_settled) build_planes<kThreads>(a.x, 1, a.gate_up.cols, a.gate_up.n_blocks, x_planes);
  __syncthreads();
  const unsigned tag = cta_tag;

  // Where a lane's codes and scale sit in a stage's row (the global layout: per group of 8 blocks,
  // 8 scales then 8 code arrays).
  const int code_at = 144 * (lane >> 3) + 16 + 16 * (lane & 7);
  const int scale_at = 144 * (lane >> 3) + 2 * (lane & 7);
  int slot = 0;
  std::uint32_t phase = 0;  // parity of the current pass over the ring
  auto next_stage = [&] {
    if (++slot == kStages) slot = 0, phase ^= 1u;
    __syncwarp();  // every lane has read this stage before the next issue() refills it
  };

  const SlotPlanes slots{slot_state, h_planes, h_bytes, a.h, tag, n_ff, a.down.n_blocks};
  {  // gate/up: task t is pair t % n_ff of slot t / n_ff
    int step = 0, task = first;
    float acc[kGateUpRows] = {0.0f, 0.0f};
    for (int k = 0; k < items_gu; ++k) {
      // Before the warp's last gate/up task: the planes of its first down slot, if complete
      // (the first slots' gate/up tasks came first in every warp's order).
      if (k == items_gu - a.gate_up.n_steps && first < tasks_dn) {
        slots.try_ahead(first / a.down.slot_tasks, lane);
      }
      issue();
      mbar_wait(bars + slot, phase);
      const int b = step * 32 + lane;
      const std::uint8_t* stage = ring + slot * a.slot_bytes;
      if (b < a.gate_up.n_blocks) {
        const auto* tok = reinterpret_cast<const uint4*>(x_planes);
        uint4 pl[6];
#pragma unroll
        for (int c = 0; c < 6; ++c) pl[c] = tok[c * a.gate_up.n_blocks + b];
        const float2 xb = reinterpret_cast<const float2*>(tok + 6 * a.gate_up.n_blocks)[b];
#pragma unroll
        for (int r = 0; r < kGateUpRows; ++r) {
          const std::uint8_t* row = stage + r * a.gate_up.stage_row;
          const uint4 codes = *reinterpret_cast<const uint4*>(row + code_at);
          const float d = __half2float(*reinterpret_cast<const __half*>(row + scale_at));
          acc[r] = fmaf(d, block_dot(codes, pl, xb), acc[r]);
        }
      }
      if (++step == a.gate_up.n_steps) {
        const float g = warp_sum(acc[0]), u = warp_sum(acc[1]);
        acc[0] = acc[1] = 0.0f;
        if (lane == kSyncLane) {
          const int s = task / n_ff, e = a.ids[s];
          const float out = e < 0 || e >= a.n_experts ? 0.0f : (kGelu ? gelu_tanh(g) : silu(g)) * u;
          publish(a.h + static_cast<std::size_t>(s) * n_ff + (task - s * n_ff), out, tag);
        }
        step = 0;
        task += stride;
      }
      next_stage();
    }
  }

  {  // down: task t is rows 4 (t % slot_tasks) .. + 3 of slot t / slot_tasks
    int step = 0, task = first, planes_slot = -1;
    const std::uint8_t* planes = h_planes;
    float acc[kDownRows] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k = items_gu; k < items; ++k) {
      if (step == 0) {
        const int s = task / a.down.slot_tasks;
        if (s != planes_slot) {  // slot s's activations, once all its gate/up tasks published
          planes = slots.ready(s, lane);
          planes_slot = s;
          // The slots of this warp's later tasks, where their activations are already complete
          // (those of the first slots usually are): their planes are then ready before any warp
          // of the CTA needs them.
          for (int t = task + stride; t < tasks_dn; t += stride) {
            const int later = t / a.down.slot_tasks;
            if (later != s) slots.try_ahead(later, lane);
          }
        }
      }
      issue();
      mbar_wait(bars + slot, phase);
      const int b = step * 32 + lane;
      const std::uint8_t* stage = ring + slot * a.slot_bytes;
      if (b < a.down.n_blocks) {
        const auto* tok = reinterpret_cast<const uint4*>(planes);
        uint4 pl[6];
#pragma unroll
        for (int c = 0; c < 6; ++c) pl[c] = tok[c * a.down.n_blocks + b];
        const float2 xb = reinterpret_cast<const float2*>(tok + 6 * a.down.n_blocks)[b];
        uint4 codes[kDownRows];
        float d[kDownRows];
#pragma unroll
        for (int r = 0; r < kDownRows; ++r) {
          const std::uint8_t* row = stage + r * a.down.stage_row;
          codes[r] = *reinterpret_cast<const uint4*>(row + code_at);
          d[r] = __half2float(*reinterpret_cast<const __half*>(row + scale_at));
        }
#pragma unroll
        for (int r = 0; r < kDownRows; ++r)
          acc[r] = fmaf(d[r], block_dot(codes[r], pl, xb), acc[r]);
      }
      if (++step == a.down.n_steps) {
        float v[kDownRows];
#pragma unroll
        for (int r = 0; r < kDownRows; ++r) v[r] = warp_sum(acc[r]), acc[r] = 0.0f;
        if (lane == 0) {
          const int s = task / a.down.slot_tasks, e = a.ids[s];
          const int row0 = (task - s * a.down.slot_tasks) * kDownRows;
          const bool zero = e < 0 || e >= a.n_experts;
          float* ys = a.y + static_cast<std::size_t>(s) * a.ldy;
#pragma unroll
          for (int r = 0; r < kDownRows; ++r) {
            if (row0 + r < a.down.rows) ys[row0 + r] = zero ? 0.0f : v[r];
          }
        }
        step = 0;
        task += stride;
      }
      next_stage();
    }
  }
}

Matrix matrix(const ExpertStack& w, int rows_per_task, bool pairs) {
  Matrix m;
  m.w = static_cast<const std::uint8_t*>(w.data);
  m.expert_bytes = w.expert_bytes;
  m.row_bytes = q4_0x8_row_bytes(w.cols);
  m.rows = static_cast<int>(w.rows);
  m.cols = static_cast<int>(w.cols);
  m.n_blocks = m.cols / 32;
  m.n_steps = (m.n_blocks + 31) / 32;
  m.stage_row = static_cast<int>(std::min<std::size_t>(kStepBytes, m.row_bytes));
  const int task_rows = pairs ? m.rows / 2 : m.rows;
  m.slot_tasks = (task_rows + rows_per_task - 1) / rows_per_task;
  return m;
}

int slot_bytes(const Matrix& gate_up, const Matrix& down) {
  return std::max(kGateUpRows * gate_up.stage_row, kDownRows * down.stage_row);
}

std::size_t smem_bytes(const Matrix& gate_up, const Matrix& down, int n_slots) {
  return static_cast<std::size_t>(kWarps) * kStages * slot_bytes(gate_up, down) +
         token_bytes(gate_up.n_blocks) + n_slots * token_bytes(down.n_blocks) +
         static_cast<std::size_t>(kWarps) * kStages * sizeof(std::uint64_t) + n_slots * sizeof(int);
}

bool shapes_fit(const ExpertStack& gate_up, const ExpertStack& down, int n_slots) {
  if (gate_up.layout != WeightLayout::kQ4_0x8 || down.layout != WeightLayout::kQ4_0x8 ||
      gate_up.type != GgmlType::Q4_0 || down.type != GgmlType::Q4_0 || gate_up.data == nullptr ||
      down.data == nullptr) {
    return false;
  }
  if (gate_up.cols == 0 || gate_up.cols % 256 != 0 || gate_up.cols > kMaxQ4_0x8Cols ||
      down.cols == 0 || down.cols % 32 != 0 || down.cols > kMaxQ4_0x8Cols ||
      gate_up.rows != 2 * down.cols || down.rows != gate_up.cols) {
    return false;
  }
  if (gate_up.n_experts != down.n_experts || gate_up.n_experts <= 0 ||
      gate_up.expert_bytes < gate_up.rows * q4_0x8_row_bytes(gate_up.cols) ||
      down.expert_bytes < down.rows * q4_0x8_row_bytes(down.cols)) {
    return false;
  }
  if (n_slots < 1 ||
      static_cast<long long>(n_slots) * static_cast<long long>(down.rows) > 0x3fffffffLL ||
      static_cast<long long>(n_slots) * static_cast<long long>(down.cols) > 0x3fffffffLL) {
    return false;
  }
  return smem_bytes(matrix(gate_up, 1, true), matrix(down, kDownRows, false), n_slots) <=
         current_max_smem_per_block();
}

}  // namespace

bool moe_ffn_q4_0x8_applies(const ExpertStack& gate_up, const ExpertStack& down, int n_slots) {
  return gemv_q4_0x8_bulk_chosen() && current_cc_major() >= 9 && shapes_fit(gate_up, down, n_slots);
}

void moe_ffn_q4_0x8(FfnActivation act, const ExpertStack& gate_up, const ExpertStack& down,
                    const int* ids, int n_slots, const float* x, std::uint64_t* h, float* y,
                    std::size_t ldy, std::uint64_t* launches, StreamHandle stream, bool x_settled) {
  if (!moe_ffn_q4_0x8_applies(gate_up, down, n_slots)) {
    cuda_fail(
        "CUDA MoE FFN (Q4_0x8): needs compute capability 9.0 with bulk copies and Q4_0x8 "
        "experts (gate/up ",
        gate_up.rows, " x ", gate_up.cols, ", down ", down.rows, " x ", down.cols, ", ", n_slots,
        " slots) whose ring and planes fit in shared memory");
  }
  const auto aligned16 = [](const void* p) {
    return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
  };
  if (ids == nullptr || x == nullptr || !aligned16(x) || h == nullptr || !aligned16(h) ||
      y == nullptr || launches == nullptr || ldy < down.rows) {
    cuda_fail(
        "CUDA MoE FFN (Q4_0x8): needs ids, a launch count, 16-byte aligned x and h, and y with a ",
        "stride of at least ", down.rows, " (got ", ldy, ")");
  }
  FfnArgs a;
  a.gate_up = matrix(gate_up, 1, true);
  a.down = matrix(down, kDownRows, false);
  a.ids = ids;
  a.n_experts = gate_up.n_experts;
  a.n_slots = n_slots;
  a.x = x;
  a.h = h;
  a.y = y;
  a.ldy = ldy;
  a.launches = launches;
  a.slot_bytes = slot_bytes(a.gate_up, a.down);
  a.x_settled = x_settled;
  a.evict_first = gemv_q4_0x8_evict_first();
  auto* kernel = act == FfnActivation::kSiluGlu ? moe_ffn_kernel<false> : moe_ffn_kernel<true>;
  const std::size_t smem = one_cta_per_sm_smem(smem_bytes(a.gate_up, a.down, n_slots));
  QFORGE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
  // At most one CTA per SM (the shared memory above), all of them eventually resident.
  const long long tasks =
      static_cast<long long>(n_slots) * std::max(a.gate_up.slot_tasks, a.down.slot_tasks);
  const auto grid =
      static_cast<unsigned>(std::min<long long>((tasks + kWarps - 1) / kWarps, current_sm_count()));
  launch_pdl("moe_ffn_kernel", kernel, grid, kThreads, smem, stream, a);
  QFORGE_CUDA_CHECK_LAUNCH("moe_ffn_kernel");
}

}  // namespace qforge::cuda
