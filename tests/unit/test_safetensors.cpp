#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/safetensors.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;

constexpr StDtype kAllDtypes[] = {StDtype::BOOL, StDtype::U8,      StDtype::I8,     StDtype::I16,
                                  StDtype::U16,  StDtype::F16,     StDtype::BF16,   StDtype::I32,
                                  StDtype::U32,  StDtype::F32,     StDtype::F64,    StDtype::I64,
                                  StDtype::U64,  StDtype::F8_E4M3, StDtype::F8_E5M2};

fs::path fresh_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir = fs::path(QFORGE_TEST_TMP) / "safetensors" /
                 (std::string(info->test_suite_name()) + "." + info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<std::byte> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> out(n);
  for (auto& b : out) b = static_cast<std::byte>(rng() & 0xff);
  return out;
}

// A safetensors file assembled by hand (not by SafetensorsWriter), for malformed inputs.
std::vector<std::byte> raw_file(const std::string& header, std::size_t data_bytes,
                                std::uint64_t header_len_override = 0) {
  const std::uint64_t len = header_len_override != 0 ? header_len_override : header.size();
  std::vector<std::byte> out(8);
  for (int i = 0; i < 8; ++i)
    out[static_cast<std::size_t>(i)] = static_cast<std::byte>(len >> (8 * i));
  for (const char c : header) out.push_back(static_cast<std::byte>(c));
  const auto data = random_bytes(data_bytes, 7);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<std::byte> read_all(const fs::path& p) {
  const MappedFile f = MappedFile::open(p);
  return {f.bytes().begin(), f.bytes().end()};
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(SafetensorsDtype, NamesAndSizesRoundTrip) {
  for (const StDtype d : kAllDtypes) {
    const auto back = st_dtype_from_name(st_dtype_name(d));
    ASSERT_TRUE(back.has_value()) << st_dtype_name(d);
    EXPECT_EQ(*back, d);
  }
  EXPECT_EQ(st_dtype_size(StDtype::BF16), 2u);
  EXPECT_EQ(st_dtype_size(StDtype::F64), 8u);
  EXPECT_EQ(st_dtype_size(StDtype::F8_E5M2), 1u);
  EXPECT_FALSE(st_dtype_from_name("F8_E8M0").has_value());
  EXPECT_FALSE(st_dtype_from_name("f32").has_value());
}

struct Expected {
  std::string name;
  StDtype dtype;
  std::vector<std::uint64_t> shape;
  std::vector<std::byte> data;
};

// Every dtype, with scalar, empty and multi-dimensional shapes, written and read back.
TEST(Safetensors, WriterReaderRoundTripEveryDtype) {
  const fs::path dir = fresh_dir();
  const fs::path path = dir / "all.safetensors";
  const std::vector<std::vector<std::uint64_t>> shapes = {{}, {0}, {3, 0, 2}, {2, 3}, {5}};
  std::vector<Expected> want;
  std::uint32_t seed = 1;
  for (const StDtype d : kAllDtypes) {
    for (const auto& shape : shapes) {
      std::uint64_t n = 1;
      for (const auto s : shape) n *= s;
      want.push_back({fmt::format("t.{}.{}", st_dtype_name(d), want.size()), d, shape,
                      random_bytes(n * st_dtype_size(d), seed++)});
    }
  }
  {
    SafetensorsWriter w(path);
    w.set_metadata("format", "pt");
    w.set_metadata("note", "h\u00e9llo \"quoted\"");
    for (const auto& e : want) w.add_tensor(e.name, e.dtype, e.shape);
    for (const auto& e : want) w.write_tensor_data(e.data);
    w.finish();
  }
  const auto bytes = read_all(path);
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u) << "header padded so data starts 8-byte aligned";

  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.path(), path.string());
  ASSERT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "h\u00e9llo \"quoted\"");
  ASSERT_EQ(f.tensors().size(), want.size());
  std::uint64_t expected_offset = 8 + header_len;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const StTensor& t = f.tensors()[i];  // declaration order == offset order
    SCOPED_TRACE(want[i].name);
    EXPECT_EQ(t.name, want[i].name);
    EXPECT_EQ(t.dtype, want[i].dtype);
    EXPECT_EQ(t.shape, want[i].shape);
    EXPECT_EQ(t.n_elements() * st_dtype_size(t.dtype), want[i].data.size());
    EXPECT_EQ(t.data_offset, expected_offset);
    EXPECT_EQ(t.file, path.string());
    ASSERT_EQ(t.data.size(), want[i].data.size());
    EXPECT_TRUE(std::equal(t.data.begin(), t.data.end(), want[i].data.begin()));
    EXPECT_EQ(f.find(t.name), &t);
    expected_offset += want[i].data.size();
  }
  EXPECT_EQ(expected_offset, bytes.size());
  EXPECT_EQ(f.find("nope"), nullptr);

  // The same file through SafetensorsModel: a file path, and a directory holding model.safetensors.
  fs::copy_file(path, dir / "model.safetensors");
  for (const fs::path& p : {path, dir / "model.safetensors", dir}) {
    if (p == dir) fs::remove(path);  // leave model.safetensors as the only candidate
    const SafetensorsModel m = SafetensorsModel::open(p);
    ASSERT_EQ(m.tensors().size(), want.size());
    for (std::size_t i = 1; i < m.tensors().size(); ++i)
      EXPECT_LT(m.tensors()[i - 1]->name, m.tensors()[i]->name);
    EXPECT_EQ(m.get("t.BF16.32").dtype, StDtype::BF16);
    EXPECT_EQ(m.find("missing"), nullptr);
    EXPECT_NE(error_of([&] { (void)m.get("missing"); }).find("missing"), std::string::npos);
  }
}

TEST(Safetensors, EmptyFileAndEmptyHeader) {
  const fs::path dir = fresh_dir();
  {
    SafetensorsWriter w(dir / "empty.safetensors");
    w.finish();
  }
  const SafetensorsFile f = SafetensorsFile::open(dir / "empty.safetensors");
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.metadata().empty());
  // Header padded with trailing spaces, as the reference writer emits it.
  const auto bytes = raw_file("{}      ", 0);
  EXPECT_TRUE(SafetensorsFile::parse(bytes).tensors().empty());
}

// Every strict prefix of a valid file is rejected with a qforge::Error (never a crash).
TEST(Safetensors, EveryTruncationIsAnError) {
  const fs::path dir = fresh_dir();
  const fs::path path = dir / "small.safetensors";
  {
    SafetensorsWriter w(path);
    w.set_metadata("format", "pt");
    w.add_tensor("a", StDtype::F16, {2, 3});
    w.add_tensor("b", StDtype::U8, {3});
    w.add_tensor("empty", StDtype::F32, {0});
    w.write_tensor_data(random_bytes(12, 1));
    w.write_tensor_data(random_bytes(3, 2));
    w.finish();
  }
  const auto bytes = read_all(path);
  ASSERT_EQ(SafetensorsFile::parse(bytes).tensors().size(), 3u);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THROW(SafetensorsFile::parse(std::span(bytes).first(n), "prefix"), Error) << n;
  }
}

struct BadCase {
  const char* what;
  std::string header;
  std::size_t data_bytes;
  std::vector<std::string> message_has;
};

TEST(Safetensors, MalformedHeadersAreClearErrors) {
  const std::string ok_a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<BadCase> cases = {
      {"not json", "{\"a\": [1, 2", 16, {"bad.st", "not valid JSON", "header byte"}},
      {"not an object", "[1, 2, 3]", 0, {"expected an object"}},
      {"string", "\"x\"", 0, {"expected an object"}},
      {"bad dtype",
       R"({"w.0":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}})",
       1,
       {"w.0", "F4", "unknown dtype"}},
      {"dtype not string",
       R"({"w":{"dtype":3,"shape":[1],"data_offsets":[0,1]}})",
       1,
       {"'w'", "dtype"}},
      {"missing dtype", R"({"w":{"shape":[1],"data_offsets":[0,1]}})", 1, {"'w'", "dtype"}},
      {"missing shape", R"({"w":{"dtype":"U8","data_offsets":[0,1]}})", 1, {"'w'", "shape"}},
      {"missing offsets", R"({"w":{"dtype":"U8","shape":[1]}})", 1, {"'w'", "data_offsets"}},
      {"negative shape",
       R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})",
       1,
       {"'w'", "shape", "negative"}},
      {"float shape",
       R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})",
       1,
       {"'w'", "shape", "not an integer"}},
      {"string shape",
       R"({"w":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}})",
       1,
       {"'w'", "shape"}},
      {"shape not array",
       R"({"w":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})",
       1,
       {"'w'", "shape"}},
      {"shape overflow",
       R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})",
       0,
       {"'w'", "overflow"}},
      {"offsets past file",
       R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       4,
       {"'w'", "data_offsets", "past"}},
      {"huge offsets",
       R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}})",
       4,
       {"'w'", "past"}},
      {"end before begin",
       R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})",
       4,
       {"'w'", "end before begin"}},
      {"size mismatch",
       R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
       8,
       {"'w'", "needs 8"}},
      {"negative offset",
       R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})",
       4,
       {"'w'", "data_offsets"}},
      {"three offsets",
       R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})",
       4,
       {"'w'", "data_offsets"}},
      {"overlap",
       "{" + ok_a + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12,
       {"'a'", "'b'", "overlap"}},
      {"same range",
       "{" + ok_a + R"(,"b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})",
       8,
       {"'a'", "'b'", "overlap"}},
      {"entry not object", R"({"w":[1,2]})", 0, {"'w'", "expected an object"}},
      {"metadata value not string",
       R"({"__metadata__":{"format":1}})",
       0,
       {"__metadata__", "format", "expected a string"}},
      {"metadata not object", R"({"__metadata__":["a"]})", 0, {"__metadata__"}},
      {"duplicate tensor", "{" + ok_a + "," + ok_a + "}", 8, {"'a'", "twice"}},
      {"number overflow",
       R"({"w":{"dtype":"U8","shape":[1e999],"data_offsets":[0,1]}})",
       1,
       {"not valid JSON"}},
      {"invalid utf-8", "{\"\xff\":{}}", 0, {"not valid JSON"}},
      {"nul padding", std::string("{}\0\0\0\0\0\0", 8), 0, {"not valid JSON"}},
      {"deep nesting",
       "{\"w\":{\"x\":" + std::string(100000, '[') + std::string(100000, ']') + "}}",
       0,
       {"deeper"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const auto bytes = raw_file(c.header, c.data_bytes);
    const std::string msg = error_of([&] { (void)SafetensorsFile::parse(bytes, "bad.st"); });
    EXPECT_NE(msg.find("bad.st"), std::string::npos) << msg;
    for (const auto& part : c.message_has) EXPECT_NE(msg.find(part), std::string::npos) << msg;
  }
}

TEST(Safetensors, HeaderLengthIsChecked) {
  // Larger than the 100 MB limit, larger than the file, and 2^64-1 (overflow when adding 8).
  for (const std::uint64_t len :
       {std::uint64_t{1} << 40, std::uint64_t{100'000'001}, std::uint64_t{~0ull}}) {
    const auto bytes = raw_file("{}", 0, len);
    const std::string msg = error_of([&] { (void)SafetensorsFile::parse(bytes, "f"); });
    EXPECT_NE(msg.find("limit"), std::string::npos) << msg;
  }
  const auto bytes = raw_file("{}", 0, 3);  // one byte more than the file holds
  EXPECT_NE(error_of([&] { (void)SafetensorsFile::parse(bytes, "f"); }).find("past the end"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              (void)SafetensorsFile::parse(std::span(bytes).first(5), "f");
            }).find("too short"),
            std::string::npos);
}

// A zero-size tensor owns no bytes, so it may share an offset with a neighbour; tensors come back
// in offset order whatever the header's key order.
TEST(Safetensors, TensorsAreOrderedByOffset) {
  const std::string header = R"({"z":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                             R"("e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]},)"
                             R"("a":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})";
  const auto bytes = raw_file(header, 3);
  const SafetensorsFile f = SafetensorsFile::parse(bytes);
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.tensors()[0].name, "z");
  EXPECT_EQ(f.tensors()[1].name, "e");
  EXPECT_EQ(f.tensors()[2].name, "a");
  EXPECT_EQ(f.tensors()[2].data.data(), bytes.data() + 8 + header.size() + 2);
}

TEST(SafetensorsWriter, MisuseIsAnErrorAndLeavesNoFile) {
  const fs::path dir = fresh_dir();
  const fs::path path = dir / "w.safetensors";
  const auto data = random_bytes(16, 3);
  {
    SafetensorsWriter w(path);
    w.add_tensor("a", StDtype::F32, {2});
    EXPECT_THROW(w.add_tensor("a", StDtype::F32, {2}), Error);
    EXPECT_THROW(w.add_tensor("__metadata__", StDtype::F32, {2}), Error);
    EXPECT_THROW(w.add_tensor("big", StDtype::F64, {1ull << 62, 4}), Error);
    EXPECT_THROW(w.write_tensor_data(std::span(data).first(4)), Error);  // wrong size
    w.write_tensor_data(std::span(data).first(8));
    EXPECT_THROW(w.add_tensor("late", StDtype::F32, {2}), Error);
    EXPECT_THROW(w.set_metadata("late", "x"), Error);
    EXPECT_THROW(w.write_tensor_data(std::span(data).first(8)), Error);  // more than declared
    // No finish(): the destructor must not leave a file behind.
  }
  EXPECT_FALSE(fs::exists(path));
  {
    SafetensorsWriter w(path);
    w.add_tensor("a", StDtype::F32, {2});
    w.add_tensor("b", StDtype::F32, {2});
    w.write_tensor_data(std::span(data).first(8));
    const std::string msg = error_of([&] { w.finish(); });
    EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(path));
  {
    SafetensorsWriter w(path);
    w.add_tensor("bad\xff", StDtype::U8, {1});
    EXPECT_THROW(w.finish(), Error);  // names must be valid UTF-8 to go into the JSON header
  }
  EXPECT_FALSE(fs::exists(path));
}

// ---- sharded checkpoints

void write_shard(const fs::path& path,
                 const std::vector<std::pair<std::string, std::uint64_t>>& tensors) {
  SafetensorsWriter w(path);
  w.set_metadata("format", "pt");
  for (const auto& [name, n] : tensors) w.add_tensor(name, StDtype::BF16, {n});
  std::uint32_t seed = 100;
  for (const auto& [name, n] : tensors) w.write_tensor_data(random_bytes(2 * n, seed++));
  w.finish();
}

void write_index(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& map) {
  std::string text = R"({"metadata": {"total_size": 0}, "weight_map": {)";
  for (std::size_t i = 0; i < map.size(); ++i)
    text += fmt::format("{}\"{}\": \"{}\"", i ? ", " : "", map[i].first, map[i].second);
  text += "}}";
  std::ofstream(dir / "model.safetensors.index.json") << text;
}

const char* kShard1 = "model-00001-of-00002.safetensors";
const char* kShard2 = "model-00002-of-00002.safetensors";

fs::path two_shard_checkpoint() {
  const fs::path dir = fresh_dir();
  write_shard(dir / kShard1, {{"model.layers.1.w", 4}, {"model.embed", 8}});
  write_shard(dir / kShard2, {{"lm_head", 3}, {"model.layers.0.w", 5}});
  return dir;
}

TEST(SafetensorsModel, TwoShardsWithIndex) {
  const fs::path dir = two_shard_checkpoint();
  write_index(dir, {{"model.embed", kShard1},
                    {"model.layers.1.w", kShard1},
                    {"model.layers.0.w", kShard2},
                    {"lm_head", kShard2}});
  for (const fs::path& p : {dir, dir / "model.safetensors.index.json"}) {
    const SafetensorsModel m = SafetensorsModel::open(p);
    ASSERT_EQ(m.files().size(), 2u);
    ASSERT_EQ(m.tensors().size(), 4u);
    EXPECT_EQ(m.tensors()[0]->name, "lm_head");
    EXPECT_EQ(m.tensors()[1]->name, "model.embed");
    EXPECT_EQ(m.tensors()[2]->name, "model.layers.0.w");
    EXPECT_EQ(m.tensors()[3]->name, "model.layers.1.w");
    EXPECT_EQ(m.get("lm_head").file, (dir / kShard2).string());
    EXPECT_EQ(m.get("model.embed").file, (dir / kShard1).string());
    EXPECT_EQ(m.get("model.layers.0.w").shape, std::vector<std::uint64_t>{5});
    // The bytes are the shard's bytes.
    const SafetensorsFile shard = SafetensorsFile::open(dir / kShard2);
    const auto& direct = *shard.find("lm_head");
    const auto& via_model = m.get("lm_head");
    ASSERT_EQ(via_model.data.size(), direct.data.size());
    EXPECT_TRUE(std::equal(direct.data.begin(), direct.data.end(), via_model.data.begin()));
  }
}

// The Hugging Face cache layout: snapshot files are symlinks into a blobs/ directory.
TEST(SafetensorsModel, SymlinkedShardsAsInTheHfCache) {
  const fs::path dir = two_shard_checkpoint();
  const fs::path blobs = dir / "blobs";
  const fs::path snapshot = dir / "snapshots" / "abc123";
  fs::create_directories(blobs);
  fs::create_directories(snapshot);
  write_index(blobs, {{"model.embed", kShard1}, {"model.layers.1.w", kShard1},
                      {"model.layers.0.w", kShard2}, {"lm_head", kShard2}});
  for (const std::string name : {kShard1, kShard2}) {
    fs::rename(dir / name, blobs / (name + ".blob"));
    fs::create_symlink("../../blobs/" + name + ".blob", snapshot / name);
  }
  fs::rename(blobs / "model.safetensors.index.json", blobs / "index.blob");
  fs::create_symlink("../../blobs/index.blob", snapshot / "model.safetensors.index.json");
  const SafetensorsModel m = SafetensorsModel::open(snapshot);
  EXPECT_EQ(m.tensors().size(), 4u);
  EXPECT_EQ(m.get("lm_head").file, (snapshot / kShard2).string());
}

TEST(SafetensorsModel, MissingShardIsNamed) {
  const fs::path dir = two_shard_checkpoint();
  write_index(dir, {{"model.embed", kShard1},
                    {"model.layers.1.w", kShard1},
                    {"model.layers.0.w", kShard2},
                    {"lm_head", "model-00003-of-00003.safetensors"}});
  const std::string msg = error_of([&] { (void)SafetensorsModel::open(dir); });
  EXPECT_NE(msg.find("model-00003-of-00003.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

TEST(SafetensorsModel, TensorMissingFromItsShard) {
  const fs::path dir = two_shard_checkpoint();
  write_index(dir, {{"model.embed", kShard1},
                    {"model.layers.1.w", kShard1},
                    {"model.layers.0.w", kShard2},
                    {"lm_head", kShard2},
                    {"model.norm", kShard2}});
  const std::string msg = error_of([&] { (void)SafetensorsModel::open(dir); });
  EXPECT_NE(msg.find("model.norm"), std::string::npos) << msg;
  EXPECT_NE(msg.find(kShard2), std::string::npos) << msg;
}

TEST(SafetensorsModel, TensorInTwoShards) {
  const fs::path dir = fresh_dir();
  write_shard(dir / kShard1, {{"a", 4}, {"shared", 2}});
  write_shard(dir / kShard2, {{"b", 3}, {"shared", 2}});
  write_index(dir, {{"a", kShard1}, {"b", kShard2}, {"shared", kShard1}});
  const std::string msg = error_of([&] { (void)SafetensorsModel::open(dir); });
  EXPECT_NE(msg.find("'shared'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("two shards"), std::string::npos) << msg;
  EXPECT_NE(msg.find(kShard1), std::string::npos) << msg;
  EXPECT_NE(msg.find(kShard2), std::string::npos) << msg;
}

TEST(SafetensorsModel, IndexMustMatchShards) {
  const fs::path dir = two_shard_checkpoint();
  // lm_head is in shard 2 but not in the map.
  write_index(
      dir,
      {{"model.embed", kShard1}, {"model.layers.1.w", kShard1}, {"model.layers.0.w", kShard2}});
  std::string msg = error_of([&] { (void)SafetensorsModel::open(dir); });
  EXPECT_NE(msg.find("'lm_head'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not listed"), std::string::npos) << msg;
  // lm_head mapped to the wrong shard.
  write_index(dir, {{"model.embed", kShard1},
                    {"model.layers.1.w", kShard1},
                    {"model.layers.0.w", kShard2},
                    {"lm_head", kShard1}});
  msg = error_of([&] { (void)SafetensorsModel::open(dir); });
  EXPECT_NE(msg.find("'lm_head'"), std::string::npos) << msg;
  // A shard name that leaves the directory.
  write_index(dir, {{"model.embed", "../x.safetensors"}});
  msg = error_of([&] { (void)SafetensorsModel::open(dir); });
  EXPECT_NE(msg.find("../x.safetensors"), std::string::npos) << msg;
  // Not an index at all.
  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map": [1]})";
  msg = error_of([&] { (void)SafetensorsModel::open(dir); });
  EXPECT_NE(msg.find("weight_map"), std::string::npos) << msg;
  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map": {"a": 1})";
  msg = error_of([&] { (void)SafetensorsModel::open(dir); });
  EXPECT_NE(msg.find("invalid JSON"), std::string::npos) << msg;
}

TEST(SafetensorsModel, DirectoryWithoutWeights) {
  const fs::path dir = fresh_dir();
  EXPECT_NE(error_of([&] { (void)SafetensorsModel::open(dir); }).find("model.safetensors"),
            std::string::npos);
  EXPECT_THROW((void)SafetensorsModel::open(dir / "nothing.safetensors"), Error);
  // Two unindexed candidates: ambiguous.
  write_shard(dir / "one.safetensors", {{"a", 1}});
  EXPECT_EQ(SafetensorsModel::open(dir).tensors().size(), 1u);  // a single file of any name
  write_shard(dir / "two.safetensors", {{"b", 1}});
  EXPECT_THROW((void)SafetensorsModel::open(dir), Error);
}

}  // namespace
}  // namespace qforge
