"""Image-classification data and models for the ``classify`` suite.

Data: scikit-learn's 8x8 digits and MNIST-1D (generated offline with ``mnist1d``'s
``make_dataset``, never its downloading ``get_dataset``), and CIFAR-10/100 read from the
python-pickle archives the user downloaded (``cifar-10-batches-py/`` or ``cifar-100-python/``).
Every dataset is split once, with a fixed seed, into train / validation / test; the validation
part is held out of the training data and serves the learning-rate selection.

Models: the CIFAR variants of VGG-11 (with batch norm), ResNet-34 and DenseNet-121 used by the
AdaBelief CIFAR recipe the paper followed (3x3 stem, no stem pooling, 32x32 inputs), and two
small CNNs for the offline CPU default. No torchvision: it does not import beside every torch.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvadam_bench.data.cifar import read_cifar

SPLIT_SEED = 0  # the validation hold-out is the same for every trial, optimizer and seed


@dataclass(frozen=True)
class Splits:
    """Inputs (float, or uint8 images for CIFAR) and integer labels of the three splits."""

    train: tuple[Tensor, Tensor]
    valid: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: int


def hold_out(x: Tensor, y: Tensor, fraction: float) -> tuple[tuple, tuple]:
    """(train, held-out) parts of (x, y); the held-out part is a fixed random ``fraction``."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    count = max(1, round(len(y) * fraction))
    kept, held = order[count:], order[:count]
    return (x[kept], y[kept]), (x[held], y[held])


# --- offline data for the CPU default -----------------------------------------------------


@functools.lru_cache(maxsize=1)
def digits_splits() -> Splits:
    """scikit-learn's 1797 digits as 1x8x8 images in [0, 1]: 20 % test, then 20 % of the rest
    held out for validation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    rest, test = hold_out(x, y, 0.2)
    train, valid = hold_out(*rest, 0.2)
    return Splits(train, valid, test, classes=10)


@functools.lru_cache(maxsize=1)
def mnist1d_splits() -> Splits:
    """MNIST-1D with the package's default arguments (5000 sequences of length 40, 4000 train
    and 1000 test), generated locally; 20 % of the training part is held out for validation."""
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds Python's and NumPy's global RNGs: leave them as they were.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    x = torch.tensor(data["x"], dtype=torch.float32)[:, None, :]
    y = torch.tensor(data["y"], dtype=torch.long)
    x_test = torch.tensor(data["x_test"], dtype=torch.float32)[:, None, :]
    y_test = torch.tensor(data["y_test"], dtype=torch.long)
    train, valid = hold_out(x, y, 0.2)
    return Splits(train, valid, (x_test, y_test), classes=10)


@functools.lru_cache(maxsize=2)
def cifar_splits(data_dir: str, dataset: str, valid_fraction: float = 0.1) -> Splits:
    """CIFAR with ``valid_fraction`` of the training images (5000 of 50000) held out."""
    train_x, train_y, test_x, test_y, names = read_cifar(data_dir, dataset)
    train, valid = hold_out(train_x, train_y, valid_fraction)
    return Splits(train, valid, (test_x, test_y), classes=len(names))


def channel_statistics(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1]."""
    scaled = images.to(torch.float32).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return scaled.mean(dim=1), scaled.std(dim=1)


def random_crop_flip(images: Tensor, padding: int = 4) -> Tensor:
    """The standard CIFAR augmentation, batched: a random crop of the zero-padded image
    (offsets drawn per image) and a horizontal flip with probability 1/2. The random numbers
    come from torch's global CPU generator, so a checkpointed RNG state replays them."""
    count, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = torch.randint(0, 2 * padding + 1, (count,)).to(images.device)
    cols = torch.randint(0, 2 * padding + 1, (count,)).to(images.device)
    flip = (torch.rand(count) < 0.5).to(images.device)
    row_index = rows[:, None] + torch.arange(height, device=images.device)  # (count, height)
    col_index = cols[:, None] + torch.arange(width, device=images.device)
    col_index = torch.where(flip[:, None], col_index.flip(1), col_index)
    batch = torch.arange(count, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, row_index[:, :, None], col_index[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


# --- models ---------------------------------------------------------------------------------


def _conv_bn(conv: nn.Module, channels: int, dims: int = 2) -> list[nn.Module]:
    norm = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    return [conv, norm, nn.ReLU(inplace=True)]


class DigitsCNN(nn.Sequential):
    """A small 2-D CNN for 1x8x8 digits: three 3x3 conv layers, two poolings, a linear head
    (about 24k parameters)."""

    def __init__(self, classes: int = 10, width: int = 32):
        super().__init__(
            *_conv_bn(nn.Conv2d(1, width // 2, 3, padding=1, bias=False), width // 2),
            *_conv_bn(nn.Conv2d(width // 2, width, 3, padding=1, bias=False), width),
            nn.MaxPool2d(2),  # 4x4
            *_conv_bn(nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), 2 * width),
            nn.MaxPool2d(2),  # 2x2
            nn.Flatten(),
            nn.Linear(2 * width * 4, classes),
        )


class Mnist1dCNN(nn.Sequential):
    """A small 1-D CNN for MNIST-1D sequences of length 40 (about 40k parameters)."""

    def __init__(self, classes: int = 10, width: int = 32, length: int = 40):
        super().__init__(
            *_conv_bn(nn.Conv1d(1, width, 5, padding=2, bias=False), width, dims=1),
            nn.MaxPool1d(2),
            *_conv_bn(nn.Conv1d(width, width, 3, padding=1, bias=False), width, dims=1),
            nn.MaxPool1d(2),
            *_conv_bn(nn.Conv1d(width, width, 3, padding=1, bias=False), width, dims=1),
            nn.Flatten(),
            nn.Linear(width * (length // 4), classes),
        )


VGG11_LAYERS = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")


class VGG(nn.Module):
    """VGG with batch norm for 32x32 inputs: the five poolings leave 1x1x512, read by one
    linear layer (the CIFAR variant, about 9.2M parameters for VGG-11)."""

    def __init__(self, layers=VGG11_LAYERS, classes: int = 10):
        super().__init__()
        modules, channels = [], 3
        for layer in layers:
            if layer == "pool":
                modules.append(nn.MaxPool2d(2))
            else:
                modules += _conv_bn(nn.Conv2d(channels, layer, 3, padding=1, bias=False), layer)
                channels = layer
        self.features = nn.Sequential(*modules)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (a strided 1x1 projection when the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(nn.Conv2d(inputs, outputs, 3, stride, padding=1, bias=False), outputs),
            nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for 32x32 inputs: a 3x3 stem without pooling, four stages of basic blocks at
    64-512 channels, global average pooling (ResNet-34: blocks (3, 4, 6, 3), about 21M)."""

    def __init__(self, blocks=(3, 4, 6, 3), classes: int = 10):
        super().__init__()
        stages, channels = [], 64
        for stage, count in enumerate(blocks):
            width = 64 * 2**stage
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                stages.append(BasicBlock(channels, width, stride))
                channels = width
        self.body = nn.Sequential(
            *_conv_bn(nn.Conv2d(3, 64, 3, padding=1, bias=False), 64),
            *stages,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv to 4·growth channels, BN-ReLU-3x3 conv to ``growth`` new channels,
    concatenated to the input."""

    def __init__(self, inputs: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(inputs),
            nn.ReLU(inplace=True),
            nn.Conv2d(inputs, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.body(x), x], dim=1)


class DenseNet(nn.Module):
    """DenseNet-BC for 32x32 inputs: a 3x3 stem to 2·growth channels, dense blocks separated
    by transitions that halve the channels and the resolution (DenseNet-121: blocks
    (6, 12, 24, 16), growth 32, about 7M parameters)."""

    def __init__(self, blocks=(6, 12, 24, 16), growth: int = 32, classes: int = 10):
        super().__init__()
        channels = 2 * growth
        modules: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False)]
        for index, count in enumerate(blocks):
            for _ in range(count):
                modules.append(DenseLayer(channels, growth))
                channels += growth
            if index < len(blocks) - 1:
                reduced = channels // 2
                modules += [
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(channels, reduced, 1, bias=False),
                    nn.AvgPool2d(2),
                ]
                channels = reduced
        modules += [
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        ]
        self.body = nn.Sequential(*modules)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


def vgg11(classes: int = 10) -> nn.Module:
    return VGG(VGG11_LAYERS, classes)


def resnet34(classes: int = 10) -> nn.Module:
    return ResNet((3, 4, 6, 3), classes)


def densenet121(classes: int = 10) -> nn.Module:
    return DenseNet((6, 12, 24, 16), 32, classes)


CIFAR_MODELS = {"vgg11": vgg11, "resnet34": resnet34, "densenet121": densenet121}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
