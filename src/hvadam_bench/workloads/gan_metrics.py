"""How the GAN suite scores a generator on CPU: sample-based Wasserstein-2 distance, mode
coverage and sample quality on a mixture of Gaussians, and a Fréchet distance in the feature
space of a small digits classifier (the CPU stand-in for FID).

The digits classifier is trained once, deterministically, and cached as a file; a cache that
cannot be read or was made for other data or another architecture is retrained.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

HIGH_QUALITY_SIGMAS = 3.0  # a sample within 3σ of a mode is "high quality"
COVERED_SHARE = 0.25  # a mode is covered when it gets a quarter of its fair share of them


def wasserstein2(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """The exact Wasserstein-2 distance between two empirical distributions (uniform weights on
    the rows of ``x`` and ``y``), by optimal transport (``ot.emd2``) on squared distances."""
    import ot

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    cost = ot.dist(x, y, metric="sqeuclidean")
    weights_x = np.full(len(x), 1.0 / len(x))
    weights_y = np.full(len(y), 1.0 / len(y))
    # The default iteration cap stops short on a few thousand points; this one never does.
    squared = ot.emd2(weights_x, weights_y, cost, numItermax=10_000_000)
    return math.sqrt(max(float(squared), 0.0))


def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of the rows of ``features``, in float64."""
    features = features.detach().to(torch.float64).reshape(len(features), -1)
    return features.mean(dim=0), torch.cov(features.T).reshape(features.shape[1], -1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(
    mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """The Fréchet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b),
    squared, as FID reports it: |μa - μb|² + tr(Σa + Σb - 2 (Σa^½ Σb Σa^½)^½)."""
    mean_a, mean_b = mean_a.to(torch.float64), mean_b.to(torch.float64)
    cov_a, cov_b = cov_a.to(torch.float64), cov_b.to(torch.float64)
    root_a = _sqrt_psd(cov_a)
    # Σa^½ Σb Σa^½ is symmetric PSD, so its eigenvalues give the trace of its root stably.
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return max(float(distance), 0.0)  # round-off can push identical Gaussians below zero


def ring_modes(count: int = 8, radius: float = 2.0) -> torch.Tensor:
    """``count`` mode centres evenly spaced on a circle of ``radius``, shape (count, 2)."""
    angles = torch.arange(count, dtype=torch.float64) * (2 * math.pi / count)
    return torch.stack([radius * angles.cos(), radius * angles.sin()], dim=1)


@dataclass(frozen=True)
class ModeReport:
    covered: int  # modes with enough high-quality samples
    modes: int
    quality: float  # fraction of samples within HIGH_QUALITY_SIGMAS·σ of their nearest mode
    counts: tuple[int, ...]  # high-quality samples per mode


def mode_report(samples: torch.Tensor, modes: torch.Tensor, sigma: float) -> ModeReport:
    """Mode coverage and sample quality of ``samples`` (n, d) against a mixture of isotropic
    Gaussians with centres ``modes`` (k, d) and standard deviation ``sigma``.

    A sample is high quality if it lies within 3σ of its nearest mode; a mode is covered if it
    receives at least a quarter of its fair share (n / k) of the high-quality samples."""
    samples = torch.as_tensor(samples, dtype=torch.float64).reshape(len(samples), -1)
    modes = torch.as_tensor(modes, dtype=torch.float64)
    distances = torch.cdist(samples, modes)
    nearest_distance, nearest = distances.min(dim=1)
    good = nearest_distance <= HIGH_QUALITY_SIGMAS * sigma
    counts = torch.bincount(nearest[good], minlength=len(modes))
    needed = COVERED_SHARE * len(samples) / len(modes)
    return ModeReport(
        covered=int((counts >= needed).sum()),
        modes=len(modes),
        quality=float(good.double().mean()) if len(samples) else 0.0,
        counts=tuple(int(c) for c in counts),
    )


# ---- the digits feature space -------------------------------------------------------------

FEATURE_DIM = 32
_CLASSIFIER_STEPS = 300
_CLASSIFIER_SEED = 1234
_CACHE_FORMAT = "hvadam-bench digits classifier v1"


class DigitsClassifier(nn.Module):
    """A small MLP on 8x8 digits (64 inputs in [-1, 1]); ``features`` is its penultimate
    layer, the space in which generated digits are compared with real ones."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, FEATURE_DIM), nn.ReLU()
        )
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.reshape(len(images), 64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(_CACHE_FORMAT.encode())
    digest.update(f"{_CLASSIFIER_STEPS} {_CLASSIFIER_SEED} {FEATURE_DIM}".encode())
    digest.update(images.to(torch.float32).contiguous().numpy().tobytes())
    digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def train_digits_classifier(images: torch.Tensor, labels: torch.Tensor) -> DigitsClassifier:
    """Full-batch Adam from a fixed seed on one thread: the same data give the same weights on
    every machine, and the caller's random state and thread count are left as they were."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # also far faster than threads for so small a network
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_CLASSIFIER_SEED)
            model = DigitsClassifier()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            inputs, targets = images.to(torch.float32), labels.to(torch.int64)
            for _ in range(_CLASSIFIER_STEPS):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(inputs), targets).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def load_or_train_digits_classifier(
    path: Path, images: torch.Tensor, labels: torch.Tensor
) -> tuple[DigitsClassifier, bool]:
    """The classifier cached at ``path`` if it is readable and was trained on these data with
    this recipe; otherwise train it (deterministically) and cache it. Returns (model, trained)."""
    path = Path(path)
    fingerprint = _fingerprint(images, labels)
    model = DigitsClassifier()
    if path.exists():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("format") != _CACHE_FORMAT or cached.get("fingerprint") != fingerprint:
                raise ValueError("made for other data or another recipe")
            model.load_state_dict(cached["state_dict"])
            return model.eval(), False
        except Exception as error:  # unreadable or stale: retrain rather than trust it
            print(
                f"hvadam-bench: digits classifier cache {path.name} unusable "
                f"({type(error).__name__}); retraining it",
                file=sys.stderr,
            )
    model = train_digits_classifier(images, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(
        {"format": _CACHE_FORMAT, "fingerprint": fingerprint, "state_dict": model.state_dict()},
        temporary,
    )
    temporary.replace(path)
    return model, True


@torch.no_grad()
def classifier_accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor):
    """Top-1 accuracy of ``model`` on (images, labels)."""
    return float((model(images.to(torch.float32)).argmax(dim=1) == labels).double().mean())
