#!/usr/bin/python3
"""PyTorch side of bench/compare_pytorch: trains the same models as tandem-compare with
SGD (lr 0.05, momentum 0.9, weight decay 5e-4) and cross-entropy (the GPTs with AdamW,
lr 6e-4, betas (0.9, 0.95), weight decay 0.1, and the mean next-token cross-entropy),
and prints one JSON line per loop variant:

  --model mlp       784-256-ReLU-10, one epoch of Fashion-MNIST, batch 128
  --model cnn       conv(1->32,3,pad 1)-BN-ReLU-maxpool2 - conv(32->64,3,pad 1)-BN-ReLU-
                    maxpool2 - flatten - linear(3136->128)-ReLU - linear(128->10),
                    one epoch of Fashion-MNIST, batch 128
  --model resnet18  CIFAR-style ResNet-18 (3x3 stem, no max-pool, BasicBlock [2,2,2,2]),
                    --warmup-steps untimed then --steps timed steps of batch 32 on
                    3x32x32 synthetic images built like Tandem's SyntheticImages
                    (a uniform [-1, 1) prototype per class plus standard normal noise)
  --model gpt2      GPT-2 small (nanoGPT's layout: 12 layers, 12 heads, 768 wide, 1024
                    positions, vocabulary 50257, head tied to the embedding), batch 8
  --model gpt-mini  nanoGPT's shakespeare_char size: 6 layers, 6 heads, 384 wide, 256
                    positions, 65 symbols, batch 8
                    (the GPTs on uniform random tokens, --warmup-steps then --steps as
                    resnet18; attention through F.scaled_dot_product_attention(is_causal)
                    from torch 2.0 on, which picks flash / memory-efficient kernels on
                    CUDA, else the masked softmax written out)

  dataloader  the idiomatic loop: torch.utils.data.DataLoader over a TensorDataset,
              shuffle=True (pin_memory on CUDA)
  indexed     the fastest reasonable loop: index pre-loaded tensors (on the target
              device) with a fresh torch.randperm each epoch
  compiled    (--compile) the indexed loop over torch.compile(model), full batches only
              (a last, smaller batch would recompile inside the timed loop); at least 3
              untimed warm-up steps, where the compilation happens

Only the training loop is timed (loader work included, data-set loading and warm-up
steps excluded). --breakdown adds where the time went, as tandem-compare does.

  --precision bf16|fp16   forward and loss under torch.autocast(device type, dtype); fp16
                          with torch.cuda.amp.GradScaler. The CPU autocast of torch 1.13
                          supports bf16 only: fp16 on the CPU prints an "unsupported" line.
  --tf32                  torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
                          on (off without it: PyTorch's own default lets cuDNN use TF32, so
                          both are set explicitly either way, as tandem-compare --tf32)
  --grad-checkpoint       activation checkpointing with the segments tandem-compare uses:
                          mlp, cnn in round(sqrt(layers)) segments of the nn.Sequential;
                          resnet18 each stage (layer1..4) in one segment per block; the
                          last segment of each is not recomputed, as checkpoint_sequential.

Peak memory: on CUDA torch.cuda.max_memory_allocated over every training step (warm-up
included; reset before the first), and that peak minus torch.cuda.memory_allocated
before the first step. On the CPU PyTorch keeps no allocator statistics, so a separate,
untimed pass of --memory-steps steps on a fresh model runs under torch.profiler with
profile_memory=True and the peak of the running sum of its allocation records (every
allocation and free of the c10 CPU allocator, in order) is reported: the bytes held at
the peak minus those held before the first step, the same quantity as tandem-compare's
peak_mem_delta_bytes (which counts its host allocator over all of its steps).
"""
import argparse
import collections
import contextlib
import math
import gzip
import json
import os
import time

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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
    raise FileNotFoundError(f"[compare_models.py] expected {name}(.gz) in {data_dir}, got neither")


def load_split(data_dir, prefix):
    images = read_idx(find(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = ((x - MEAN) / STD).reshape(-1, 1, 28, 28).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def synthetic_images(n, shape, num_classes, seed, noise=1.0):
    """n images of `shape` = prototype[label] + noise * N(0, 1), labels uniform: the same
    distribution as Tandem's data::SyntheticImages (not the same values: other RNG)."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand((num_classes,) + tuple(shape), generator=g) * 2 - 1
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = prototypes[y] + noise * torch.randn((n,) + tuple(shape), generator=g)
    return x.contiguous(), y


def loaded_blas():
    """Path of the BLAS library this process loaded (torch's matrix products on the CPU)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            name = os.path.basename(line.split()[-1])
            if name.startswith(("libblas", "libopenblas", "libmkl", "libblis")):
                return os.path.realpath(line.split()[-1])
    return "unknown"


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), as Tandem's nn::BasicBlock."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stride-1 stem, no max-pool), as Tandem's models::ResNet18;
    11,173,962 parameters for 3 channels and 10 classes."""

    def __init__(self, in_channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def checkpointed_sequential(layers, segments, x):
    """checkpoint_sequential(layers, segments, x) with the same split as torch's (segments
    of len // segments layers, the last one taking the rest and run plainly), but through
    checkpoint(use_reentrant=False): torch 1.13's checkpoint_sequential is reentrant-only,
    which gives the first segment's parameters no gradient when the input (the data)
    does not require grad."""
    layers = list(layers)
    size = len(layers) // segments

    def run(start, end):
        def forward(inp):
            for layer in layers[start:end]:
                inp = layer(inp)
            return inp
        return forward

    end = 0
    for start in range(0, size * (segments - 1), size):
        end = start + size
        x = checkpoint(run(start, end), x, use_reentrant=False)
    return run(end, len(layers))(x)


class CheckpointedSequential(nn.Sequential):
    """An nn.Sequential whose forward runs through checkpointed_sequential."""

    def __init__(self, layers, segments):
        super().__init__(*layers)
        self.segments = segments

    def forward(self, x):
        return checkpointed_sequential(self, self.segments, x)


def enable_grad_checkpointing(model):
    """Checkpointing as tandem-compare --grad-checkpoint: a Sequential in round(sqrt(L))
    segments, else each Sequential child (ResNet-18's stages), or Sequential child of a
    ModuleDict child (a GPT's transformer.h), one segment per block. Returns the model
    (the Sequential is replaced, sharing its layers) and the segments."""
    if isinstance(model, nn.Sequential):
        segments = max(1, round(math.sqrt(len(model))))
        return CheckpointedSequential(list(model), segments), segments
    total = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Sequential):
            setattr(model, name, CheckpointedSequential(list(child), len(child)))
            total += len(child)
        elif isinstance(child, nn.ModuleDict):
            for key, grandchild in list(child.items()):
                if isinstance(grandchild, nn.Sequential):
                    child[key] = CheckpointedSequential(list(grandchild), len(grandchild))
                    total += len(grandchild)
    return model, total


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if hasattr(nn.functional, "scaled_dot_product_attention"):
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch 1.x
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            y = att.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(collections.OrderedDict(
            c_fc=nn.Linear(n_embd, 4 * n_embd), gelu=nn.GELU(), c_proj=nn.Linear(4 * n_embd, n_embd)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's GPT (no dropout), as Tandem's models::GPT: the blocks are an nn.Sequential
    (transformer.h) so activation checkpointing takes the same segments."""

    SIZES = {"gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
             "gpt-mini": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)}

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.Sequential(*[Block(n_embd, n_head) for _ in range(n_layer)]), ln_f=nn.LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            elif p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif ".ln_" not in name:
                nn.init.zeros_(p)

    def forward(self, idx):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        return self.lm_head(self.transformer.ln_f(self.transformer.h(x)))


def random_tokens(n, size, seed):
    """n sequences of block_size + 1 uniform random tokens: inputs and next-token targets."""
    cfg = GPT.SIZES[size]
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, cfg["vocab_size"], (n, cfg["block_size"] + 1), generator=g)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def loss_of(logits, y):
    """Cross-entropy of classifier logits (N, C), or the mean over every position of a
    language model's logits (N, T, V)."""
    if logits.dim() == 3:
        return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
    return nn.functional.cross_entropy(logits, y)


def build_model(name):
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    if name in GPT.SIZES:
        return GPT(**GPT.SIZES[name])
    return ResNet18()


def make_model(name, device, seed, grad_checkpoint=False):
    torch.manual_seed(seed)
    model = build_model(name).to(device)
    segments = 0
    if grad_checkpoint:
        model, segments = enable_grad_checkpointing(model)
    if name in GPT.SIZES:
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model, optimizer, segments


class Precision:
    """The autocast context and GradScaler of one --precision on one device."""

    DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, name, device):
        self.name, self.device = name, device
        enabled = name == "fp16" and device.type == "cuda"
        # torch.amp.GradScaler from torch 2.3 on (torch.cuda.amp's is deprecated there).
        if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
            self.scaler = torch.amp.GradScaler("cuda", enabled=enabled)
        else:
            self.scaler = torch.cuda.amp.GradScaler(enabled=enabled)

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.DTYPES[self.name])

    def backward_and_step(self, loss, optimizer):
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Breakdown:
    """Milliseconds per phase and, for nn.Sequential models, per child (forward and
    backward), synchronised on CUDA; mirrors tandem-compare --breakdown."""

    def __init__(self, mode, device):
        self.mode, self.device = mode, device
        self.phases = collections.defaultdict(float)
        self.layer_fwd = collections.defaultdict(float)
        self.layer_bwd = collections.defaultdict(float)
        self.names = []
        self.mark = time.perf_counter()

    def start(self):
        self.mark = time.perf_counter()

    def lap(self, name):
        sync(self.device)
        now = time.perf_counter()
        self.phases[name] += (now - self.mark) * 1e3
        self.mark = now

    def result(self):
        out = {"phases_ms": dict(self.phases)}
        if self.mode == "layers":
            out["phases_ms"]["forward"] = sum(self.layer_fwd.values())
            out["phases_ms"]["backward"] = sum(self.layer_bwd.values())
            out["layers_ms"] = [{"name": n, "forward_ms": self.layer_fwd[i], "backward_ms": self.layer_bwd[i]}
                                for i, n in enumerate(self.names)]
        return out


def train_step(model, optimizer, xb, yb, prec, bd=None):
    if bd is None:
        with prec.autocast():
            loss = loss_of(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        prec.backward_and_step(loss, optimizer)
        return loss
    if bd.mode == "phases":
        bd.start()
        with prec.autocast():
            logits = model(xb)
            bd.lap("forward")
            loss = loss_of(logits, yb)
            bd.lap("loss")
        optimizer.zero_grad(set_to_none=True)
        bd.lap("zero_grad")
        prec.scaler.scale(loss).backward()
        bd.lap("backward")
        prec.scaler.step(optimizer)
        prec.scaler.update()
        bd.lap("step")
        return loss
    # Per child: each child's input is a detached leaf that requires grad (except the
    # data), and backward runs segment by segment, as tandem-compare --breakdown layers.
    children = list(model)
    bd.names = [f"{i} {type(c).__name__}" for i, c in enumerate(children)]
    inputs, outputs, x = [], [], xb
    for i, child in enumerate(children):
        inp = x if i == 0 else x.detach().requires_grad_()
        start = time.perf_counter()
        with prec.autocast():
            x = child(inp)
        sync(bd.device)
        bd.layer_fwd[i] += (time.perf_counter() - start) * 1e3
        inputs.append(inp)
        outputs.append(x)
    logits = x.detach().requires_grad_()
    bd.start()
    with prec.autocast():
        loss = nn.functional.cross_entropy(logits, yb)
    bd.lap("loss")
    optimizer.zero_grad(set_to_none=True)
    bd.lap("zero_grad")
    prec.scaler.scale(loss).backward()
    bd.lap("loss_backward")
    grad = logits.grad
    for i in reversed(range(len(children))):
        if not outputs[i].requires_grad:
            break  # a child before any parameter (the MLP's Flatten on the data) has nothing to do
        start = time.perf_counter()
        outputs[i].backward(grad)
        sync(bd.device)
        bd.layer_bwd[i] += (time.perf_counter() - start) * 1e3
        if i > 0:
            grad = inputs[i].grad
    bd.start()
    prec.scaler.step(optimizer)
    prec.scaler.update()
    bd.lap("step")
    return loss


class Loop:
    """Counts steps, skips the timer over the warm-up ones and stops after max_steps."""

    def __init__(self, warmup, max_steps, bd, device, prec):
        self.warmup, self.max_steps, self.bd, self.device, self.prec = warmup, max_steps, bd, device, prec
        self.seen, self.samples, self.loss = 0, 0, None
        self.start = time.perf_counter()

    def done(self):
        return self.max_steps and self.seen - self.warmup >= self.max_steps

    def step(self, model, optimizer, xb, yb):
        timed = self.seen >= self.warmup
        if timed and self.bd is not None:
            self.bd.lap("loader")
        self.loss = train_step(model, optimizer, xb, yb, self.prec, self.bd if timed else None)
        self.seen += 1
        if timed:
            self.samples += xb.shape[0]
        elif self.seen == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        if self.bd is not None:
            self.bd.start()


def train_dataloader(model, optimizer, x, y, device, epochs, batch_size, loop):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size,
                                         shuffle=True, pin_memory=device.type == "cuda")
    for _ in range(epochs):
        for xb, yb in loader:
            if loop.done():
                return
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            loop.step(model, optimizer, xb, yb)


def train_indexed(model, optimizer, x, y, device, epochs, batch_size, loop, full_batches_only=False):
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for start in range(0, n, batch_size):
            if loop.done():
                return
            if full_batches_only and start + batch_size > n:
                break  # the epoch's last, smaller batch (it would recompile a compiled model)
            idx = perm[start:start + batch_size]
            loop.step(model, optimizer, x[idx], y[idx])


def cpu_peak_memory(train, args_for_train, warmup, steps, device, prec):
    """Peak bytes held by CPU tensors during `steps` training steps minus those held
    before the first: the running sum of the profiler's allocation records (c10 CPU
    allocator, every allocation and free in order). An untimed pass of its own."""
    loop = Loop(warmup, steps, None, device, prec)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        train(*args_for_train, loop)
    records = [e for e in prof.profiler.kineto_results.events()
               if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    # Stable: ties keep the order of recording. (torch 1.13 has start_us, 2.x start_ns.)
    records.sort(key=lambda e: e.start_ns() if hasattr(e, "start_ns") else e.start_us())
    held = peak = 0
    for e in records:
        held += e.nbytes()
        peak = max(peak, held)
    return peak


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
    parser.add_argument("--model", choices=["mlp", "cnn", "resnet18", "gpt2", "gpt-mini"], default="mlp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs (mlp, cnn)")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="0: 128 for mlp and cnn, 32 for resnet18, 8 for the GPTs")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of resnet18 and the GPTs")
    parser.add_argument("--warmup-steps", type=int, default=-1,
                        help="untimed steps first (-1: 0 for mlp and cnn, else 3)")
    parser.add_argument("--max-batches", type=int, default=0, help="stop after this many timed batches (0: no limit)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads (default: number of cores)")
    parser.add_argument("--variant", choices=["dataloader", "indexed", "all"], default="all")
    parser.add_argument("--compile", action="store_true",
                        help="also run the compiled variant: the indexed loop over torch.compile(model)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 in f32 matrix products and convolutions (CUDA); off: both flags off")
    parser.add_argument("--breakdown", choices=["none", "phases", "layers"], default="none",
                        help="time loader/forward/loss/zero_grad/backward/step; layers: also per child (mlp, cnn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="bf16/fp16: torch.autocast around forward and loss; fp16 with GradScaler (CUDA only)")
    parser.add_argument("--grad-checkpoint", action="store_true",
                        help="activation checkpointing with tandem-compare's segments (see above)")
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="steps of the untimed profiled pass that measures CPU peak memory (0: skip)")
    args = parser.parse_args()

    fashion = args.model in ("mlp", "cnn")
    gpt = args.model in GPT.SIZES
    batch_size = args.batch_size or (128 if fashion else 8 if gpt else 32)
    warmup = args.warmup_steps if args.warmup_steps >= 0 else (0 if fashion else 3)
    epochs = args.epochs if fashion else 1
    max_steps = args.max_batches if fashion else args.steps
    if args.breakdown == "layers" and not fashion:
        raise SystemExit(f"[compare_models.py] expected --breakdown layers with a Sequential model (mlp, cnn), "
                         f"got {args.model}; use --breakdown phases")
    if args.breakdown == "layers" and args.grad_checkpoint:
        raise SystemExit("[compare_models.py] expected --breakdown none or phases with --grad-checkpoint, got layers "
                         "(it runs each child on its own, past the checkpointed segments)")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"[compare_models.py] expected a CUDA-enabled PyTorch with a GPU for --device {args.device}, "
                         f"got torch {torch.__version__} with torch.cuda.is_available() == False "
                         f"(Debian's python3-torch is built without CUDA)")
    variants = ["dataloader", "indexed"] if args.variant == "all" else [args.variant]
    if args.compile:
        variants.append("compiled")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    if args.precision == "fp16" and device.type == "cpu":
        # torch 1.13's CPU autocast rejects float16 (and newer ones are not in Debian).
        for variant in variants:
            print(json.dumps({"framework": "pytorch", "model": args.model, "variant": variant,
                              "precision": args.precision, "device": str(device), "torch_version": torch.__version__,
                              "unsupported": f"torch {torch.__version__} CPU autocast supports bfloat16 only"}),
                  flush=True)
        return
    prec = Precision(args.precision, device)
    load_start = time.perf_counter()
    if fashion:
        x_train, y_train = load_split(args.data, "train")
        x_test, y_test = load_split(args.data, "t10k")
    elif gpt:
        x_train, y_train = random_tokens((warmup + args.steps) * batch_size, args.model, args.seed)
    else:
        x_train, y_train = synthetic_images((warmup + args.steps) * batch_size, (3, 32, 32), 10, args.seed)
    load_s = time.perf_counter() - load_start

    for variant in variants:
        model, optimizer, segments = make_model(args.model, device, args.seed, args.grad_checkpoint)
        variant_warmup = warmup
        if variant == "dataloader":
            x, y, train = x_train, y_train, train_dataloader
        elif variant == "compiled":
            if not hasattr(torch, "compile"):
                print(json.dumps({"framework": "pytorch", "model": args.model, "variant": variant,
                                  "precision": args.precision, "device": str(device),
                                  "torch_version": torch.__version__,
                                  "unsupported": f"torch {torch.__version__} has no torch.compile (2.0 and later)"}),
                      flush=True)
                continue
            model = torch.compile(model)
            variant_warmup = max(warmup, 3)

            def train(*a, **kw):
                train_indexed(*a, **kw, full_batches_only=True)
            x, y = x_train.to(device), y_train.to(device)
        else:
            x, y, train = x_train.to(device), y_train.to(device), train_indexed
        bd = Breakdown(args.breakdown, device) if args.breakdown != "none" else None
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            mem_before = torch.cuda.memory_allocated(device)
        loop = Loop(variant_warmup, max_steps, bd, device, prec)
        train(model, optimizer, x, y, device, epochs, batch_size, loop)
        sync(device)
        train_s = time.perf_counter() - loop.start
        memory = {}
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            memory = {"peak_mem_bytes": peak, "mem_before_bytes": mem_before, "peak_mem_delta_bytes": peak - mem_before,
                      "memory_source": "torch.cuda.max_memory_allocated"}
        elif variant == "compiled":
            memory = {"memory_source": "not measured on the CPU for the compiled variant"}
        elif args.memory_steps > 0:
            m_model, m_opt, _ = make_model(args.model, device, args.seed, args.grad_checkpoint)
            m_steps = min(args.memory_steps, warmup + max_steps) if max_steps else args.memory_steps
            delta = cpu_peak_memory(train, (m_model, m_opt, x, y, device, 1, batch_size), 0, m_steps, device,
                                    Precision(args.precision, device))
            memory = {"peak_mem_delta_bytes": delta, "memory_steps": m_steps,
                      "memory_source": f"torch.profiler profile_memory, separate untimed pass of {m_steps} steps"}
        result = {
            "framework": "pytorch",
            "model": args.model,
            "variant": variant,
            "samples_per_s": loop.samples / train_s,
            "test_acc": accuracy(model, x_test, y_test, device) if fashion else None,
            "epochs": epochs,
            "device": str(device),
            "batch_size": batch_size,
            "train_steps": loop.seen - variant_warmup,
            "warmup_steps": variant_warmup,
            "train_seconds": train_s,
            "load_seconds": load_s,
            "final_loss": loop.loss.item(),
            "precision": args.precision,
            "tf32": args.tf32,
            "grad_checkpoint": args.grad_checkpoint,
            "checkpoint_segments": segments,
            "torch_version": torch.__version__,
            "torch_num_threads": torch.get_num_threads(),
            "blas": loaded_blas(),
            "mkldnn": torch.backends.mkldnn.is_available(),
        }
        if gpt:
            result["sequence_length"] = GPT.SIZES[args.model]["block_size"]
            result["tokens_per_s"] = result["samples_per_s"] * result["sequence_length"]
            result["attention"] = ("F.scaled_dot_product_attention"
                                   if hasattr(nn.functional, "scaled_dot_product_attention") else "masked softmax")
        result.update(memory)
        if prec.scaler.is_enabled():
            # GradScaler does not count skipped steps; each skip halves the scale once.
            result["grad_scale"] = prec.scaler.get_scale()
        if bd is not None:
            result.update(bd.result())
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
