"""The valley landscapes: right minima, finite gradients, the paper's function exactly."""

import math

import pytest
import torch

from hvadam_bench.workloads.landscapes import DTYPE, all_names, landscape


@pytest.mark.parametrize("name", all_names())
def test_minimum_is_where_it_is_said_and_starts_are_worse(name):
    land = landscape(name)
    at_minimum = land.value(land.minimizer[None])[0]
    assert at_minimum == pytest.approx(land.minimum, abs=1e-12)
    starts = land.starts(5, seed=1)
    assert starts.shape == (5, land.dim)
    assert (land.value(starts) > land.minimum + 1e-3).all()
    x = starts.clone().requires_grad_()
    land.value(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_starts_are_reproducible_and_seed_dependent():
    land = landscape("valley-30-16")
    assert torch.equal(land.starts(3, 7), land.starts(3, 7))
    assert not torch.equal(land.starts(3, 7), land.starts(3, 8))


def test_table1_is_the_papers_function_shifted():
    land = landscape("table1")
    point = torch.tensor([[0.3, -1.2]], dtype=DTYPE)
    x, y = (point - land.minimizer)[0]
    assert land.value(point)[0] == pytest.approx(4 * abs(x - y) + abs(x + y))


def test_rotated_valley_floor_is_along_its_direction():
    land = landscape("valley-30-4")
    along = land.minimizer + 2.0 * land.valley_direction
    across = land.minimizer + 2.0 * torch.tensor(
        [-math.sin(math.pi / 6), math.cos(math.pi / 6)], dtype=DTYPE
    )
    assert land.value(along[None])[0] == pytest.approx(2.0)
    assert land.value(across[None])[0] == pytest.approx(8.0)


def test_high_dimensional_valley_is_not_axis_aligned():
    land = landscape("nd-50")
    assert land.valley_direction.abs().max() < 0.7  # no axis carries the floor
    along = land.minimizer + 3.0 * land.valley_direction
    assert land.value(along[None])[0] == pytest.approx(3.0)


@pytest.mark.parametrize("name", ["valley-x-4", "nd-1", "nd-a", "himmelblau", ""])
def test_unknown_names_are_refused(name):
    with pytest.raises(ValueError, match="unknown function"):
        landscape(name)
