// Protobuf wire format (as documented for protocol buffers): a message is a sequence of
// (tag, value) records; tag = field_number << 3 | wire_type, both varints. Wire types used here:
// 0 varint, 1 fixed 8 bytes, 2 length-delimited (varint length, then bytes), 5 fixed 4 bytes.
// Groups (3, 4) are obsolete and not produced by sentencepiece; they are refused.
// As in proto2, a scalar field that appears twice keeps the last value and an embedded message
// that appears twice is merged (its later fields override earlier ones).
#include "convert/sentencepiece_model.h"

#include <bit>
#include <cstring>

#include "core/error.h"
#include "core/mapped_file.h"

namespace qforge {
namespace {

enum class WireType : std::uint32_t { Varint = 0, Fixed64 = 1, Bytes = 2, Fixed32 = 5 };

std::string_view wire_type_name(std::uint32_t w) {
  switch (w) {
    case 0:
      return "varint";
    case 1:
      return "fixed64";
    case 2:
      return "length-delimited";
    case 3:
      return "start-group";
    case 4:
      return "end-group";
    case 5:
      return "fixed32";
    default:
      return "invalid";
  }
}

// Reads one message's records from [begin, end) of the whole file, so offsets in errors are
// absolute file offsets.
class WireReader {
 public:
  WireReader(std::span<const std::byte> file, std::size_t begin, std::size_t end,
             std::string_view name, std::string_view message)
      : file_(file), pos_(begin), end_(end), name_(name), message_(message) {}

  bool done() const { return pos_ >= end_; }
  std::size_t pos() const { return pos_; }

  struct Tag {
    std::uint32_t field;
    std::uint32_t wire;
    std::size_t offset;  // where the tag starts
  };

  Tag read_tag() {
    const std::size_t at = pos_;
    const std::uint64_t tag = read_varint("tag");
    const std::uint64_t field = tag >> 3;
    const auto wire = static_cast<std::uint32_t>(tag & 7);
    if (field == 0 || field > 0x1FFFFFFF)
      fail("{}: {} at offset {}: invalid field number {}", name_, message_, at, field);
    if (wire != 0 && wire != 1 && wire != 2 && wire != 5)
      fail("{}: {} field {} at offset {}: unsupported wire type {} ({})", name_, message_, field,
           at, wire, wire_type_name(wire));
    return {static_cast<std::uint32_t>(field), wire, at};
  }

  std::uint64_t read_varint(std::string_view what) {
    const std::size_t at = pos_;
    std::uint64_t value = 0;
    for (int i = 0; i < 10; ++i) {
      if (pos_ >= end_)
        fail("{}: {}: truncated varint ({}) at offset {}: the data ends at offset {}", name_,
             message_, what, at, end_);
      const auto b = std::to_integer<std::uint8_t>(file_[pos_++]);
      if (i == 9 && b > 1)
        fail("{}: {}: varint ({}) at offset {} does not fit in 64 bits", name_, message_, what, at);
      value |= std::uint64_t{b & 0x7Fu} << (7 * i);
      if ((b & 0x80) == 0) return value;
    }
    fail("{}: {}: varint ({}) at offset {} is longer than 10 bytes", name_, message_, what, at);
  }

  // The [begin, end) range of a length-delimited value.
  std::pair<std::size_t, std::size_t> read_bytes_range(std::string_view what) {
    const std::size_t at = pos_;
    const std::uint64_t len = read_varint(what);
    if (len > end_ - pos_)
      fail("{}: {}: {} at offset {} has length {}, past the end of its data ({} bytes left)", name_,
           message_, what, at, len, end_ - pos_);
    const std::size_t begin = pos_;
    pos_ += static_cast<std::size_t>(len);
    return {begin, pos_};
  }

  std::uint32_t read_fixed32(std::string_view what) {
    if (end_ - pos_ < 4)
      fail("{}: {}: truncated fixed32 ({}) at offset {}: {} bytes left", name_, message_, what,
           pos_, end_ - pos_);
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
      v |= std::uint32_t{std::to_integer<std::uint8_t>(file_[pos_ + i])} << (8 * i);
    pos_ += 4;
    return v;
  }

  void skip(const Tag& tag) {
    switch (static_cast<WireType>(tag.wire)) {
      case WireType::Varint:
        read_varint("skipped field");
        return;
      case WireType::Bytes:
        read_bytes_range("skipped field");
        return;
      case WireType::Fixed32:
        read_fixed32("skipped field");
        return;
      case WireType::Fixed64:
        if (end_ - pos_ < 8)
          fail("{}: {}: truncated fixed64 (field {}) at offset {}: {} bytes left", name_, message_,
               tag.field, pos_, end_ - pos_);
        pos_ += 8;
        return;
    }
  }

  void expect_wire(const Tag& tag, WireType wire, std::string_view field_name) const {
    if (tag.wire != static_cast<std::uint32_t>(wire))
      fail("{}: {}.{} (field {}) at offset {}: wire type {} ({}), expected {} ({})", name_,
           message_, field_name, tag.field, tag.offset, tag.wire, wire_type_name(tag.wire),
           static_cast<std::uint32_t>(wire), wire_type_name(static_cast<std::uint32_t>(wire)));
  }

  std::string read_string(const Tag& tag, std::string_view field_name) {
    expect_wire(tag, WireType::Bytes, field_name);
    const auto [b, e] = read_bytes_range(field_name);
    return std::string(reinterpret_cast<const char*>(file_.data() + b), e - b);
  }

  bool read_bool(const Tag& tag, std::string_view field_name) {
    expect_wire(tag, WireType::Varint, field_name);
    return read_varint(field_name) != 0;
  }

  // int32 and enum fields: negative values are sign-extended to 10-byte varints.
  std::int32_t read_int32(const Tag& tag, std::string_view field_name) {
    expect_wire(tag, WireType::Varint, field_name);
    return static_cast<std::int32_t>(static_cast<std::uint32_t>(read_varint(field_name)));
  }

  float read_float(const Tag& tag, std::string_view field_name) {
    expect_wire(tag, WireType::Fixed32, field_name);
    return std::bit_cast<float>(read_fixed32(field_name));
  }

  std::span<const std::byte> file() const { return file_; }
  std::string_view name() const { return name_; }

 private:
  std::span<const std::byte> file_;
  std::size_t pos_;
  std::size_t end_;
  std::string_view name_;
  std::string_view message_;
};

SpmPiece parse_piece(std::span<const std::byte> file, std::size_t begin, std::size_t end,
                     std::string_view name, std::size_t index) {
  const std::string message = "pieces[" + std::to_string(index) + "]";
  WireReader r(file, begin, end, name, message);
  SpmPiece piece;
  while (!r.done()) {
    const auto tag = r.read_tag();
    switch (tag.field) {
      case 1:
        piece.piece = r.read_string(tag, "piece");
        break;
      case 2:
        piece.score = r.read_float(tag, "score");
        break;
      case 3: {
        const std::int32_t type = r.read_int32(tag, "type");
        if (type < 1 || type > 6)
          fail(
              "{}: {}.type at offset {}: {} is not a piece type (1 normal, 2 unknown, 3 control, "
              "4 user-defined, 5 unused, 6 byte)",
              name, message, tag.offset, type);
        piece.type = static_cast<SpmPieceType>(type);
        break;
      }
      default:
        r.skip(tag);
    }
  }
  return piece;
}

void parse_trainer_spec(WireReader& r, SpmTrainerSpec& spec) {
  while (!r.done()) {
    const auto tag = r.read_tag();
    switch (tag.field) {
      case 3: {
        const std::int32_t type = r.read_int32(tag, "model_type");
        if (type < 1 || type > 4)
          fail(
              "{}: trainer_spec.model_type at offset {}: {} is not a model type (1 unigram, 2 "
              "bpe, 3 word, 4 char)",
              r.name(), tag.offset, type);
        spec.model_type = static_cast<SpmModelType>(type);
        break;
      }
      case 4:
        spec.vocab_size = r.read_int32(tag, "vocab_size");
        break;
      case 35:
        spec.byte_fallback = r.read_bool(tag, "byte_fallback");
        break;
      case 40:
        spec.unk_id = r.read_int32(tag, "unk_id");
        break;
      case 41:
        spec.bos_id = r.read_int32(tag, "bos_id");
        break;
      case 42:
        spec.eos_id = r.read_int32(tag, "eos_id");
        break;
      case 43:
        spec.pad_id = r.read_int32(tag, "pad_id");
        break;
      default:
        r.skip(tag);
    }
  }
}

void parse_normalizer_spec(WireReader& r, SpmNormalizerSpec& spec) {
  while (!r.done()) {
    const auto tag = r.read_tag();
    switch (tag.field) {
      case 1:
        spec.name = r.read_string(tag, "name");
        break;
      case 3:
        spec.add_dummy_prefix = r.read_bool(tag, "add_dummy_prefix");
        break;
      case 4:
        spec.remove_extra_whitespaces = r.read_bool(tag, "remove_extra_whitespaces");
        break;
      case 5:
        spec.escape_whitespaces = r.read_bool(tag, "escape_whitespaces");
        break;
      default:
        r.skip(tag);
    }
  }
}

}  // namespace

SentencePieceModel SentencePieceModel::parse(std::span<const std::byte> bytes,
                                             std::string_view name) {
  SentencePieceModel model;
  WireReader r(bytes, 0, bytes.size(), name, "ModelProto");
  while (!r.done()) {
    const auto tag = r.read_tag();
    switch (tag.field) {
      case 1: {
        r.expect_wire(tag, WireType::Bytes, "pieces");
        const auto [b, e] = r.read_bytes_range("pieces");
        model.pieces.push_back(parse_piece(bytes, b, e, name, model.pieces.size()));
        break;
      }
      case 2: {
        r.expect_wire(tag, WireType::Bytes, "trainer_spec");
        const auto [b, e] = r.read_bytes_range("trainer_spec");
        WireReader sub(bytes, b, e, name, "trainer_spec");
        parse_trainer_spec(sub, model.trainer_spec);
        model.has_trainer_spec = true;
        break;
      }
      case 3: {
        r.expect_wire(tag, WireType::Bytes, "normalizer_spec");
        const auto [b, e] = r.read_bytes_range("normalizer_spec");
        WireReader sub(bytes, b, e, name, "normalizer_spec");
        parse_normalizer_spec(sub, model.normalizer_spec);
        model.has_normalizer_spec = true;
        break;
      }
      default:
        r.skip(tag);
    }
  }
  if (model.pieces.empty())
    fail("{}: not a SentencePiece model: no pieces (ModelProto field 1) in {} bytes", name,
         bytes.size());
  return model;
}

SentencePieceModel SentencePieceModel::load(const std::filesystem::path& path) {
  const MappedFile file = MappedFile::open(path);
  return parse(file.bytes(), path.string());
}

}  // namespace qforge
