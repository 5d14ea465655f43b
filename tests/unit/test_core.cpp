#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"
#include "core/mapped_file.h"
#include "core/parallel.h"
#include "quant/ggml_type.h"

namespace qforge {
namespace {

// Every F16 bit pattern survives f16 -> f32 -> f16 (NaNs stay NaN).
TEST(Half, F16RoundTripsAllPatterns) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << "pattern " << h;
  }
}

// Rounding to F16 picks the nearer neighbour, ties to even, matching IEEE (checked by midpoints).
TEST(Half, F16RoundsToNearestEven) {
  for (std::uint32_t h = 0; h < 0x7bff; ++h) {
    const double a = f16_to_f32(static_cast<std::uint16_t>(h));
    const double b = f16_to_f32(static_cast<std::uint16_t>(h + 1));
    const float mid = static_cast<float>((a + b) / 2);  // exact in float
    const std::uint16_t expect = (h % 2 == 0) ? h : h + 1;
    ASSERT_EQ(f32_to_f16(mid), expect) << "midpoint after " << h;
    const float above = std::nextafter(mid, 1e9f);
    ASSERT_EQ(f32_to_f16(above), h + 1);
    const float below = std::nextafter(mid, -1e9f);
    ASSERT_EQ(f32_to_f16(below), h);
  }
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds to +Inf
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

TEST(Half, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_f32(static_cast<std::uint16_t>(h));
    if (!std::isnan(f)) {
      ASSERT_EQ(f32_to_bf16(f), h);
    }
  }
}

TEST(GgmlType, TableMatchesGeometry) {
  EXPECT_EQ(block_size(GgmlType::Q4_0), 32u);
  EXPECT_EQ(type_size(GgmlType::Q4_K), 144u);
  EXPECT_DOUBLE_EQ(bits_per_weight(GgmlType::Q4_0), 4.5);
  EXPECT_EQ(ggml_type_from_name("q6_k"), GgmlType::Q6_K);
  EXPECT_FALSE(ggml_type_traits(4).has_value());  // removed Q4_2
  EXPECT_FALSE(ggml_type_from_name("Q4_2").has_value());
}

TEST(Parallel, CoversRangeOnceAndPropagatesErrors) {
  std::vector<int> hits(10007, 0);
  parallel_for(hits.size(), [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) hits[i]++;
  });
  for (int h : hits) ASSERT_EQ(h, 1);
  EXPECT_THROW(parallel_for(100, [](std::size_t, std::size_t) { fail("boom"); }), Error);
}

TEST(AtomicFile, OnlyCommittedFilesAppear) {
  const auto dir = std::filesystem::path(QFORGE_TEST_TMP) / "atomic";
  std::filesystem::create_directories(dir);
  const auto target = dir / "out.bin";
  std::filesystem::remove(target);
  {
    AtomicFile f(target);
    const char text[] = "abc";
    f.write(std::as_bytes(std::span(text, 3)));
  }  // no commit
  EXPECT_FALSE(std::filesystem::exists(target));
  for (const auto& e : std::filesystem::directory_iterator(dir)) ADD_FAILURE() << "left over: " << e.path();
  {
    AtomicFile f(target);
    const char text[] = "abc";
    f.write(std::as_bytes(std::span(text, 3)));
    f.write_zeros(5);
    f.commit();
  }
  const auto mapped = MappedFile::open(target);
  ASSERT_EQ(mapped.size(), 8u);
  EXPECT_EQ(std::memcmp(mapped.bytes().data(), "abc\0\0\0\0\0", 8), 0);
  EXPECT_THROW(MappedFile::open(dir / "missing"), Error);
}

}  // namespace
}  // namespace qforge
