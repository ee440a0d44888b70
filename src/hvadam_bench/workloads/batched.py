"""Many independent optimization runs on one landscape, stepped together.

A study needs every (learning rate, second hyperparameter, starting point) combination of
every optimizer. Run one by one, thousands of 2-D runs spend their time in Python. So runs are
batched, exactly:

* the baselines are elementwise optimizers, so independent runs stacked as rows of one tensor
  (one param group per learning rate) do not interact;
* HVAdam couples every element of a scope through its hidden vector, so its runs instead go
  through ``hvadam.functional.hvadam`` vmapped over rows: each row is a scope of its own, as if
  every run had its own ``HVAdam([x])`` (tests/bench check the two agree bit for bit).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

import hvadam.functional as F
from hvadam import ScopeState
from hvadam_bench.optimizers import OptimizerSpec
from hvadam_bench.workloads.landscapes import DTYPE, Landscape


@dataclass
class BatchResult:
    """Per step, config and start: ``values`` (steps + 1, C, S) from the start point on;
    ``trajectory`` (steps + 1, C, S, dim) if recorded; for HVAdam, ``hidden`` holds
    ``delta``, ``hidden_step_size``, ``restart_count`` (steps, C, S) and ``vector``
    (steps, C, S, dim)."""

    values: Tensor
    trajectory: Tensor | None = None
    hidden: dict[str, Tensor] | None = None


class VmappedHVAdam:
    """Independent HVAdam runs, one per row of ``rows``: the functional step vmapped over rows."""

    def __init__(
        self,
        rows: Tensor,
        lrs: Tensor,
        beta2: float,
        variant: str,
        state_dtype: torch.dtype | None = None,
    ):
        runs, dim = rows.shape
        self.x = rows.clone()
        self.exp_avg, self.second_moment, self.hidden = (
            torch.zeros_like(rows, dtype=state_dtype) for _ in "msv"
        )
        self.steps = torch.zeros(runs)
        fresh = ScopeState.zeros(dtype=rows.dtype)
        self.scope = ScopeState(*(scalar.expand(runs, *scalar.shape).clone() for scalar in fresh))
        self.lrs = lrs.to(rows.dtype)
        self.beta2, self.variant = beta2, variant
        self._step = vmap(self._one)

    def _one(self, x, grad, exp_avg, second_moment, hidden, step, scope, lr):
        F.hvadam(
            [x], [grad], [exp_avg], [second_moment], [hidden], [step], ScopeState(*scope),
            lr=lr, betas=(0.9, self.beta2), variant=self.variant, foreach=False,
        )  # fmt: skip
        return x

    def step(self, grad: Tensor) -> None:
        with warnings.catch_warnings():
            # vmap falls back to a loop for a few in-place ops; correct, only slower.
            warnings.filterwarnings("ignore", message="There is a performance drop")
            self._step(
                self.x, grad, self.exp_avg, self.second_moment, self.hidden, self.steps,
                tuple(self.scope), self.lrs,
            )  # fmt: skip


def _grad(landscape: Landscape, x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_()
    values = landscape.value(x)
    (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad


def run_batch(
    spec: OptimizerSpec,
    landscape: Landscape,
    starts: Tensor,
    configs: list[tuple[float, float]],
    steps: int,
    record_trajectory: bool = False,
    record_hidden: bool = False,
) -> BatchResult:
    """Run ``spec`` from every start under every ``(lr, second)`` config for ``steps`` steps."""
    starts = starts.to(DTYPE)
    n_configs, (n_starts, dim) = len(configs), starts.shape
    values = torch.empty(steps + 1, n_configs, n_starts, dtype=DTYPE)
    trajectory = (
        torch.empty(steps + 1, n_configs, n_starts, dim, dtype=DTYPE) if record_trajectory else None
    )
    hidden = None
    # Configs sharing a second hyperparameter share one optimizer (one param group per lr).
    by_second: dict[float, list[int]] = {}
    for index, (_, second) in enumerate(configs):
        by_second.setdefault(second, []).append(index)

    for second, indices in by_second.items():
        lrs = torch.tensor([configs[i][0] for i in indices], dtype=DTYPE)
        if spec.hvadam_variant is not None:
            runner = VmappedHVAdam(
                starts.repeat(len(indices), 1), lrs.repeat_interleave(n_starts), second,
                spec.hvadam_variant, spec.state_dtype,
            )  # fmt: skip
            if record_hidden and hidden is None:
                hidden = {
                    name: torch.zeros(steps, n_configs, n_starts, dtype=DTYPE)
                    for name in ("delta", "hidden_step_size", "restart_count")
                }
                hidden["vector"] = torch.zeros(steps, n_configs, n_starts, dim, dtype=DTYPE)
            for t in range(steps + 1):
                f, grad = _grad(landscape, runner.x)
                values[t, indices] = f.view(len(indices), n_starts)
                if trajectory is not None:
                    trajectory[t, indices] = runner.x.view(len(indices), n_starts, dim)
                if t == steps:
                    break
                runner.step(grad)
                if hidden is not None:
                    for name in ("delta", "hidden_step_size", "restart_count"):
                        scalar = getattr(runner.scope, name).view(len(indices), n_starts)
                        hidden[name][t, indices] = scalar.to(DTYPE)
                    vector = runner.hidden.view(len(indices), n_starts, dim)
                    hidden["vector"][t, indices] = vector.to(DTYPE)
        else:
            leaves = [starts.clone().requires_grad_() for _ in indices]
            optimizer = spec.build(
                [{"params": [leaf], "lr": float(lr)} for leaf, lr in zip(leaves, lrs)], second
            )
            for t in range(steps + 1):
                optimizer.zero_grad()
                # One evaluation and one backward pass for every run of this optimizer: rows
                # do not interact, and per-call overhead, not arithmetic, is the cost here.
                stacked = torch.stack(leaves)  # (configs, starts, dim)
                f = landscape.value(stacked.view(-1, dim)).view(len(indices), n_starts)
                values[t, indices] = f.detach()
                if trajectory is not None:
                    trajectory[t, indices] = stacked.detach()
                if t == steps:
                    break
                f.sum().backward()
                optimizer.step()
    return BatchResult(values=values, trajectory=trajectory, hidden=hidden)
