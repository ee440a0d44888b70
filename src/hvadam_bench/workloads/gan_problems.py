"""The GAN study's problems: per dataset, its training budget, real data, networks and score
(a ring of 8 Gaussians scored by the Wasserstein-2 distance; 8x8 digits scored by the Fréchet
distance in a digits classifier's features; CIFAR-10 scored by FID through torch-fidelity)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hvadam_bench.data.cifar import CIFAR, read_cifar
from hvadam_bench.runner import (
    BenchError,
)
from hvadam_bench.workloads import gan_metrics
from hvadam_bench.workloads.gan_networks import (
    DcganCritic,
    DcganGenerator,
    ResNetCritic,
    ResNetGenerator,
    _spectral,
    mlp,
)

DATASETS = ("ring", "digits", "cifar10")
GANS = ("wgan", "wgan-gp", "sngan")
GAN_LABELS = {"wgan": "WGAN", "wgan-gp": "WGAN-GP", "sngan": "SN-GAN"}
CPU_DATASETS = ("ring", "digits")
RING_MODES, RING_RADIUS, RING_SIGMA = 8, 2.0, 0.1


@dataclass(frozen=True)
class Budget:
    """How one GAN run of a dataset trains and is scored."""

    iterations: int  # generator updates
    batch: int
    critic_steps: int  # critic updates per generator update
    evaluations: int  # points on the validation curve, each also a checkpoint
    curve_samples: int  # generated samples per curve point
    eval_samples: int  # generated samples for the final validation and test scores
    width: int  # hidden width of the MLPs, base channel count of the CNNs


BUDGETS = {
    "quick": {
        "ring": Budget(350, 256, 5, 5, 400, 800, 64),
        "digits": Budget(350, 64, 5, 5, 500, 1000, 128),
        "cifar10": Budget(2000, 64, 5, 5, 2000, 5000, 32),
    },
    "full": {
        "ring": Budget(5000, 256, 5, 20, 1000, 2500, 128),
        "digits": Budget(5000, 64, 5, 20, 1000, 2000, 256),
        # The paper's GAN code (AdaBelief's) trains 100 epochs of batch 64 with 5 critic
        # steps per generator step, about 15.6k generator iterations.
        "cifar10": Budget(20_000, 64, 5, 10, 5000, 10_000, 128),
    },
}
# ---- data ---------------------------------------------------------------------------------


def read_cifar10(data_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's training and test images (uint8, N x 3 x 32 x 32) from ``data_dir``, by the
    suite's one (safe) CIFAR reader, :func:`hvadam_bench.data.cifar.read_cifar`."""
    if data_dir is None:
        raise BenchError(
            f"the cifar10 dataset needs --data-dir: a folder holding {CIFAR['cifar10'].expected()}"
        )
    train, _, test, _, _ = read_cifar(data_dir, "cifar10")
    return train, test


def digits_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1797 8x8 digits scaled to [-1, 1], split 60/20/20 into train, valid and
    test by a fixed permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.data, dtype=torch.float32) / 8.0 - 1.0
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    cut_valid, cut_test = int(0.6 * len(order)), int(0.8 * len(order))
    parts = {
        "train": order[:cut_valid],
        "valid": order[cut_valid:cut_test],
        "test": order[cut_test:],
    }
    return {split: (images[index], labels[index]) for split, index in parts.items()}


# ---- problems: data, networks and scores of one dataset --------------------------------------


class Problem:
    """What a GAN run needs from its dataset."""

    name: str
    metric: str  # short name of the score (lower is better)
    metric_long: str
    noise_dim: int

    def __init__(self, budget: Budget, device: str):
        self.budget = budget
        self.device = torch.device(device)

    def real_batch(self, size: int) -> torch.Tensor:
        """Training data, drawn with the global RNG (checkpointed with the run)."""
        raise NotImplementedError

    def generator(self, gan: str) -> nn.Module:
        raise NotImplementedError

    def critic(self, gan: str) -> nn.Module:
        raise NotImplementedError

    def score(self, fake: torch.Tensor, split: str) -> dict:
        """``{"score": float, ...}`` of generated samples against the ``split`` reference."""
        raise NotImplementedError

    def keepsake(self, fake: torch.Tensor) -> list:
        """A few generated samples to draw in the report."""
        return []

    def notes(self) -> dict:
        """Facts about the dataset and its scoring for the report."""
        return {}


class RingProblem(Problem):
    name = "ring"
    metric = "W2"
    metric_long = "Wasserstein-2 distance to the target mixture (lower is better)"
    noise_dim = 8

    def __init__(self, budget: Budget, device: str):
        super().__init__(budget, device)
        self.modes = gan_metrics.ring_modes(RING_MODES, RING_RADIUS).to(torch.float32)
        # Fixed reference samples of the target, one per split, never used for training.
        self.references = {
            split: self._draw(budget.eval_samples, torch.Generator().manual_seed(seed))
            for split, seed in (("valid", 101), ("test", 202))
        }
        ideal = self._draw(budget.eval_samples, torch.Generator().manual_seed(303))
        self.floor = gan_metrics.wasserstein2(ideal, self.references["test"])

    def _draw(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        index = torch.randint(0, RING_MODES, (count,), generator=generator)
        noise = torch.randn(count, 2, generator=generator)
        return self.modes[index] + RING_SIGMA * noise

    def real_batch(self, size: int) -> torch.Tensor:
        return self._draw(size).to(self.device)

    def generator(self, gan: str) -> nn.Module:
        return mlp(self.noise_dim, self.budget.width, 2)

    def critic(self, gan: str) -> nn.Module:
        network = mlp(2, self.budget.width, 1)
        return _spectral(network) if gan == "sngan" else network

    def score(self, fake: torch.Tensor, split: str) -> dict:
        modes = gan_metrics.mode_report(fake, self.modes, RING_SIGMA)
        return {
            "score": gan_metrics.wasserstein2(fake, self.references[split]),
            "modes_covered": modes.covered,
            "high_quality": modes.quality,
        }

    def keepsake(self, fake: torch.Tensor) -> list:
        return [[round(v, 3) for v in point] for point in fake[:300].tolist()]

    def notes(self) -> dict:
        return {
            "target": f"{RING_MODES} Gaussians (σ = {RING_SIGMA}) on a circle of radius "
            f"{RING_RADIUS}",
            "floor": self.floor,
            "floor_meaning": "W2 between two independent target samples of this size "
            "(what a perfect generator would score)",
        }


class DigitsProblem(Problem):
    name = "digits"
    metric = "FD"
    metric_long = (
        f"Fréchet distance in the {gan_metrics.FEATURE_DIM}-d feature space of a digits "
        "classifier (lower is better)"
    )
    noise_dim = 16

    def __init__(self, budget: Budget, device: str, cache: Path):
        super().__init__(budget, device)
        splits = digits_splits()
        self.train = splits["train"][0].to(self.device)
        self.classifier, self.classifier_trained = gan_metrics.load_or_train_digits_classifier(
            cache, *splits["train"]
        )
        self.accuracy = gan_metrics.classifier_accuracy(self.classifier, *splits["test"])
        self.references = {
            split: self._statistics(splits[split][0]) for split in ("train", "valid", "test")
        }
        self.floor = gan_metrics.frechet_distance(
            *self.references["train"], *self.references["test"]
        )

    @torch.no_grad()
    def _statistics(self, images: torch.Tensor):
        return gan_metrics.gaussian_statistics(self.classifier.features(images.cpu()))

    def real_batch(self, size: int) -> torch.Tensor:
        return self.train[torch.randint(0, len(self.train), (size,))]

    def generator(self, gan: str) -> nn.Module:
        return nn.Sequential(mlp(self.noise_dim, self.budget.width, 64), nn.Tanh())

    def critic(self, gan: str) -> nn.Module:
        network = mlp(64, self.budget.width, 1)
        return _spectral(network) if gan == "sngan" else network

    def score(self, fake: torch.Tensor, split: str) -> dict:
        statistics_fake = self._statistics(fake)
        return {"score": gan_metrics.frechet_distance(*statistics_fake, *self.references[split])}

    def keepsake(self, fake: torch.Tensor) -> list:
        return [[round(v, 2) for v in image] for image in fake[:16].tolist()]

    def notes(self) -> dict:
        return {
            "classifier_test_accuracy": self.accuracy,
            "floor": self.floor,
            "floor_meaning": "FD between the training and the test digits",
        }


class _Images(torch.utils.data.Dataset):
    """uint8 images (N, 3, H, W) as torch-fidelity reads them."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def _torch_fidelity():
    try:
        import torch_fidelity
    except Exception as error:  # torch-fidelity imports torchvision, which may fail too
        raise BenchError(
            f"FID needs torch-fidelity, which does not import here ({type(error).__name__}: "
            f"{error}); install it with `pip install torch-fidelity` (it brings torchvision, "
            "which must match your torch)"
        ) from None
    return torch_fidelity


class Cifar10Problem(Problem):
    name = "cifar10"
    metric = "FID"
    metric_long = "Fréchet Inception Distance by torch-fidelity (lower is better)"
    noise_dim = 128

    def __init__(self, budget: Budget, device: str, data_dir, weights, cache: Path):
        super().__init__(budget, device)
        train, test = read_cifar10(data_dir)  # the data first: the likeliest thing to fix
        if weights is None or not Path(weights).is_file():
            raise BenchError(
                "FID needs torch-fidelity's Inception-v3 weights as a local file "
                "(pt_inception-2015-12-05-6726825d.pth): pass it with --inception-weights PATH"
                + (f" ({str(weights)!r} is not a file)" if weights is not None else "")
            )
        self.weights = Path(weights)
        self.fidelity = _torch_fidelity()
        self.references = {"valid": train, "test": test}  # FID against train selects the lr
        digest = hashlib.sha256(train[:: max(1, len(train) // 64)].numpy().tobytes())
        self.cache_tag = f"cifar10-{len(train)}-{digest.hexdigest()[:12]}"
        self.cache = cache
        self.train = train.to(self.device)

    def real_batch(self, size: int) -> torch.Tensor:
        index = torch.randint(0, len(self.train), (size,)).to(self.device)
        return self.train[index].to(torch.float32) / 127.5 - 1.0

    def generator(self, gan: str) -> nn.Module:
        if gan == "sngan":
            return ResNetGenerator(self.noise_dim, self.budget.width)
        return DcganGenerator(self.noise_dim, self.budget.width)

    def critic(self, gan: str) -> nn.Module:
        if gan == "sngan":
            return _spectral(ResNetCritic(self.budget.width))
        return DcganCritic(self.budget.width)

    def score(self, fake: torch.Tensor, split: str) -> dict:
        images = ((fake.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        metrics = self.fidelity.calculate_metrics(
            input1=_Images(images),
            input2=_Images(self.references[split]),
            input2_cache_name=f"{self.cache_tag}-{split}",
            cache_root=str(self.cache),
            cuda=self.device.type == "cuda",
            fid=True,
            feature_extractor_weights_path=str(self.weights),
            verbose=False,
        )
        return {"score": float(metrics["frechet_inception_distance"])}

    def notes(self) -> dict:
        return {"train_images": len(self.train), "test_images": len(self.references["test"])}
