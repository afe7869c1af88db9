// Tensor basics: construction, dtypes, devices, views, copies, casts, printing, errors.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/ops.h"
#include "test_util.h"

using namespace tandem;

TEST(Tensor, EmptyHasShapeDtypeDevice) {
  Tensor t = Tensor::empty({2, 3, 4}, {.dtype = DType::kF64});
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.strides(), (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(t.dtype(), DType::kF64);
  EXPECT_TRUE(t.is_cpu());
  EXPECT_EQ(t.nbytes(), 24u * 8u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data_ptr()) % 64, 0u);
}

TEST(Tensor, EveryDtypeHasASizeAndName) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI32, DType::kI64, DType::kU8, DType::kBool}) {
    Tensor t = zeros({3}, {.dtype = d});
    EXPECT_EQ(t.dtype(), d);
    EXPECT_EQ(parse_dtype(dtype_name(d)), d);
    EXPECT_EQ(t.to_vector<double>(), (std::vector<double>{0, 0, 0}));
  }
  EXPECT_THROW(parse_dtype("float8"), std::invalid_argument);
}

TEST(Tensor, DeviceParsing) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  EXPECT_EQ(Device::cuda(2).str(), "cuda:2");
  try {
    Device::parse("gpu0");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("\"gpu0\""), std::string::npos);
  }
  EXPECT_THROW(Device::parse("cuda:-1"), std::invalid_argument);
}

TEST(Tensor, FromVectorAndItem) {
  Tensor t = Tensor::from_vector<float>({1.5f, -2.0f, 3.25f}, {3});
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  EXPECT_DOUBLE_EQ(Tensor::from_vector<int64_t>({7}, {}).item(), 7.0);
  EXPECT_THROW(t.item(), std::invalid_argument);
  EXPECT_THROW(Tensor::from_vector<float>({1, 2}, {3}), std::invalid_argument);
}

TEST(Tensor, ViewsShareStorageAtAnOffset) {
  Tensor base = arange(10, {.dtype = DType::kF32});
  Tensor view = Tensor::from_storage(base.storage(), {2, 2}, DType::kF32, 4);
  EXPECT_EQ(view.to_vector<float>(), (std::vector<float>{4, 5, 6, 7}));
  view.fill_(-1);
  EXPECT_EQ(base.to_vector<float>()[5], -1.0f);
  EXPECT_EQ(base.to_vector<float>()[8], 8.0f);
  EXPECT_THROW(Tensor::from_storage(base.storage(), {3, 3}, DType::kF32, 4), std::invalid_argument);
}

TEST(Tensor, CastsRoundTrip) {
  Tensor x = Tensor::from_vector<double>({-2.5, 0.0, 1.0, 3.75, 65504.0}, {5});
  EXPECT_EQ(x.to(DType::kF16).to(DType::kF64).to_vector<double>(), x.to_vector<double>());
  EXPECT_EQ(x.to(DType::kI64).to_vector<int64_t>(), (std::vector<int64_t>{-2, 0, 1, 3, 65504}));
  EXPECT_EQ(x.to(DType::kBool).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 1, 1, 1}));
  // bf16 keeps 8 bits of mantissa: 1 + 2^-9 rounds to 1 (to nearest even).
  Tensor y = Tensor::from_vector<double>({1.0 + 1.0 / 512, 1.0 + 3.0 / 512}, {2});
  EXPECT_EQ(y.to(DType::kBF16).to_vector<double>(), (std::vector<double>{1.0, 1.0 + 4.0 / 512}));
}

TEST(Tensor, HalfConversionMatchesIeee) {
  EXPECT_EQ(Half(1.0f).bits, 0x3c00);
  EXPECT_EQ(Half(-2.0f).bits, 0xc000);
  EXPECT_EQ(Half(65504.0f).bits, 0x7bff);
  EXPECT_EQ(Half(1e6f).bits, 0x7c00);                     // overflow to inf
  EXPECT_EQ(Half(5.960464477539063e-08f).bits, 0x0001);   // smallest subnormal
  EXPECT_FLOAT_EQ(static_cast<float>(Half::to_float(0x0001)), 5.960464477539063e-08f);
  EXPECT_EQ(Half(1.0f + 1.0f / 2048).bits, 0x3c00);       // tie rounds to even
  EXPECT_EQ(Half(1.0f + 3.0f / 2048).bits, 0x3c02);
  EXPECT_TRUE(std::isnan(static_cast<float>(Half(std::nanf("")))));
}

TEST(Tensor, CloneCopiesAndCopyConverts) {
  Tensor a = Tensor::from_vector<float>({1, 2, 3}, {3});
  Tensor b = a.clone();
  b.fill_(0);
  EXPECT_EQ(a.to_vector<float>(), (std::vector<float>{1, 2, 3}));
  Tensor c = zeros({3}, {.dtype = DType::kF64});
  c.copy_(a);
  EXPECT_EQ(c.to_vector<double>(), (std::vector<double>{1, 2, 3}));
  EXPECT_THROW(c.copy_(zeros({4})), std::invalid_argument);
}

TEST(Tensor, StrShowsDtypeDeviceShapeAndValues) {
  std::string s = arange(3, {.dtype = DType::kF32}).str();
  EXPECT_NE(s.find("float32"), std::string::npos);
  EXPECT_NE(s.find("[3]"), std::string::npos);
  EXPECT_NE(s.find("2"), std::string::npos);
  EXPECT_EQ(Tensor().str(), "Tensor(undefined)");
}

TEST(Tensor, UndefinedTensorErrorsClearly) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_THROW(t.shape(), std::invalid_argument);
  EXPECT_THROW(relu(t), std::invalid_argument);
}

TEST(Tensor, CudaTensorsFailClearlyWithoutCuda) {
  if (cuda::is_available()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_FALSE(cuda::unavailable_reason().empty());
  try {
    zeros({2}, {.device = Device::cuda(0)});
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
  }
}

TEST(Tensor, PoisonedAllocationsAreNaN) {
  set_poison_allocations(true);
  Tensor t = Tensor::empty({4});
  set_poison_allocations(false);
  for (float v : t.to_vector<float>()) EXPECT_TRUE(std::isnan(v));
}

TEST(Tensor, HostMemoryStatsTrackAllocations) {
  HostMemoryStats before = host_memory_stats();
  {
    Tensor t = Tensor::empty({1 << 20});
    EXPECT_GE(host_memory_stats().allocated_bytes, before.allocated_bytes + (4 << 20));
    EXPECT_GE(host_memory_stats().peak_allocated_bytes, before.allocated_bytes + (4 << 20));
  }
  EXPECT_EQ(host_memory_stats().allocated_bytes, before.allocated_bytes);
}

TEST(Tensor, LargeHostBlocksAreReusedAfterFree) {
  host_empty_cache();
  void* first = nullptr;
  {
    Tensor t = Tensor::empty({3 << 20});  // 12 MiB: above glibc's mmap threshold
    first = t.data_ptr();
  }
  HostMemoryStats before = host_memory_stats();
  EXPECT_GE(before.cached_bytes, int64_t{12} << 20);
  Tensor again = Tensor::empty({3 << 20});
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_EQ(host_memory_stats().num_system_allocs, before.num_system_allocs);
  Tensor other = Tensor::empty({5 << 20});  // another size needs new memory
  EXPECT_EQ(host_memory_stats().num_system_allocs, before.num_system_allocs + 1);
  host_empty_cache();
  EXPECT_EQ(host_memory_stats().cached_bytes, 0);
}
