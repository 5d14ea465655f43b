// A checkpoint's tensors across one or more safetensors files. For sharded checkpoints the index's
// weight_map must agree exactly with the shards: a stale or hand-edited index is an error, not a
// silently missing or duplicated weight.
#include <algorithm>
#include <map>
#include <system_error>

#include "core/error.h"
#include "formats/hf_checkpoint.h"
#include "formats/safetensors.h"
#include "formats/safetensors_internal.h"

namespace qforge {
namespace {

namespace fs = std::filesystem;
using st_detail::printable;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// Files in dir whose names end with suffix, sorted.
std::vector<fs::path> files_with_suffix(const fs::path& dir, std::string_view suffix) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > suffix.size() && name.ends_with(suffix) && is_file(it->path()))
      out.push_back(it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A shard name from the index must name a file inside the checkpoint directory.
fs::path shard_path(const fs::path& index, const std::string& shard, const std::string& tensor) {
  const fs::path rel(shard);
  bool escapes = shard.empty() || rel.is_absolute();
  for (const auto& part : rel) escapes = escapes || part == "..";
  if (escapes)
    fail("{}: weight_map['{}'] = '{}' is not a file name inside the checkpoint directory",
         index.string(), printable(tensor), printable(shard));
  return index.parent_path() / rel;
}

}  // namespace

SafetensorsModel SafetensorsModel::open(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (is_file(path / kIndexName)) return open(path / kIndexName);
    if (is_file(path / kSingleName)) return open(path / kSingleName);
    // Other names are used too (e.g. consolidated.safetensors): accept an unambiguous one.
    const auto indexes = files_with_suffix(path, ".safetensors.index.json");
    if (indexes.size() == 1) return open(indexes.front());
    const auto singles = files_with_suffix(path, ".safetensors");
    if (indexes.empty() && singles.size() == 1) return open(singles.front());
    if (indexes.empty() && singles.empty())
      fail("{}: no {} or {} in this directory", path.string(), kSingleName, kIndexName);
    fail("{}: {} index files and {} .safetensors files but no {} or {}: cannot tell which to use",
         path.string(), indexes.size(), singles.size(), kSingleName, kIndexName);
  }

  SafetensorsModel model;
  const std::string name = path.filename().string();
  if (!name.ends_with(".json")) {
    model.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(path)));
    for (const auto& t : model.files_.front()->tensors()) model.all_.push_back(&t);
  } else {
    const nlohmann::json index = read_json_file(path);
    if (!index.is_object())
      fail("{}: index is a JSON {}, expected an object", path.string(), index.type_name());
    const auto wm = index.find("weight_map");
    if (wm == index.end()) fail("{}: missing field weight_map", path.string());
    if (!wm->is_object())
      fail("{}: weight_map is {}, expected an object", path.string(), wm->type_name());

    // Open each shard once, in the order of first mention.
    std::map<std::string, std::size_t> shard_index;
    std::map<std::string, std::string> expected;  // tensor -> shard
    for (const auto& [tensor, shard_json] : wm->items()) {
      if (!shard_json.is_string())
        fail("{}: weight_map['{}'] is {}, expected a file name", path.string(), printable(tensor),
             shard_json.type_name());
      const auto& shard = shard_json.get_ref<const std::string&>();
      expected.emplace(tensor, shard);
      if (shard_index.contains(shard)) continue;
      const fs::path file = shard_path(path, shard, tensor);
      if (!is_file(file))
        fail("{}: shard '{}' (holding '{}') does not exist: {}", path.string(), printable(shard),
             printable(tensor), file.string());
      shard_index.emplace(shard, model.files_.size());
      model.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(file)));
    }

    // Duplicates first: a tensor in two shards is the clearest description of that mistake.
    std::map<std::string_view, const SafetensorsFile*> owner;
    for (const auto& file : model.files_) {
      for (const auto& t : file->tensors()) {
        const auto [it, inserted] = owner.emplace(t.name, file.get());
        if (!inserted)
          fail("{}: tensor '{}' is stored in two shards: {} and {}", path.string(),
               printable(t.name), it->second->path(), file->path());
      }
    }
    for (const auto& [shard, i] : shard_index) {
      const SafetensorsFile& file = *model.files_[i];
      for (const auto& t : file.tensors()) {
        const auto want = expected.find(t.name);
        if (want == expected.end())
          fail("{}: tensor '{}' in shard {} is not listed in the index's weight_map", path.string(),
               printable(t.name), file.path());
        if (want->second != shard)
          fail("{}: tensor '{}' is mapped to shard '{}' but stored in {}", path.string(),
               printable(t.name), printable(want->second), file.path());
        model.all_.push_back(&t);
      }
    }
    for (const auto& [tensor, shard] : expected) {
      if (!owner.contains(tensor))
        fail("{}: tensor '{}' is mapped to shard '{}', which does not contain it", path.string(),
             printable(tensor), printable(shard));
    }
  }
  std::sort(model.all_.begin(), model.all_.end(),
            [](const StTensor* a, const StTensor* b) { return a->name < b->name; });
  return model;
}

const StTensor* SafetensorsModel::find(std::string_view name) const {
  const auto it =
      std::lower_bound(all_.begin(), all_.end(), name,
                       [](const StTensor* t, std::string_view n) { return t->name < n; });
  return it != all_.end() && (*it)->name == name ? *it : nullptr;
}

const StTensor& SafetensorsModel::get(std::string_view name) const {
  if (const StTensor* t = find(name)) return *t;
  fail("{}: no tensor named '{}'",
       files_.empty() ? std::string("checkpoint") : files_.front()->path(), printable(name));
}

}  // namespace qforge
