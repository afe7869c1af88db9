// DataLoader: batch splitting, the prefetch thread with its bounded queue (depth
// options.prefetch_depth), exception hand-over to the consumer, device copies.
#include "data/dataloader.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>

namespace tandem::data {

struct DataLoader::Run {
  std::vector<int64_t> order;
  int64_t next = 0;  // next batch index to hand out
  int64_t end = 0;   // batches in this epoch

  // Prefetch state: the producer fills `queue` with batches next, next+1, ...
  // (at most `depth` ahead); an exception ends production and is queued in order.
  struct Item {
    Batch batch;
    std::exception_ptr error;
  };
  std::thread thread;
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<Item> queue;
  bool stop = false;

  ~Run() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    cv.notify_all();
    if (thread.joinable()) thread.join();
  }
};

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, DataLoaderOptions options,
                       std::shared_ptr<const Sampler> sampler)
    : dataset_(std::move(dataset)), sampler_(std::move(sampler)), options_(options) {
  if (!dataset_) throw std::invalid_argument("[DataLoader] expected a dataset, got null");
  if (options_.batch_size < 1) {
    throw std::invalid_argument("[DataLoader] expected batch_size >= 1, got " + std::to_string(options_.batch_size));
  }
  if (options_.prefetch_depth < 0) {
    throw std::invalid_argument("[DataLoader] expected prefetch_depth >= 0, got " +
                                std::to_string(options_.prefetch_depth));
  }
  if (!sampler_) {
    if (options_.shuffle) {
      sampler_ = std::make_shared<RandomSampler>(dataset_->size(), options_.seed);
    } else {
      sampler_ = std::make_shared<SequentialSampler>(dataset_->size());
    }
  }
}

DataLoader::~DataLoader() { stop_run(); }

int64_t DataLoader::num_batches() const {
  int64_t n = sampler_->size();
  return options_.drop_last ? n / options_.batch_size : (n + options_.batch_size - 1) / options_.batch_size;
}

void DataLoader::set_epoch(int64_t epoch) {
  stop_run();
  epoch_ = epoch;
  position_ = 0;
}

void DataLoader::set_position(int64_t position) {
  if (position < 0 || position > num_batches()) {
    throw std::invalid_argument("[DataLoader::set_position] expected a position in [0, " +
                                std::to_string(num_batches()) + "], got " + std::to_string(position));
  }
  stop_run();
  position_ = position;
}

void DataLoader::load_state(const LoaderState& state) {
  set_epoch(state.epoch);
  set_position(state.position);
}

void DataLoader::stop_run() {
  run_.reset();  // ~Run stops and joins the producer
  current_ = Batch{};
  done_ = true;
}

Batch DataLoader::gather_batch(const std::vector<int64_t>& order, int64_t k) const {
  const int64_t bs = options_.batch_size;
  const int64_t first = k * bs;
  const int64_t count = std::min<int64_t>(bs, static_cast<int64_t>(order.size()) - first);
  // Page-locked memory lets the host-to-device copy run asynchronously.
  return dataset_->get_batch(std::span<const int64_t>(order.data() + first, static_cast<size_t>(count)),
                             /*pinned=*/options_.device.is_cuda());
}

DataLoader::Iterator DataLoader::begin() {
  stop_run();
  // An epoch whose last batch was handed out but whose loop never reached the end
  // (a checkpoint taken there) is complete: resume with the next one.
  if (position_ >= num_batches() && num_batches() > 0) {
    ++epoch_;
    position_ = 0;
  }
  auto run = std::make_unique<Run>();
  run->order = sampler_->indices(epoch_);
  if (static_cast<int64_t>(run->order.size()) != sampler_->size()) {
    throw std::logic_error("[DataLoader] sampler promised " + std::to_string(sampler_->size()) +
                           " indices, got " + std::to_string(run->order.size()));
  }
  run->next = position_;
  run->end = num_batches();
  if (options_.prefetch_depth > 0 && run->next < run->end) {
    Run* r = run.get();
    const size_t depth = static_cast<size_t>(options_.prefetch_depth);
    r->thread = std::thread([this, r, depth] {
      for (int64_t k = r->next; k < r->end; ++k) {
        Run::Item item;
        try {
          item.batch = gather_batch(r->order, k);
        } catch (...) {
          // Not swallowed: handed to the consumer, which rethrows it in order.
          item.error = std::current_exception();
        }
        std::unique_lock<std::mutex> lock(r->mutex);
        r->cv.wait(lock, [&] { return r->stop || r->queue.size() < depth; });
        if (r->stop) return;
        bool failed = item.error != nullptr;
        r->queue.push_back(std::move(item));
        r->cv.notify_all();
        if (failed) return;
      }
    });
  }
  run_ = std::move(run);
  done_ = false;
  advance();
  return Iterator(this);
}

void DataLoader::advance() {
  if (!run_ || done_) return;
  Run& r = *run_;
  if (r.next >= r.end) {
    // The loop has run to the end of the epoch.
    run_.reset();
    current_ = Batch{};
    done_ = true;
    ++epoch_;
    position_ = 0;
    return;
  }
  Batch batch;
  if (r.thread.joinable()) {
    Run::Item item;
    {
      std::unique_lock<std::mutex> lock(r.mutex);
      r.cv.wait(lock, [&] { return !r.queue.empty(); });
      item = std::move(r.queue.front());
      r.queue.pop_front();
    }
    r.cv.notify_all();
    if (item.error) {
      // Position stays at the failed batch, so a new loop retries it.
      stop_run();
      std::rethrow_exception(item.error);
    }
    batch = std::move(item.batch);
  } else {
    try {
      batch = gather_batch(r.order, r.next);
    } catch (...) {
      stop_run();
      throw;
    }
  }
  if (options_.device.is_cuda()) {
    // Queued on the consumer's current stream, so it is ordered before the kernels
    // that read the batch; the host moves on at once.
    batch.input = batch.input.to(options_.device, /*non_blocking=*/true);
    batch.target = batch.target.to(options_.device, /*non_blocking=*/true);
  }
  current_ = std::move(batch);
  ++r.next;
  position_ = r.next;
}

}  // namespace tandem::data
