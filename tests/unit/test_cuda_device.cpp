#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

namespace qforge {
namespace {

// Skips (not fails) on machines without a GPU, such as CI.
TEST(CudaDevice, ReportsDevicesAndBandwidth) {
  if (!cuda::available()) GTEST_SKIP() << "no CUDA device (built with CUDA: " << cuda::built_with_cuda() << ")";
  const auto devs = cuda::devices();
  ASSERT_FALSE(devs.empty());
  EXPECT_GT(devs[0].total_bytes, devs[0].free_bytes / 2);
  EXPECT_GT(devs[0].sm_count, 0);
  const double gbs = cuda::measure_copy_bandwidth_gbs(0, std::size_t{256} << 20, 5);
  EXPECT_GT(gbs, 50.0);  // any real GPU copies far faster than this
  RecordProperty("copy_bandwidth_gbs", std::to_string(gbs));
}

}  // namespace
}  // namespace qforge
