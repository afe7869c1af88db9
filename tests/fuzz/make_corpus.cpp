// Writes the seed corpus of the checkpoint fuzzer: a valid checkpoint and a valid
// safetensors file (small, every dtype), from which the fuzzer mutates.
#include <cstdio>
#include <string>
#include <vector>

#include "train/checkpoint.h"
#include "train/safetensors.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  using tandem::Tensor;
  tandem::train::NamedTensors t = {{"w", Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2})},
                                   {"b", Tensor::from_vector(std::vector<double>{0.5}, {1})},
                                   {"i", Tensor::from_vector(std::vector<int64_t>{7, 8}, {2})},
                                   {"m", Tensor::from_vector(std::vector<bool>{true}, {1})},
                                   {"e", Tensor::empty({0, 3})}};
  tandem::train::save_checkpoint(dir + "/valid.tck", t, {{"step", 3}, {"config", {{"lr", 0.1}}}});
  tandem::train::save_safetensors(dir + "/valid.safetensors", t, {{"format", "pt"}});
  return 0;
}
