// GPU utilisation, memory and power through NVML, loaded at run time with dlopen so
// that builds need no NVML headers and machines without a driver simply report why
// there is nothing to monitor. Samples also carry the caching allocator's peak.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tandem::train {

/// One device at one moment.
struct GpuSample {
  int device = 0;               // CUDA device index (as the engine numbers them)
  std::string name;             // "NVIDIA H100 80GB HBM3"
  unsigned utilization_pct = 0;  // kernels running, over NVML's last sample period
  uint64_t memory_used_bytes = 0;
  uint64_t memory_total_bytes = 0;
  double power_w = 0.0;
  /// The caching allocator's peak allocated bytes on this device (since the last reset).
  int64_t allocator_peak_bytes = 0;
};

class GpuMonitor {
 public:
  /// Loads NVML from `library` (default libnvidia-ml.so.1) and maps each CUDA device
  /// to its NVML handle by PCI bus id. Never throws: available() says whether it
  /// worked and unavailable_reason() why not.
  explicit GpuMonitor(const std::string& library = "libnvidia-ml.so.1");
  ~GpuMonitor();
  GpuMonitor(const GpuMonitor&) = delete;
  GpuMonitor& operator=(const GpuMonitor&) = delete;

  bool available() const { return available_; }
  const std::string& unavailable_reason() const { return reason_; }
  /// One sample per CUDA device (empty when unavailable). A device NVML cannot read
  /// keeps zeros in the fields it could not get.
  std::vector<GpuSample> sample() const;

 private:
  struct Api;
  std::unique_ptr<Api> api_;
  bool available_ = false;
  std::string reason_;
};

}  // namespace tandem::train
