// GpuMonitor on a GPU: NVML loaded at run time reports every CUDA device with sane
// values, and a missing library is reported by name instead of failing.
#include "test_util.h"
#include "train/gpu_monitor.h"

namespace tandem::train {
namespace {

TEST(CudaGpuMonitor, SamplesEveryDevice) {
  TANDEM_REQUIRE_CUDA();
  GpuMonitor monitor;
  ASSERT_TRUE(monitor.available()) << monitor.unavailable_reason();
  Tensor t = Tensor::empty({1 << 20}, {.device = Device::cuda(0)});  // something allocated
  std::vector<GpuSample> samples = monitor.sample();
  ASSERT_EQ(static_cast<int>(samples.size()), cuda::device_count());
  for (const GpuSample& s : samples) {
    EXPECT_FALSE(s.name.empty());
    EXPECT_LE(s.utilization_pct, 100u);
    EXPECT_GT(s.memory_total_bytes, 0u);
    EXPECT_LE(s.memory_used_bytes, s.memory_total_bytes);
    EXPECT_GE(s.power_w, 0.0);
  }
  EXPECT_GE(samples[0].allocator_peak_bytes, int64_t(4) << 20);
}

TEST(CudaGpuMonitor, MissingLibraryIsNamed) {
  TANDEM_REQUIRE_CUDA();
  GpuMonitor monitor("libnvidia-ml-that-does-not-exist.so");
  EXPECT_FALSE(monitor.available());
  EXPECT_NE(monitor.unavailable_reason().find("libnvidia-ml-that-does-not-exist.so"), std::string::npos);
  EXPECT_TRUE(monitor.sample().empty());
}

}  // namespace
}  // namespace tandem::train
