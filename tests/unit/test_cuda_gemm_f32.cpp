// The CUDA F32 GEMM (gemm_f32.h) against a float64 product; skips without a GPU.
#include <gtest/gtest.h>

#include "runtime/cuda_device.h"

#ifdef QFORGE_HAVE_CUDA

#include "cuda_test_util.h"

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "runtime/cuda/buffer.h"
#include "runtime/cuda/gemm_f32.h"

namespace qforge {
namespace {

// Shapes around the 64 x 64 tiles and 16-column steps, and the Gemma 4 26B-A4B router
// (128 experts x 2816).
TEST(CudaGemmF32, MatchesFloat64Product) {
  SKIP_WITHOUT_GPU();
  struct Shape {
    std::size_t rows, cols;
    int tokens;
    std::size_t ldy;
  };
  for (const Shape s : {Shape{128, 2816, 512, 128}, Shape{37, 100, 70, 40}, Shape{1, 7, 1, 1},
                        Shape{65, 33, 129, 65}}) {
    const std::vector<float> w = random_floats(s.rows * s.cols, 1);
    const std::vector<float> x = random_floats(static_cast<std::size_t>(s.tokens) * s.cols, 2);
    cuda::DeviceBuffer<float> dw(w.size()), dx(x.size()),
        dy(static_cast<std::size_t>(s.tokens) * s.ldy);
    dw.upload(w);
    dx.upload(x);
    std::vector<float> y(dy.size(), std::nanf(""));
    dy.upload(y);
    cuda::gemm_f32(dw.data(), s.rows, s.cols, dx.data(), dy.data(), s.ldy, s.tokens);
    dy.download(y);
    double worst = 0.0;
    for (int t = 0; t < s.tokens; ++t) {
      for (std::size_t r = 0; r < s.rows; ++r) {
        double exact = 0.0, scale = 0.0;
        for (std::size_t k = 0; k < s.cols; ++k) {
          const double p = static_cast<double>(w[r * s.cols + k]) * x[t * s.cols + k];
          exact += p;
          scale += std::fabs(p);
        }
        const float got = y[static_cast<std::size_t>(t) * s.ldy + r];
        ASSERT_TRUE(std::isfinite(got)) << "row " << r << " token " << t;
        worst = std::max(worst, std::fabs(got - exact) / scale);
      }
    }
    // One sequential F32 sum per output: at most cols * 2^-24 relative to sum |w x|.
    EXPECT_LT(worst, static_cast<double>(s.cols) * 6e-8) << s.rows << " x " << s.cols;
  }
}

TEST(CudaGemmF32, RejectsBadShapes) {
  SKIP_WITHOUT_GPU();
  cuda::DeviceBuffer<float> buf(64);
  EXPECT_THROW(cuda::gemm_f32(buf.data(), 0, 8, buf.data(), buf.data(), 8, 1), Error);
  EXPECT_THROW(cuda::gemm_f32(buf.data(), 8, 8, buf.data(), buf.data(), 4, 1), Error);
}

}  // namespace
}  // namespace qforge

#endif  // QFORGE_HAVE_CUDA
