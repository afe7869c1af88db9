// Sequential and ModuleDict containers.
#include "layers/sequential.h"

#include <algorithm>
#include <optional>
#include <typeinfo>
#include <stdexcept>
#include <string>

#include "layers/activation.h"
#include "layers/checkpoint.h"
#include "layers/linear.h"

namespace tandem::nn {

Sequential::Sequential(std::initializer_list<std::shared_ptr<Module>> modules) {
  for (const auto& m : modules) push_back(m);
}

void Sequential::push_back(std::shared_ptr<Module> module) {
  add_child(std::to_string(modules_.size()), module);
  modules_.push_back(std::move(module));
}

namespace {

/// The activation a Linear followed by `next` can fuse into its epilogue: `next` must be
/// exactly an nn::ReLU or nn::GELU (a subclass may do something else in forward).
std::optional<Activation> fusable_activation(const Module& next) {
  if (typeid(next) == typeid(ReLU)) return Activation::kRelu;
  if (typeid(next) == typeid(GELU))
    return static_cast<const GELU&>(next).tanh_approximation() ? Activation::kGeluTanh : Activation::kGelu;
  return std::nullopt;
}

}  // namespace

Tensor Sequential::forward(const Tensor& input) {
  Tensor x = input;
  const auto& run = segments_.empty() ? modules_ : segments_;
  for (size_t i = 0; i < run.size(); ++i) {
    Module& m = *run[i];
    if (fuse_activations_ && segments_.empty() && i + 1 < run.size() && typeid(m) == typeid(Linear)) {
      if (const auto act = fusable_activation(*run[i + 1])) {
        x = static_cast<Linear&>(m).forward(x, *act);
        ++i;  // the activation ran in the Linear's epilogue
        continue;
      }
    }
    x = m.forward(x);
  }
  return x;
}

void Sequential::set_fuse_activations(bool on) {
  fuse_activations_ = on;
  for (const auto& segment : segments_) {
    // A segment is a Sequential group, or a Checkpointed around one.
    auto group = std::dynamic_pointer_cast<Sequential>(segment);
    if (auto* ckpt = dynamic_cast<Checkpointed*>(segment.get())) group = std::dynamic_pointer_cast<Sequential>(ckpt->module());
    if (group) group->set_fuse_activations(on);
  }
}

void Sequential::set_checkpoint_segments(int64_t segments) {
  if (segments < 0)
    throw std::invalid_argument("[Sequential] checkpoint segments: expected >= 0, got " + std::to_string(segments));
  segments_.clear();
  const auto n = static_cast<int64_t>(modules_.size());
  segments = std::min(segments, n);
  int64_t start = 0;
  for (int64_t s = 0; s < segments; ++s) {
    // Sizes n/segments, the first n % segments of them one larger.
    const int64_t len = n / segments + (s < n % segments ? 1 : 0);
    auto group = std::make_shared<Sequential>();
    group->fuse_activations_ = fuse_activations_;
    for (int64_t i = start; i < start + len; ++i) group->push_back(modules_[static_cast<size_t>(i)]);
    start += len;
    // The last segment runs plainly: backward needs its activations first, so
    // recomputing them would save nothing.
    std::shared_ptr<Module> segment = group;
    if (s + 1 < segments) segment = std::make_shared<Checkpointed>(group);
    segment->train(is_training());
    segments_.push_back(std::move(segment));
  }
}

void Sequential::train(bool on) {
  Module::train(on);
  for (const auto& s : segments_) s->train(on);
}

std::shared_ptr<Module> Sequential::clone() const {
  // Any modules can be held, so the copy is made of the children's own clones.
  return clone_via([this] {
    auto copy = std::make_shared<Sequential>();
    copy->fuse_activations_ = fuse_activations_;
    for (const auto& m : modules_) copy->push_back(m->clone());
    return copy;
  });
}

std::shared_ptr<Module> ModuleDict::clone() const {
  return clone_via([this] {
    auto copy = std::make_shared<ModuleDict>();
    for (const auto& [key, m] : named_children()) copy->insert(key, m->clone());
    return copy;
  });
}

}  // namespace tandem::nn
