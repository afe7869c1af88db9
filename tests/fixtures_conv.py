"""Convolution and pooling fixtures for tests/test_pytorch_conv.cpp: torch Conv2d
forward and the gradients of input, weight and bias over stride / padding / dilation /
groups cases, and MaxPool2d, AvgPool2d and AdaptiveAvgPool2d forward and input
gradients, all in f64 on random data in [-1, 1) (no ties for max pooling)."""

import torch
import torch.nn.functional as F

from make_fixtures import tensor, write


def uniform(gen, *shape):
    return torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1


def conv_cases(gen):
    # (name, input shape, weight shape, stride, padding, dilation, groups, bias)
    settings = [
        ("basic", (2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1, True),
        ("stride 2 padding 1", (2, 3, 8, 7), (5, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1, True),
        ("dilation 2", (1, 2, 9, 9), (3, 2, 3, 3), (1, 1), (2, 2), (2, 2), 1, True),
        ("groups 2", (2, 4, 6, 6), (6, 2, 3, 3), (1, 1), (1, 1), (1, 1), 2, True),
        ("depthwise", (2, 3, 6, 5), (3, 1, 3, 3), (1, 1), (1, 1), (1, 1), 3, False),
        ("non-square", (1, 2, 9, 8), (3, 2, 2, 3), (2, 1), (1, 0), (1, 2), 1, True),
        ("1x1 no bias", (2, 4, 5, 5), (6, 4, 1, 1), (1, 1), (0, 0), (1, 1), 1, False),
    ]
    cases = []
    for name, xs, ws, stride, padding, dilation, groups, has_bias in settings:
        x = uniform(gen, *xs).requires_grad_(True)
        w = uniform(gen, *ws).requires_grad_(True)
        b = uniform(gen, ws[0]).requires_grad_(True) if has_bias else None
        y = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
        gy = uniform(gen, *y.shape)
        y.backward(gy)
        case = {
            "name": name, "stride": list(stride), "padding": list(padding), "dilation": list(dilation),
            "groups": groups, "input": tensor(x), "weight": tensor(w), "output": tensor(y),
            "grad_output": tensor(gy), "grad_input": tensor(x.grad), "grad_weight": tensor(w.grad),
        }
        if has_bias:
            case["bias"] = tensor(b)
            case["grad_bias"] = tensor(b.grad)
        cases.append(case)
    return cases


def pool_case(gen, name, shape, fn, **options):
    x = uniform(gen, *shape).requires_grad_(True)
    y = fn(x)
    gy = uniform(gen, *y.shape)
    y.backward(gy)
    return {"name": name, "input": tensor(x), "output": tensor(y), "grad_output": tensor(gy),
            "grad_input": tensor(x.grad), **options}


def pool_cases(gen):
    maxes = []
    for name, shape, k, s, p, d, ceil in [
        ("2x2", (2, 3, 8, 6), (2, 2), (2, 2), (0, 0), (1, 1), False),
        ("3x3 stride 2 padding 1", (2, 2, 9, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),
        ("dilation 2 ceil_mode", (1, 2, 9, 8), (3, 2), (2, 1), (1, 1), (2, 1), True),
    ]:
        maxes.append(pool_case(
            gen, name, shape,
            lambda x: F.max_pool2d(x, k, s, p, d, ceil_mode=ceil),
            kernel=list(k), stride=list(s), padding=list(p), dilation=list(d), ceil_mode=ceil))
    avgs = []
    for name, shape, k, s, p, ceil, include in [
        ("2x2", (2, 3, 8, 6), (2, 2), (2, 2), (0, 0), False, True),
        ("3x3 stride 2 padding 1", (2, 2, 9, 8), (3, 3), (2, 2), (1, 1), False, True),
        ("exclude pad ceil_mode", (1, 2, 7, 8), (3, 2), (2, 2), (1, 1), True, False),
        ("include pad ceil_mode", (1, 2, 7, 8), (3, 3), (2, 2), (1, 1), True, True),
    ]:
        avgs.append(pool_case(
            gen, name, shape,
            lambda x: F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=include),
            kernel=list(k), stride=list(s), padding=list(p), ceil_mode=ceil, count_include_pad=include))
    adaptive = []
    for name, shape, out in [
        ("7x7 to 3x3", (2, 3, 7, 7), (3, 3)),
        ("5x9 to 2x4", (1, 2, 5, 9), (2, 4)),
        ("global", (2, 4, 6, 5), (1, 1)),
        ("upsampling 3x4 to 5x6", (1, 2, 3, 4), (5, 6)),
    ]:
        adaptive.append(pool_case(gen, name, shape, lambda x: F.adaptive_avg_pool2d(x, out), output_size=list(out)))
    return {"max_pool2d": maxes, "avg_pool2d": avgs, "adaptive_avg_pool2d": adaptive}


def generate():
    gen = torch.Generator().manual_seed(20240703)
    write("conv2d.json", {"torch_version": torch.__version__, "cases": conv_cases(gen)})
    write("pool2d.json", {"torch_version": torch.__version__, **pool_cases(gen)})
