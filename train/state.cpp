// Training state <-> checkpoint: tensors "model.*" and "optimizer.*", and the metadata
// object {"tandem_training": 1, "progress", "optimizer_scalars", "scheduler", "loader",
// "rng", "extras"}.
#include "train/state.h"

#include <algorithm>
#include <regex>
#include <stdexcept>

#include "engine/cuda/runtime.h"
#include "engine/random.h"
#include "train/json_integers.h"

namespace tandem::train {
namespace {

constexpr const char* kModelPrefix = "model.";
constexpr const char* kOptimizerPrefix = "optimizer.";

std::string device_key(Device d) { return d.str(); }

}  // namespace

std::vector<Device> TrainingObjects::default_rng_devices() {
  std::vector<Device> devices = {Device::cpu()};
  for (int i = 0; i < cuda::device_count(); ++i) devices.push_back(Device::cuda(i));
  return devices;
}

void save_training_checkpoint(const std::filesystem::path& path, const TrainingObjects& objects,
                              const TrainProgress& progress) {
  NamedTensors tensors;
  nlohmann::json meta = nlohmann::json::object();
  meta["tandem_training"] = 1;
  meta["progress"] = {{"epoch", progress.epoch},
                      {"global_step", progress.global_step},
                      {"world_size", progress.world_size},
                      {"config", progress.config},
                      {"extra", progress.extra}};
  if (objects.model) {
    for (auto& [name, t] : objects.model->state_dict()) tensors.emplace_back(kModelPrefix + name, t);
  }
  if (objects.optimizer) {
    optim::OptimizerState s = objects.optimizer->state_dict();
    for (auto& [key, t] : s.tensors)
      if (t.defined()) tensors.emplace_back(kOptimizerPrefix + key, t);
    meta["optimizer_scalars"] = s.scalars;
  }
  if (objects.scheduler) meta["scheduler"] = objects.scheduler->state_dict();
  if (objects.loader) meta["loader"] = {{"epoch", objects.loader->epoch()}, {"position", objects.loader->position()}};
  nlohmann::json rng = nlohmann::json::object();
  for (Device d : objects.rng_devices) {
    PhiloxState s = default_generator(d).state();
    rng[device_key(d)] = {{"seed", s.seed}, {"offset", s.offset}};
  }
  meta["rng"] = rng;
  nlohmann::json extras = nlohmann::json::object();
  for (const auto& e : objects.extras) extras[e.name] = e.save();
  meta["extras"] = extras;
  save_checkpoint(path, tensors, meta);
}

TrainProgress load_training_checkpoint(const std::filesystem::path& path, const TrainingObjects& objects,
                                       int world_size) {
  Checkpoint c = load_checkpoint(path);
  const nlohmann::json& meta = c.metadata;
  const std::string where = "[load_training_checkpoint] " + path.string() + ": ";
  if (!meta.is_object() || meta.value("tandem_training", 0) != 1)
    throw std::invalid_argument(where + "expected a training checkpoint (metadata \"tandem_training\": 1), got a "
                                "checkpoint without training state (written by tandem-ckpt import?)");
  TrainProgress p;
  try {
    const auto& j = meta.at("progress");
    p.epoch = static_cast<int64_t>(detail::json_unsigned(j.at("epoch"), "epoch", INT64_MAX));
    p.global_step = static_cast<int64_t>(detail::json_unsigned(j.at("global_step"), "global_step", INT64_MAX));
    p.world_size = static_cast<int>(detail::json_unsigned(j.at("world_size"), "world_size", INT32_MAX));
    p.config = j.value("config", nlohmann::json::object());
    p.extra = j.value("extra", nlohmann::json::object());
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(where + "malformed \"progress\" metadata: " + e.what());
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(where + "malformed \"progress\" metadata: " + e.what());
  }

  // Decide everything that can fail before changing any object.
  data::LoaderState loader_state;
  if (objects.loader) {
    if (!meta.contains("loader"))
      throw std::invalid_argument(where + "expected data-loader state, got none in the checkpoint");
    try {
      const auto& l = meta["loader"];
      loader_state = {static_cast<int64_t>(detail::json_unsigned(l.at("epoch"), "loader epoch", INT64_MAX)),
                      static_cast<int64_t>(detail::json_unsigned(l.at("position"), "loader position", INT64_MAX))};
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument(where + "malformed \"loader\" metadata: " + e.what());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(where + "malformed \"loader\" metadata: " + e.what());
    }
    if (world_size != p.world_size && loader_state.position != 0) {
      throw std::invalid_argument(
          where + "expected the world size it was saved with (" + std::to_string(p.world_size) +
          ") to resume in the middle of an epoch (batch " + std::to_string(loader_state.position) + " of epoch " +
          std::to_string(loader_state.epoch) + "), got " + std::to_string(world_size) +
          ": each rank's share of the epoch depends on the world size. Resume with " + std::to_string(p.world_size) +
          " ranks, or from a checkpoint saved at the end of an epoch");
    }
  }
  nn::StateDict model_state;
  optim::OptimizerState opt_state;
  for (auto& [name, t] : c.tensors) {
    if (name.rfind(kModelPrefix, 0) == 0) {
      model_state.emplace_back(name.substr(std::char_traits<char>::length(kModelPrefix)), t);
    } else if (name.rfind(kOptimizerPrefix, 0) == 0) {
      opt_state.tensors[name.substr(std::char_traits<char>::length(kOptimizerPrefix))] = t;
    }
  }
  if (objects.optimizer) {
    if (!meta.contains("optimizer_scalars"))
      throw std::invalid_argument(where + "expected optimizer state, got none in the checkpoint");
    opt_state.scalars = meta["optimizer_scalars"].get<std::map<std::string, double>>();
  }
  if (objects.scheduler && !meta.contains("scheduler"))
    throw std::invalid_argument(where + "expected scheduler state, got none in the checkpoint");
  for (const auto& e : objects.extras) {
    if (!meta.contains("extras") || !meta["extras"].contains(e.name))
      throw std::invalid_argument(where + "expected '" + e.name + "' state, got none in the checkpoint");
  }

  // Random streams: a device the saving job did not have keeps its stream.
  std::vector<std::pair<Device, PhiloxState>> rng_states;
  const nlohmann::json rng = meta.value("rng", nlohmann::json::object());
  for (Device d : objects.rng_devices) {
    const std::string key = device_key(d);
    if (!rng.contains(key)) continue;
    try {
      rng_states.emplace_back(d, PhiloxState{detail::json_unsigned(rng[key].at("seed"), "rng seed"),
                                             detail::json_unsigned(rng[key].at("offset"), "rng offset")});
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument(where + "malformed \"rng\" metadata for " + key + ": " + e.what());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(where + "malformed \"rng\" metadata for " + key + ": " + e.what());
    }
  }

  if (objects.model) {
    // The module copies into its own tensors (keeping their device and dtype).
    objects.model->load_state_dict(model_state);
  }
  if (objects.optimizer) objects.optimizer->load_state_dict(opt_state);
  if (objects.scheduler) objects.scheduler->load_state_dict(meta["scheduler"].get<optim::SchedulerState>());
  if (objects.loader) objects.loader->load_state(loader_state);
  for (const auto& [d, state] : rng_states) default_generator(d).set_state(state);
  for (const auto& e : objects.extras) e.load(meta["extras"][e.name]);
  return p;
}

std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& dir, const std::string& prefix) {
  std::vector<std::pair<int64_t, std::filesystem::path>> found;
  if (!std::filesystem::is_directory(dir)) return {};
  const std::regex pattern(prefix + "-([0-9]+)\\.tck");
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (entry.is_regular_file() && std::regex_match(name, m, pattern)) found.emplace_back(std::stoll(m[1]), entry.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::filesystem::path> out;
  for (auto& [step, p] : found) out.push_back(p);
  return out;
}

}  // namespace tandem::train
