// A complete program against Tandem's C++ API: a custom module, the data loader,
// SGD, a training loop and an evaluation. README.md shows this file.
//
//   train_mlp [DATA_DIR] [MAX_STEPS]
#include <cstdio>
#include <cstdlib>
#include <string>

#include <tandem.h>

using namespace tandem;

// Two linear layers with a GELU and dropout between them.
class Classifier : public nn::Module {
 public:
  Classifier(int64_t in, int64_t hidden, int64_t classes)
      : fc1_(register_module("fc1", std::make_shared<nn::Linear>(in, hidden))),
        drop_(register_module("drop", std::make_shared<nn::Dropout>(0.1))),
        fc2_(register_module("fc2", std::make_shared<nn::Linear>(hidden, classes))) {}

  Tensor forward(const Tensor& images) override {
    Tensor x = flatten(images, 1);  // (N, 1, 28, 28) -> (N, 784)
    return (*fc2_)((*drop_)(gelu((*fc1_)(x))));
  }
  std::string name() const override { return "Classifier"; }

 private:
  std::shared_ptr<nn::Linear> fc1_;
  std::shared_ptr<nn::Dropout> drop_;
  std::shared_ptr<nn::Linear> fc2_;
};

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : data::kFashionMnistDefaultDir;
  int64_t max_steps = argc > 2 ? std::atoll(argv[2]) : -1;  // -1: one full epoch
  Device device = cuda::is_available() ? Device::cuda(0) : Device::cpu();
  manual_seed(0);

  auto train_set = std::make_shared<data::FashionMNIST>(dir, data::Split::kTrain);
  auto test_set = std::make_shared<data::FashionMNIST>(dir, data::Split::kTest);
  data::DataLoader train_loader(train_set, {.batch_size = 128, .shuffle = true, .device = device});
  data::DataLoader test_loader(test_set, {.batch_size = 1000, .shuffle = false, .device = device});

  auto model = std::make_shared<Classifier>(784, 256, 10);
  model->to(device);
  optim::SGD optimizer(model->parameters(), {.lr = 0.05, .momentum = 0.9, .weight_decay = 5e-4});

  int64_t step = 0;
  for (data::Batch& batch : train_loader) {
    Tensor loss = cross_entropy((*model)(batch.input), batch.target);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (++step % 100 == 0) std::printf("step %lld  loss %.4f\n", static_cast<long long>(step), loss.item());
    if (step == max_steps) break;
  }

  autograd::NoGradGuard no_grad;
  model->eval();
  int64_t correct = 0, total = 0;
  for (data::Batch& batch : test_loader) {
    Tensor predicted = argmax((*model)(batch.input), 1);
    correct += sum(eq(predicted, batch.target)).item<int64_t>();
    total += batch.target.numel();
  }
  std::printf("test accuracy %.4f after %lld steps on %s\n", static_cast<double>(correct) / total,
              static_cast<long long>(step), device.str().c_str());
  return 0;
}
