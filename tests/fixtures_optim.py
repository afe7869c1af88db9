"""PyTorch references for optim/ (tests/test_pytorch_optim.cpp): five Adam and AdamW
steps in f64 (L2 and decoupled weight decay, AMSGrad, a parameter that misses its
first step), each LR schedule's sequence, and clip_grad_norm_ for 2-, inf- and 3-norms."""

import math
import warnings

import torch

from make_fixtures import tensor, write


def adam_fixture(gen):
    shapes = [(3, 4), (5,), (2, 3)]
    init = [torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1 for s in shapes]
    steps = 5
    grads = [[torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1 for s in shapes] for _ in range(steps)]
    # Parameter 1 has no gradient on the first step: its step count (bias correction) lags.
    grads[0][1] = None
    settings = [
        ("Adam", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)),
        ("Adam", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=False)),
        ("Adam", dict(lr=0.02, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, amsgrad=True)),
        ("AdamW", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False)),
        ("AdamW", dict(lr=0.03, betas=(0.85, 0.98), eps=1e-7, weight_decay=0.2, amsgrad=True)),
    ]
    cases = []
    for kind, opts in settings:
        params = [p.clone().requires_grad_(True) for p in init]
        opt = getattr(torch.optim, kind)(params, **opts)
        after = []
        for k in range(steps):
            for p, g in zip(params, grads[k]):
                p.grad = None if g is None else g.clone()
            opt.step()
            after.append([tensor(p) for p in params])
        state = [opt.state[p] for p in params]
        case = {"optimizer": kind, "lr": opts["lr"], "betas": list(opts["betas"]), "eps": opts["eps"],
                "weight_decay": opts["weight_decay"], "amsgrad": opts["amsgrad"], "params_after_step": after,
                "exp_avg": [tensor(s["exp_avg"]) for s in state],
                "exp_avg_sq": [tensor(s["exp_avg_sq"]) for s in state],
                "step": [float(s["step"]) for s in state]}
        if opts["amsgrad"]:
            case["max_exp_avg_sq"] = [tensor(s["max_exp_avg_sq"]) for s in state]
        cases.append(case)
    write("adam.json", {
        "torch_version": torch.__version__, "initial_params": [tensor(p) for p in init],
        "grads": [[None if g is None else tensor(g) for g in step] for step in grads], "cases": cases,
    })


def lr_sequence(make, group_lrs, steps):
    """lrs of every group right after construction and after each of `steps` steps."""
    params = [torch.zeros(1, requires_grad=True) for _ in group_lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, group_lrs)], lr=group_lrs[0])
    sched = make(opt)
    seq = [[g["lr"] for g in opt.param_groups]]
    for _ in range(steps):
        opt.step()
        sched.step()
        seq.append([g["lr"] for g in opt.param_groups])
    return seq


def schedule_fixture():
    S = torch.optim.lr_scheduler
    cases = [
        # Warm-up for 5 steps, then cosine over 30 (and 5 steps past its end).
        {"name": "warmup_cosine", "start_factor": 0.1, "warmup_iters": 5, "T_max": 30, "eta_min": 1e-4,
         "make": lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.1, total_iters=5),
                                              S.CosineAnnealingLR(o, T_max=30, eta_min=1e-4)], milestones=[5]),
         "steps": 40},
        {"name": "warmup_step", "start_factor": 0.25, "warmup_iters": 3, "step_size": 4, "gamma": 0.5,
         "make": lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.25, total_iters=3),
                                              S.StepLR(o, step_size=4, gamma=0.5)], milestones=[3]),
         "steps": 32},
        {"name": "linear", "start_factor": 0.2, "warmup_iters": 8,
         "make": lambda o: S.LinearLR(o, start_factor=0.2, total_iters=8), "steps": 32},
        {"name": "step", "step_size": 7, "gamma": 0.3,
         "make": lambda o: S.StepLR(o, step_size=7, gamma=0.3), "steps": 32},
        {"name": "cosine", "T_max": 12, "eta_min": 0.001,
         "make": lambda o: S.CosineAnnealingLR(o, T_max=12, eta_min=0.001), "steps": 36},
        # lambda e: 0.95^e / (1 + 0.1·e)
        {"name": "lambda", "make": lambda o: S.LambdaLR(o, lambda e: 0.95 ** e / (1 + 0.1 * e)), "steps": 32},
    ]
    out = []
    for c in cases:
        entry = {k: v for k, v in c.items() if k not in ("make", "steps")}
        entry["group_lrs"] = [0.1, 0.02]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry["lrs"] = lr_sequence(c["make"], entry["group_lrs"], c["steps"])
        out.append(entry)
    write("schedule.json", {"torch_version": torch.__version__, "cases": out})


def clip_fixture(gen):
    shapes = [(4, 5), (7,), (2, 3, 2)]
    grads = [torch.rand(s, generator=gen, dtype=torch.float64) * 2 - 1 for s in shapes]
    cases = []
    for max_norm, norm_type in [(1.0, 2.0), (100.0, 2.0), (0.5, math.inf), (100.0, math.inf), (0.7, 3.0)]:
        params = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
        cases.append({"max_norm": max_norm, "norm_type": "inf" if math.isinf(norm_type) else norm_type,
                      "total_norm": total.item(), "grads_after": [tensor(p.grad) for p in params]})
    write("clip_grad_norm.json", {"torch_version": torch.__version__, "grads": [tensor(g) for g in grads],
                                  "cases": cases})


def generate():
    gen = torch.Generator().manual_seed(3303)
    adam_fixture(gen)
    schedule_fixture()
    clip_fixture(gen)
