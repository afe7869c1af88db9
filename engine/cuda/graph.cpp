// CUDA graph capture and replay (see graph.h), and the allocator's private pools.
#include "engine/cuda/graph.h"

#include <cuda_runtime.h>

#include <atomic>
#include <exception>
#include <stdexcept>
#include <string>

#include "engine/random.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/random.h"

namespace tandem::cuda {

MempoolId graph_pool_handle() {
  static std::atomic<MempoolId> next{1};
  return next.fetch_add(1);
}

Graph::~Graph() {
  try {
    reset();
  } catch (...) {
    // A destructor must not throw; a failing cudaGraphDestroy leaves the memory to the
    // driver, and the pool's segments stay cached (they are still freed at empty_cache).
  }
}

void Graph::capture_begin(MempoolId pool) {
  if (capturing_ || exec_ != nullptr || holds_pool_)
    throw std::logic_error("[Graph::capture_begin] expected an empty graph, got one that is " +
                           std::string(capturing_ ? "capturing" : exec_ != nullptr ? "captured" : "left by a failed capture") +
                           "; call reset() first");
  const int device = current_device();
  const Stream stream = current_stream(device);
  if (stream.handle() == nullptr)
    throw std::logic_error("[Graph::capture_begin] expected a current stream other than the legacy default stream");
  pool_ = pool != 0 ? pool : graph_pool_handle();
  // The generator's offset base lives outside the capture's pool: it is written before
  // every replay, and freed with the graph.
  Generator& generator = default_generator(Device::cuda(device));
  rng_base_ = static_cast<uint64_t*>(device_alloc(device, sizeof(uint64_t), stream.handle()));
  try {
    generator.begin_graph_capture(rng_base_);  // throws if another capture draws from it
  } catch (...) {
    device_free(rng_base_);
    rng_base_ = nullptr;
    throw;
  }
  rng_capturing_ = true;
  rng_blocks_ = 0;
  stream_ = stream;
  CUDA_CHECK(cudaStreamBeginCapture(stream.handle(), cudaStreamCaptureModeThreadLocal));
  unsigned long long capture_id = 0;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamGetCaptureInfo(stream.handle(), &status, &capture_id));
  try {
    begin_allocate_to_pool(device, pool_, capture_id);
  } catch (...) {
    cudaGraph_t discarded = nullptr;
    (void)cudaStreamEndCapture(stream.handle(), &discarded);
    if (discarded != nullptr) (void)cudaGraphDestroy(discarded);
    generator.end_graph_capture();
    rng_capturing_ = false;
    device_free(rng_base_);
    rng_base_ = nullptr;
    throw;
  }
  capturing_ = true;
  holds_pool_ = true;
}

void Graph::capture_end() {
  if (!capturing_) throw std::logic_error("[Graph::capture_end] expected a capture in progress, got none");
  capturing_ = false;
  const cudaError_t ended = cudaStreamEndCapture(stream_.handle(), &graph_);
  end_allocate_to_pool(stream_.device(), pool_);
  if (rng_capturing_) {
    rng_blocks_ = default_generator(Device::cuda(stream_.device())).end_graph_capture();
    rng_capturing_ = false;
  }
  if (ended != cudaSuccess) {
    // cudaErrorStreamCaptureInvalidated: something in the capture was illegal (a host
    // synchronisation, a call on another stream without an event to join it).
    graph_ = nullptr;
    (void)cudaGetLastError();
    kernels::cuda::throw_cuda_error("cudaStreamEndCapture(stream, &graph)", cudaGetErrorString(ended), static_cast<int>(ended),
                     __FILE__, __LINE__);
  }
  if (const cudaError_t err = cudaGraphInstantiate(&exec_, graph_, 0); err != cudaSuccess) {
    exec_ = nullptr;
    (void)cudaGraphDestroy(graph_);
    graph_ = nullptr;
    (void)cudaGetLastError();
    kernels::cuda::throw_cuda_error("cudaGraphInstantiate(&exec, graph, 0)", cudaGetErrorString(err),
                                    static_cast<int>(err), __FILE__, __LINE__);
  }
}

void Graph::replay() {
  if (exec_ == nullptr) throw std::logic_error("[Graph::replay] expected a captured graph, got an empty one");
  DeviceGuard guard(stream_.device());
  if (rng_blocks_ > 0) {
    // Stream-ordered before the launch: this replay's draws start where the generator is.
    const PhiloxState s = default_generator(Device::cuda(stream_.device())).reserve_blocks(rng_blocks_);
    kernels::cuda::store_philox_offset(rng_base_, s.offset, stream_.handle());
  }
  CUDA_CHECK(cudaGraphLaunch(exec_, stream_.handle()));
}

void Graph::reset() {
  std::exception_ptr failure;  // of an invalid capture: reported after the pool is given up
  if (capturing_) {
    try {
      capture_end();
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (exec_ != nullptr) {
    CUDA_CHECK(cudaGraphExecDestroy(exec_));
    exec_ = nullptr;
  }
  if (graph_ != nullptr) {
    CUDA_CHECK(cudaGraphDestroy(graph_));
    graph_ = nullptr;
  }
  if (holds_pool_) {
    holds_pool_ = false;
    release_pool(stream_.device(), pool_);
  }
  if (rng_base_ != nullptr) {
    device_free(rng_base_);  // stream-ordered: reused only after the last replay on this stream
    rng_base_ = nullptr;
  }
  rng_blocks_ = 0;
  if (failure) std::rethrow_exception(failure);
}

}  // namespace tandem::cuda
