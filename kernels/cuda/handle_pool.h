// Per-thread, per-device pool of CUDA library handles (cuBLAS, cuDNN), shared by the
// wrappers in gemm.cu and conv.cu. A library handle must not be used by two threads at
// once, so each thread gets its own; a thread's handles return to the pool when it exits.
// Includable without the CUDA toolkit (the caller passes the device index).
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

namespace tandem::kernels::cuda {

/// Handles of type `Handle` (a library's opaque pointer), one per thread and device,
/// made by `Create` (which throws on failure). Handles are never destroyed: those of
/// exited threads wait in a process-wide pool for the next thread that needs one.
template <class Handle, Handle (*Create)()>
class HandlePool {
 public:
  /// The calling thread's handle for `device`: its own if it has one, else one left by
  /// an exited thread, else a new one from Create.
  static Handle get(int device) {
    thread_local ThreadHandles local;
    const size_t d = static_cast<size_t>(device);
    if (local.handles.size() <= d) local.handles.resize(d + 1, nullptr);
    Handle& handle = local.handles[d];
    if (handle == nullptr) handle = take_free(d);
    if (handle == nullptr) handle = Create();
    return handle;
  }

 private:
  /// Handles released by exited threads, per device, for the next thread to reuse.
  struct Pool {
    std::mutex mutex;
    std::vector<std::vector<Handle>> free_handles;  // [device]
  };

  /// Deliberately leaked, like PyTorch's pool: destroying handles during static
  /// destruction can run after the CUDA context is gone.
  static Pool& pool() {
    static Pool* pool = new Pool;
    return *pool;
  }

  /// A released handle for device `d`, or null when there is none.
  static Handle take_free(size_t d) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.free_handles.size() <= d || p.free_handles[d].empty()) return nullptr;
    Handle handle = p.free_handles[d].back();
    p.free_handles[d].pop_back();
    return handle;
  }

  /// One thread's handles; its destructor runs at thread exit and releases them.
  struct ThreadHandles {
    std::vector<Handle> handles;  // [device], null until used
    ~ThreadHandles() {
      Pool& p = pool();
      std::lock_guard<std::mutex> lock(p.mutex);
      for (size_t d = 0; d < handles.size(); ++d) {
        if (handles[d] == nullptr) continue;
        if (p.free_handles.size() <= d) p.free_handles.resize(d + 1);
        p.free_handles[d].push_back(handles[d]);
      }
    }
  };
};

}  // namespace tandem::kernels::cuda
