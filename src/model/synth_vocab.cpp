// tokenizer.* metadata for `qforge synth`: a minimal vocabulary that llama.cpp's loader and
// qforge's tokenizer accept. Special tokens sit at the config's ids (bos/eos/pad) or the family's
// usual ids, then 256 byte tokens <0xNN> (byte fallback makes every text tokenizable), "▁" and
// "▁▁" (with one merge for BPE vocabularies), then fillers "<tok_N>" up to vocab_size.
#include <optional>

#include "core/error.h"
#include "model/synth_internal.h"

namespace qforge::synth::detail {
namespace {

// llama.cpp's token types (gguf TokenType).
constexpr std::int32_t kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6;

struct Special {
  std::optional<std::uint64_t> id;  // wanted id; nullopt = next free id
  std::string text;
  std::int32_t type;
  std::string id_key;  // tokenizer.ggml.<...>_token_id key, or "" for none
};

class VocabBuilder {
 public:
  VocabBuilder(const ConfigReader& cfg, std::uint64_t n) : tokens_(n), types_(n, 0), cfg_(cfg) {}

  void add_special(const Special& s) {
    std::uint64_t id;
    if (s.id) {
      id = *s.id;
      if (id >= tokens_.size())
        fail("{}: special token {} has id {} but vocab_size is {}", cfg_.where(), s.text, id,
             tokens_.size());
      if (types_[id] != 0) {  // two specials share an id (e.g. pad == eos): keep the first text
        if (!s.id_key.empty()) ids_.push_back({s.id_key, id});
        return;
      }
    } else {
      id = next_free();
    }
    set(id, s.text, s.type);
    if (!s.id_key.empty()) ids_.push_back({s.id_key, id});
  }
  void add_next(std::string text, std::int32_t type) { set(next_free(), std::move(text), type); }
  void fill_rest() {
    for (std::uint64_t i = 0; i < tokens_.size(); ++i)
      if (types_[i] == 0) set(i, fmt::format("<tok_{}>", i), kNormal);
  }
  std::uint64_t size() const { return tokens_.size(); }

  std::vector<std::string> tokens_;
  std::vector<std::int32_t> types_;
  std::vector<std::pair<std::string, std::uint64_t>> ids_;

 private:
  std::uint64_t next_free() {
    while (next_ < types_.size() && types_[next_] != 0) ++next_;
    if (next_ >= types_.size())
      fail(
          "{}: vocab_size {} is too small for a synthetic vocabulary (specials + 256 byte "
          "tokens + 2)",
          cfg_.where(), types_.size());
    return next_;
  }
  void set(std::uint64_t id, std::string text, std::int32_t type) {
    tokens_[id] = std::move(text);
    types_[id] = type;
  }
  const ConfigReader& cfg_;
  std::uint64_t next_ = 0;
};

}  // namespace

void add_vocab(KvBuilder& kvs, SynthArch arch, const ConfigReader& cfg, std::uint64_t n_vocab) {
  VocabBuilder v(cfg, n_vocab);
  const auto bos = cfg.opt_token_id("bos_token_id");
  const auto eos = cfg.opt_token_id("eos_token_id");
  const auto pad = cfg.opt_token_id("pad_token_id");
  const bool gemma = arch != SynthArch::kLlama;
  if (!gemma) {
    v.add_special({std::uint64_t{0}, "<unk>", kUnknown, "unknown_token_id"});
    v.add_special({bos.value_or(1), "<s>", kControl, "bos_token_id"});
    v.add_special({eos.value_or(2), "</s>", kControl, "eos_token_id"});
  } else {
    v.add_special({pad.value_or(0), "<pad>", kControl, "padding_token_id"});
    v.add_special({eos.value_or(1), "<eos>", kControl, "eos_token_id"});
    v.add_special({bos.value_or(2), "<bos>", kControl, "bos_token_id"});
    v.add_special({std::nullopt, "<unk>", kUnknown, "unknown_token_id"});
    v.add_special({std::nullopt, "<mask>", kControl, "mask_token_id"});
    if (arch == SynthArch::kGemma3) {
      v.add_special({std::nullopt, "<start_of_turn>", kControl, ""});
      v.add_special({std::nullopt, "<end_of_turn>", kControl, ""});
    } else {
      v.add_special({std::nullopt, "<|turn>", kControl, ""});
      v.add_special({std::nullopt, "<turn|>", kControl, ""});
    }
  }
  for (int b = 0; b < 256; ++b) v.add_next(fmt::format("<0x{:02X}>", b), kByte);
  v.add_next("\u2581", kNormal);
  v.add_next("\u2581\u2581", kNormal);
  v.fill_rest();

  std::vector<float> scores(n_vocab);
  for (std::uint64_t i = 0; i < n_vocab; ++i)
    scores[i] = v.types_[i] == kNormal ? -static_cast<float>(i) : -1000.0f;
  std::vector<GgufValue> types;
  types.reserve(n_vocab);
  for (std::int32_t t : v.types_) types.push_back(GgufValue{t});

  const std::string t = "tokenizer.ggml.";
  if (arch == SynthArch::kLlama) kvs.set(t + "add_space_prefix", boolean(true));
  kvs.set(t + "model", str(arch == SynthArch::kGemma4 ? "gemma4" : "llama"));
  if (arch != SynthArch::kGemma4) kvs.set(t + "pre", str("default"));
  kvs.set(t + "tokens", str_array(std::move(v.tokens_)));
  kvs.set(t + "scores", f32_array(scores));
  kvs.set(t + "token_type", GgufValue::make_array(GgufValueType::INT32, std::move(types)));
  // llama.cpp's "gemma4" tokenizer is BPE and requires a merges list.
  if (arch == SynthArch::kGemma4) kvs.set(t + "merges", str_array({"\u2581 \u2581"}));
  for (const auto& [key, id] : v.ids_) kvs.set(t + key, u32(id));
  kvs.set(t + "add_bos_token", boolean(true));
  kvs.set(t + "add_sep_token", boolean(false));
  kvs.set(t + "add_eos_token", boolean(false));
  if (gemma) kvs.set(t + "add_space_prefix", boolean(false));
}

}  // namespace qforge::synth::detail
