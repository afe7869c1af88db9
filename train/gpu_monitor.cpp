// GpuMonitor over NVML's C API, declared here from NVML's documented ABI (the few
// functions and structs used), resolved with dlsym.
#include "train/gpu_monitor.h"

#include <dlfcn.h>

#include <stdexcept>

#include "engine/cuda/runtime.h"

namespace tandem::train {
namespace {

// NVML's ABI: nvmlReturn_t is an int (0 = NVML_SUCCESS), devices are opaque handles.
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
constexpr nvmlReturn_t kSuccess = 0;
constexpr unsigned kNameLength = 96;  // NVML_DEVICE_NAME_V2_BUFFER_SIZE

}  // namespace

struct GpuMonitor::Api {
  void* handle = nullptr;
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  const char* (*error_string)(nvmlReturn_t) = nullptr;
  nvmlReturn_t (*by_pci_bus_id)(const char*, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*get_name)(nvmlDevice_t, char*, unsigned) = nullptr;
  nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  nvmlReturn_t (*memory)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
  nvmlReturn_t (*power)(nvmlDevice_t, unsigned*) = nullptr;  // milliwatts
  bool initialised = false;
  std::vector<nvmlDevice_t> devices;  // by CUDA index
  std::vector<std::string> names;

  template <class F>
  bool resolve(F& fn, const char* symbol, std::string& reason) {
    fn = reinterpret_cast<F>(dlsym(handle, symbol));
    if (fn == nullptr) reason = std::string("NVML has no ") + symbol;
    return fn != nullptr;
  }
};

GpuMonitor::GpuMonitor(const std::string& library) : api_(std::make_unique<Api>()) {
  const int count = cuda::device_count();
  if (count == 0) {
    reason_ = "no CUDA device: " + cuda::unavailable_reason();
    return;
  }
  api_->handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (api_->handle == nullptr) {
    const char* err = dlerror();
    reason_ = "cannot load " + library + ": " + (err ? err : "unknown error");
    return;
  }
  Api& a = *api_;
  if (!a.resolve(a.init, "nvmlInit_v2", reason_) || !a.resolve(a.shutdown, "nvmlShutdown", reason_) ||
      !a.resolve(a.error_string, "nvmlErrorString", reason_) ||
      !a.resolve(a.by_pci_bus_id, "nvmlDeviceGetHandleByPciBusId_v2", reason_) ||
      !a.resolve(a.get_name, "nvmlDeviceGetName", reason_) ||
      !a.resolve(a.utilization, "nvmlDeviceGetUtilizationRates", reason_) ||
      !a.resolve(a.memory, "nvmlDeviceGetMemoryInfo", reason_) ||
      !a.resolve(a.power, "nvmlDeviceGetPowerUsage", reason_))
    return;
  if (nvmlReturn_t rc = a.init(); rc != kSuccess) {
    reason_ = std::string("nvmlInit failed: ") + a.error_string(rc);
    return;
  }
  a.initialised = true;
  for (int i = 0; i < count; ++i) {
    nvmlDevice_t dev = nullptr;
    const std::string bus = cuda::pci_bus_id(i);
    if (nvmlReturn_t rc = a.by_pci_bus_id(bus.c_str(), &dev); rc != kSuccess) {
      reason_ = "NVML does not know cuda:" + std::to_string(i) + " (PCI " + bus + "): " + a.error_string(rc);
      return;
    }
    char name[kNameLength] = {};
    if (a.get_name(dev, name, kNameLength) != kSuccess) name[0] = '\0';
    a.devices.push_back(dev);
    a.names.emplace_back(name);
  }
  available_ = true;
}

GpuMonitor::~GpuMonitor() {
  if (api_->initialised) api_->shutdown();
  if (api_->handle) dlclose(api_->handle);
}

std::vector<GpuSample> GpuMonitor::sample() const {
  std::vector<GpuSample> out;
  if (!available_) return out;
  const Api& a = *api_;
  for (size_t i = 0; i < a.devices.size(); ++i) {
    GpuSample s;
    s.device = static_cast<int>(i);
    s.name = a.names[i];
    nvmlUtilization_t u{};
    if (a.utilization(a.devices[i], &u) == kSuccess) s.utilization_pct = u.gpu;
    nvmlMemory_t m{};
    if (a.memory(a.devices[i], &m) == kSuccess) {
      s.memory_used_bytes = m.used;
      s.memory_total_bytes = m.total;
    }
    unsigned mw = 0;
    if (a.power(a.devices[i], &mw) == kSuccess) s.power_w = mw / 1000.0;
    s.allocator_peak_bytes = cuda::memory_stats(static_cast<int>(i)).peak_allocated_bytes;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace tandem::train
