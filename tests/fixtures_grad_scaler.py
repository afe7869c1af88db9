"""GradScaler fixtures for tests/test_grad_scaler.cpp: the scale, growth tracker and
step/skip decision after every update() over scripted sequences of finite, inf and NaN
iterations, under PyTorch's rule (torch.cuda.amp.GradScaler.update, which calls
torch._amp_update_scale_).

Debian's torch 1.13 has no CPU kernel for _amp_update_scale_ (nor for
_amp_foreach_non_finite_check_and_unscale_), and torch.cuda.amp.GradScaler disables
itself without CUDA. So the rule is restated below in plain Python, transcribed from
amp_update_scale_cuda_kernel (aten/src/ATen/native/cuda/AmpKernels.cu), with the scale
held in f32 as PyTorch's scale tensor is. Where CUDA is available the script also runs
the real torch.cuda.amp.GradScaler over the same events and asserts both agree.
Run: /usr/bin/python3 tests/fixtures_grad_scaler.py"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import write  # noqa: E402


def f32(v):
    """Rounds a Python float to the nearest f32, as storing into a float tensor does."""
    return torch.tensor(v, dtype=torch.float64).to(torch.float32).item()


def update_scale(scale, tracker, found_inf, growth_factor, backoff_factor, growth_interval):
    """amp_update_scale_cuda_kernel: scale is float, the factors double."""
    if found_inf:
        return f32(scale * backoff_factor), 0
    successful = tracker + 1
    if successful == growth_interval:
        new_scale = f32(scale * growth_factor)
        # Do not grow the scale past fp32 bounds to inf.
        if math.isfinite(new_scale):
            scale = new_scale
        return scale, 0
    return scale, successful


def reference(options, events):
    scale = f32(options["init_scale"])
    tracker = 0
    out = []
    for e in events:
        found = e != "finite"
        scale, tracker = update_scale(scale, tracker, found, options["growth_factor"], options["backoff_factor"],
                                      options["growth_interval"])
        out.append((scale, tracker))
    return out


def torch_cuda(options, events):
    """The real GradScaler on one parameter whose gradient is made inf / NaN on cue."""
    scaler = torch.cuda.amp.GradScaler(**options)
    p = torch.nn.Parameter(torch.ones(3, device="cuda"))
    opt = torch.optim.SGD([p], lr=0.1)
    out = []
    for e in events:
        opt.zero_grad()
        scaler.scale(p.sum()).backward()
        if e != "finite":
            p.grad[1] = math.inf if e == "inf" else math.nan
        before = p.detach().clone()
        scaler.step(opt)
        stepped = not torch.equal(before, p.detach())
        scaler.update()
        assert stepped == (e == "finite"), (e, stepped)
        out.append((scaler.get_scale(), scaler._get_growth_tracker()))
    return out


CASES = [
    # Growth every 3 clean steps, back-off on inf and on NaN, tracker reset on a skip.
    (dict(init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
     ["finite", "finite", "finite", "finite", "inf", "finite", "finite", "nan", "finite", "finite", "finite",
      "finite", "finite", "finite", "inf", "inf", "finite"]),
    # Growth stops short of f32 infinity (3e38·2 overflows), back-off still applies.
    (dict(init_scale=3.0e38, growth_factor=2.0, backoff_factor=0.5, growth_interval=1),
     ["finite", "finite", "inf", "finite", "finite", "finite"]),
    # Factors that are not powers of two: every product is rounded to f32.
    (dict(init_scale=1000.0, growth_factor=1.7, backoff_factor=0.3, growth_interval=2),
     ["finite", "finite", "finite", "nan", "finite", "finite", "inf", "finite", "finite", "finite", "finite"]),
    # PyTorch's defaults, with one long clean run: growth after exactly 2000 steps.
    (dict(init_scale=65536.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000),
     ["inf"] + ["finite"] * 2001 + ["nan"]),
]


def generate():
    cases = []
    for options, events in CASES:
        want = reference(options, events)
        if torch.cuda.is_available():
            got = torch_cuda(options, events)
            assert got == want, (options, got, want)
        # Events as one letter each (F finite, I inf, N NaN); a step is skipped exactly on I and N.
        cases.append({"options": options, "events": "".join({"finite": "F", "inf": "I", "nan": "N"}[e] for e in events),
                      "scale_after_update": [s for s, _ in want],
                      "growth_tracker_after_update": [t for _, t in want]})
    write("grad_scaler.json", {"torch_version": torch.__version__,
                               "checked_against_torch_cuda": torch.cuda.is_available(),
                               "rule": "amp_update_scale_cuda_kernel restated in Python, scale in f32",
                               "cases": cases})


if __name__ == "__main__":
    generate()
