// qforge bench: prompt processing (pp) and generation (tg) speed of a model, llama-bench style.
// pp: one forward pass over -p random tokens after -d tokens of context; tg: -n one-token forward
// steps (Model::decode_step) after the same context (each returns its logits to the host, as
// generation would).
// Mean and sample standard deviation over -r repetitions, after one untimed warm-up of each.
// On CUDA it also measures the device-to-device copy bandwidth in the same run and reports the
// bandwidth tg achieves: weight bytes read per token x tokens/s, as a share of that roofline.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/decode_x_option.h"
#include "core/error.h"
#include "core/parallel.h"
#include "formats/gguf.h"
#include "model/config.h"
#include "model/model.h"
#include "runtime/cuda_device.h"
#include "runtime/cuda_model.h"
#include "runtime/cuda_trace.h"

namespace qforge::cli {
namespace {

struct BenchArgs {
  std::string model;
  int n_prompt = 512;
  int n_gen = 128;
  int depth = 0;
  int ctx_size = 0;  // KV cache positions; 0: what the tests need
  int reps = 3;
  std::string device = "cpu";
  std::string kv_type = "bf16";
  std::string decode_x;  // CUDA decode GEMVs' x: exact or int8 (empty: QFORGE_DECODE_X or exact)
  int threads = 0;
  bool json = false;
};

struct Stats {
  std::vector<double> samples;  // tokens per second
  double mean() const {
    double s = 0;
    for (double v : samples) s += v;
    return samples.empty() ? 0.0 : s / static_cast<double>(samples.size());
  }
  double sd() const {
    if (samples.size() < 2) return 0.0;
    const double m = mean();
    double s = 0;
    for (double v : samples) s += (v - m) * (v - m);
    return std::sqrt(s / static_cast<double>(samples.size() - 1));
  }
};

// Bytes of tensor data, and the bytes one generated token reads: every tensor except the token
// embedding tables (one row of each is read; token_embd counts when it doubles as the output
// head), and of a stacked expert tensor ("*_exps") only the expert_used_count / expert_count
// share that one token's routing reads.
struct ModelBytes {
  std::uint64_t total = 0;
  std::uint64_t per_token = 0;
  std::uint64_t params = 0;
};

ModelBytes model_bytes(const GgufReader& gguf) {
  ModelBytes b;
  const bool tied = gguf.find_tensor("output.weight") == nullptr;
  double expert_share = 1.0;
  const std::string arch = gguf.architecture();
  const GgufValue* used = gguf.find(arch + ".expert_used_count");
  const GgufValue* count = gguf.find(arch + ".expert_count");
  if (used != nullptr && count != nullptr && count->as_uint("expert_count") > 0) {
    expert_share = static_cast<double>(used->as_uint("expert_used_count")) /
                   static_cast<double>(count->as_uint("expert_count"));
  }
  for (const GgufTensorInfo& t : gguf.tensors()) {
    b.total += t.n_bytes();
    b.params += t.n_elements();
    if (t.name == "per_layer_token_embd.weight") continue;
    if (t.name == "token_embd.weight" && !tied) continue;
    const bool experts = t.name.find("_exps.") != std::string::npos;
    b.per_token += experts
                       ? static_cast<std::uint64_t>(static_cast<double>(t.n_bytes()) * expert_share)
                       : t.n_bytes();
  }
  return b;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::unique_ptr<Model> open_model(const std::string& path, Device device) {
  if (device == Device::Cuda) {
    // Built directly so that bench does not depend on load_model's device routing.
    auto gguf = std::make_unique<GgufReader>(GgufReader::open(path));
    ModelConfig config = read_model_config(*gguf);
    return make_cuda_model(std::move(gguf), std::move(config));
  }
  return load_model(path);
}

nlohmann::json stats_json(const Stats& s) {
  return {{"mean", s.mean()}, {"sd", s.sd()}, {"samples", s.samples}};
}

void run(const BenchArgs& args) {
  if (args.n_prompt < 0 || args.n_gen < 0 || args.depth < 0 || args.ctx_size < 0) {
    fail("-p, -n, -d and -c must be >= 0");
  }
  if (args.reps < 1) fail("-r must be >= 1");
  if (args.n_prompt == 0 && args.n_gen == 0) fail("nothing to measure: -p and -n are both 0");
  const Device device = parse_device(args.device);
  const KvType kv_type = parse_kv_type(args.kv_type);
  if (args.threads > 0) set_thread_count(args.threads);
  apply_decode_x(args.decode_x, device);

  const ModelBytes bytes = model_bytes(GgufReader::open(args.model));
  const auto load_start = std::chrono::steady_clock::now();
  std::unique_ptr<Model> model = open_model(args.model, device);
  const double load_seconds = seconds_since(load_start);
  const ModelConfig& config = model->config();
  const int longest = std::max(args.n_prompt, args.n_gen);
  const int needed = args.depth + longest + 1;
  if (args.ctx_size > 0 && args.ctx_size < needed) {
    fail("-c {} is too small: depth {} + {} tokens need a cache of {} positions", args.ctx_size,
         args.depth, longest, needed);
  }
  const int n_ctx = args.ctx_size > 0 ? args.ctx_size : needed;
  auto cache = model->new_cache(n_ctx, kv_type);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<std::int32_t> pick(0, config.n_vocab - 1);
  auto random_tokens = [&](int n) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    for (auto& id : ids) id = pick(rng);
    return ids;
  };
  const std::vector<std::int32_t> context = random_tokens(args.depth);
  const std::vector<std::int32_t> prompt = random_tokens(args.n_prompt);
  const std::vector<std::int32_t> gen = random_tokens(args.n_gen);

  auto fill_context = [&] {
    cache->clear();
    if (!context.empty()) model->forward(context, 0, *cache);
  };
  auto time_pp = [&] {
    fill_context();
    const auto start = std::chrono::steady_clock::now();
    model->forward(prompt, args.depth, *cache);
    return static_cast<double>(args.n_prompt) / seconds_since(start);
  };
  auto time_tg = [&](int n) {
    fill_context();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) {
      model->decode_step(gen[static_cast<std::size_t>(i)], args.depth + i, *cache);
    }
    return static_cast<double>(n) / seconds_since(start);
  };

  Stats pp, tg;
  if (args.n_prompt > 0) {
    time_pp();  // warm-up
    for (int r = 0; r < args.reps; ++r) pp.samples.push_back(time_pp());
  }
  if (args.n_gen > 0) {
    time_tg(std::min(args.n_gen, 4));  // warm-up (captures the decode graph on CUDA)
    for (int r = 0; r < args.reps; ++r) tg.samples.push_back(time_tg(args.n_gen));
    // A timeline of the decode GEMVs' CTAs over up to 8 more steps (cuda_trace.h), not timed.
    if (const char* trace = std::getenv("QFORGE_GEMV_TRACE"); trace && device == Device::Cuda) {
      cuda::gemv_trace_start(std::size_t{1} << 21);
      time_tg(std::min(args.n_gen, 8));
      cuda::write_trace(trace, cuda::gemv_trace_stop());
    }
  }

  std::string device_name = "cpu";
  double copy_gbs = 0.0;
  if (device == Device::Cuda) {
    const auto devices = cuda::devices();
    if (!devices.empty()) device_name = devices.front().name;
    copy_gbs = cuda::measure_copy_bandwidth_gbs(0);
  }
  const double tg_gbs = static_cast<double>(bytes.per_token) * tg.mean() / 1e9;
  const double gib = static_cast<double>(1u << 30);

  if (args.json) {
    nlohmann::json j = {{"model", args.model},
                        {"arch", config.arch},
                        {"device", args.device},
                        {"device_name", device_name},
                        {"size_bytes", bytes.total},
                        {"params", bytes.params},
                        {"bytes_per_token", bytes.per_token},
                        {"kv_type", std::string(kv_type_name(kv_type))},
                        {"n_prompt", args.n_prompt},
                        {"n_gen", args.n_gen},
                        {"depth", args.depth},
                        {"n_ctx", n_ctx},
                        {"reps", args.reps},
                        {"load_seconds", load_seconds}};
    if (device == Device::Cpu) j["threads"] = thread_count();
    if (args.n_prompt > 0) j["pp"] = stats_json(pp);
    if (args.n_gen > 0) j["tg"] = stats_json(tg);
    if (device == Device::Cuda) {
      j["decode_x"] = cuda::decode_x_name(cuda::decode_x());
      j["copy_bandwidth_gbs"] = copy_gbs;
      if (args.n_gen > 0) {
        j["tg_bandwidth_gbs"] = tg_gbs;
        j["tg_roofline_percent"] = copy_gbs > 0 ? 100.0 * tg_gbs / copy_gbs : 0.0;
      }
    }
    fmt::print("{}\n", j.dump(2));
    return;
  }

  const auto size = static_cast<double>(bytes.total);
  fmt::print("model: {} ({}, {}, {:.3f} B params), loaded in {:.1f} s\n", args.model, config.arch,
             size >= gib ? fmt::format("{:.2f} GiB", size / gib)
                         : fmt::format("{:.2f} MiB", size / (1 << 20)),
             static_cast<double>(bytes.params) / 1e9, load_seconds);
  fmt::print("device: {}{}; kv {} ({} positions); depth {}; {} repetitions\n", device_name,
             device == Device::Cpu
                 ? fmt::format(" ({} threads)", thread_count())
                 : fmt::format(" (decode x {})", cuda::decode_x_name(cuda::decode_x())),
             kv_type_name(kv_type), n_ctx, args.depth, args.reps);
  fmt::print("| test | tokens/s |\n| --- | --- |\n");
  const std::string at = args.depth > 0 ? fmt::format(" @ d{}", args.depth) : "";
  if (args.n_prompt > 0) {
    fmt::print("| pp{}{} | {:.2f} ± {:.2f} |\n", args.n_prompt, at, pp.mean(), pp.sd());
  }
  if (args.n_gen > 0)
    fmt::print("| tg{}{} | {:.2f} ± {:.2f} |\n", args.n_gen, at, tg.mean(), tg.sd());
  if (device == Device::Cuda && args.n_gen > 0) {
    fmt::print(
        "tg bandwidth: {:.3f} GB of weights per token x {:.2f} tokens/s = {:.0f} GB/s, {:.1f}% of "
        "the measured copy bandwidth ({:.0f} GB/s, read + write)\n",
        static_cast<double>(bytes.per_token) / 1e9, tg.mean(), tg_gbs,
        copy_gbs > 0 ? 100.0 * tg_gbs / copy_gbs : 0.0, copy_gbs);
  }
}

void setup(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure prompt (pp) and generation (tg) speed");
  cmd->add_option("-m,--model", args->model, "GGUF model file")->required();
  cmd->add_option("-p,--n-prompt", args->n_prompt, "Prompt tokens (0: skip pp)")
      ->capture_default_str();
  cmd->add_option("-n,--n-gen", args->n_gen, "Generated tokens (0: skip tg)")
      ->capture_default_str();
  cmd->add_option("-d,--depth", args->depth, "Tokens of context before each test")
      ->capture_default_str();
  cmd->add_option("-c,--ctx-size", args->ctx_size,
                  "KV cache positions (0: what the tests need; a chat session's context is larger)")
      ->capture_default_str();
  cmd->add_option("-r,--reps", args->reps, "Repetitions")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--kv-type", args->kv_type, "KV cache type: bf16, f32 or q8_0")
      ->capture_default_str();
  cmd->add_option("-t,--threads", args->threads, "CPU threads (default: all cores)");
  add_decode_x_option(cmd, args->decode_x);
  cmd->add_flag("--json", args->json, "Print one JSON object instead of the table");
  cmd->callback([args] { run(*args); });
}

}  // namespace

QFORGE_REGISTER_COMMAND(45, setup);

}  // namespace qforge::cli
