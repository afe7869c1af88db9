// DataParallel: scatter along dim 0, replicas on host threads, gather; the backward
// reduce-add falls out of ordinary autograd accumulation (see data_parallel.h).
//
// What runs concurrently, and why it is safe: every graph node a replica creates
// belongs to that replica's thread until the forward returns (sequence numbers come
// from an atomic counter; grad mode is thread-local and set per worker). Everything
// the threads share is prepared on the caller's thread before they start: the input
// chunks (each its own view and node), the parameter copies and their edges into the
// module's grad accumulators (created here, so no two threads race to create one),
// and the replica buffers. Replica 0 is the only thread that touches the module's own
// parameters and buffers. The host and CUDA caching allocators, the default
// generators and the cuBLAS/cuDNN handle pools are locked or per-thread.
#include "comm/data_parallel.h"

#include <chrono>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/dispatch.h"
#include "engine/ops/shape.h"

namespace tandem::comm {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// Throws unless `device` exists in this process (the CPU always does).
void check_device_exists(Device device, const std::string& what) {
  if (!device.is_cuda()) return;
  const int count = cuda::device_count();
  if (device.index < 0 || device.index >= count) {
    std::string msg = "[DataParallel] expected " + what + " that exists (cpu";
    msg += count > 0 ? " or cuda:0..cuda:" + std::to_string(count - 1) : std::string(", no CUDA device can be used");
    msg += "), got " + device.str();
    throw std::invalid_argument(msg);
  }
}

}  // namespace

DataParallel::DataParallel(std::shared_ptr<nn::Module> module, std::vector<Device> devices,
                           std::optional<Device> output_device)
    : module_(std::move(module)), devices_(std::move(devices)) {
  if (!module_) throw std::invalid_argument("[DataParallel] expected a module to wrap, got null");
  if (devices_.empty()) {
    const int count = cuda::device_count();
    if (count == 0) {
      throw std::invalid_argument(
          "[DataParallel] expected at least one device, got none: devices = {} means every CUDA device, and none "
          "can be used (" + cuda::unavailable_reason() + "); pass devices explicitly, e.g. {Device::cpu(), "
          "Device::cpu()}");
    }
    for (int i = 0; i < count; ++i) devices_.push_back(Device::cuda(i));
  }
  for (size_t k = 0; k < devices_.size(); ++k) {
    if (devices_[k].type != devices_[0].type) {
      throw std::invalid_argument("[DataParallel] expected devices of one type, got devices[0] = " +
                                  devices_[0].str() + " and devices[" + std::to_string(k) + "] = " +
                                  devices_[k].str());
    }
    check_device_exists(devices_[k], "devices[" + std::to_string(k) + "] to be a device");
  }
  output_device_ = output_device.value_or(devices_[0]);
  check_device_exists(output_device_, "an output device");
  register_module("module", module_);
  check_module_placement();
  // Cloning up front reports a module without clone() at construction, not at the
  // first forward.
  ensure_replicas(devices_.size());
}

void DataParallel::check_module_placement() const {
  auto check = [&](const std::vector<std::pair<std::string, Tensor>>& tensors, const char* kind) {
    for (const auto& [name, t] : tensors) {
      if (!(t.device() == devices_[0])) {
        throw std::invalid_argument("[DataParallel] expected every parameter and buffer of the module on devices[0] = " +
                                    devices_[0].str() + " (replica 0 is the module itself), got " + kind + " \"" +
                                    name + "\" on " + t.device().str() + "; move the module there first");
      }
    }
  };
  check(module_->named_parameters(), "parameter");
  check(module_->named_buffers(), "buffer");
}

std::vector<DataParallel::TensorSignature> DataParallel::signature() const {
  std::vector<TensorSignature> out;
  for (const Tensor& t : module_->parameters()) out.push_back({t.impl(), t.shape(), t.dtype(), t.device()});
  for (const Tensor& t : module_->buffers()) out.push_back({t.impl(), t.shape(), t.dtype(), t.device()});
  return out;
}

void DataParallel::ensure_replicas(size_t count) {
  std::vector<TensorSignature> current = signature();
  if (current != replica_signature_) {
    replicas_.clear();
    replica_signature_ = std::move(current);
  }
  if (replicas_.size() < count) replicas_.resize(count);
  for (size_t k = 1; k < count; ++k) {
    if (replicas_[k]) continue;
    std::shared_ptr<nn::Module> replica = module_->clone();
    replica->to(devices_[k]);
    replicas_[k] = std::move(replica);
  }
}

void DataParallel::bind_replica(size_t k) {
  nn::Module& replica = *replicas_[k];
  const Device device = devices_[k];
  std::vector<Tensor> sources = module_->parameters();
  std::vector<Tensor> targets = replica.parameters();
  for (size_t i = 0; i < sources.size(); ++i) {
    // A recorded copy (clone on the same device, `to` across devices): its backward
    // carries the replica's gradient back to the module's parameter, where autograd
    // sums it with every other replica's. Under the caller's grad mode, so an
    // evaluation under NoGradGuard records nothing.
    const Tensor& source = sources[i];
    Tensor copy = source.device() == device ? source.clone() : source.to(device);
    autograd::alias_with_history(targets[i], copy);
  }
  std::vector<Tensor> source_buffers = module_->buffers();
  std::vector<Tensor> target_buffers = replica.buffers();
  for (size_t i = 0; i < source_buffers.size(); ++i) target_buffers[i].copy_(source_buffers[i]);
  // Training flags, per module: parents first, so a child that differs from its
  // parent is fixed after the parent's train() has recursed over it.
  auto source_modules = module_->named_modules();
  auto target_modules = replica.named_modules();
  for (size_t i = 0; i < source_modules.size(); ++i) {
    const bool on = source_modules[i].second->is_training();
    if (target_modules[i].second->is_training() != on) target_modules[i].second->train(on);
  }
}

Tensor DataParallel::forward(const Tensor& input) {
  stats_ = {};
  check_defined("DataParallel", input, "input");
  if (input.dim() < 1 || input.size(0) == 0) {
    throw std::invalid_argument("[DataParallel] expected an input with at least one row along dim 0 to scatter, got "
                                "shape " + shape_str(input.shape()));
  }
  check_module_placement();

  // ---- scatter: chunks of ceil(B/n) rows, fewer chunks when B < n ----
  Clock::time_point start = Clock::now();
  std::vector<Tensor> chunks = chunk(input, static_cast<int64_t>(devices_.size()), 0);
  const size_t count = chunks.size();
  for (size_t k = 0; k < count; ++k) chunks[k] = chunks[k].to(devices_[k]);
  stats_.scatter_s = seconds_since(start);
  stats_.replicas = static_cast<int>(count);

  // ---- replicate ----
  start = Clock::now();
  ensure_replicas(count);
  for (size_t k = 1; k < count; ++k) bind_replica(k);
  stats_.replicate_s = seconds_since(start);

  // ---- parallel apply ----
  start = Clock::now();
  // Workers queue their kernels on the caller's current streams, so the gather (and
  // anything the caller queued before) is ordered with them without extra events.
  std::vector<cuda::Stream> streams(count);
  for (size_t k = 0; k < count; ++k) {
    dispatch_device(
        "DataParallel", devices_[k], [] {}, [&](auto) { streams[k] = cuda::current_stream(devices_[k].index); });
  }
  const bool grad_on = autograd::grad_enabled();
  std::vector<Tensor> outputs(count);
  std::vector<std::exception_ptr> errors(count);
  auto run = [&](size_t k) {
    try {
      autograd::GradModeGuard grad_mode(grad_on);  // grad mode is per thread
      nn::Module& replica = k == 0 ? *module_ : *replicas_[k];
      dispatch_device(
          "DataParallel", devices_[k], [&] { outputs[k] = replica.forward(chunks[k]); },
          [&](auto) {
            cuda::StreamGuard stream_guard(streams[k]);
            outputs[k] = replica.forward(chunks[k]);
          });
    } catch (...) {
      errors[k] = std::current_exception();
    }
  };
  {
    // Replica 0 runs on the caller's thread, each other replica on a thread of its own.
    std::vector<std::thread> threads;
    threads.reserve(count);
    try {
      for (size_t k = 1; k < count; ++k) threads.emplace_back(run, k);
    } catch (...) {
      for (std::thread& t : threads) t.join();
      throw;
    }
    run(0);
    for (std::thread& t : threads) t.join();
  }
  stats_.apply_s = seconds_since(start);
  // The lowest failing replica's error, so the report does not depend on timing.
  for (size_t k = 0; k < count; ++k) {
    if (!errors[k]) continue;
    const std::string where = "[DataParallel] replica " + std::to_string(k) + " on " + devices_[k].str() + " failed: ";
    try {
      std::rethrow_exception(errors[k]);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(where + e.what());
    } catch (const std::exception& e) {
      throw std::runtime_error(where + e.what());
    }
  }

  // ---- gather: differentiable copies and a cat, whose backward is the scatter ----
  start = Clock::now();
  for (size_t k = 0; k < count; ++k) {
    if (!outputs[k].defined() || outputs[k].dim() < 1) {
      throw std::invalid_argument("[DataParallel] expected replica outputs with a batch dim to gather along, got " +
                                  std::string(outputs[k].defined() ? "shape " + shape_str(outputs[k].shape())
                                                                   : "an undefined tensor") +
                                  " from replica " + std::to_string(k));
    }
    outputs[k] = outputs[k].to(output_device_);
  }
  Tensor out = count == 1 ? outputs[0] : cat(outputs, 0);
  stats_.gather_s = seconds_since(start);
  return out;
}

}  // namespace tandem::comm
