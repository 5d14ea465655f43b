// Helpers of the integer-plane GEMV tests (q4_0x8.h: the Q4_0x8 and Q4_K weight forms), shared by
// test_cuda_kernels.cpp and test_cuda_gemv_q4_k.cpp.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <vector>

#include "runtime/cuda/buffer.h"
#include "runtime/cuda/q4_0x8.h"

namespace qforge {

// Rows per task, column parts and the weight stream's copies of the integer-plane GEMV forced for
// a test, back to automatic (the copies and cluster size: to the choices before the test, which
// QFORGE_GEMV_BULK / QFORGE_GEMV_CLUSTER may have made) when the test ends, also when an assertion
// returns early.
struct Q4_0x8Choices {
  bool bulk = cuda::gemv_q4_0x8_bulk_chosen();
  int cluster = cuda::gemv_q4_0x8_cluster_chosen();
  ~Q4_0x8Choices() {
    cuda::set_gemv_q4_0x8_rows(0);
    cuda::set_gemv_q4_0x8_parts(0);
    cuda::set_gemv_q4_0x8_bulk(bulk);
    cuda::set_gemv_q4_0x8_cluster(cluster);
  }
};

// run(y) once with the weight stream by cp.async and once by bulk copies, into n_out floats each
// (NaN-filled first): the two results must be bit-identical.
template <typename Run>
void expect_bulk_equals_cp_async(Run&& run, std::size_t n_out) {
  std::vector<float> out[2];
  for (const bool bulk : {false, true}) {
    cuda::set_gemv_q4_0x8_bulk(bulk);
    cuda::DeviceBuffer<float> dy(n_out);
    dy.fill_bytes(0xff);
    run(dy.data());
    out[bulk ? 1 : 0] = dy.to_host();
  }
  ASSERT_EQ(std::memcmp(out[0].data(), out[1].data(), n_out * sizeof(float)), 0);
}

}  // namespace qforge
