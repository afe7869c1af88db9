"""A safetensors file written by PyTorch's safetensors package (tests/test_safetensors.cpp
reads it back), and a JSON listing of what it holds. Needs `safetensors` for the
Python that has torch (/usr/bin/python3 -m pip install safetensors)."""

import os

import torch
from safetensors.torch import save_file

from make_fixtures import OUT, tensor, write


def generate():
    gen = torch.Generator().manual_seed(5150)
    tensors = {
        "fc.weight": torch.rand(3, 4, generator=gen, dtype=torch.float64).to(torch.float32),
        "fc.bias": torch.rand(3, generator=gen, dtype=torch.float64),
        "half": torch.rand(2, 2, generator=gen).to(torch.float16),
        "bhalf": torch.rand(5, generator=gen).to(torch.bfloat16),
        "steps": torch.tensor([1, -2, 3], dtype=torch.int64),
        "ids": torch.tensor([[7, 8]], dtype=torch.int32),
        "bytes": torch.tensor([0, 255], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
    }
    save_file(tensors, os.path.join(OUT, "torch.safetensors"), metadata={"format": "pt", "note": "tandem fixture"})
    write("torch_safetensors.json", {
        "torch_version": torch.__version__,
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), **tensor(v.to(torch.float64) if v.is_floating_point() else v.to(torch.int64))}
                    for k, v in tensors.items()},
    })
