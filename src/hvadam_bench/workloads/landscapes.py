"""Valley landscapes: functions whose minima lie at the end of a valley that is (mostly) not
aligned with the coordinate axes.

Every landscape takes a batch of points ``x`` of shape ``(runs, dim)`` and returns one value per
run, so that many independent runs share one autograd call. Minima are moved away from the
origin so that weight decay (AdamW) gets no free pull towards them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

DTYPE = torch.float64


def rotation(angle_degrees: float) -> Tensor:
    """The 2-D rotation taking the x axis onto the direction at ``angle_degrees``."""
    a = math.radians(angle_degrees)
    return torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=DTYPE)


@dataclass
class Landscape:
    """A function to minimize: its name, dimension, minimizer and minimum, and how its starting
    points are drawn. Subclasses implement :meth:`value`."""

    name: str
    description: str
    dim: int
    minimizer: Tensor
    minimum: float = 0.0
    start_center: Tensor | None = None  # starts are drawn around this point ...
    start_radius: float = 3.0  # ... at about this distance
    valley_direction: Tensor | None = field(default=None, repr=False)  # v*, where it has one

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def starts(self, count: int, seed: int) -> Tensor:
        """``count`` starting points at about ``start_radius`` from ``start_center`` (default:
        the minimizer) in random directions, reproducible from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        center = self.minimizer if self.start_center is None else self.start_center
        direction = torch.randn(count, self.dim, generator=generator, dtype=DTYPE)
        direction /= direction.norm(dim=1, keepdim=True)
        radius = self.start_radius * (0.8 + 0.4 * torch.rand(count, 1, generator=generator))
        return center + radius.to(DTYPE) * direction


@dataclass
class AbsValley(Landscape):
    """``f = |u| + ratio·|w|`` in coordinates rotated by ``angle``: a V-shaped valley along the
    direction at ``angle``, whose walls are ``ratio`` times steeper than its floor. The paper's
    Table-1 function ``4|x-y| + |x+y|`` is this valley at 45° with ratio 4 (up to a factor √2)."""

    angle: float = 45.0
    ratio: float = 4.0

    def value(self, x: Tensor) -> Tensor:
        z = (x - self.minimizer) @ rotation(self.angle)  # (u, w): along and across the floor
        return z[:, 0].abs() + self.ratio * z[:, 1].abs()


@dataclass
class Table1(Landscape):
    """The paper's ``f(x, y) = 4|x - y| + |x + y|`` (Table 1, Figures 1 and 3), moved to its
    minimizer."""

    def value(self, x: Tensor) -> Tensor:
        d = x - self.minimizer
        return 4 * (d[:, 0] - d[:, 1]).abs() + (d[:, 0] + d[:, 1]).abs()


@dataclass
class RotatedQuadratic(Landscape):
    """``f = ½(u² + κ·w²)``: a smooth, ill-conditioned valley along the direction at ``angle``."""

    angle: float = 45.0
    condition: float = 100.0

    def value(self, x: Tensor) -> Tensor:
        z = (x - self.minimizer) @ rotation(self.angle)
        return 0.5 * (z[:, 0] ** 2 + self.condition * z[:, 1] ** 2) / self.condition**0.5


@dataclass
class Rosenbrock(Landscape):
    """``f = (1 - x)² + 100·(y - x²)²``: a curved, smooth valley."""

    def value(self, x: Tensor) -> Tensor:
        return (1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2


@dataclass
class BentValley(Landscape):
    """A V-shaped valley whose floor turns by 90° halfway: along (1, 1) from ``corners[0]`` to
    ``corners[1]``, then along (1, -1) to the minimizer. ``f = ratio·dist(x, floor) + the
    length of floor still to go``. The hidden vector that serves the first leg is wrong for the
    second: this is where restarting it should matter."""

    ratio: float = 8.0
    corners: tuple = ((-4.0, -3.0), (0.0, 1.0))

    def value(self, x: Tensor) -> Tensor:
        points = [torch.tensor(c, dtype=DTYPE) for c in self.corners] + [self.minimizer]
        best_distance = best_remaining = None
        tail = 0.0
        lengths = [(b - a).norm() for a, b in zip(points, points[1:])]
        for index in reversed(range(len(points) - 1)):
            a, b = points[index], points[index + 1]
            t = ((x - a) @ (b - a) / lengths[index] ** 2).clamp(0, 1)
            distance = (x - (a + t[:, None] * (b - a))).norm(dim=1)
            remaining = (1 - t) * lengths[index] + tail
            if best_distance is None:
                best_distance, best_remaining = distance, remaining
            else:
                closer = distance < best_distance
                best_distance = torch.where(closer, distance, best_distance)
                best_remaining = torch.where(closer, remaining, best_remaining)
            tail = tail + lengths[index]
        return self.ratio * best_distance + best_remaining


@dataclass
class HighDimValley(Landscape):
    """The rotated V valley in ``dim`` dimensions: ``f = |z₁| + ratio·‖z₂..z_d‖`` with
    ``z = Q(x - x*)`` for a random rotation ``Q``; the floor is a line along a random direction,
    aligned with no axis."""

    ratio: float = 8.0
    seed: int = 0
    basis: Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        generator = torch.Generator().manual_seed(self.seed)
        q, _ = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=generator, dtype=DTYPE))
        self.basis = q
        self.valley_direction = q[:, 0]

    def starts(self, count: int, seed: int) -> Tensor:
        """Far along the floor (4 to 6 from the minimum, either side), about 1 off it."""
        generator = torch.Generator().manual_seed(seed)
        along = (4 + 2 * torch.rand(count, generator=generator, dtype=DTYPE)) * torch.where(
            torch.rand(count, generator=generator) < 0.5, -1.0, 1.0
        ).to(DTYPE)
        off = torch.randn(count, self.dim - 1, generator=generator, dtype=DTYPE)
        off /= off.norm(dim=1, keepdim=True)
        z = torch.cat([along[:, None], off], dim=1)
        return self.minimizer + z @ self.basis.T

    def value(self, x: Tensor) -> Tensor:
        z = (x - self.minimizer) @ self.basis
        across = z[:, 1:].pow(2).sum(dim=1).add(1e-300).sqrt()
        return z[:, 0].abs() + self.ratio * across


MINIMIZER = (1.0, -0.5)


def _point(*values: float) -> Tensor:
    return torch.tensor(values, dtype=DTYPE)


def landscape(name: str) -> Landscape:
    """Build a landscape from its name (see :func:`all_names`); ``ValueError`` if unknown."""
    parts = name.split("-")
    try:
        if name == "table1":
            return Table1(
                name, "paper's 4|x-y|+|x+y| (Table 1)", 2, _point(*MINIMIZER),
                valley_direction=_point(1.0, 1.0) / math.sqrt(2),
            )  # fmt: skip
        if parts[0] == "valley":
            angle, ratio = float(parts[1]), float(parts[2])
            direction = rotation(angle)[:, 0]
            return AbsValley(
                name, f"V valley at {angle:g}°, walls {ratio:g}x steeper", 2, _point(*MINIMIZER),
                valley_direction=direction, angle=angle, ratio=ratio,
            )  # fmt: skip
        if parts[0] == "quadratic":
            angle, condition = float(parts[1]), float(parts[2])
            return RotatedQuadratic(
                name, f"quadratic at {angle:g}°, condition {condition:g}", 2, _point(*MINIMIZER),
                valley_direction=rotation(angle)[:, 0], angle=angle, condition=condition,
            )  # fmt: skip
        if name == "rosenbrock":
            return Rosenbrock(
                name, "Rosenbrock (1-x)²+100(y-x²)²", 2, _point(1.0, 1.0),
                start_center=_point(-1.5, 2.0), start_radius=0.3,
            )  # fmt: skip
        if name == "bent":
            return BentValley(
                name, "V valley turning by 90° halfway", 2, _point(4.0, -3.0),
                start_center=_point(-4.0, -3.0), start_radius=0.3,
            )  # fmt: skip
        if parts[0] == "nd":
            dim = int(parts[1])
            if dim < 2:
                raise ValueError
            minimizer = torch.linspace(-1.0, 1.0, dim, dtype=DTYPE)
            return HighDimValley(
                name, f"V valley in {dim} dimensions, random orientation", dim, minimizer,
            )  # fmt: skip
    except (IndexError, ValueError):
        pass
    raise ValueError(f"unknown function {name!r}; known: {', '.join(all_names())}")


QUICK = [
    "table1",
    "valley-0-16",
    "valley-30-16",
    "quadratic-45-100",
    "rosenbrock",
    "bent",
    "nd-10",
    "nd-100",
]
FULL = (
    ["table1"]
    + [f"valley-{a}-{r}" for r in (4, 16, 64) for a in (0, 15, 30, 45)]
    + ["quadratic-0-100", "quadratic-45-100", "rosenbrock", "bent"]
    + [f"nd-{d}" for d in (2, 10, 100, 1000)]
)


def all_names() -> list[str]:
    """Every predefined landscape (``valley-ANGLE-RATIO``, ``quadratic-ANGLE-CONDITION`` and
    ``nd-DIM`` also accept other numbers)."""
    return list(dict.fromkeys(FULL + QUICK))
