"""Model fixtures: state_dict names and shapes and parameter counts of the CNN and of
torchvision-style CIFAR ResNet-18 (3x3 stride-1 stem, no max-pool; torchvision's
names: downsample, fc), built here in torch, for tests/test_models.cpp."""

import torch
import torch.nn as nn

from make_fixtures import write


def cnn(in_channels, image_size):
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, 10))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet18(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, width in enumerate([64, 128, 256, 512]):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)


def describe(model):
    return {
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "parameters": [name for name, _ in model.named_parameters()],
        "state_dict": [[name, list(t.shape)] for name, t in model.state_dict().items()],
    }


def generate():
    write("models.json", {
        "torch_version": torch.__version__,
        "cnn_1x28": describe(cnn(1, 28)),
        "cnn_3x32": describe(cnn(3, 32)),
        "resnet18_3": describe(ResNet18(3, 10)),
        "resnet18_1": describe(ResNet18(1, 10)),
    })
