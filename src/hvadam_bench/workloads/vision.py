"""The image-classification models of the ``classify`` suite: the CIFAR variants of VGG-11
(with batch norm), ResNet-34 and DenseNet-121 used by the AdaBelief CIFAR recipe the paper
followed (3x3 stem, no stem pooling, 32x32 inputs), and two small CNNs for the offline CPU
default. No torchvision: it does not import beside every torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
