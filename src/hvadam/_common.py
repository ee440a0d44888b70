"""Pieces shared by every kernel path: the per-group options, the tensor bundle of a scope
segment, and small helpers (effective gradient, weight decay, per-step scalars)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import torch
from torch import Tensor

from hvadam.scope import ReductionKey


class GroupOptions(NamedTuple):
    """The hyperparameters of one param group, resolved for the kernels."""

    lr: float | Tensor
    lr_hidden: float | Tensor  # α2; equals lr unless set on its own
    beta1: float
    beta2: float
    eps: float
    gamma: float
    weight_decay: float
    decay: str  # "l2" (g += wd·θ), "decoupled" (θ *= 1 - lr·wd) or "fixed" (θ *= 1 - wd)
    amsgrad: bool
    maximize: bool
    hidden_moment: bool
    hidden_step: bool
    second_moment_cap: float | None = None  # η·p ≤ cap·g² (None: no cap)


class Segment(NamedTuple):
    """The tensors of one param group that take part in a step of one scope.

    All lists are aligned; ``hidden_vectors`` is empty when the variant takes no hidden step and
    ``max_second_moments`` is empty without AMSGrad. ``reduction_keys[i]`` names the process
    groups over which tensor ``i``'s share of the inner products must be all-reduced (``()``: none);
    ``positions[i]`` is its row among the scope's tensors whose pieces are summed across ranks
    (:func:`hvadam.distributed.scope_layout`), or -1; ``None`` when nothing is sharded.
    """

    params: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    second_moments: list[Tensor]
    hidden_vectors: list[Tensor]
    max_second_moments: list[Tensor]
    steps: list[Tensor]
    reduction_keys: list[ReductionKey]
    options: GroupOptions
    positions: list[int] | None = None


class Prepared(NamedTuple):
    """What a path's first pass hands to its second: per-tensor rows ``(c, e, f)``, as
    ``[(segment indices, tensor (n, 3))]`` (every index of one entry shares a reduction key),
    and anything else the path keeps."""

    rows: list[tuple[list[int], Tensor]]
    carry: Any = None


def buckets(segment: Segment) -> list[list[int]]:
    """Indices of the segment's tensors grouped by device, dtype and reduction key."""
    grouped: dict = defaultdict(list)
    for i, param in enumerate(segment.params):
        grouped[(param.device, param.dtype, segment.reduction_keys[i])].append(i)
    return list(grouped.values())


def take(tensors: list, indices: list[int]) -> list:
    return [tensors[i] for i in indices] if tensors else []


def saturation(dtype: torch.dtype) -> float:
    """A quarter of the dtype's largest value, where the gradient, ``(g - m)² + γ·p + ε`` and
    ``η·p`` saturate: with every input finite and at most this large, no intermediate of the step
    can overflow to inf, and no inf/inf can make a NaN (README, "Numerics"). A quarter, not a
    half, so that ``g - m`` keeps a margin when stored state rounds up past the saturation
    (bfloat16 state, stochastically rounded, lands up to 2^-8 above it)."""
    return torch.finfo(dtype).max / 4


def effective_grad(
    grad: Tensor, param: Tensor, opts: GroupOptions, out: Tensor | None = None
) -> Tensor:
    """``g`` after ``maximize`` (negated) and L2 decay (``g + wd·θ``, docs/algorithm.md §3
    step 2), saturated at ±:func:`saturation`: a finite gradient near the dtype's maximum
    would otherwise overflow ``g - m`` in the momentum's update. Written into ``out`` when
    given (never into ``grad``)."""
    limit = saturation(param.dtype)
    source = grad
    if opts.maximize:
        source = torch.neg(source, out=out)
    if opts.decay == "l2" and opts.weight_decay != 0:
        source = torch.add(source, param, alpha=opts.weight_decay, out=out)
    return torch.clamp(source, -limit, limit, out=out)


def decayed_weight_factor(opts: GroupOptions) -> float | Tensor | None:
    """The factor decoupled decay multiplies θ by (docs/algorithm.md §3 step 8), or ``None``
    if there is none."""
    if opts.weight_decay == 0 or opts.decay == "l2":
        return None
    if opts.decay == "fixed":
        return 1 - opts.weight_decay
    return 1 - opts.lr * opts.weight_decay


class StepScalars(NamedTuple):
    """Per-tensor scalars of one step, each a 1-D tensor with one entry per tensor.

    With ``bc1 = 1 - β1^t`` and ``bc2 = 1 - β2^t``, the adaptive step
    ``θ ← θ - lr·(m/bc1) / (√(s/bc2) + ε)`` is rewritten as
    ``θ ← θ + m / ((√s + ε·√bc2) / neg_step)`` with ``neg_step = -lr·√bc2 / bc1``, so that a
    tensor takes three elementwise ops and no host-side scalar.
    """

    neg_bc1: Tensor  # -(1 - β1^t): u = m - bc1·v is addcmul(m, v, neg_bc1)
    inv_bc1: Tensor  # 1 / bc1: m̂ = m·inv_bc1
    eps_scaled: Tensor  # ε·√bc2
    neg_step: Tensor  # -lr·√bc2 / bc1


def step_scalars(steps: list[Tensor], opts: GroupOptions, dtype: torch.dtype) -> StepScalars:
    """The :class:`StepScalars` of tensors on one device, computed in a handful of ops."""
    t = torch.stack(steps).to(dtype)
    bc1 = 1 - torch.pow(opts.beta1, t)
    bc2_sqrt = (1 - torch.pow(opts.beta2, t)).sqrt()
    return StepScalars(
        neg_bc1=-bc1,
        inv_bc1=1 / bc1,
        eps_scaled=opts.eps * bc2_sqrt,
        neg_step=-opts.lr * bc2_sqrt / bc1,
    )


def compute_dtype(param_dtype: torch.dtype, state_dtype: torch.dtype) -> torch.dtype:
    """The dtype the update math runs in: float32 at least, float64 if parameter or state is
    (complex dtypes count as their real components)."""
    real = {torch.complex64: torch.float32, torch.complex128: torch.float64}
    widest = torch.promote_types(
        real.get(param_dtype, param_dtype), real.get(state_dtype, state_dtype)
    )
    return torch.promote_types(widest, torch.float32)


def device_scalar(value: float | Tensor, like: Tensor) -> Tensor:
    """``value`` as a 0-dim tensor of ``like``'s dtype and device, made by a fill there: a
    blocking host-to-device copy would wait for the device's queue to drain."""
    if torch.is_tensor(value):
        if value.device == like.device or value.device.type != "cpu":
            return value.to(like)
        value = value.item()  # a tensor lr on the host: reading it does not touch the device
    return torch.full((), value, dtype=like.dtype, device=like.device)
