"""PyTorch reference values for tests/test_pytorch_norm.cpp: BatchNorm2d over several
training steps then eval (outputs, all gradients, running statistics after each step),
the momentum=None / affine=False variant, and LayerNorm forward and backward."""

import torch

from make_fixtures import tensor, write


def uniform(gen, *shape, low=-1.0, high=1.0):
    return torch.rand(*shape, generator=gen, dtype=torch.float64) * (high - low) + low


def batch_norm_case(gen, momentum, affine, steps=3):
    c = 3
    bn = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=momentum, affine=affine).to(torch.float64)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(uniform(gen, c, low=0.5, high=1.5))
            bn.bias.copy_(uniform(gen, c))
    initial = {k: tensor(v) for k, v in bn.state_dict().items()}
    records = []
    # Training steps with shifted, scaled inputs (so running statistics move), then eval.
    for step in range(steps + 1):
        training = step < steps
        bn.train(training)
        x = (uniform(gen, 4, c, 3, 3) * (1.0 + step) + 0.5 * step).requires_grad_(True)
        gy = uniform(gen, 4, c, 3, 3)
        bn.zero_grad()
        y = bn(x)
        y.backward(gy)
        rec = {
            "training": training, "input": tensor(x), "grad_output": tensor(gy), "output": tensor(y),
            "grad_input": tensor(x.grad),
            "running_mean": tensor(bn.running_mean), "running_var": tensor(bn.running_var),
            "num_batches_tracked": int(bn.num_batches_tracked),
        }
        if affine:
            rec["grad_weight"] = tensor(bn.weight.grad)
            rec["grad_bias"] = tensor(bn.bias.grad)
        records.append(rec)
    return {
        "momentum": momentum, "affine": affine, "state_dict_keys": list(bn.state_dict().keys()),
        "initial_state": initial, "steps": records,
    }


def layer_norm_case(gen, shape, normalized_shape, affine):
    ln = torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=affine).to(torch.float64)
    if affine:
        with torch.no_grad():
            ln.weight.copy_(uniform(gen, *normalized_shape, low=0.5, high=1.5))
            ln.bias.copy_(uniform(gen, *normalized_shape))
    x = (uniform(gen, *shape) * 3 + 1).requires_grad_(True)
    gy = uniform(gen, *shape)
    y = ln(x)
    y.backward(gy)
    case = {
        "normalized_shape": list(normalized_shape), "affine": affine, "input": tensor(x), "grad_output": tensor(gy),
        "output": tensor(y), "grad_input": tensor(x.grad),
    }
    if affine:
        case.update({"weight": tensor(ln.weight), "bias": tensor(ln.bias), "grad_weight": tensor(ln.weight.grad),
                     "grad_bias": tensor(ln.bias.grad)})
    return case


def generate():
    gen = torch.Generator().manual_seed(3003)
    write("batch_norm.json", {
        "torch_version": torch.__version__,
        "cases": [batch_norm_case(gen, 0.1, True), batch_norm_case(gen, None, False)],
    })
    write("layer_norm.json", {
        "torch_version": torch.__version__,
        "cases": [layer_norm_case(gen, (2, 3, 4, 5), (4, 5), True), layer_norm_case(gen, (6, 7), (7,), False)],
    })
