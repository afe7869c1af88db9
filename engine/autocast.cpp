// AutocastGuard's thread-local state and the two casts the op hooks apply. The policy
// itself (which op casts which way) sits at the top of each op, in engine/ops/*.cpp.
#include "engine/autocast.h"

#include <stdexcept>
#include <string>

#include "engine/autograd.h"

namespace tandem {
namespace {

// Per thread, like PyTorch's: a guard on one thread never changes what another thread's
// ops do (DataParallel replicas each open their own).
thread_local bool t_enabled = false;
thread_local DType t_dtype = DType::kF16;
// Set when the innermost guard was opened inside a backward pass. Backward rules call
// ordinary ops (sum_to, mul, ...) whose gradients must keep their inputs' dtypes, so a
// guard left open around loss.backward() must not reach them; a guard opened inside the
// pass (a checkpoint replaying its forward) is meant to.
thread_local bool t_opened_in_backward = false;

bool is_half(DType t) { return t == DType::kF16 || t == DType::kBF16; }

}  // namespace

AutocastGuard::AutocastGuard(DType dtype, bool enabled)
    : prev_enabled_(t_enabled), prev_dtype_(t_dtype), prev_opened_in_backward_(t_opened_in_backward) {
  if (!is_half(dtype))
    throw std::invalid_argument("[AutocastGuard] expected dtype float16 or bfloat16, got " +
                                std::string(dtype_name(dtype)));
  t_enabled = enabled;
  t_dtype = dtype;
  t_opened_in_backward = autograd::in_backward();
}

AutocastGuard::~AutocastGuard() {
  t_enabled = prev_enabled_;
  t_dtype = prev_dtype_;
  t_opened_in_backward = prev_opened_in_backward_;
}

bool autocast_enabled() { return t_enabled; }

DType autocast_dtype() { return t_dtype; }

bool autocast_active() { return t_enabled && (t_opened_in_backward || !autograd::in_backward()); }

Tensor autocast_to_low(const Tensor& x) {
  if (!x.defined()) return x;
  const DType d = x.dtype();
  if (d != DType::kF32 && !is_half(d)) return x;  // f64 is a reference dtype; integers are not cast
  return x.to(t_dtype);
}

Tensor autocast_to_f32(const Tensor& x) {
  if (!x.defined() || !is_half(x.dtype())) return x;
  return x.to(DType::kF32);
}

}  // namespace tandem
