// GpuMonitor without a GPU: it never throws, samples nothing and says why.
#include "test_util.h"
#include "train/gpu_monitor.h"

namespace tandem::train {
namespace {

TEST(GpuMonitor, WithoutAGpuReportsWhyAndSamplesNothing) {
  if (cuda::is_available()) GTEST_SKIP() << "a GPU is present: see test_cuda_gpu_monitor";
  GpuMonitor monitor;
  EXPECT_FALSE(monitor.available());
  EXPECT_NE(monitor.unavailable_reason().find("no CUDA device"), std::string::npos) << monitor.unavailable_reason();
  EXPECT_TRUE(monitor.sample().empty());
}

}  // namespace
}  // namespace tandem::train
