"""The GAN study's networks: MLPs for the CPU problems; for CIFAR-10 a DCGAN-style generator
and critic (WGAN, WGAN-GP) and a ResNet generator and critic (SN-GAN, spectral norm)."""

from __future__ import annotations

import torch
from torch import nn

# ---- networks -----------------------------------------------------------------------------


def _spectral(module: nn.Module) -> nn.Module:
    """Spectral normalisation on every linear and convolution layer of ``module``."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            _spectral(child)
    return module


def mlp(inputs: int, width: int, outputs: int) -> nn.Sequential:
    """Two hidden ReLU layers: the CPU default's generators and critics."""
    return nn.Sequential(
        nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, outputs),
    )  # fmt: skip


class DcganGenerator(nn.Module):
    """The "vanilla CNN" generator of WGAN-GP's CIFAR-10 experiments: a projection to 4x4,
    three stride-2 transposed convolutions with batch norm, tanh."""

    def __init__(self, noise_dim: int, width: int):
        super().__init__()
        self.width = width
        self.project = nn.Sequential(
            nn.Linear(noise_dim, 16 * 4 * width), nn.BatchNorm1d(16 * 4 * width), nn.ReLU()
        )
        self.body = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh(),
        )  # fmt: skip

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(noise).reshape(-1, 4 * self.width, 4, 4))


class DcganCritic(nn.Module):
    """Three stride-2 convolutions with leaky ReLUs and a linear score; no batch norm, which
    the gradient penalty forbids."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(16 * 4 * width, 1),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class _UpBlock(nn.Module):
    """Pre-activation residual block that doubles the resolution (SN-GAN's generator)."""

    def __init__(self, channels: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
        )  # fmt: skip
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class _DownBlock(nn.Module):
    """Residual critic block, halving the resolution when ``down``; the first block of the
    critic (``first``) has no activation before its first convolution."""

    def __init__(self, inputs: int, outputs: int, down: bool, first: bool = False):
        super().__init__()
        pool = [nn.AvgPool2d(2)] if down else []
        self.residual = nn.Sequential(
            *([] if first else [nn.ReLU()]), nn.Conv2d(inputs, outputs, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, 1, 1), *pool,
        )  # fmt: skip
        if first:
            self.shortcut = nn.Sequential(*pool, nn.Conv2d(inputs, outputs, 1))
        elif down or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1), *pool)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class ResNetGenerator(nn.Module):
    """SN-GAN's CIFAR-10 ResNet generator: 4x4 projection, three up-blocks, BN-ReLU-conv-tanh."""

    def __init__(self, noise_dim: int, width: int):
        super().__init__()
        self.channels = 2 * width
        self.project = nn.Linear(noise_dim, 16 * self.channels)
        self.blocks = nn.Sequential(*(_UpBlock(self.channels) for _ in range(3)))
        self.out = nn.Sequential(
            nn.BatchNorm2d(self.channels), nn.ReLU(), nn.Conv2d(self.channels, 3, 3, 1, 1),
            nn.Tanh(),
        )  # fmt: skip

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        x = self.project(noise).reshape(-1, self.channels, 4, 4)
        return self.out(self.blocks(x))


class ResNetCritic(nn.Module):
    """SN-GAN's CIFAR-10 ResNet critic: four residual blocks, ReLU, global sum pooling."""

    def __init__(self, width: int):
        super().__init__()
        self.blocks = nn.Sequential(
            _DownBlock(3, width, down=True, first=True), _DownBlock(width, width, down=True),
            _DownBlock(width, width, down=False), _DownBlock(width, width, down=False),
            nn.ReLU(),
        )  # fmt: skip
        self.score = nn.Linear(width, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.score(self.blocks(images).sum(dim=(2, 3)))
