// Trainer: configuration checks, placement and wrapping, the loop (micro-batches,
// autocast, loss scaling, no_sync accumulation, clipping after unscale, schedule per
// optimizer step), validation, metrics and checkpoints.
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "comm/data_parallel.h"
#include "comm/launch.h"
#include "comm/metrics.h"
#include "comm/sampler.h"
#include "comm/sync_batchnorm.h"
#include "data/dataloader.h"
#include "engine/autocast.h"
#include "engine/autograd.h"
#include "engine/cuda/graph.h"
#include "engine/cuda/runtime.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/checkpoint.h"
#include "layers/sequential.h"
#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/schedule.h"
#include "optim/sgd.h"
#include "train/gpu_monitor.h"
#include "train/loss.h"
#include "train/metrics.h"
#include "train/progress.h"
#include "train/state.h"

namespace tandem::train {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

[[noreturn]] void bad(const std::string& option, const std::string& expected, const std::string& got) {
  throw std::invalid_argument("[Trainer] " + option + ": expected " + expected + ", got " + got);
}

void check_config(const TrainerConfig& c) {
  if (c.epochs < 1) bad("epochs", ">= 1", std::to_string(c.epochs));
  if (c.batch_size < 1) bad("batch_size", ">= 1", std::to_string(c.batch_size));
  if (c.accumulate < 1) bad("accumulate", ">= 1", std::to_string(c.accumulate));
  const auto& s = c.strategy;
  if (s.mode != "single" && s.mode != "dp" && s.mode != "ddp")
    bad("strategy.mode", "\"single\", \"dp\" or \"ddp\"", "\"" + s.mode + "\"");
  if (s.mode == "single" && s.devices.size() > 1)
    bad("strategy.devices", "at most one device for single", std::to_string(s.devices.size()) + " devices");
  if (s.mode == "dp" && s.devices.empty()) bad("strategy.devices", "the replicas' devices for dp", "none");
  if (s.mode == "ddp" && s.devices.size() > 1)
    bad("strategy.devices", "this rank's one device for ddp", std::to_string(s.devices.size()) + " devices");
  if (s.sync_bn && s.mode != "ddp") bad("strategy.sync_bn", "strategy.mode \"ddp\"", "\"" + s.mode + "\"");
  if (s.init_method != "env") bad("strategy.init_method", "\"env\"", "\"" + s.init_method + "\"");
  if (c.precision.use_amp && c.precision.amp_dtype != DType::kF16 && c.precision.amp_dtype != DType::kBF16)
    bad("precision.amp_dtype", "float16 or bfloat16", std::string(dtype_name(c.precision.amp_dtype)));
  const auto& o = c.optimizer;
  if (o.name != "sgd" && o.name != "adam" && o.name != "adamw")
    bad("optimizer.name", "\"sgd\", \"adam\" or \"adamw\"", "\"" + o.name + "\"");
  if (!(o.lr > 0)) bad("optimizer.lr", "> 0", std::to_string(o.lr));
  if (o.clip_grad_norm < 0) bad("optimizer.clip_grad_norm", ">= 0", std::to_string(o.clip_grad_norm));
  const auto& sc = c.schedule;
  if (sc.name != "constant" && sc.name != "step" && sc.name != "cosine")
    bad("schedule.name", "\"constant\", \"step\" or \"cosine\"", "\"" + sc.name + "\"");
  if (sc.warmup_steps < 0) bad("schedule.warmup_steps", ">= 0", std::to_string(sc.warmup_steps));
  if (sc.step_size_epochs < 1) bad("schedule.step_size_epochs", ">= 1", std::to_string(sc.step_size_epochs));
  const auto& k = c.checkpoint;
  if (k.every_steps < 0) bad("checkpoint.every_steps", ">= 0", std::to_string(k.every_steps));
  if (k.keep_last < 0) bad("checkpoint.keep_last", ">= 0", std::to_string(k.keep_last));
  if (!k.best_metric.empty() && k.best_metric != "val_acc" && k.best_metric != "val_loss")
    bad("checkpoint.best_metric", "\"val_acc\", \"val_loss\" or \"\"", "\"" + k.best_metric + "\"");
  if ((k.every_steps > 0 || k.resume == "auto") && k.dir.empty())
    bad("checkpoint.dir", "a directory (every_steps or resume \"auto\" need one)", "\"\"");
  if (c.logging.log_every_steps < 0) bad("logging.log_every_steps", ">= 0", std::to_string(c.logging.log_every_steps));
  if (c.val_batch_size < 0) bad("val_batch_size", ">= 0", std::to_string(c.val_batch_size));
}

/// cuda_graph: optimizer steps run eagerly before the first capture (DDP rebuilds its
/// buckets at its second synchronised iteration; optimizer state and every first
/// allocation must exist before a capture).
constexpr int64_t kGraphWarmupSteps = 3;

/// cuda_graph: one micro-batch's work captured once, the static input and target that
/// each batch is copied into, and the loss every replay writes.
struct CapturedStep {
  cuda::Graph graph;
  Tensor input, target, loss;
};

/// cuda_graph's requirements, once the device and the process group are known.
void check_cuda_graph(const TrainerConfig& c, Device device, const comm::ProcessGroup* group) {
  if (!c.cuda_graph) return;
  const auto& s = c.strategy;
  if (s.mode == "dp")
    bad("cuda_graph", "strategy.mode \"single\" or \"ddp\" (DataParallel runs threads per device)", "\"dp\"");
  if (s.sync_bn) bad("cuda_graph", "sync_bn off (SyncBatchNorm reads its sample count on the host)", "sync_bn on");
  if (c.grad_checkpoint)
    bad("cuda_graph", "grad_checkpoint off (recomputation restores generator states on the host)", "grad_checkpoint on");
  if (s.mode == "ddp" && s.ddp.find_unused_parameters)
    bad("cuda_graph", "strategy.ddp.find_unused_parameters off (the used-parameter mask is read on the host)", "on");
  if (const std::string backend = group != nullptr ? group->backend() : "nccl"; backend != "nccl")
    bad("cuda_graph", "the nccl backend for ddp (its collectives are recorded in the graph)", "\"" + backend + "\"");
  if (!device.is_cuda()) bad("cuda_graph", "a CUDA device", device.str());
}

/// "<base>-epochs<ext>": the epoch CSV beside the step CSV.
std::string epochs_csv_path(const std::string& csv) {
  std::filesystem::path p(csv);
  return (p.parent_path() / (p.stem().string() + "-epochs" + p.extension().string())).string();
}

}  // namespace

nlohmann::json TrainerConfig::to_json() const {
  std::vector<std::string> devs;
  for (Device d : strategy.devices) devs.push_back(d.str());
  return {{"epochs", epochs},
          {"batch_size", batch_size},
          {"accumulate", accumulate},
          {"grad_checkpoint", grad_checkpoint},
          {"cuda_graph", cuda_graph},
          {"seed", seed},
          {"strategy",
           {{"mode", strategy.mode},
            {"devices", devs},
            {"backend", strategy.backend},
            {"init_method", strategy.init_method},
            {"sync_bn", strategy.sync_bn},
            {"bucket_cap_mb", strategy.ddp.bucket_cap_mb},
            {"first_bucket_cap_mb", strategy.ddp.first_bucket_cap_mb},
            {"find_unused_parameters", strategy.ddp.find_unused_parameters},
            {"gradient_as_bucket_view", strategy.ddp.gradient_as_bucket_view},
            {"broadcast_buffers", strategy.ddp.broadcast_buffers},
            {"static_graph", strategy.ddp.static_graph}}},
          {"precision",
           {{"use_amp", precision.use_amp},
            {"amp_dtype", std::string(dtype_name(precision.amp_dtype))},
            {"allow_tf32", precision.allow_tf32 ? nlohmann::json(*precision.allow_tf32) : nlohmann::json(nullptr)},
            {"init_scale", precision.scaler.init_scale},
            {"growth_interval", precision.scaler.growth_interval}}},
          {"optimizer",
           {{"name", optimizer.name},
            {"lr", optimizer.lr},
            {"momentum", optimizer.momentum},
            {"nesterov", optimizer.nesterov},
            {"betas", optimizer.betas},
            {"eps", optimizer.eps},
            {"weight_decay", optimizer.weight_decay},
            {"clip_grad_norm", optimizer.clip_grad_norm}}},
          {"schedule",
           {{"name", schedule.name},
            {"warmup_steps", schedule.warmup_steps},
            {"step_size_epochs", schedule.step_size_epochs},
            {"gamma", schedule.gamma},
            {"scale_lr_linear", schedule.scale_lr_linear}}},
          {"checkpoint",
           {{"dir", checkpoint.dir},
            {"every_steps", checkpoint.every_steps},
            {"keep_last", checkpoint.keep_last},
            {"best_metric", checkpoint.best_metric}}}};
}

nlohmann::json EpochMetrics::to_json() const {
  return {{"epoch", epoch},         {"global_step", global_step},
          {"train_loss", train_loss}, {"val_loss", val_loss},
          {"val_acc", val_acc},     {"val_samples", val_samples},
          {"lr", lr},               {"loss_scale", loss_scale},
          {"skipped_steps", skipped_steps}, {"samples_per_s", samples_per_s},
          {"epoch_seconds", seconds}, {"data_ms", data_ms},
          {"forward_ms", forward_ms}, {"backward_ms", backward_ms},
          {"comm_ms", comm_ms},     {"optimizer_ms", optimizer_ms},
          {"gpu_util_pct", gpu_util_pct}, {"gpu_memory_gib", gpu_memory_gib},
          {"gpu_power_w", gpu_power_w}, {"gpu_peak_allocated_gib", gpu_peak_allocated_gib}};
}

EpochMetrics EpochMetrics::from_json(const nlohmann::json& j) {
  EpochMetrics m;
  m.epoch = j.value("epoch", int64_t{0});
  m.global_step = j.value("global_step", int64_t{0});
  m.train_loss = j.value("train_loss", 0.0);
  m.val_loss = j.value("val_loss", 0.0);
  m.val_acc = j.value("val_acc", 0.0);
  m.val_samples = j.value("val_samples", int64_t{0});
  m.lr = j.value("lr", 0.0);
  m.loss_scale = j.value("loss_scale", 1.0);
  m.skipped_steps = j.value("skipped_steps", int64_t{0});
  m.samples_per_s = j.value("samples_per_s", 0.0);
  m.seconds = j.value("epoch_seconds", 0.0);
  m.data_ms = j.value("data_ms", 0.0);
  m.forward_ms = j.value("forward_ms", 0.0);
  m.backward_ms = j.value("backward_ms", 0.0);
  m.comm_ms = j.value("comm_ms", 0.0);
  m.optimizer_ms = j.value("optimizer_ms", 0.0);
  m.gpu_util_pct = j.value("gpu_util_pct", 0.0);
  m.gpu_memory_gib = j.value("gpu_memory_gib", 0.0);
  m.gpu_power_w = j.value("gpu_power_w", 0.0);
  m.gpu_peak_allocated_gib = j.value("gpu_peak_allocated_gib", 0.0);
  return m;
}

// ---- the trainer's working parts --------------------------------------------------------------

struct Trainer::Impl {
  std::shared_ptr<comm::ProcessGroup> group;  // ddp only
  std::shared_ptr<nn::Module> net;            // what the step calls: the model, DDP or DP
  comm::DistributedDataParallel* ddp = nullptr;
  std::vector<Tensor> params;
  std::unique_ptr<optim::Optimizer> optimizer;
  std::unique_ptr<optim::LRScheduler> schedule;
  std::unique_ptr<optim::GradScaler> scaler;
  std::unique_ptr<data::DataLoader> train_loader, val_loader;
  std::unique_ptr<MetricsWriter> jsonl;
  std::unique_ptr<CsvMetricsWriter> csv_steps, csv_epochs;
  std::unique_ptr<GpuMonitor> monitor;
  double best = std::nan("");
  int64_t global_batch = 0;  // samples per optimizer step over all ranks
  // cuda_graph: the captured work of a micro-batch that only accumulates and of one that
  // ends a step, and the optimizer steps this Trainer ran eagerly (its warm-up).
  std::unique_ptr<CapturedStep> micro_graph, step_graph;
  int64_t eager_steps = 0;

  bool reporting() const { return !group || group->rank() == 0; }
};

Trainer::Trainer(TrainerConfig config, std::shared_ptr<nn::Module> model, std::shared_ptr<const data::Dataset> train,
                 std::shared_ptr<const data::Dataset> val, std::shared_ptr<comm::ProcessGroup> group)
    : impl_(std::make_unique<Impl>()), config_(std::move(config)), model_(std::move(model)) {
  check_config(config_);
  if (!model_) throw std::invalid_argument("[Trainer] expected a model, got null");
  if (!train) throw std::invalid_argument("[Trainer] expected a training data set, got null");
  if (train->size() == 0) throw std::invalid_argument("[Trainer] expected a non-empty training set, got 0 samples");
  Impl& m = *impl_;
  const auto& s = config_.strategy;

  // ---- where this process computes ----
  if (s.mode == "ddp") {
    m.group = group ? std::move(group) : comm::init({.backend = s.backend});
    if (!s.devices.empty()) {
      device_ = s.devices[0];
    } else if (cuda::is_available()) {
      device_ = Device::cuda(comm::launch_env().local_rank % cuda::device_count());
    } else {
      device_ = Device::cpu();
    }
  } else if (s.mode == "dp") {
    device_ = s.devices[0];
  } else {
    device_ = !s.devices.empty() ? s.devices[0] : (cuda::is_available() ? Device::cuda(0) : Device::cpu());
  }
  if (device_.is_cuda()) cuda::check_device(device_.index, "Trainer");
  if (device_.is_cuda()) cuda::set_device(device_.index);
  if (config_.precision.allow_tf32) cuda::set_allow_tf32(*config_.precision.allow_tf32);
  check_cuda_graph(config_, device_, m.group.get());

  // ---- the model, wrapped for the strategy ----
  model_->to(device_);
  // Sync BN first: the checkpointed groups run the same layer objects.
  if (s.sync_bn) comm::convert_sync_batchnorm(model_, m.group);
  if (config_.grad_checkpoint && nn::enable_grad_checkpointing(*model_) == 0)
    throw std::invalid_argument("[Trainer] grad_checkpoint: expected a model with layers to checkpoint, got " +
                                model_->name() + " with none (a Sequential, or Sequential children)");
  m.net = model_;
  if (s.mode == "ddp") {
    auto ddp = std::make_shared<comm::DistributedDataParallel>(model_, m.group, s.ddp);
    m.ddp = ddp.get();
    m.net = ddp;
  } else if (s.mode == "dp") {
    m.net = std::make_shared<comm::DataParallel>(model_, s.devices);
  }
  m.params = model_->parameters();

  // ---- data ----
  const int world = world_size(), rank = this->rank();
  std::shared_ptr<const data::Sampler> train_sampler, val_sampler;
  if (m.group) {
    train_sampler = std::make_shared<data::DistributedSampler>(train->size(), world, rank,
                                                               data::DistributedSamplerOptions{.seed = config_.seed});
    if (val)
      val_sampler = std::make_shared<data::DistributedSampler>(
          val->size(), world, rank, data::DistributedSamplerOptions{.shuffle = false, .evaluation = true});
  }
  m.train_loader = std::make_unique<data::DataLoader>(
      train, data::DataLoaderOptions{.batch_size = config_.batch_size, .shuffle = true, .seed = config_.seed, .device = device_},
      train_sampler);
  if (val)
    m.val_loader = std::make_unique<data::DataLoader>(
        val,
        data::DataLoaderOptions{.batch_size = config_.val_batch_size > 0 ? config_.val_batch_size : config_.batch_size,
                                .shuffle = false,
                                .device = device_},
        val_sampler);
  m.global_batch = config_.batch_size * config_.accumulate * world;

  // ---- optimizer, schedule, scaler ----
  optim::GradScalerOptions so = config_.precision.scaler;
  so.enabled = so.enabled && config_.precision.use_amp && config_.precision.amp_dtype == DType::kF16;
  // On CUDA the scaler keeps its state and skip decisions on the device, with an
  // optimizer that skips there: no host synchronisation per step, the same results.
  so.capturable = so.enabled && (so.capturable || device_.is_cuda());
  // A captured step reads the lr (and its step counts) from the device.
  const bool capturable_optimizer = so.capturable || config_.cuda_graph;
  const auto& o = config_.optimizer;
  double lr = o.lr;
  if (config_.schedule.scale_lr_linear) lr = optim::scaled_lr(lr, world, config_.accumulate);
  if (o.name == "sgd") {
    m.optimizer = std::make_unique<optim::SGD>(
        m.params, optim::SGDOptions{.lr = lr, .momentum = o.momentum, .weight_decay = o.weight_decay,
                                    .nesterov = o.nesterov, .capturable = capturable_optimizer});
  } else if (o.name == "adam") {
    m.optimizer = std::make_unique<optim::Adam>(
        m.params, optim::AdamOptions{.lr = lr, .betas = o.betas, .eps = o.eps, .weight_decay = o.weight_decay,
                                     .capturable = capturable_optimizer});
  } else {
    m.optimizer = std::make_unique<optim::AdamW>(
        m.params, optim::AdamWOptions{.lr = lr, .betas = o.betas, .eps = o.eps, .weight_decay = o.weight_decay,
                                      .capturable = capturable_optimizer});
  }
  const int64_t micro = m.train_loader->num_batches();
  const int64_t steps_per_epoch = (micro + config_.accumulate - 1) / config_.accumulate;
  const int64_t total = steps_per_epoch * config_.epochs;
  const auto& sc = config_.schedule;
  if (sc.warmup_steps >= total && sc.name != "constant")
    bad("schedule.warmup_steps", "fewer than the run's " + std::to_string(total) + " optimizer steps",
        std::to_string(sc.warmup_steps));
  constexpr double kWarmupStart = 0.1;
  std::unique_ptr<optim::LRScheduler> after;
  if (sc.name == "step") {
    after = std::make_unique<optim::StepLR>(*m.optimizer, sc.step_size_epochs * steps_per_epoch, sc.gamma);
  } else if (sc.name == "cosine") {
    after = std::make_unique<optim::CosineAnnealingLR>(*m.optimizer, total - sc.warmup_steps);
  }
  if (sc.warmup_steps == 0) {
    m.schedule = std::move(after);
  } else if (!after) {
    m.schedule = std::make_unique<optim::LinearWarmup>(*m.optimizer, kWarmupStart, sc.warmup_steps);
  } else {
    m.schedule = std::make_unique<optim::WarmupThen>(*m.optimizer, kWarmupStart, sc.warmup_steps, std::move(after));
  }
  m.scaler = std::make_unique<optim::GradScaler>(so);

  // ---- logging ----
  if (m.reporting()) {
    const bool append = !config_.checkpoint.resume.empty();
    if (!config_.logging.jsonl.empty()) m.jsonl = std::make_unique<MetricsWriter>(config_.logging.jsonl, append);
    if (!config_.logging.csv.empty()) {
      m.csv_steps = std::make_unique<CsvMetricsWriter>(config_.logging.csv, append);
      m.csv_epochs = std::make_unique<CsvMetricsWriter>(epochs_csv_path(config_.logging.csv), append);
    }
  }
  if (config_.logging.gpu_monitor && device_.is_cuda()) m.monitor = std::make_unique<GpuMonitor>();

  // ---- resume ----
  std::string from = config_.checkpoint.resume;
  if (from == "auto") {
    auto found = list_checkpoints(config_.checkpoint.dir);
    from = found.empty() ? "" : found.back().string();
  }
  if (from.empty() && config_.checkpoint.resume.empty() && !config_.checkpoint.dir.empty()) {
    // A new run must not mix its checkpoints with another run's (keep_last would then
    // prune by step across both runs).
    auto existing = list_checkpoints(config_.checkpoint.dir);
    if (!existing.empty())
      bad("checkpoint.dir", "a directory without checkpoints for a new run (resume \"auto\" continues the run in " +
                                config_.checkpoint.dir + ")",
          "one holding " + existing.back().filename().string());
  }
  if (!from.empty()) {
    TrainingObjects objects{.model = model_.get(), .optimizer = m.optimizer.get(), .scheduler = m.schedule.get(),
                            .loader = m.train_loader.get()};
    objects.extras.push_back({"grad_scaler",
                              [&] { return nlohmann::json(m.scaler->state_dict()); },
                              [&](const nlohmann::json& j) { m.scaler->load_state_dict(j.get<optim::GradScalerState>()); }});
    TrainProgress p = load_training_checkpoint(from, objects, world);
    global_step_ = p.global_step;
    for (const auto& e : p.extra.value("history", nlohmann::json::array())) history_.push_back(EpochMetrics::from_json(e));
    if (p.extra.contains("best") && !p.extra["best"].is_null()) m.best = p.extra["best"].get<double>();
    resumed_from_ = from;
  } else {
    // Every rank starts from the same data order and random streams.
    manual_seed(config_.seed);
  }
}

Trainer::~Trainer() = default;

int Trainer::rank() const { return impl_->group ? impl_->group->rank() : 0; }
int Trainer::world_size() const { return impl_->group ? impl_->group->size() : 1; }

void Trainer::save_checkpoint(const std::string& path) {
  Impl& m = *impl_;
  if (!m.reporting()) return;
  TrainingObjects objects{.model = model_.get(), .optimizer = m.optimizer.get(), .scheduler = m.schedule.get(),
                          .loader = m.train_loader.get()};
  objects.extras.push_back({"grad_scaler", [&] { return nlohmann::json(m.scaler->state_dict()); }, nullptr});
  nlohmann::json history = nlohmann::json::array();
  for (const auto& e : history_) history.push_back(e.to_json());
  TrainProgress p{.epoch = static_cast<int64_t>(history_.size()),
                  .global_step = global_step_,
                  .world_size = world_size(),
                  .config = config_.to_json(),
                  .extra = {{"history", history}, {"best", std::isnan(m.best) ? nlohmann::json(nullptr) : nlohmann::json(m.best)}}};
  std::filesystem::create_directories(std::filesystem::path(path).parent_path().empty()
                                          ? std::filesystem::path(".")
                                          : std::filesystem::path(path).parent_path());
  save_training_checkpoint(path, objects, p);
}

EpochMetrics Trainer::validate() {
  Impl& m = *impl_;
  EpochMetrics out;
  if (!m.val_loader) return out;
  // Every rank evaluates with rank 0's batch-norm statistics.
  if (m.ddp && config_.strategy.ddp.broadcast_buffers) m.ddp->sync_buffers();
  autograd::NoGradGuard no_grad;
  // The plain model under ddp (ranks' shares differ by a batch, and the wrapper's
  // forward would take part in collectives); the DP wrapper otherwise.
  nn::Module& net = m.ddp ? *model_ : *m.net;
  net.eval();
  Tensor loss_sum = zeros({}, {.dtype = DType::kF64, .device = device_});
  Tensor correct = zeros({}, {.dtype = DType::kI64, .device = device_});
  int64_t count = 0;
  {
    AutocastGuard autocast(config_.precision.amp_dtype, config_.precision.use_amp);
    for (data::Batch& b : *m.val_loader) {
      Tensor logits = net.forward(b.input);
      loss_sum = loss_sum + prediction_loss(logits, b.target, Reduction::kSum).to(DType::kF64);
      correct = correct + correct_predictions(logits, b.target);
      count += b.target.numel();
    }
  }
  net.train();
  comm::MetricSums sums{loss_sum.item(), static_cast<int64_t>(correct.item()), count};
  if (m.group) sums = comm::all_reduce_metrics(*m.group, sums, device_);
  out.val_loss = sums.mean_loss();
  out.val_acc = sums.accuracy();
  out.val_samples = sums.count;
  return out;
}

const std::vector<EpochMetrics>& Trainer::fit() {
  Impl& m = *impl_;
  const auto& cfg = config_;
  const bool amp = cfg.precision.use_amp;
  const bool sync_times = cfg.logging.exact_step_times && device_.is_cuda();
  auto phase_end = [&] {
    if (sync_times) cuda::synchronize(device_.index);
  };
  Progress progress({.out = (m.reporting() && cfg.logging.progress) ? cfg.logging.out : nullptr,
                     .log_every = std::max<int64_t>(cfg.logging.progress_every, 1),
                     .terminal = cfg.logging.terminal});
  // Reading the loss synchronises a GPU: on CUDA check it every 20 micro-batches.
  const int64_t check_every = device_.is_cuda() ? 20 : 1;
  // The loss of this micro-batch; every rank stops together when any rank's is not
  // finite (one small all-reduce), so no rank is left waiting in a collective.
  auto checked_loss = [&](const Tensor& loss, int64_t epoch, int64_t position) {
    const double v = loss.item();
    double bad_ranks = std::isfinite(v) ? 0.0 : 1.0;
    if (m.group) bad_ranks = comm::all_reduce_sums(*m.group, {bad_ranks}, device_)[0];
    if (bad_ranks > 0) {
      throw TrainingDiverged("[Trainer] the loss became " + (std::isfinite(v) ? std::string("non-finite on another rank") : std::to_string(v)) +
                             " at epoch " + std::to_string(epoch + 1) + ", batch " + std::to_string(position) +
                             " (optimizer step " + std::to_string(global_step_) +
                             "): stopping. Try a lower learning rate, gradient clipping (clip_grad_norm), "
                             "warm-up, or bf16 instead of fp16");
    }
    return v;
  };
  auto save_step_checkpoint = [&] {
    save_checkpoint((std::filesystem::path(cfg.checkpoint.dir) / ("ckpt-" + std::to_string(global_step_) + ".tck")).string());
    if (!m.reporting() || cfg.checkpoint.keep_last == 0) return;
    auto all = list_checkpoints(cfg.checkpoint.dir);
    for (size_t i = 0; i + static_cast<size_t>(cfg.checkpoint.keep_last) < all.size(); ++i)
      std::filesystem::remove(all[i]);
  };

  while (static_cast<int64_t>(history_.size()) < cfg.epochs) {
    const int64_t epoch = static_cast<int64_t>(history_.size());
    // A resumed run continues inside its epoch; otherwise the loader is at this epoch's start.
    if (m.train_loader->epoch() != epoch) m.train_loader->set_epoch(epoch);
    const int64_t micro_total = m.train_loader->num_batches();
    progress.start_epoch(epoch, cfg.epochs, micro_total);
    const int64_t skipped_before = m.scaler->skipped_steps();
    // Sums over this rank's optimizer steps of the epoch (ms), and loss sum/count.
    double data_ms = 0, fwd_ms = 0, bwd_ms = 0, comm_ms = 0, opt_ms = 0, loss_sum = 0;
    int64_t loss_count = 0, steps = 0, samples = 0;
    double last_loss = std::nan("");
    const auto epoch_start = Clock::now();
    int64_t in_group = 0;  // micro-batches accumulated toward the next step
    const bool graph_mode = cfg.cuda_graph;
    // One micro-batch's forward, loss and backward (DDP all-reduces only when sync_step);
    // `timed` adds the phase times (not in a capture, where nothing runs).
    auto forward_backward = [&](const Tensor& input, const Tensor& target, bool sync_step, bool timed) {
      auto t = Clock::now();
      std::optional<comm::DistributedDataParallel::NoSyncGuard> no_sync;
      if (m.ddp && !sync_step) no_sync.emplace(*m.ddp);
      Tensor loss;
      {
        AutocastGuard autocast(cfg.precision.amp_dtype, amp);
        loss = prediction_loss(m.net->forward(input), target);
      }
      if (timed) {
        phase_end();
        fwd_ms += ms_since(t);
        t = Clock::now();
      }
      const Tensor share = cfg.accumulate > 1
                               ? mul(loss, scalar_tensor(1.0 / cfg.accumulate, {.dtype = loss.dtype(), .device = loss.device()}))
                               : loss;
      m.scaler->scale(share).backward();
      if (timed) {
        phase_end();
        const double b = ms_since(t);
        const double exposed = (m.ddp && sync_step) ? m.ddp->last_iteration_stats().exposed_comm_s * 1e3 : 0.0;
        bwd_ms += b - exposed;
        comm_ms += exposed;
      }
      return loss;
    };
    // The optimizer step that ends a group of micro-batches (the schedule steps after it,
    // on the host, also between graph replays).
    auto optimizer_step = [&] {
      if (cfg.optimizer.clip_grad_norm > 0) {
        m.scaler->unscale(*m.optimizer);
        // The norm stays on the device: clipping costs no host synchronisation.
        (void)optim::clip_grad_norm_on_device(m.params, cfg.optimizer.clip_grad_norm);
      }
      m.scaler->step(*m.optimizer);
      m.scaler->update();
      // cuda_graph: zeroed in place, so captured work keeps accumulating into the same memory.
      m.optimizer->zero_grad(/*set_to_none=*/!graph_mode);
    };
    // cuda_graph: the captured work for this micro-batch, captured at its first use after
    // the warm-up from a full batch; null runs it eagerly (warm-up, a smaller last batch).
    auto graph_for = [&](const data::Batch& batch, bool sync_step) -> CapturedStep* {
      if (m.eager_steps < kGraphWarmupSteps) return nullptr;
      std::unique_ptr<CapturedStep>& slot = sync_step ? m.step_graph : m.micro_graph;
      if (slot) {
        const bool same = batch.input.shape() == slot->input.shape() && batch.target.shape() == slot->target.shape();
        return same ? slot.get() : nullptr;
      }
      if (batch.input.size(0) != cfg.batch_size) return nullptr;
      for (const auto& [name, p] : model_->named_parameters()) {
        if (p.requires_grad() && !p.grad().defined())
          throw std::runtime_error("[Trainer] cuda_graph: expected every trainable parameter to get a gradient, got "
                                   "none for '" + name + "' after " + std::to_string(m.eager_steps) +
                                   " steps (replayed steps zero gradients in place, so an unused parameter would "
                                   "still be stepped); freeze it (requires_grad false) or train without cuda_graph");
      }
      auto c = std::make_unique<CapturedStep>();
      c->input = empty_like(batch.input);
      c->target = empty_like(batch.target);
      cuda::synchronize(device_.index);
      // A capture that failed is abandoned (the first error is the one reported); the
      // run ends with the error, host state such as the scaler's part-way through a step.
      auto abandon = [&] {
        if (!cuda::current_stream(device_.index).is_capturing()) return;
        try {
          c->graph.capture_end();
        } catch (const std::exception&) {
        }
      };
      try {
        c->graph.capture_begin();
        c->loss = forward_backward(c->input, c->target, sync_step, false);
        if (sync_step) optimizer_step();
        c->graph.capture_end();
      } catch (const cuda::OutOfMemoryError&) {
        abandon();
        throw;  // the loop's handler names the batch and what to do
      } catch (const std::exception& e) {
        abandon();
        throw std::runtime_error(std::string("[Trainer] cuda_graph: capturing the training step failed: ") + e.what() +
                                 " (a graph replays device work only: a step that reads values on the host cannot be "
                                 "captured; train without cuda_graph)");
      }
      slot = std::move(c);
      return slot.get();
    };
    auto data_start = Clock::now();
    // A step checkpoint taken at the epoch's last batch (checkpoint.every_steps dividing
    // the epoch) resumes with every batch handed out: straight to the epoch's end, where
    // the loader's begin() would start the next epoch's batches as this one's.
    if (m.train_loader->position() < micro_total) {
      for (data::Batch& batch : *m.train_loader) {
        const int64_t position = m.train_loader->position();  // 1-based index of this micro-batch
        data_ms += ms_since(data_start);
        ++in_group;
        const bool last_of_epoch = position == micro_total;
        const bool sync_step = in_group == cfg.accumulate || last_of_epoch;
        Tensor loss;
        try {
          CapturedStep* replayed = graph_mode ? graph_for(batch, sync_step) : nullptr;
          if (replayed != nullptr) {
            const auto t = Clock::now();
            replayed->input.copy_(batch.input);
            replayed->target.copy_(batch.target);
            replayed->graph.replay();
            loss = replayed->loss;
            phase_end();
            fwd_ms += ms_since(t);
          } else {
            loss = forward_backward(batch.input, batch.target, sync_step, true);
            if (sync_step) {
              const auto t = Clock::now();
              optimizer_step();
              phase_end();
              opt_ms += ms_since(t);
              ++m.eager_steps;
            }
          }
          if (sync_step) {
            if (m.schedule) m.schedule->step();
            ++steps;
            ++global_step_;
            in_group = 0;
          }
        } catch (const cuda::OutOfMemoryError& e) {
          throw std::runtime_error(std::string(e.what()) + ". The batch per device is " +
                                   std::to_string(cfg.strategy.mode == "dp"
                                                      ? (cfg.batch_size + static_cast<int64_t>(cfg.strategy.devices.size()) - 1) /
                                                            static_cast<int64_t>(cfg.strategy.devices.size())
                                                      : cfg.batch_size) +
                                   " samples: use a smaller batch, or keep the global batch with gradient accumulation "
                                   "(accumulate > 1), bf16/fp16 precision or activation checkpointing");
        }
        samples += batch.target.size(0);  // sequences, for a sequence model
        if (position % check_every == 0 || last_of_epoch) {
          last_loss = checked_loss(loss, epoch, position);
          loss_sum += last_loss;
          ++loss_count;
        }
        progress.update(position, last_loss, batch.target.size(0) * world_size());
        if (sync_step && cfg.logging.log_every_steps > 0 && global_step_ % cfg.logging.log_every_steps == 0) {
          // Every rank takes part (the condition is the same on all): the record holds
          // the epoch-so-far sums and counts of all ranks, not rank 0's alone.
          std::vector<double> s = {loss_sum, static_cast<double>(loss_count), data_ms, fwd_ms, bwd_ms, comm_ms, opt_ms,
                                   static_cast<double>(steps)};
          if (m.group) s = comm::all_reduce_sums(*m.group, s, device_);
          const double n = std::max(s[7], 1.0);
          if (m.reporting()) {
            MetricRecord r = {{"kind", std::string("step")},
                              {"step", global_step_},
                              {"epoch", epoch + 1},
                              {"loss", s[1] > 0 ? s[0] / s[1] : std::nan("")},
                              {"lr", m.optimizer->lr()},
                              {"loss_scale", m.scaler->get_scale()},
                              {"samples_per_s", progress.samples_per_second()},
                              {"data_ms", s[2] / n},
                              {"forward_ms", s[3] / n},
                              {"backward_ms", s[4] / n},
                              {"comm_ms", s[5] / n},
                              {"optimizer_ms", s[6] / n}};
            if (m.jsonl) m.jsonl->write(r);
            if (m.csv_steps) m.csv_steps->write(r);
          }
        }
        if (sync_step && cfg.checkpoint.every_steps > 0 && global_step_ % cfg.checkpoint.every_steps == 0)
          save_step_checkpoint();
        data_start = Clock::now();
      }
    }
    if (device_.is_cuda()) cuda::synchronize(device_.index);
    const double seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();

    // ---- end of epoch: metrics over all ranks, validation, checkpoints ----
    std::vector<double> sums = {loss_sum, static_cast<double>(loss_count), data_ms, fwd_ms, bwd_ms, comm_ms, opt_ms,
                                static_cast<double>(steps), static_cast<double>(samples)};
    if (m.group) sums = comm::all_reduce_sums(*m.group, sums, device_);
    EpochMetrics e = validate();
    e.epoch = epoch + 1;
    e.global_step = global_step_;
    e.train_loss = sums[1] > 0 ? sums[0] / sums[1] : std::nan("");
    const double rank_steps = std::max(sums[7], 1.0);
    e.data_ms = sums[2] / rank_steps;
    e.forward_ms = sums[3] / rank_steps;
    e.backward_ms = sums[4] / rank_steps;
    e.comm_ms = sums[5] / rank_steps;
    e.optimizer_ms = sums[6] / rank_steps;
    e.samples_per_s = sums[8] / std::max(seconds, 1e-9);
    e.seconds = seconds;
    e.lr = m.optimizer->lr();
    e.loss_scale = m.scaler->get_scale();
    e.skipped_steps = m.scaler->skipped_steps() - skipped_before;
    if (m.monitor && m.monitor->available()) {
      for (const GpuSample& g : m.monitor->sample()) {
        if (g.device != device_.index) continue;
        e.gpu_util_pct = g.utilization_pct;
        e.gpu_memory_gib = static_cast<double>(g.memory_used_bytes) / (1 << 30);
        e.gpu_power_w = g.power_w;
        e.gpu_peak_allocated_gib = static_cast<double>(g.allocator_peak_bytes) / (1 << 30);
      }
    }
    history_.push_back(e);
    if (m.reporting()) {
      char summary[256];
      std::snprintf(summary, sizeof(summary),
                    "epoch %lld/%lld  train_loss %.4f  val_loss %.4f  val_acc %.4f  lr %.3g  %.0f samples/s  %s",
                    static_cast<long long>(e.epoch), static_cast<long long>(cfg.epochs), e.train_loss, e.val_loss,
                    e.val_acc, e.lr, e.samples_per_s, format_duration(seconds).c_str());
      progress.end_epoch(summary);
      MetricRecord r = {{"kind", std::string("epoch")},
                        {"epoch", e.epoch},
                        {"step", e.global_step},
                        {"train_loss", e.train_loss},
                        {"val_loss", e.val_loss},
                        {"val_acc", e.val_acc},
                        {"val_samples", e.val_samples},
                        {"lr", e.lr},
                        {"loss_scale", e.loss_scale},
                        {"skipped_steps", e.skipped_steps},
                        {"samples_per_s", e.samples_per_s},
                        {"epoch_seconds", e.seconds},
                        {"data_ms", e.data_ms},
                        {"forward_ms", e.forward_ms},
                        {"backward_ms", e.backward_ms},
                        {"comm_ms", e.comm_ms},
                        {"optimizer_ms", e.optimizer_ms},
                        {"gpu_util_pct", e.gpu_util_pct},
                        {"gpu_memory_gib", e.gpu_memory_gib},
                        {"gpu_power_w", e.gpu_power_w},
                        {"gpu_peak_allocated_gib", e.gpu_peak_allocated_gib}};
      if (m.jsonl) m.jsonl->write(r);
      if (m.csv_epochs) m.csv_epochs->write(r);
    }
    const bool improved = [&] {
      if (cfg.checkpoint.best_metric.empty() || !m.val_loader) return false;
      const double v = cfg.checkpoint.best_metric == "val_acc" ? e.val_acc : e.val_loss;
      const bool better = std::isnan(m.best) || (cfg.checkpoint.best_maximize == (cfg.checkpoint.best_metric == "val_acc")
                                                     ? v > m.best
                                                     : v < m.best);
      if (better) m.best = v;
      return better;
    }();
    if (!cfg.checkpoint.dir.empty()) {
      if (cfg.checkpoint.at_epoch_end) save_step_checkpoint();
      if (improved) save_checkpoint((std::filesystem::path(cfg.checkpoint.dir) / "best.tck").string());
    }
  }
  return history_;
}

}  // namespace tandem::train
