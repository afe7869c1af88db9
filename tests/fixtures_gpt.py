"""GPT fixtures for tests/test_models.cpp: the nanoGPT-layout decoder of
bench/compare_models.py (wte, wpe, pre-norm blocks with causal self-attention and a 4x
GELU MLP, ln_f, head tied to wte), in f64 with random weights (not the 0.02 init, so
attention is far from uniform): parameter names and shapes, logits, the mean
next-token cross-entropy and every parameter's gradient for one batch. Its attention
is F.scaled_dot_product_attention(is_causal=True) on torch 2.x and the masked softmax
written out on 1.13. Also the parameter count of GPT-2 small (nanoGPT's GPTConfig
defaults, vocab 50257)."""

import os
import sys

import torch
import torch.nn.functional as F

from make_fixtures import tensor, write

# The reference model is the benchmark's (bench/compare_models.py): one PyTorch GPT.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from compare_models import GPT  # noqa: E402


def generate():
    gen = torch.Generator().manual_seed(4004)
    config = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8)
    model = GPT(**config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1) * 0.6)
    idx = torch.randint(0, config["vocab_size"], (2, 6), generator=gen)
    targets = torch.randint(0, config["vocab_size"], (2, 6), generator=gen)
    logits = model(idx)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
    loss.backward()
    named = list(model.named_parameters())  # the tied weight once, as transformer.wte.weight
    small = GPT(**GPT.SIZES["gpt2"])
    write("gpt.json", {
        "torch_version": torch.__version__,
        "config": config,
        "parameters": [name for name, _ in named],
        "num_parameters": sum(p.numel() for _, p in named),
        "values": {name: tensor(p) for name, p in named},
        "grads": {name: tensor(p.grad) for name, p in named},
        "idx": tensor(idx), "targets": tensor(targets),
        "logits": tensor(logits), "loss": loss.item(),
        "gpt2_small_num_parameters": sum(p.numel() for p in small.parameters()),
    })
