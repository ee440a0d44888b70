"""The GAN study (paper Figure 6, Table 4): WGAN, WGAN-GP and SN-GAN trained by each optimizer.

The optimizer under test drives both networks (one instance for the generator, one for the
critic, same hyperparameters). Every optimizer runs the same learning-rate grid once on the
tuning seed; the lr whose generator scores best on the *validation* reference (a held-out
target sample or data split, fresh generator noise) is kept and rerun with the final seeds,
which alone feed the tables, scored against the separate *test* reference. A non-finite loss
ends a run as diverged; an optimizer fails a task when most of its runs diverged or its mean
score is more than twice the best optimizer's (the paper's Figure 6 splits its optimizers
into the successful and the failed in the same spirit).

CPU default: a ring of 8 Gaussians (Wasserstein-2 distance to the target, modes covered,
fraction of high-quality samples) and the 8x8 scikit-learn digits (Fréchet distance in the
feature space of a small digits classifier trained once and cached), tiny MLP GANs.
``--full``: CIFAR-10 with a DCGAN-style generator (WGAN, WGAN-GP) and a ResNet generator
(SN-GAN), FID by torch-fidelity.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import statistics
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from hvadam_bench import gan_metrics, plots
from hvadam_bench.data.cifar import CIFAR, read_cifar
from hvadam_bench.optimizers import DEFAULT_OPTIMIZERS, SPECS, spec
from hvadam_bench.report import fmt, table
from hvadam_bench.reporting.verdicts import comparable
from hvadam_bench.runner import (
    BenchError,
    atomic_write_json,
    atomic_write_text,
    common_arguments,
    default_jobs,
    names,
    numbers,
    prepare_output,
    versions,
)
from hvadam_bench.training import (
    Checkpointer,
    Trial,
    TrialFunction,
    TrialStore,
    Workers,
    make_optimizer,
    rng_state,
    run_protocol,
    seed_everything,
    set_rng_state,
)

DATASETS = ("ring", "digits", "cifar10")
GANS = ("wgan", "wgan-gp", "sngan")
GAN_LABELS = {"wgan": "WGAN", "wgan-gp": "WGAN-GP", "sngan": "SN-GAN"}
CPU_DATASETS = ("ring", "digits")

CLIP = 0.01  # WGAN's weight clipping (Arjovsky et al.)
GRADIENT_PENALTY = 10.0  # WGAN-GP's λ (Gulrajani et al.)
FAIL_RATIO = 2.0  # failed: mean score more than twice the best optimizer's on the task
RING_MODES, RING_RADIUS, RING_SIGMA = 8, 2.0, 0.1
# Every optimizer's first-moment coefficient (β1 of the adaptive methods, SGD's momentum):
# 0.5, as in GAN practice and the paper's GAN code; 0.9 makes the two-player game oscillate.
GAN_BETA1 = 0.5
FORMAT = 1  # bump when a change to training or scoring makes stored trials stale

# The paper's Table 4: FID (mean ± std over 5 runs) of an SN-GAN with a ResNet generator on
# CIFAR-10. Fromage is not in our optimizer set.
PAPER_TABLE4 = {
    "hvadam": (12.72, 0.21),
    "adabelief": (12.98, 0.22),
    "radam": (13.10, 0.20),
    "rmsprop": (12.86, 0.08),
    "adam": (13.01, 0.15),
    "fromage": (46.31, 0.86),
    "yogi": (14.16, 0.05),
    "sgd": (48.94, 2.88),
    "adabound": (16.84, 0.10),
}


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
PRESET_GRIDS = {
    "quick": {"lrs": (1e-4, 1e-3, 1e-2), "seeds": (1, 2)},
    "full": {"lrs": (5e-5, 1e-4, 2e-4, 5e-4, 1e-3), "seeds": (1, 2, 3, 4, 5)},
}


@dataclass
class GanConfig:
    datasets: list[str]
    gans: list[str]
    optimizers: list[str]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]  # the final (reported) seeds
    preset: str = "quick"
    tune_seed: int = 0
    iterations: int | None = None  # overrides every dataset's budget
    device: str = "cpu"
    data_dir: Path | None = None
    inception_weights: Path | None = None
    jobs: int = 1  # worker processes (each runs whole (task, optimizer) pairs)

    @classmethod
    def preset_named(cls, name: str) -> GanConfig:
        grid = PRESET_GRIDS[name]
        return cls(
            datasets=list(CPU_DATASETS if name == "quick" else ("cifar10",)),
            gans=list(GANS),
            optimizers=list(DEFAULT_OPTIMIZERS),
            lrs=grid["lrs"],
            seeds=grid["seeds"],
            preset=name,
            device="cpu" if name == "quick" else ("cuda" if torch.cuda.is_available() else "cpu"),
            jobs=default_jobs(name),
        )

    def budget(self, dataset: str) -> Budget:
        budget = BUDGETS[self.preset][dataset]
        if self.iterations is not None:
            budget = replace(budget, iterations=self.iterations)
        return budget

    def validate(self) -> None:
        for label, chosen, known in (
            ("dataset", self.datasets, DATASETS),
            ("GAN", self.gans, GANS),
        ):
            unknown = [name for name in chosen if name not in known]
            if unknown:
                raise BenchError(f"unknown {label} {unknown[0]!r}; known: {', '.join(known)}")
        for name in self.optimizers:
            try:
                spec(name)
            except ValueError as error:
                raise BenchError(str(error)) from None
        if not self.datasets or not self.gans or not self.optimizers:
            raise BenchError("nothing to run: give at least one dataset, GAN and optimizer")
        if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise BenchError(f"learning rates must be positive and finite, got {self.lrs}")
        if not self.seeds:
            raise BenchError("give at least one final seed")
        if self.tune_seed in self.seeds:
            raise BenchError(
                f"--seeds must not contain the tuning seed {self.tune_seed}: the reported runs "
                "would include the one the lr was chosen on"
            )
        if self.jobs < 1:
            raise BenchError("--jobs must be at least 1")
        if self.iterations is not None and self.iterations < 1:
            raise BenchError("--iterations must be at least 1")
        if self.device != "cpu" and not _device_available(self.device):
            raise BenchError(f"--device {self.device}: not available on this machine")


def _device_available(device: str) -> bool:
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError):
        return False
    return True


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


def make_problem(dataset: str, config: GanConfig, out: Path) -> Problem:
    budget = config.budget(dataset)
    if dataset == "ring":
        return RingProblem(budget, config.device)
    if dataset == "digits":
        return DigitsProblem(budget, config.device, out / "digits_classifier.pt")
    return Cifar10Problem(
        budget, config.device, config.data_dir, config.inception_weights, out / "fidelity_cache"
    )


# ---- one GAN run -----------------------------------------------------------------------------


def critic_loss(gan: str, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor):
    """WGAN and WGAN-GP: E[D(fake)] - E[D(real)] (+ λ·gradient penalty); SN-GAN: hinge loss."""
    if gan == "sngan":
        return (
            torch.relu(1 - critic(real)).mean() + torch.relu(1 + critic(fake)).mean()
        )  # fmt: skip
    loss = critic(fake).mean() - critic(real).mean()
    if gan == "wgan-gp":
        mix = torch.rand(len(real), *[1] * (real.ndim - 1)).to(real)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(critic(between).sum(), between, create_graph=True)
        loss = loss + GRADIENT_PENALTY * (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()
    return loss


def gan_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The shared registry's optimizer ``name`` at ``lr`` (β2 0.999), with its first-moment
    coefficient set to :data:`GAN_BETA1`: β1 where it has betas, SGD's momentum. RMSprop has
    neither and is left as it is; Lookahead shares its inner Adam's groups."""
    optimizer = make_optimizer(name, params, lr)
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (GAN_BETA1, group["betas"][1])
        elif group.get("momentum"):
            group["momentum"] = GAN_BETA1
    return optimizer


def _evaluation_seed(seed: int, split: str) -> int:
    return 1_000_003 * (seed + 1) + {"valid": 1, "test": 2}[split]


@torch.no_grad()
def generate(generator: nn.Module, problem: Problem, count: int, seed: int) -> torch.Tensor:
    """``count`` samples from fixed noise (its own RNG: training's is untouched), on CPU."""
    noise = torch.randn(count, problem.noise_dim, generator=torch.Generator().manual_seed(seed))
    was_training = generator.training
    generator.eval()
    chunks = [generator(part.to(problem.device)).float().cpu() for part in noise.split(500)]
    generator.train(was_training)
    return torch.cat(chunks)


def _failed_run(curve: list, reason: str) -> dict:
    return {
        "valid": math.nan,
        "test": None,
        "diverged": True,
        "reason": reason,
        "curve": curve,
        "metric_modes_covered": None,
        "metric_high_quality": None,
    }


GAN_CHECKPOINT_KEYS = (
    "generator", "critic", "generator_optimizer", "critic_optimizer", "rng", "iteration", "curve"
)  # fmt: skip


def train_gan(trial: Trial, checkpointer: Checkpointer, problem: Problem) -> dict:
    """Train one GAN (``trial.task`` is ``<dataset>-<gan>``) with ``trial.optimizer`` at
    ``trial.lr`` for both networks; score the generator on validation along the way and on
    validation and test at the end. Resumes from ``checkpointer``'s last state."""
    gan = trial.task.split("-", 1)[1]
    budget, device = problem.budget, problem.device
    started = time.process_time()
    seed_everything(trial.seed)
    generator = problem.generator(gan).to(device)
    critic = problem.critic(gan).to(device)
    generator_optimizer = gan_optimizer(trial.optimizer, generator.parameters(), trial.lr)
    critic_optimizer = gan_optimizer(trial.optimizer, critic.parameters(), trial.lr)
    start, curve = 0, []
    state = checkpointer.load(required=GAN_CHECKPOINT_KEYS)
    if state is not None:
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        generator_optimizer.load_state_dict(state["generator_optimizer"])
        critic_optimizer.load_state_dict(state["critic_optimizer"])
        set_rng_state(state["rng"])
        start, curve = state["iteration"], state["curve"]
    every = max(1, budget.iterations // budget.evaluations)
    valid_seed = _evaluation_seed(trial.seed, "valid")
    for iteration in range(start, budget.iterations):
        critic.requires_grad_(True)
        for _ in range(budget.critic_steps):
            real = problem.real_batch(budget.batch)
            noise = torch.randn(budget.batch, problem.noise_dim).to(device)
            with torch.no_grad():
                fake = generator(noise)
            loss = critic_loss(gan, critic, real, fake)
            if not torch.isfinite(loss):
                return _failed_run(curve, f"critic loss not finite at iteration {iteration}")
            critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            critic_optimizer.step()
            if gan == "wgan":
                with torch.no_grad():
                    for parameter in critic.parameters():
                        parameter.clamp_(-CLIP, CLIP)
        critic.requires_grad_(False)  # the generator's step needs no critic gradients
        noise = torch.randn(budget.batch, problem.noise_dim).to(device)
        loss = -critic(generator(noise)).mean()
        if not torch.isfinite(loss):
            return _failed_run(curve, f"generator loss not finite at iteration {iteration}")
        generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        generator_optimizer.step()
        if (iteration + 1) % every == 0 or iteration + 1 == budget.iterations:
            fake = generate(generator, problem, budget.curve_samples, valid_seed)
            if not torch.isfinite(fake).all():
                return _failed_run(curve, f"generator output not finite at {iteration + 1}")
            curve.append(problem.score(fake, "valid")["score"])
            checkpointer.save(
                {
                    "generator": generator.state_dict(),
                    "critic": critic.state_dict(),
                    "generator_optimizer": generator_optimizer.state_dict(),
                    "critic_optimizer": critic_optimizer.state_dict(),
                    "rng": rng_state(),
                    "iteration": iteration + 1,
                    "curve": curve,
                }
            )
    scores = {}
    for split in ("valid", "test"):
        fake = generate(
            generator, problem, budget.eval_samples, _evaluation_seed(trial.seed, split)
        )
        if not torch.isfinite(fake).all():
            return _failed_run(curve, "generator output not finite at the end")
        scores[split] = problem.score(fake, split)
    test = scores["test"]
    return {
        "valid": scores["valid"]["score"],
        "test": test["score"],
        "diverged": False,
        "curve": curve,
        "metric_modes_covered": test.get("modes_covered"),
        "metric_high_quality": test.get("high_quality"),
        "samples": problem.keepsake(fake) if trial.phase == "final" else [],
        "cpu_seconds": round(time.process_time() - started, 2),
    }


def curve_iterations(budget: Budget) -> list[int]:
    """The generator iterations at which a run's validation curve is measured."""
    every = max(1, budget.iterations // budget.evaluations)
    points = list(range(every, budget.iterations + 1, every))
    return points if points and points[-1] == budget.iterations else [*points, budget.iterations]


def _fingerprint(dataset: str, budget: Budget) -> str:
    """Changes whenever a stored trial of ``dataset`` would no longer be what this code and
    budget compute, so that results of another budget are never reused."""
    identity = json.dumps(
        {"format": FORMAT, "dataset": dataset, "budget": asdict(budget), "clip": CLIP,
         "penalty": GRADIENT_PENALTY, "ring": [RING_MODES, RING_RADIUS, RING_SIGMA],
         "beta1": GAN_BETA1},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(identity.encode()).hexdigest()[:10]


@contextmanager
def _threads_for(device: str):
    """One intra-op thread on CPU: tiny networks run faster without threading, and the result
    does not depend on how many cores the machine has."""
    if device != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---- the study -------------------------------------------------------------------------------


def run(
    config: GanConfig,
    out: Path,
    show_progress: bool = True,
    interrupt_after_checkpoints: int | None = None,
) -> dict:
    """Run the study; write ``gan.json``, ``report.md`` and the figures into ``out``.

    ``interrupt_after_checkpoints`` stops the run after that many checkpoints (tests of
    resuming; in-process runs only)."""
    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"meta": _meta(config), "datasets": {}}
    samples: dict = {}  # drawn in the figures, kept out of the JSON (they would swell it)
    with _threads_for(config.device):
        # Every problem is built before any training, also with workers: it checks the data
        # (an unusable CIFAR folder stops the run before the ring trials, not after) and
        # caches the digits classifier before any worker needs it.
        problems = {dataset: make_problem(dataset, config, out) for dataset in config.datasets}
        for dataset, problem in problems.items():
            store = TrialStore(_store_root(out, problem), interrupt_after_checkpoints)
            tasks = [f"{dataset}-{gan}" for gan in config.gans]
            summary = _protocol(problem, store, config, out, tasks, show_progress)
            entry = {
                "metric": problem.metric,
                "metric_long": problem.metric_long,
                "budget": asdict(problem.budget),
                "curve_iterations": curve_iterations(problem.budget),
                "notes": problem.notes(),
                "gans": {},
            }
            for task in tasks:
                gan = task.split("-", 1)[1]
                entry["gans"][gan] = _task_entry(summary[task], task, config, store)
                samples.setdefault(dataset, {})[gan] = {
                    name: r.pop("samples") for name, r in entry["gans"][gan]["optimizers"].items()
                }
            entry["cpu_seconds_per_run"] = _cpu_seconds(store, config, tasks)
            results["datasets"][dataset] = entry
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "gan.json", results)
    _write_figures(results, samples, out)
    atomic_write_text(out / "report.md", render_report(results))
    return results


def _store_root(out: Path, problem: Problem) -> Path:
    """Trials of one dataset and budget: another budget never reuses them."""
    return out / "trials" / f"{problem.name}-{_fingerprint(problem.name, problem.budget)}"


def _protocol(problem, store, config, out, tasks, show_progress) -> dict:
    """The protocol over ``tasks``, in ``config.jobs`` processes (each builds its own copy of
    the problem from ``out``, where the digits classifier is cached)."""
    return run_protocol(
        "gan", tasks, config.optimizers, list(config.lrs), list(config.seeds),
        functools.partial(train_gan, problem=problem), store, higher_is_better=False,
        tune_seed=config.tune_seed, show_progress=show_progress,
        workers=Workers(config.jobs, _worker_trial_function, (problem.name, config, out)),
    )  # fmt: skip


def _worker_trial_function(dataset: str, config: GanConfig, out: Path) -> TrialFunction:
    """In a worker process: the trial function over this process's own copy of the data."""
    return functools.partial(train_gan, problem=make_problem(dataset, config, out))


def _cpu_seconds(store: TrialStore, config: GanConfig, tasks: list[str]) -> float | None:
    """Mean CPU time of this configuration's runs (measured when they ran; a resumed run
    counts only its last part)."""
    seconds = []
    for path in (store.root / "results").glob("*.json"):
        result = json.loads(path.read_text())
        trial = result.get("trial", {})
        ours = trial.get("task") in tasks and trial.get("optimizer") in config.optimizers
        if ours and result.get("cpu_seconds") is not None:
            seconds.append(result["cpu_seconds"])
    return round(statistics.fmean(seconds), 2) if seconds else None


def _task_entry(summary: dict, task: str, config: GanConfig, store: TrialStore) -> dict:
    """The protocol's summary per optimizer, plus the per-run scores, samples and the verdict
    (failed or not)."""
    optimizers = {}
    for name, entry in summary.items():
        finals = [
            store.result(Trial("gan", task, name, entry["lr"], seed, "final"))
            for seed in config.seeds
        ]
        extra = entry.pop("extra")
        optimizers[name] = {
            **entry,
            "tests": [run.get("test") for run in finals],
            "modes_covered": _mean(extra.get("metric_modes_covered")),
            "high_quality": _mean(extra.get("metric_high_quality")),
            "samples": next((run["samples"] for run in finals if run.get("samples")), []),
        }
    best = min(
        (r["test_mean"] for r in optimizers.values() if r["test_mean"] is not None),
        default=None,
    )
    for entry in optimizers.values():
        entry["failed"] = _failed(entry, best)
    return {"optimizers": optimizers, "best_test_mean": best}


def _mean(values: Sequence | None) -> float | None:
    finite = [v for v in values or [] if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def _failed(entry: dict, best: float | None) -> bool:
    """Most runs diverged, or the mean test score is over FAIL_RATIO times the best one."""
    if entry["diverged_runs"] * 2 > entry["runs"] or entry["test_mean"] is None:
        return True
    return best is not None and entry["test_mean"] > FAIL_RATIO * best


def _meta(config: GanConfig) -> dict:
    meta = asdict(config)
    meta["data_dir"] = str(config.data_dir) if config.data_dir else None
    meta["inception_weights"] = str(config.inception_weights) if config.inception_weights else None
    meta.update(
        protocol=" ".join(__doc__.split("\n\n")[1].split()),
        fail_ratio=FAIL_RATIO,
        versions=versions(),
    )
    return meta


# ---- figures ---------------------------------------------------------------------------------


def _write_figures(results: dict, samples: dict, out: Path) -> None:
    import matplotlib.pyplot as plt

    for dataset, entry in results["datasets"].items():
        _curves_figure(plt, dataset, entry, out / f"curves_{dataset}.png")
        _figure6(plt, dataset, entry, out / f"figure6_{dataset}.png")
        drawn = samples.get(dataset, {})
        if dataset in ("ring", "digits") and any(s for g in drawn.values() for s in g.values()):
            _samples_figure(plt, dataset, drawn, out / f"samples_{dataset}.png")


def _curves_figure(plt, dataset: str, entry: dict, path: Path) -> None:
    gans = entry["gans"]
    figure, axes = plt.subplots(1, len(gans), figsize=(4.6 * len(gans), 3.6), squeeze=False)
    for axis, (gan, task) in zip(axes[0], gans.items()):
        for name, r in task["optimizers"].items():
            if r["curve"]:
                xs = entry["curve_iterations"][: len(r["curve"])]
                axis.plot(xs, r["curve"], label=SPECS[name].label, **_style(name))
        axis.set_yscale("log")
        axis.set_title(f"{dataset}: {GAN_LABELS[gan]}", fontsize=10)
        axis.set_xlabel("generator iteration")
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"validation {entry['metric']} (mean of final seeds)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="lower center", ncol=7, fontsize=7)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    plots.save(figure, path)


def _style(name: str) -> dict:
    return {
        "color": plots.COLOURS.get(name, "black"),
        "linewidth": 2.2 if name == "hvadam" else 1.1,
        "zorder": 3 if name == "hvadam" else 2,
    }


def _figure6(plt, dataset: str, entry: dict, path: Path) -> None:
    """The paper's Figure 6: test scores per optimizer, successful ones left, failed right."""
    gans = entry["gans"]
    figure, axes = plt.subplots(
        len(gans), 2, figsize=(11, 2.9 * len(gans)), squeeze=False,
        gridspec_kw={"width_ratios": [3, 1.3]},
    )  # fmt: skip
    for row, (gan, task) in enumerate(gans.items()):
        for column, failed in enumerate((False, True)):
            axis = axes[row, column]
            chosen = [
                (n, r) for n, r in task["optimizers"].items() if r["failed"] == failed
            ]  # fmt: skip
            chosen.sort(key=lambda item: item[1]["test_mean"] or math.inf)
            heights = [r["test_mean"] if r["test_mean"] is not None else 0.0 for _, r in chosen]
            errors = [r["test_std"] or 0.0 for _, r in chosen]
            axis.bar(
                range(len(chosen)), heights, yerr=errors, capsize=3,
                color=[plots.COLOURS.get(n, "black") for n, _ in chosen],
            )  # fmt: skip
            for index, (_, r) in enumerate(chosen):
                if r["test_mean"] is None:
                    axis.text(index, 0, "diverged", rotation=90, ha="center", va="bottom", size=7)
            axis.set_xticks(range(len(chosen)))
            axis.set_xticklabels([SPECS[n].label for n, _ in chosen], rotation=35, ha="right")
            axis.tick_params(axis="x", labelsize=7)
            if not chosen:
                axis.text(0.5, 0.5, "none", ha="center", va="center", transform=axis.transAxes)
                axis.set_yticks([])
            kind = "failed" if failed else "successful"
            axis.set_title(f"{GAN_LABELS[gan]}: {kind} ({len(chosen)})", fontsize=9)
            axis.grid(alpha=0.3, axis="y")
        axes[row, 0].set_ylabel(f"test {entry['metric']}")
    figure.suptitle(f"{dataset}: test {entry['metric']} (mean ± std over final seeds)")
    figure.tight_layout()
    plots.save(figure, path)


def _samples_figure(plt, dataset: str, gans: dict, path: Path) -> None:
    """Generated samples of each optimizer's first final seed: ``gans[gan][optimizer]``."""
    optimizer_names = list(next(iter(gans.values())))
    figure, axes = plt.subplots(
        len(gans), len(optimizer_names),
        figsize=(1.45 * len(optimizer_names), 1.6 * len(gans)), squeeze=False,
    )  # fmt: skip
    modes = gan_metrics.ring_modes(RING_MODES, RING_RADIUS)
    for row, (gan, by_optimizer) in enumerate(gans.items()):
        for column, name in enumerate(optimizer_names):
            axis = axes[row, column]
            samples = torch.tensor(by_optimizer[name] or [], dtype=torch.float32)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(SPECS[name].label, fontsize=6)
            if column == 0:
                axis.set_ylabel(GAN_LABELS[gan], fontsize=7)
            if not len(samples):
                continue
            if dataset == "ring":
                axis.scatter(modes[:, 0], modes[:, 1], s=12, c="orange", marker="x")
                axis.scatter(samples[:, 0], samples[:, 1], s=1, c=plots.COLOURS.get(name))
                axis.set_xlim(-3, 3)
                axis.set_ylim(-3, 3)
            else:
                grid = samples[:16].reshape(4, 4, 8, 8).permute(0, 2, 1, 3).reshape(32, 32)
                axis.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
    figure.tight_layout()
    plots.save(figure, path)


# ---- the report ------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    """A score for a table: at most four significant digits, never in e-notation above 1."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.0f}" if abs(value) >= 1000 else fmt(value)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{_num(mean)} ± {_num(std if std is not None else 0.0)}"


def _ranked(task: dict) -> list[str]:
    """Optimizer names, best mean test score first (failed and diverged last)."""
    optimizers = task["optimizers"]
    return sorted(
        optimizers,
        key=lambda n: (optimizers[n]["failed"], comparable(optimizers[n]["test_mean"])),
    )


def _spearman(first: Sequence[float], second: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties broken by order; None below three points)."""
    if len(first) < 3:
        return None

    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        for rank, index in enumerate(order):
            result[index] = float(rank)
        return result

    a, b = ranks(first), ranks(second)
    n = len(a)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(a, b)) / (n * (n * n - 1))


def hvadam_verdict(task: dict) -> str:
    """Where HVAdam stands on one task: "best", "tied" (within the two standard deviations
    of the best baseline), "behind", "failed", or "not run". Its own ablations are not
    baselines."""
    optimizers = task["optimizers"]
    mine = optimizers.get("hvadam")
    if mine is None:
        return "not run"
    if mine["failed"] or mine["test_mean"] is None:
        return "failed"
    others = [
        r
        for n, r in optimizers.items()
        if not n.startswith("hvadam") and r["test_mean"] is not None
    ]
    if not others:
        return "best"
    rival = min(others, key=lambda r: comparable(r["test_mean"]))
    margin = mine["test_mean"] - rival["test_mean"]
    if abs(margin) <= (mine["test_std"] or 0.0) + (rival["test_std"] or 0.0):
        return "tied"
    return "best" if margin < 0 else "behind"


def render_report(results: dict) -> str:
    """``report.md``: protocol, the comparison with the paper, then per dataset Table 4's and
    Figure 6's forms, the curves, samples and every optimizer's details."""
    meta = results["meta"]
    lines = [
        "# The GAN study",
        "",
        f"Generated by `hvadam-bench gan` (preset `{meta['preset']}`, device `{meta['device']}`, "
        f"{len(meta['optimizers'])} optimizers, lr grid {list(meta['lrs'])}, tuning seed "
        f"{meta['tune_seed']}, final seeds {list(meta['seeds'])}, {meta['jobs']} worker "
        f"process(es); {meta['seconds']} s for this invocation, stored runs not rerun). Do not "
        "edit by hand: rerun the command.",
        "",
        "**Protocol.** " + meta["protocol"],
        f"Every optimizer's first-moment coefficient is {GAN_BETA1} (β1; SGD's momentum), β2 "
        f"0.999; WGAN clips the critic's weights to ±{CLIP}, WGAN-GP's penalty weight is "
        f"{GRADIENT_PENALTY:g}, SN-GAN uses the hinge loss and spectral normalisation in "
        "every critic layer.",
        "",
    ]
    lines += _comparison(results)
    for dataset, entry in results["datasets"].items():
        lines += _dataset_section(dataset, entry)
    return "\n".join(lines) + "\n"


def _dataset_section(dataset: str, entry: dict) -> list[str]:
    budget = entry["budget"]
    notes = entry["notes"]
    gans = entry["gans"]
    lines = [
        f"## {dataset}",
        "",
        f"Score: {entry['metric_long']}. Budget per run: {budget['iterations']} generator "
        f"iterations of {budget['critic_steps']} critic steps each, batch {budget['batch']}, "
        f"width {budget['width']}; {budget['eval_samples']} generated samples for the final "
        f"scores. Mean CPU time of a run: {fmt(entry.get('cpu_seconds_per_run'))} s.",
    ]
    if "target" in notes:
        lines.append(f"Target: {notes['target']}.")
    if "classifier_test_accuracy" in notes:
        lines.append(
            f"Feature classifier: test accuracy {notes['classifier_test_accuracy']:.3f} "
            "(trained once, cached as `digits_classifier.pt`)."
        )
    if "floor" in notes:
        lines.append(
            f"Reference: {_num(notes['floor'])}, the {notes['floor_meaning']}; scores near it "
            "cannot be told apart."
        )
    lines += ["", f"### Test {entry['metric']}, mean ± std over the final seeds (Table 4's form)"]
    lines.append("")
    order = _ranked(next(iter(gans.values())))
    rows = []
    for name in order:
        cells = [SPECS[name].label]
        for task in gans.values():
            r = task["optimizers"][name]
            cell = _pm(r["test_mean"], r["test_std"])
            if r["diverged_runs"]:
                cell += f" ({r['diverged_runs']}/{r['runs']} diverged)"
            cells.append(f"{cell} ✗" if r["failed"] else cell)
        rows.append(cells)
    lines.append(table(["optimizer", *(GAN_LABELS[g] for g in gans)], rows))
    lines += [
        "",
        f"✗: failed (most runs diverged, or a mean over {FAIL_RATIO:g}× the best). Rows in "
        f"the order of the {GAN_LABELS[next(iter(gans))]} column.",
        "",
        f"![Figure 6's form](figure6_{dataset}.png)",
        "",
        f"![validation curves](curves_{dataset}.png)",
        "",
    ]
    if dataset in ("ring", "digits"):
        lines += [f"![samples of the first final seed](samples_{dataset}.png)", ""]
    for gan, task in gans.items():
        lines += [f"### {dataset}, {GAN_LABELS[gan]}: every optimizer", ""]
        rows = []
        for name in _ranked(task):
            r = task["optimizers"][name]
            tuning = ", ".join(
                f"{g['lr']:g}: {'div.' if g['diverged'] else _num(g['valid'])}" for g in r["grid"]
            )
            row = [
                SPECS[name].label,
                f"{r['lr']:g}",
                tuning,
                _pm(r["valid_mean"], r["valid_std"]),
                _pm(r["test_mean"], r["test_std"]),
            ]
            if dataset == "ring":
                row += [fmt(r["modes_covered"], 2), fmt(r["high_quality"], 2)]
            row += [f"{r['diverged_runs']}/{r['runs']}", "failed" if r["failed"] else "ok"]
            rows.append(row)
        headers = ["optimizer", "lr", "tuning run's valid score per lr", "valid", "test"]
        if dataset == "ring":
            headers += [f"modes covered (of {RING_MODES})", "high-quality fraction"]
        headers += ["diverged", "status"]
        lines += [table(headers, rows), ""]
    return lines


def _comparison(results: dict) -> list[str]:
    """The honest paragraph: where our numbers agree with the paper's and where not."""
    lines = [
        "## Compared with the paper",
        "",
        "The paper reports FID on CIFAR-10: Figure 6 for WGAN and WGAN-GP with a CNN "
        "generator, Table 4 for SN-GAN with a ResNet generator (HVAdam 12.72 ± 0.21 best, "
        "RMSProp 12.86, AdaBelief 12.98, Adam 13.01, SGD 48.94 and Fromage 46.31 far behind). "
        "It finds HVAdam best under all three GANs, and SGD among the optimizers that fail. "
        "Fromage is not in our optimizer set.",
        "",
    ]
    counts: dict[str, int] = {}
    for dataset, entry in results["datasets"].items():
        for gan, task in entry["gans"].items():
            optimizers = task["optimizers"]
            order = _ranked(task)
            verdict = hvadam_verdict(task)
            counts[verdict] = counts.get(verdict, 0) + 1
            failed = [SPECS[n].label for n in order if optimizers[n]["failed"]]
            place = f"{order.index('hvadam') + 1}/{len(order)}" if "hvadam" in order else "—"
            lines.append(
                f"- {dataset}, {GAN_LABELS[gan]}: HVAdam ranks {place} ({verdict}); best "
                f"{SPECS[order[0]].label} ({_num(optimizers[order[0]]['test_mean'])} "
                f"{entry['metric']}); failed: {', '.join(failed) or 'none'}."
            )
    total = sum(counts.values())
    if counts.get("best", 0) == total:
        holds = "holds on every task"
    elif counts.get("best", 0) + counts.get("tied", 0) == 0:
        holds = "does not hold on any task"
    else:
        holds = "holds only in part"
    if "not run" not in counts:
        lines += [
            "",
            f"Over the {total} tasks, HVAdam is clearly best (ahead of the best baseline by more "
            f"than both standard deviations) on {counts.get('best', 0)}, tied with the best "
            f"baseline on {counts.get('tied', 0)}, behind on {counts.get('behind', 0)}, and "
            f"failed on {counts.get('failed', 0)}. The paper's claim, best everywhere, {holds} "
            "here.",
        ]
    if counts.get("failed", 0) + counts.get("behind", 0):
        lines += [
            "",
            "Our reading of where HVAdam falls short: its second moment s is an average of "
            "η·p = p² / ((g - m)² + γp + ε) with p = (g - v)². With the default γ = 0, when a "
            "gradient stays close to its momentum m but away from the hidden vector v, η·p "
            "grows far beyond g², and the step lr·m̂/√ŝ shrinks by orders of magnitude, which "
            "no lr of the grid makes up for. γ > 0 (HVAdam's `gamma`, η ≤ 1/γ) bounds this; "
            "it is not part of the shared optimizer set, so not of this table.",
        ]
    lines.append("")
    lines += _table4(results)
    meta = results["meta"]
    lines.append(
        "Absolute numbers are comparable with the paper's only for the `--full` CIFAR-10 "
        "recipe. The CPU default scores tiny MLP GANs on a 2-D mixture (W2) and on 8x8 digits "
        "(a Fréchet distance in a small classifier's features) after a few hundred generator "
        f"iterations, with a {len(meta['lrs'])}-point lr grid and {len(meta['seeds'])} final "
        "seeds: it measures how fast each optimizer "
        "makes a GAN progress early on, which is not the paper's converged FID. What can be "
        "compared is the ordering: whether HVAdam is among the best, and whether the same "
        "optimizers fail. Differences smaller than the standard deviations are noise."
    )
    lines.append("")
    return lines


def _table4(results: dict) -> list[str]:
    columns = [
        (dataset, entry)
        for dataset, entry in results["datasets"].items()
        if "sngan" in entry["gans"]
    ]
    if not columns:
        return []
    headers = ["optimizer", "paper: CIFAR-10 FID"]
    headers += [f"ours: {d} {e['metric']}" for d, e in columns]
    rows = []
    for name in PAPER_TABLE4:
        row = [SPECS[name].label if name in SPECS else name.capitalize(), _pm(*PAPER_TABLE4[name])]
        for _, e in columns:
            r = e["gans"]["sngan"]["optimizers"].get(name)
            row.append(_pm(r["test_mean"], r["test_std"]) if r else "not run")
        rows.append(row)
    lines = ["### Table 4 (SN-GAN) beside ours", "", table(headers, rows), ""]
    for dataset, entry in columns:
        optimizers = entry["gans"]["sngan"]["optimizers"]
        pairs = [
            (PAPER_TABLE4[n][0], optimizers[n]["test_mean"])
            for n in PAPER_TABLE4
            if n in optimizers and optimizers[n]["test_mean"] is not None
        ]
        rho = _spearman([p for p, _ in pairs], [o for _, o in pairs])
        if rho is not None:
            lines.append(
                f"Spearman rank correlation between the paper's FIDs and our {dataset} "
                f"{entry['metric']} over the {len(pairs)} optimizers both have: {rho:+.2f} "
                "(+1: the same order, 0: unrelated)."
            )
    lines.append("")
    return lines


# ---- command line ----------------------------------------------------------------------------

HELP = "WGAN, WGAN-GP and SN-GAN per optimizer (paper Figure 6, Table 4)"
# The report sections that `hvadam-bench all` lifts into its combined report.
SUMMARY_SECTIONS = ("Compared with the paper",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(
        parser, "gan", "a 2-D Gaussian mixture and 8x8 digits with MLP GANs on CPU, ~15 min"
    )
    parser.add_argument("--datasets", type=names, help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--gans", type=names, help=f"comma-separated, of {', '.join(GANS)}")
    parser.add_argument("--optimizers", type=names, help="comma-separated optimizer names")
    parser.add_argument("--lrs", type=numbers, help="learning-rate grid, comma-separated")
    parser.add_argument(
        "--seeds", type=numbers, help="final seeds, comma-separated (not the tuning seed 0)"
    )
    parser.add_argument("--iterations", type=int, help="generator iterations per run")
    parser.add_argument("--device", help="cpu or cuda (default: cpu; cuda with --full if any)")
    parser.add_argument(
        "--jobs", type=int, help="worker processes (default: 2 with the CPU default, else 1)"
    )
    parser.add_argument("--data-dir", type=Path, help="folder holding CIFAR-10 (cifar10 only)")
    parser.add_argument(
        "--inception-weights",
        type=Path,
        help="torch-fidelity's Inception-v3 weights file, for FID (cifar10 only)",
    )


def main(args: argparse.Namespace) -> int:
    config = GanConfig.preset_named(args.preset)
    for name in ("datasets", "gans", "optimizers", "lrs", "iterations", "device", "jobs"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    if getattr(args, "seeds", None) is not None:
        if any(s != int(s) for s in args.seeds):
            raise BenchError(f"--seeds must be integers, got {args.seeds}")
        config.seeds = tuple(int(s) for s in args.seeds)
    config.data_dir = getattr(args, "data_dir", None)
    config.inception_weights = getattr(args, "inception_weights", None)
    config.validate()
    out = prepare_output(args.out)
    results = run(config, out, show_progress=not args.no_progress)
    print(f"wrote {out / 'gan.json'}, {out / 'report.md'} and figures")
    for dataset, entry in results["datasets"].items():
        for gan, task in entry["gans"].items():
            best = _ranked(task)[0]
            failed = [n for n, r in task["optimizers"].items() if r["failed"]]
            print(
                f"  {dataset:<8} {GAN_LABELS[gan]:<8} best: {best:<10} "
                f"failed: {', '.join(failed) or 'none'}"
            )
    return 0
