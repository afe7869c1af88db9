// Models, data and the single-process reference shared by the DDP tests (CPU in
// test_comm_ddp.cpp, CUDA in test_cuda_ddp.cpp): N ranks with batch B each must end
// 5 SGD-momentum steps with the state of one process trained on the batch N·B.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/ddp.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "layers/activation.h"
#include "layers/linear.h"
#include "layers/models/cnn.h"
#include "layers/models/gpt.h"
#include "layers/models/mlp.h"
#include "optim/sgd.h"
#include "test_util.h"

namespace tandem::comm::ddp_test {

constexpr int kSteps = 5;
constexpr int64_t kBatch = 4;  // per rank
constexpr double kTol = 1e-5;

// ---- models --------------------------------------------------------------------------

/// fc1 -> relu -> fc2, plus `unused`, a layer the forward never touches.
class UnusedBranch : public nn::Module {
 public:
  UnusedBranch() {
    fc1_ = register_module("fc1", std::make_shared<nn::Linear>(6, 8));
    unused_ = register_module("unused", std::make_shared<nn::Linear>(8, 8));
    fc2_ = register_module("fc2", std::make_shared<nn::Linear>(8, 3));
  }
  Tensor forward(const Tensor& x) override { return fc2_->forward(relu(fc1_->forward(x))); }

 private:
  std::shared_ptr<nn::Linear> fc1_, unused_, fc2_;
};

/// Two layers of equal shape registered as (a, b) and applied in an order chosen per
/// instance, so ranks can observe different gradient-ready orders.
class Swappable : public nn::Module {
 public:
  explicit Swappable(bool a_first) : a_first_(a_first) {
    a_ = register_module("a", std::make_shared<nn::Linear>(16, 16));
    b_ = register_module("b", std::make_shared<nn::Linear>(16, 16));
    head_ = register_module("head", std::make_shared<nn::Linear>(16, 16));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = a_first_ ? b_->forward(relu(a_->forward(x))) : a_->forward(relu(b_->forward(x)));
    return head_->forward(relu(h));
  }

 private:
  bool a_first_;
  std::shared_ptr<nn::Linear> a_, b_, head_;
};

/// kGPT: a two-block GPT on token sequences (its head shares the embedding's weight).
enum class Kind { kMLP, kCNN, kUnused, kGPT };

inline const char* kind_name(Kind k) {
  return k == Kind::kMLP ? "MLP" : k == Kind::kCNN ? "CNN" : k == Kind::kGPT ? "GPT" : "UnusedBranch";
}

inline Shape sample_shape(Kind k) {
  if (k == Kind::kCNN) return {1, 8, 8};
  if (k == Kind::kUnused) return {6};
  return {12};
}
inline int64_t num_classes(Kind k) { return k == Kind::kUnused ? 3 : k == Kind::kGPT ? 11 : 5; }
constexpr int64_t kGptSequence = 6;

inline std::shared_ptr<nn::Module> make_model(Kind k, uint64_t seed) {
  manual_seed(seed);
  if (k == Kind::kCNN) return std::make_shared<nn::models::CNN>(nn::models::CNNOptions{.in_channels = 1, .num_classes = 5, .image_size = 8, .hidden = 16});
  if (k == Kind::kUnused) return std::make_shared<UnusedBranch>();
  if (k == Kind::kGPT)
    return std::make_shared<nn::models::GPT>(nn::models::GPTOptions{
        .vocab_size = num_classes(k), .block_size = kGptSequence, .n_layer = 2, .n_head = 2, .n_embd = 8});
  return std::make_shared<nn::models::MLP>(nn::models::MLPOptions{.in = 12, .hidden = {16, 16}, .out = 5});
}

/// Step s's global batch (world·per_rank samples) and labels.
struct Batch {
  Tensor x, y;
};
inline Batch global_batch(Kind k, int step, int64_t n, Device device = Device::cpu()) {
  if (k == Kind::kGPT) {
    const uint64_t seed = 1000 + static_cast<uint64_t>(step);
    return {tandem::testing::random_indices({n, kGptSequence}, num_classes(k), seed, device),
            tandem::testing::random_indices({n, kGptSequence}, num_classes(k), seed + 1000, device)};
  }
  Shape shape = sample_shape(k);
  shape.insert(shape.begin(), n);
  return {tandem::testing::random_tensor(shape, 1000 + static_cast<uint64_t>(step), DType::kF32, device, -1.0, 1.0),
          tandem::testing::random_indices({n}, num_classes(k), 2000 + static_cast<uint64_t>(step), device)};
}

/// Cross-entropy of the model's output; for the GPT, the mean over every position.
inline Tensor loss_of(Kind k, const Tensor& out, const Tensor& y) {
  if (k == Kind::kGPT) return cross_entropy(reshape(out, {-1, out.size(-1)}), reshape(y, {-1}));
  return cross_entropy(out, y);
}

inline Tensor rows(const Tensor& t, int64_t start, int64_t n) { return t.narrow(0, start, n).clone(); }

inline optim::SGDOptions sgd_options() { return {.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3}; }

/// Parameters and buffers of a module as host f64 copies, by name.
inline std::vector<std::pair<std::string, Tensor>> snapshot(nn::Module& m) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [name, t] : m.state_dict()) out.emplace_back(name, t.to(DType::kF64).clone());
  return out;
}

inline void expect_same_state(const std::vector<std::pair<std::string, Tensor>>& got,
                              const std::vector<std::pair<std::string, Tensor>>& want, const std::string& what,
                              double tol = kTol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first) << what;
    const Tensor& w = want[i].second;
    if (w.numel() == 0) continue;
    if (w.dim() == 0 || !is_floating(want[i].second.dtype())) {
      EXPECT_TRUE(tandem::testing::all_close(got[i].second, w, 0.0, 0.0)) << what << " " << got[i].first;
      continue;
    }
    EXPECT_LE(tandem::testing::relative_error(got[i].second, w), tol) << what << " " << got[i].first;
  }
}

/// One process, global batches. With `per_rank_bn`, batch norm sees each rank's chunk
/// separately and keeps rank 0's running statistics, as plain BatchNorm under DDP
/// with broadcast_buffers does.
inline std::vector<std::pair<std::string, Tensor>> reference(Kind k, int world, bool per_rank_bn,
                                                            Device device = Device::cpu()) {
  auto model = make_model(k, 7);
  model->to(device);
  optim::SGD opt(model->parameters(), sgd_options());
  for (int s = 0; s < kSteps; ++s) {
    Batch b = global_batch(k, s, world * kBatch, device);
    opt.zero_grad();
    if (!per_rank_bn) {
      loss_of(k, model->forward(b.x), b.y).backward();
    } else {
      nn::StateDict after_rank0;
      for (int r = 0; r < world; ++r) {
        Tensor loss = loss_of(k, model->forward(rows(b.x, r * kBatch, kBatch)), rows(b.y, r * kBatch, kBatch));
        mul(loss, scalar_tensor(1.0 / world)).backward();
        if (r == 0) after_rank0 = snapshot(*model);
      }
      nn::StateDict buffers;
      for (auto& [name, t] : after_rank0)
        for (auto& [bname, bt] : model->named_buffers())
          if (name == bname) buffers.emplace_back(name, t);
      model->load_state_dict(buffers, /*strict=*/false);
    }
    opt.step();
  }
  return snapshot(*model);
}

/// Rank `rank`'s side of the same training under DDP.
inline std::vector<std::pair<std::string, Tensor>> ddp_train(Kind k, std::shared_ptr<nn::Module> model,
                                                             std::shared_ptr<ProcessGroup> pg, const DDPOptions& options,
                                                             Device device = Device::cpu()) {
  const int world = pg->size(), rank = pg->rank();
  model->to(device);
  DistributedDataParallel ddp(model, pg, options);
  optim::SGD opt(ddp.parameters(), sgd_options());
  for (int s = 0; s < kSteps; ++s) {
    Batch b = global_batch(k, s, world * kBatch, device);
    opt.zero_grad();
    Tensor loss = loss_of(k, ddp.forward(rows(b.x, rank * kBatch, kBatch)), rows(b.y, rank * kBatch, kBatch));
    loss.backward();
    opt.step();
  }
  EXPECT_TRUE(ddp.buckets_rebuilt());
  // Ranks other than 0 updated their running statistics from their own last batch; an
  // evaluation forward broadcasts rank 0's again.
  {
    autograd::NoGradGuard no_grad;
    ddp.eval();
    ddp.forward(rows(global_batch(k, 0, world * kBatch, device).x, 0, 1));
    ddp.train();
  }
  return snapshot(*model);
}

/// Each rank starts from a different initialisation; DDP's broadcast makes them rank 0's.
inline uint64_t rank_seed(int rank) { return rank == 0 ? 7 : 100 + static_cast<uint64_t>(rank); }

}  // namespace tandem::comm::ddp_test
