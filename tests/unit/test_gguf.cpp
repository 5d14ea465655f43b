// GGUF reader/writer: round trips of every value type and alignment, and a battery of malformed
// files built byte by byte (independently of GgufWriter) that must each give a qforge::Error
// naming the file, the field and the offset.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "formats/gguf.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir() {
  const fs::path dir = fs::path(QFORGE_TEST_TMP) / "gguf";
  fs::create_directories(dir);
  return dir;
}

std::vector<std::byte> read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  if (!c.empty()) std::memcpy(out.data(), c.data(), c.size());
  return out;
}

// ---- hand-made GGUF bytes
class Bytes {
 public:
  template <typename T>
  Bytes& put(T v) {
    const auto old = b_.size();
    b_.resize(old + sizeof(T));
    std::memcpy(b_.data() + old, &v, sizeof(T));
    return *this;
  }
  Bytes& raw(std::string_view s) {
    const auto old = b_.size();
    b_.resize(old + s.size());
    if (!s.empty()) std::memcpy(b_.data() + old, s.data(), s.size());
    return *this;
  }
  Bytes& str(std::string_view s) { return put<std::uint64_t>(s.size()).raw(s); }
  Bytes& pad_to(std::size_t alignment) {
    while (b_.size() % alignment != 0) b_.push_back(std::byte{0});
    return *this;
  }
  Bytes& zeros(std::size_t n) {
    b_.resize(b_.size() + n);
    return *this;
  }
  std::size_t size() const { return b_.size(); }
  std::vector<std::byte>& bytes() { return b_; }

 private:
  std::vector<std::byte> b_;
};

struct TensorSpec {
  std::string name;
  std::vector<std::uint64_t> dims;
  std::uint32_t type = 0;  // F32
  std::uint64_t offset = 0;
};

struct FileSpec {
  std::vector<TensorSpec> tensors;
  std::uint64_t data_bytes = 0;
  std::optional<std::uint32_t> alignment;
  std::uint32_t version = 3;
  // Extra raw kvs appended after the standard ones (already encoded), and how many there are.
  std::function<void(Bytes&)> extra_kvs;
  std::uint64_t extra_kv_count = 0;
};

std::vector<std::byte> build(const FileSpec& s) {
  Bytes b;
  b.raw("GGUF").put<std::uint32_t>(s.version);
  b.put<std::uint64_t>(s.tensors.size());
  b.put<std::uint64_t>(1 + (s.alignment ? 1 : 0) + s.extra_kv_count);
  b.str("general.architecture").put<std::uint32_t>(8).str("llama");
  if (s.alignment)
    b.str("general.alignment").put<std::uint32_t>(4).put<std::uint32_t>(*s.alignment);
  if (s.extra_kvs) s.extra_kvs(b);
  for (const auto& t : s.tensors) {
    b.str(t.name).put<std::uint32_t>(static_cast<std::uint32_t>(t.dims.size()));
    for (auto d : t.dims) b.put<std::uint64_t>(d);
    b.put<std::uint32_t>(t.type).put<std::uint64_t>(t.offset);
  }
  const std::uint32_t a = s.alignment.value_or(32);
  if (a != 0 && (a & (a - 1)) == 0) b.pad_to(a);
  b.zeros(s.data_bytes);
  return std::move(b.bytes());
}

// Two F32 tensors: a [4] at 0 and b [8] at 32 → 64 data bytes.
FileSpec small_spec() {
  FileSpec s;
  s.tensors = {{"a", {4}, 0, 0}, {"b", {8}, 0, 32}};
  s.data_bytes = 64;
  return s;
}

void expect_error(const std::vector<std::byte>& bytes, std::vector<std::string> needles) {
  try {
    GgufReader::parse(bytes, "bad.gguf");
    ADD_FAILURE() << "no error; expected one mentioning " << needles.front();
  } catch (const Error& e) {
    const std::string msg = e.what();
    needles.push_back("bad.gguf");
    for (const auto& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

// ---- value comparison (NaN equals NaN; arrays compared deeply)
bool same_value(const GgufValue& a, const GgufValue& b) {
  if (a.type() != b.type()) return false;
  if (a.type() == GgufValueType::ARRAY) {
    const GgufArray& x = a.as_array();
    const GgufArray& y = b.as_array();
    if (x.element_type != y.element_type || x.items.size() != y.items.size()) return false;
    for (std::size_t i = 0; i < x.items.size(); ++i)
      if (!same_value(x.items[i], y.items[i])) return false;
    return true;
  }
  if (const auto* f = std::get_if<float>(&a.value)) {
    const float g = std::get<float>(b.value);
    return std::isnan(*f) ? std::isnan(g) : std::memcmp(f, &g, sizeof(float)) == 0;
  }
  if (const auto* f = std::get_if<double>(&a.value)) {
    const double g = std::get<double>(b.value);
    return std::isnan(*f) ? std::isnan(g) : std::memcmp(f, &g, sizeof(double)) == 0;
  }
  return a.value == b.value;
}

GgufValue arr(GgufValueType t, std::vector<GgufValue> items) {
  return GgufValue::make_array(t, std::move(items));
}

std::vector<GgufKV> every_value_type() {
  using T = GgufValueType;
  std::vector<GgufKV> kvs;
  kvs.push_back({"t.u8", {std::uint8_t{250}}});
  kvs.push_back({"t.i8", {std::int8_t{-100}}});
  kvs.push_back({"t.u16", {std::uint16_t{65000}}});
  kvs.push_back({"t.i16", {std::int16_t{-32000}}});
  kvs.push_back({"t.u32", {std::uint32_t{4000000000u}}});
  kvs.push_back({"t.i32", {std::int32_t{-2000000000}}});
  kvs.push_back({"t.f32", {1.5e-7f}});
  kvs.push_back({"t.f32nan", {std::numeric_limits<float>::quiet_NaN()}});
  kvs.push_back({"t.bool", {true}});
  kvs.push_back({"t.bool_false", {false}});
  kvs.push_back({"t.str", {std::string("h\xc3\xa9llo \xe2\x96\x81 \xf0\x9f\x98\x80")}});
  kvs.push_back({"t.empty_str", {std::string()}});
  kvs.push_back({"t.u64", {std::uint64_t{18000000000000000000ull}}});
  kvs.push_back({"t.i64", {std::int64_t{-9000000000000000000ll}}});
  kvs.push_back({"t.f64", {-2.718281828459045}});
  kvs.push_back(
      {"t.arr_str",
       arr(T::STRING, {{std::string("a")}, {std::string("")}, {std::string("\xe2\x96\x81x")}})});
  kvs.push_back(
      {"t.arr_i32", arr(T::INT32, {{std::int32_t{1}}, {std::int32_t{-2}}, {std::int32_t{3}}})});
  kvs.push_back({"t.arr_f32", arr(T::FLOAT32, {{0.25f}, {-1e30f}})});
  kvs.push_back({"t.arr_bool", arr(T::BOOL, {{true}, {false}, {true}})});
  kvs.push_back({"t.arr_u64", arr(T::UINT64, {{std::uint64_t{1} << 63}})});
  kvs.push_back({"t.arr_f64", arr(T::FLOAT64, {{1.0}, {2.0}})});
  kvs.push_back({"t.arr_u8", arr(T::UINT8, {{std::uint8_t{0}}, {std::uint8_t{255}}})});
  kvs.push_back({"t.arr_i8", arr(T::INT8, {{std::int8_t{-128}}})});
  kvs.push_back({"t.arr_u16", arr(T::UINT16, {{std::uint16_t{7}}})});
  kvs.push_back({"t.arr_i16", arr(T::INT16, {{std::int16_t{-7}}})});
  kvs.push_back({"t.arr_u32", arr(T::UINT32, {{std::uint32_t{9}}})});
  kvs.push_back({"t.arr_i64", arr(T::INT64, {{std::int64_t{-9}}})});
  kvs.push_back({"t.arr_empty", arr(T::FLOAT32, {})});
  kvs.push_back(
      {"t.nested", arr(T::ARRAY, {arr(T::INT32, {{std::int32_t{1}}, {std::int32_t{2}}}),
                                  arr(T::INT32, {}), arr(T::INT32, {{std::int32_t{3}}})})});
  kvs.push_back(
      {"t.nested2", arr(T::ARRAY, {arr(T::ARRAY, {arr(T::STRING, {{std::string("deep")}})})})});
  return kvs;
}

struct TensorData {
  std::string name;
  std::vector<std::uint64_t> shape;
  GgmlType type;
  std::vector<std::byte> bytes;
};

std::vector<TensorData> sample_tensors() {
  std::vector<TensorData> ts = {
      {"f32.vec", {5}, GgmlType::F32, {}},
      {"f16.mat", {3, 7}, GgmlType::F16, {}},
      {"q4_0.mat", {64, 3}, GgmlType::Q4_0, {}},
      {"q8_0.t3", {32, 2, 3}, GgmlType::Q8_0, {}},
      {"q4_k.t4", {256, 1, 2, 1}, GgmlType::Q4_K, {}},
      {"empty", {0, 4}, GgmlType::F32, {}},
      {"i8.odd", {3}, GgmlType::I8, {}},
  };
  std::uint8_t seed = 1;
  for (auto& t : ts) {
    GgufTensorInfo info{t.name, t.shape, t.type, 0};
    t.bytes.resize(info.n_bytes());
    for (auto& b : t.bytes) b = std::byte{seed = static_cast<std::uint8_t>(seed * 37 + 11)};
  }
  return ts;
}

fs::path write_sample(const std::string& file, std::optional<std::uint32_t> alignment) {
  const fs::path path = temp_dir() / file;
  GgufWriter w(path);
  for (auto& kv : every_value_type()) w.add_kv(kv.key, kv.value);
  if (alignment) w.add_kv("general.alignment", GgufValue{*alignment});
  const auto ts = sample_tensors();
  for (const auto& t : ts) w.add_tensor(t.name, t.shape, t.type);
  for (const auto& t : ts) w.write_tensor_data(t.bytes);
  w.finish();
  return path;
}

// ================================================================ round trips

class GgufRoundTrip : public ::testing::TestWithParam<std::uint32_t> {};

TEST_P(GgufRoundTrip, EveryValueTypeAndTensor) {
  const std::uint32_t alignment = GetParam();
  const fs::path path = write_sample(fmt::format("rt_{}.gguf", alignment), alignment);
  const GgufReader r = GgufReader::open(path);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), alignment);
  EXPECT_EQ(r.data_offset() % alignment, 0u);
  const auto expected = every_value_type();
  ASSERT_EQ(r.metadata().size(), expected.size() + 1);
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(r.metadata()[i].key, expected[i].key);
    EXPECT_TRUE(same_value(r.metadata()[i].value, expected[i].value)) << expected[i].key;
  }
  EXPECT_EQ(r.get("general.alignment").as_uint(), alignment);
  const auto ts = sample_tensors();
  ASSERT_EQ(r.tensors().size(), ts.size());
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const GgufTensorInfo& t = r.tensors()[i];
    EXPECT_EQ(t.name, ts[i].name);
    EXPECT_EQ(t.shape, ts[i].shape);
    EXPECT_EQ(t.type, ts[i].type);
    EXPECT_EQ(t.offset % alignment, 0u);
    const auto data = r.tensor_data(t);
    ASSERT_EQ(data.size(), ts[i].bytes.size()) << t.name;
    // memcmp's pointers must not be null even for zero bytes (empty tensors have none).
    if (!data.empty()) {
      EXPECT_EQ(std::memcmp(data.data(), ts[i].bytes.data(), data.size()), 0) << t.name;
    }
    EXPECT_EQ(r.find_tensor(ts[i].name), &t);
  }
  EXPECT_EQ(r.find_tensor("missing"), nullptr);
  // Padding between tensors is zeros.
  const auto all = read_all(path);
  for (std::size_t i = 0; i + 1 < ts.size(); ++i) {
    const auto& t = r.tensors()[i];
    const std::uint64_t end = r.data_offset() + t.offset + t.n_bytes();
    const std::uint64_t next = r.data_offset() + r.tensors()[i + 1].offset;
    for (std::uint64_t k = end; k < next; ++k) ASSERT_EQ(all[k], std::byte{0}) << "pad byte " << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Alignments, GgufRoundTrip, ::testing::Values(1u, 8u, 32u, 64u, 4096u));

TEST(GgufRoundTrip, DefaultAlignmentIs32AndWriterOutputIsReadableFromMemory) {
  const fs::path path = write_sample("rt_default.gguf", std::nullopt);
  const auto bytes = read_all(path);
  const GgufReader r = GgufReader::parse(bytes, "mem");
  EXPECT_EQ(r.alignment(), 32u);
  EXPECT_EQ(r.find("general.alignment"), nullptr);
  EXPECT_EQ(r.architecture(), "");
  EXPECT_EQ(r.data_offset() % 32, 0u);
}

TEST(GgufRoundTrip, NoTensors) {
  const fs::path path = temp_dir() / "no_tensors.gguf";
  GgufWriter w(path);
  w.add_kv("general.architecture", GgufValue{std::string("llama")});
  w.finish();
  const GgufReader r = GgufReader::open(path);
  EXPECT_EQ(r.architecture(), "llama");
  EXPECT_TRUE(r.tensors().empty());
}

TEST(GgufValue, TypedAccessorsNameTheValue) {
  const GgufValue s{std::string("x")};
  EXPECT_EQ(s.as_string(), "x");
  try {
    (void)s.as_uint("llama.block_count");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama.block_count"), std::string::npos);
  }
  EXPECT_EQ(GgufValue{std::int32_t{7}}.as_uint(), 7u);
  EXPECT_THROW((void)GgufValue{std::int32_t{-7}}.as_uint(), Error);
  EXPECT_EQ(GgufValue{std::uint64_t{5}}.as_int(), 5);
  EXPECT_THROW((void)GgufValue{std::uint64_t{1} << 63}.as_int(), Error);
  EXPECT_DOUBLE_EQ(GgufValue{std::int16_t{-3}}.as_double(), -3.0);
  EXPECT_THROW((void)GgufValue{true}.as_double(), Error);
  EXPECT_THROW(GgufValue::make_array(GgufValueType::INT32, {GgufValue{1.0f}}), Error);
}

// ================================================================ writer misuse

TEST(GgufWriter, RejectsWrongDataSizeAndMissingTensors) {
  const fs::path path = temp_dir() / "w_bad.gguf";
  fs::remove(path);
  {
    GgufWriter w(path);
    w.add_tensor("t", {32, 2}, GgmlType::Q8_0);  // 2 blocks x 34 bytes
    std::vector<std::byte> wrong(67);
    try {
      w.write_tensor_data(wrong);
      FAIL();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'t'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("68"), std::string::npos) << e.what();
    }
    EXPECT_THROW(w.finish(), Error);  // tensor 't' still has no data
  }
  EXPECT_FALSE(fs::exists(path));  // nothing committed
}

TEST(GgufWriter, RejectsBadDeclarations) {
  GgufWriter w(temp_dir() / "w_bad2.gguf");
  w.add_kv("k", GgufValue{std::uint32_t{1}});
  EXPECT_THROW(w.add_kv("k", GgufValue{std::uint32_t{2}}), Error);
  EXPECT_THROW(w.add_kv("general.alignment", GgufValue{std::uint32_t{48}}), Error);
  EXPECT_THROW(w.add_kv("general.alignment", GgufValue{std::uint32_t{0}}), Error);
  EXPECT_THROW(w.add_kv("s", GgufValue{std::string("\xff")}), Error);
  EXPECT_THROW(w.add_tensor("q", {33}, GgmlType::Q4_0), Error);            // not a block multiple
  EXPECT_THROW(w.add_tensor("d", {1, 1, 1, 1, 1}, GgmlType::F32), Error);  // 5 dims
  w.add_tensor("t", {4}, GgmlType::F32);
  EXPECT_THROW(w.add_tensor("t", {4}, GgmlType::F32), Error);
}

// ================================================================ malformed input

TEST(GgufMalformed, HandBuiltBaselineIsValid) {
  const auto bytes = build(small_spec());
  const GgufReader r = GgufReader::parse(bytes, "ok.gguf");
  ASSERT_EQ(r.tensors().size(), 2u);
  EXPECT_EQ(r.architecture(), "llama");
  EXPECT_EQ(r.tensor_data(r.tensors()[1]).size(), 32u);
}

TEST(GgufMalformed, EveryTruncationFails) {
  const fs::path path = write_sample("trunc.gguf", 64);
  const auto full = read_all(path);
  const GgufReader ok = GgufReader::parse(full, "full");
  std::uint64_t needed = ok.data_offset();
  for (const auto& t : ok.tensors())
    needed = std::max(needed, ok.data_offset() + t.offset + t.n_bytes());
  for (std::size_t len = 0; len < full.size(); ++len) {
    const std::vector<std::byte> prefix(full.begin(),
                                        full.begin() + static_cast<std::ptrdiff_t>(len));
    if (len < needed) {
      EXPECT_THROW(GgufReader::parse(prefix, "bad.gguf"), Error) << "prefix " << len;
    } else {
      EXPECT_NO_THROW(GgufReader::parse(prefix, "bad.gguf"))
          << "prefix " << len;  // only padding cut
    }
  }
}

TEST(GgufMalformed, TruncatedStringNamesTheFieldAndOffset) {
  auto bytes = build(FileSpec{});
  bytes.resize(4 + 4 + 8 + 8 + 8 + 5);  // inside the first key
  expect_error(bytes, {"key of kv 0", "offset 24", "string length"});
}

TEST(GgufMalformed, BadMagicAndVersions) {
  std::vector<std::byte> tiny(3);
  expect_error(tiny, {"too short"});
  auto bytes = build(small_spec());
  bytes[0] = std::byte{'X'};
  expect_error(bytes, {"magic", "not a GGUF file"});
  FileSpec s = small_spec();
  s.version = 1;
  expect_error(build(s), {"version", "unsupported GGUF version 1"});
  s.version = 4;
  expect_error(build(s), {"version", "unsupported GGUF version 4"});
  s.version = 0x03000000;  // version 3 written big-endian
  expect_error(build(s), {"big-endian"});
  s.version = 2;  // v2 has the same layout as v3 for everything we read
  EXPECT_NO_THROW(GgufReader::parse(build(s), "v2.gguf"));
}

TEST(GgufMalformed, HugeCountsDoNotAllocate) {
  auto bytes = build(small_spec());
  auto set_u64 = [&](std::size_t at, std::uint64_t v) { std::memcpy(bytes.data() + at, &v, 8); };
  set_u64(8, std::uint64_t{1} << 60);  // tensor_count
  expect_error(bytes, {"tensor_count", "offset 8", "cannot fit"});
  bytes = build(small_spec());
  set_u64(16, std::uint64_t{1} << 60);  // kv_count
  expect_error(bytes, {"kv_count", "offset 16", "cannot fit"});
  bytes = build(small_spec());
  set_u64(24, std::uint64_t{1} << 60);  // length of the first key
  expect_error(bytes, {"key of kv 0", "string length 1152921504606846976"});

  FileSpec s = small_spec();
  s.extra_kv_count = 1;
  s.extra_kvs = [](Bytes& b) {
    b.str("big.array")
        .put<std::uint32_t>(9)
        .put<std::uint32_t>(4)
        .put<std::uint64_t>(std::uint64_t{1} << 60);
  };
  expect_error(build(s), {"kv 'big.array'", "count 1152921504606846976"});
  s.extra_kvs = [](Bytes& b) {  // array of strings: each needs at least 8 bytes
    b.str("big.strings").put<std::uint32_t>(9).put<std::uint32_t>(8).put<std::uint64_t>(100);
  };
  expect_error(build(s), {"kv 'big.strings'", "count 100"});
}

TEST(GgufMalformed, StringValuePastEndOfFile) {
  FileSpec s;
  s.extra_kv_count = 1;
  s.extra_kvs = [](Bytes& b) {
    b.str("s").put<std::uint32_t>(8).put<std::uint64_t>(1000).raw("abc");
  };
  s.alignment = 1;  // no padding: the string is the last thing in the file
  expect_error(build(s), {"kv 's'", "string length 1000"});
}

TEST(GgufMalformed, InvalidUtf8) {
  FileSpec s;
  s.extra_kv_count = 1;
  s.extra_kvs = [](Bytes& b) { b.str("bad\xc3").put<std::uint32_t>(4).put<std::uint32_t>(1); };
  expect_error(build(s), {"key of kv 1", "UTF-8"});
  s.extra_kvs = [](Bytes& b) {
    b.str("k").put<std::uint32_t>(8).str("ok \xed\xa0\x80");
  };  // surrogate
  expect_error(build(s), {"kv 'k'", "UTF-8"});
  s.extra_kvs = [](Bytes& b) {  // overlong encoding inside an array item
    b.str("arr").put<std::uint32_t>(9).put<std::uint32_t>(8).put<std::uint64_t>(2).str("x").str(
        "\xc0\xaf");
  };
  expect_error(build(s), {"kv 'arr' item 1", "UTF-8"});
  FileSpec t = small_spec();
  t.tensors[1].name = "b\xff";
  expect_error(build(t), {"name of tensor 1", "UTF-8"});
}

TEST(GgufMalformed, UnknownValueTypeAndBadBool) {
  FileSpec s;
  s.extra_kv_count = 1;
  s.extra_kvs = [](Bytes& b) { b.str("weird").put<std::uint32_t>(13).put<std::uint32_t>(0); };
  expect_error(build(s), {"kv 'weird'", "unknown value type 13"});
  s.extra_kvs = [](Bytes& b) {
    b.str("weird").put<std::uint32_t>(9).put<std::uint32_t>(77).put<std::uint64_t>(0);
  };
  expect_error(build(s), {"kv 'weird'", "unknown value type 77"});
  s.extra_kvs = [](Bytes& b) { b.str("flag").put<std::uint32_t>(7).put<std::uint8_t>(2); };
  expect_error(build(s), {"kv 'flag'", "BOOL"});
}

TEST(GgufMalformed, NestingTooDeep) {
  FileSpec s;
  s.extra_kv_count = 1;
  s.extra_kvs = [](Bytes& b) {
    b.str("deep").put<std::uint32_t>(9);
    for (int i = 0; i < 40; ++i) b.put<std::uint32_t>(9).put<std::uint64_t>(1);
    b.put<std::uint32_t>(4).put<std::uint64_t>(0);
  };
  expect_error(build(s), {"kv 'deep'", "nested deeper"});
}

TEST(GgufMalformed, DuplicateKeyAndTensorName) {
  FileSpec s;
  s.extra_kv_count = 1;
  s.extra_kvs = [](Bytes& b) { b.str("general.architecture").put<std::uint32_t>(8).str("gemma3"); };
  expect_error(build(s), {"duplicate key 'general.architecture'"});
  FileSpec t = small_spec();
  t.tensors[1].name = "a";
  expect_error(build(t), {"duplicate tensor name 'a'"});
}

TEST(GgufMalformed, TensorTypeAndShape) {
  FileSpec s = small_spec();
  s.tensors[1].type = 4;  // Q4_2: removed from ggml
  expect_error(build(s), {"tensor 'b' type", "unknown ggml type 4"});
  s.tensors[1].type = 1000;
  expect_error(build(s), {"tensor 'b' type", "unknown ggml type 1000"});
  s = small_spec();
  s.tensors[1].dims = {1, 2, 3, 4, 5};
  expect_error(build(s), {"tensor 'b' n_dims", "5 dimensions"});
  s = small_spec();
  s.tensors[1] = {"b", {48}, 8, 32};  // Q8_0 block size is 32
  expect_error(build(s), {"tensor 'b' shape[0]", "block size 32"});
  s = small_spec();
  s.tensors[1].dims = {std::uint64_t{1} << 32, std::uint64_t{1} << 32};
  expect_error(build(s), {"tensor 'b' dim 1", "overflow"});
  s.tensors[1].dims = {std::uint64_t{1} << 63};
  expect_error(build(s), {"tensor 'b' dim 0", "negative"});
}

TEST(GgufMalformed, TensorPlacement) {
  FileSpec s = small_spec();
  s.tensors[1].offset = 16;  // not a multiple of 32
  expect_error(build(s), {"tensor 'b' offset", "not a multiple of the alignment 32"});
  s = small_spec();
  s.tensors[1].offset = 64;  // 32 bytes needed, file ends at 64
  expect_error(build(s), {"tensor 'b' offset", "past the end"});
  s.tensors[1].offset = std::uint64_t{1} << 62;
  expect_error(build(s), {"tensor 'b' offset", "past the end"});
  s = small_spec();
  s.tensors[0].dims = {16};  // a now covers [0, 64), b starts at 32
  expect_error(build(s), {"overlaps tensor", "'a'", "'b'"});
}

TEST(GgufMalformed, Alignment) {
  FileSpec s = small_spec();
  s.alignment = 48;
  expect_error(build(s), {"general.alignment", "power of two"});
  s.alignment = 0;
  expect_error(build(s), {"general.alignment", "power of two"});
  s.alignment.reset();
  s.extra_kv_count = 1;
  s.extra_kvs = [](Bytes& b) { b.str("general.alignment").put<std::uint32_t>(8).str("32"); };
  expect_error(build(s), {"general.alignment", "STRING"});
  s = small_spec();
  s.alignment = 16;
  s.tensors[1].offset = 16;  // fine with alignment 16
  EXPECT_NO_THROW(GgufReader::parse(build(s), "ok.gguf"));
}

// ================================================================ real files

TEST(GgufReal, Stories260K) {
  const fs::path path = fs::path(QFORGE_SHARED_DATA) / "stories260K" / "stories260K.gguf";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not present";
  const GgufReader r = GgufReader::open(path);
  EXPECT_EQ(r.tensors().size(), 48u);
  EXPECT_EQ(r.architecture(), "llama");
  EXPECT_EQ(r.get("tokenizer.ggml.tokens").as_array().items.size(), 512u);
  std::uint64_t params = 0;
  for (const auto& t : r.tensors()) params += t.n_elements();
  EXPECT_EQ(params, 292800u);  // MANIFEST.md: 292,800 params counting output.weight
  EXPECT_THROW((void)r.get("no.such.key"), Error);
}

TEST(GgufReal, DefaultModel) {
  const fs::path path = QFORGE_DEFAULT_MODEL;
  if (!fs::exists(path)) GTEST_SKIP() << path << " not present";
  const GgufReader r = GgufReader::open(path);
  EXPECT_EQ(r.tensors().size(), 236u);
  EXPECT_EQ(r.architecture(), "gemma3");
  const GgufTensorInfo* emb = r.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(r.tensor_data(*emb).size(), emb->n_bytes());
}

}  // namespace
}  // namespace qforge
