#include "model/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace qforge {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::vector<std::int32_t> end_of_generation_tokens(const Vocab& vocab) {
  std::vector<std::int32_t> ids;
  if (vocab.eos_id >= 0) ids.push_back(vocab.eos_id);
  static constexpr std::string_view kEndOfTurn[] = {"<end_of_turn>", "<|eot_id|>", "<|im_end|>",
                                                    "<|end_of_text|>", "<|endoftext|>", "<turn|>"};
  for (std::int32_t id = 0; id < vocab.size(); ++id) {
    const auto i = static_cast<std::size_t>(id);
    if (vocab.types[i] != TokenType::Control) continue;
    if (std::find(std::begin(kEndOfTurn), std::end(kEndOfTurn), vocab.tokens[i]) !=
        std::end(kEndOfTurn)) {
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    }
  }
  return ids;
}

std::size_t complete_utf8_prefix(std::string_view s) {
  // Look back at most 3 bytes for the lead byte of an unfinished sequence.
  const std::size_t n = s.size();
  for (std::size_t back = 1; back <= std::min<std::size_t>(4, n); ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    std::size_t need = 1;
    if ((c & 0xE0) == 0xC0) need = 2;
    else if ((c & 0xF0) == 0xE0) need = 3;
    else if ((c & 0xF8) == 0xF0) need = 4;
    return back < need ? n - back : n;
  }
  return n;  // only continuation bytes (invalid UTF-8): pass them through
}

GenerateResult generate(Model& model, KvCache& cache, const Tokenizer& tokenizer,
                        std::span<const std::int32_t> prompt, const GenerateOptions& options,
                        const std::function<void(std::string_view)>& on_text) {
  if (prompt.empty()) fail("generate: the prompt has no tokens");
  GenerateResult result;
  result.n_prompt = static_cast<int>(prompt.size());
  Sampler sampler(options.sampling);
  for (const std::int32_t id : prompt) sampler.accept(id);
  const std::vector<std::int32_t> eog = end_of_generation_tokens(tokenizer.vocab());
  StopStrings stops(options.stop);

  // Prefill.
  const auto prompt_start = std::chrono::steady_clock::now();
  std::vector<float> prompt_logits;
  const std::size_t batch = std::max<std::size_t>(options.prefill_batch, 1);
  for (std::size_t begin = 0; begin < prompt.size(); begin += batch) {
    const std::size_t count = std::min(batch, prompt.size() - begin);
    prompt_logits = model.forward(prompt.subspan(begin, count), static_cast<int>(begin), cache);
  }
  std::span<const float> logits = prompt_logits;  // then each step's (Model::decode_step)
  result.prompt_seconds = seconds_since(prompt_start);

  // Text is produced by decoding prompt + generated ids and printing what was added, so pieces
  // that depend on their neighbours (leading spaces, multi-byte characters split over byte
  // tokens) come out right.
  std::vector<std::int32_t> all(prompt.begin(), prompt.end());
  const std::size_t prompt_text_len = tokenizer.decode(all).size();
  std::size_t printed = prompt_text_len;
  auto emit = [&](std::string_view text) {
    result.text += text;
    if (on_text && !text.empty()) on_text(text);
  };

  const auto gen_start = std::chrono::steady_clock::now();
  result.stop_reason = "length";
  int pos = static_cast<int>(prompt.size());
  for (int i = 0; i < options.max_tokens; ++i) {
    const std::int32_t token = sampler.sample(logits);
    if (options.stop_at_eog && std::find(eog.begin(), eog.end(), token) != eog.end()) {
      result.stop_reason = "eog";
      break;
    }
    sampler.accept(token);
    result.tokens.push_back(token);
    all.push_back(token);
    const std::string decoded = tokenizer.decode(all);
    const std::size_t ready = complete_utf8_prefix(decoded);
    if (ready > printed) {
      const StopStrings::Result r = stops.push(std::string_view(decoded).substr(printed, ready - printed));
      printed = ready;
      emit(r.text);
      if (r.stopped) {
        result.stop_reason = "stop string";
        break;
      }
    }
    if (i + 1 == options.max_tokens) break;  // no forward pass for a token nobody will sample
    logits = model.decode_step(token, pos, cache);
    ++pos;
    ++result.decode_steps;
  }
  if (result.stop_reason != "stop string") {
    const std::string decoded = tokenizer.decode(all);
    const StopStrings::Result r = stops.push(std::string_view(decoded).substr(std::min(printed, decoded.size())));
    emit(r.text);
    if (!r.stopped) emit(stops.flush());
  }
  result.generation_seconds = seconds_since(gen_start);
  return result;
}

}  // namespace qforge
