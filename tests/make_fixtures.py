#!/usr/bin/python3
"""Writes the PyTorch reference values that tests/test_pytorch_fixtures.cpp compares
Tandem with, as JSON in tests/fixtures/. Run with a Python that has torch (Debian's
python3-torch): /usr/bin/python3 tests/make_fixtures.py. The output is committed, so
the tests need no PyTorch. Tensors are {"shape": [...], "data": [...]} in f64,
printed with Python's shortest round-trip repr (full precision).

Each area adds its fixtures in its own module tests/fixtures_<area>.py, which
defines generate() and uses tensor() and write() from here; main() runs them all
in name order, each with its own seeded generator so adding one changes no other."""

import glob
import importlib
import json
import os
import sys

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def tensor(t):
    t = t.detach().to(torch.float64) if t.is_floating_point() else t.detach()
    return {"shape": list(t.shape), "data": [float(v) if t.is_floating_point() else int(v) for v in t.flatten().tolist()]}


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    print("wrote", path)


def linear_fixture(gen):
    x = torch.rand(4, 3, 5, generator=gen, dtype=torch.float64) * 2 - 1
    w = torch.rand(6, 5, generator=gen, dtype=torch.float64) * 2 - 1
    b = torch.rand(6, generator=gen, dtype=torch.float64) * 2 - 1
    gy = torch.rand(4, 3, 6, generator=gen, dtype=torch.float64) * 2 - 1
    for t in (x, w, b):
        t.requires_grad_(True)
    y = torch.nn.functional.linear(x, w, b)
    y.backward(gy)
    write("linear.json", {
        "torch_version": torch.__version__,
        "input": tensor(x), "weight": tensor(w), "bias": tensor(b), "output": tensor(y),
        "grad_output": tensor(gy), "grad_input": tensor(x.grad), "grad_weight": tensor(w.grad),
        "grad_bias": tensor(b.grad),
    })


def cross_entropy_fixture(gen):
    n, c = 8, 5
    logits = (torch.rand(n, c, generator=gen, dtype=torch.float64) * 6 - 3)
    cases = []
    # ignore_index -100 (PyTorch's default) with two ignored rows, and a class index
    # as ignore_index, each with label smoothing 0.1, mean and sum; plus unsmoothed mean.
    settings = [
        (-100, 0.1, "mean"), (-100, 0.1, "sum"), (1, 0.1, "mean"), (1, 0.1, "sum"), (-100, 0.0, "mean"),
    ]
    for ignore_index, smoothing, reduction in settings:
        targets = torch.randint(0, c, (n,), generator=gen)
        targets[2] = ignore_index if ignore_index < 0 else targets[2]
        targets[5] = ignore_index if ignore_index < 0 else targets[5]
        if ignore_index >= 0:
            targets[3] = ignore_index
        x = logits.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(x, targets, ignore_index=ignore_index, label_smoothing=smoothing,
                                                 reduction=reduction)
        loss.backward()
        cases.append({
            "ignore_index": ignore_index, "label_smoothing": smoothing, "reduction": reduction,
            "targets": tensor(targets), "loss": loss.item(), "grad_logits": tensor(x.grad),
        })
    write("cross_entropy.json", {"torch_version": torch.__version__, "logits": tensor(logits), "cases": cases})


def sgd_fixture(gen):
    shapes = [(3, 4), (5,)]
    init = [torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1 for s in shapes]
    steps = 5
    grads = [[torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1 for s in shapes] for _ in range(steps)]
    cases = []
    for nesterov in (False, True):
        params = [p.clone().requires_grad_(True) for p in init]
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=nesterov)
        after = []
        for k in range(steps):
            for p, g in zip(params, grads[k]):
                p.grad = g.clone()
            opt.step()
            after.append([tensor(p) for p in params])
        buffers = [tensor(opt.state[p]["momentum_buffer"]) for p in params]
        cases.append({"nesterov": nesterov, "params_after_step": after, "momentum_buffers": buffers})
    write("sgd.json", {
        "torch_version": torch.__version__, "lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 5e-4,
        "initial_params": [tensor(p) for p in init], "grads": [[tensor(g) for g in step] for step in grads],
        "cases": cases,
    })


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(20240611)
    linear_fixture(gen)
    cross_entropy_fixture(gen)
    sgd_fixture(gen)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    for path in sorted(glob.glob(os.path.join(here, "fixtures_*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        importlib.import_module(name).generate()


if __name__ == "__main__":
    main()
