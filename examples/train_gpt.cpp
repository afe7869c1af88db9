// A character-level GPT trained on any text file with train::Trainer (GPU if present),
// then asked to continue a prompt. README.md shows this file.
//
//   train_gpt FILE.txt [EPOCHS] [PROMPT]
#include <cstdio>
#include <cstdlib>
#include <string>

#include <tandem.h>

using namespace tandem;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: train_gpt FILE.txt [EPOCHS] [PROMPT]\n");
    return 2;
  }
  const int64_t epochs = argc > 2 ? std::atoll(argv[2]) : 3;
  const std::string prompt = argc > 3 ? argv[3] : "\n";
  try {
    // Windows of 64 characters; the file's distinct bytes are the vocabulary.
    const data::CharTextOptions text{.block_size = 64};
    auto train_set = std::make_shared<data::CharText>(argv[1], data::Split::kTrain, text);
    auto test_set = std::make_shared<data::CharText>(argv[1], data::Split::kTest, text);
    manual_seed(0);
    auto gpt = std::make_shared<nn::models::GPT>(nn::models::GPTOptions{
        .vocab_size = train_set->vocab_size(), .block_size = 64, .n_layer = 2, .n_head = 2, .n_embd = 64});

    train::TrainerConfig cfg;
    cfg.epochs = epochs;
    cfg.batch_size = 16;
    cfg.optimizer = {.name = "adamw", .lr = 3e-3, .weight_decay = 0.1};
    cfg.checkpoint.best_metric = "";  // no checkpoint directory: nothing to select
    cfg.logging.progress = false;
    train::Trainer trainer(cfg, gpt, train_set, test_set);
    for (const train::EpochMetrics& e : trainer.fit())
      std::printf("epoch %lld  test loss %.3f  per-character accuracy %.3f\n", static_cast<long long>(e.epoch),
                  e.val_loss, e.val_acc);

    // Greedy continuation of the prompt (keys and values cached between tokens).
    const std::vector<int64_t> tokens =
        gpt->generate(train_set->encode(prompt), {.max_new_tokens = 120, .temperature = 0.0});
    std::printf("%s\n", train_set->decode(tokens).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_gpt: %s\n", e.what());
    return 1;
  }
  return 0;
}
