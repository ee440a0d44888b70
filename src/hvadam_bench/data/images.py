"""The image-classification data of the ``classify`` suite, split once into train /
validation / test with a fixed seed (the validation part is held out of the training data and
serves the learning-rate selection): scikit-learn's 8x8 digits, MNIST-1D (generated offline
with ``mnist1d``'s ``make_dataset``, never its downloading ``get_dataset``), and CIFAR-10/100
through the one CIFAR reader, :mod:`hvadam_bench.data.cifar`; plus CIFAR's augmentation.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

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
