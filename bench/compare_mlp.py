#!/usr/bin/python3
"""PyTorch side of bench/compare_pytorch: trains the same 784-256-ReLU-10 MLP as
tandem-compare-mlp on Fashion-MNIST (batch 128, SGD lr 0.05 momentum 0.9 weight decay
5e-4, cross-entropy, reshuffled each epoch) and prints one JSON line per loop variant:

  dataloader  the idiomatic loop: torch.utils.data.DataLoader over a TensorDataset,
              shuffle=True (pin_memory on CUDA), batch 128
  indexed     the fastest reasonable loop: index pre-loaded tensors (on the target
              device) with a fresh torch.randperm each epoch

Only the training loop is timed (loader work included, data-set loading excluded).
"""
import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
from torch import nn

MEAN, STD = 0.2860, 0.3530  # the training set's statistics, as Tandem's FashionMNIST uses


def read_idx(path):
    """Reads an IDX file (gzip-compressed or not) into a numpy array of its shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, name):
    for candidate in (name + ".gz", name):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"[compare_mlp.py] expected {name}(.gz) in {data_dir}, got neither")


def load_split(data_dir, prefix):
    images = read_idx(find(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = ((x - MEAN) / STD).reshape(-1, 1, 28, 28).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def loaded_blas():
    """Path of the BLAS library this process loaded (torch's matrix products on the CPU)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            name = os.path.basename(line.split()[-1])
            if name.startswith(("libblas", "libopenblas", "libmkl", "libblis")):
                return os.path.realpath(line.split()[-1])
    return "unknown"


def make_model(device, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, optimizer


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, xb, yb):
    loss = nn.functional.cross_entropy(model(xb), yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def train_dataloader(model, optimizer, x, y, device, epochs, batch_size):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size,
                                         shuffle=True, pin_memory=device.type == "cuda")
    samples, loss = 0, None
    for _ in range(epochs):
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            loss = train_step(model, optimizer, xb, yb)
            samples += xb.shape[0]
    return samples, loss


def train_indexed(model, optimizer, x, y, device, epochs, batch_size):
    n = x.shape[0]
    samples, loss = 0, None
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            loss = train_step(model, optimizer, x[idx], y[idx])
            samples += idx.shape[0]
    return samples, loss


@torch.no_grad()
def accuracy(model, x, y, device):
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], 1000):
        xb = x[start:start + 1000].to(device)
        yb = y[start:start + 1000].to(device)
        correct += (model(xb).argmax(1) == yb).sum().item()
    model.train()
    return correct / x.shape[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads (default: number of cores)")
    parser.add_argument("--variant", choices=["dataloader", "indexed", "all"], default="all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"[compare_mlp.py] expected a CUDA-enabled PyTorch with a GPU for --device {args.device}, "
                         f"got torch {torch.__version__} with torch.cuda.is_available() == False "
                         f"(Debian's python3-torch is built without CUDA)")
    load_start = time.perf_counter()
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "t10k")
    load_s = time.perf_counter() - load_start

    variants = ["dataloader", "indexed"] if args.variant == "all" else [args.variant]
    for variant in variants:
        model, optimizer = make_model(device, args.seed)
        if variant == "dataloader":
            x, y, train = x_train, y_train, train_dataloader
        else:
            x, y, train = x_train.to(device), y_train.to(device), train_indexed
        sync(device)
        start = time.perf_counter()
        samples, loss = train(model, optimizer, x, y, device, args.epochs, args.batch_size)
        sync(device)
        train_s = time.perf_counter() - start
        print(json.dumps({
            "framework": "pytorch",
            "variant": variant,
            "samples_per_s": samples / train_s,
            "test_acc": accuracy(model, x_test, y_test, device),
            "epochs": args.epochs,
            "device": str(device),
            "batch_size": args.batch_size,
            "train_seconds": train_s,
            "load_seconds": load_s,
            "final_loss": loss.item(),
            "torch_version": torch.__version__,
            "torch_num_threads": torch.get_num_threads(),
            "blas": loaded_blas(),
        }), flush=True)


if __name__ == "__main__":
    main()
