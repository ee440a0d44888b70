"""Hyperparameter validation shared by the optimizer class and the functional API.

Every check raises ``ValueError`` whose message starts with the argument's name, so a bad
configuration fails at construction (or in ``add_param_group``), never inside ``step()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Variant(NamedTuple):
    """Which of HVAdam's three ingredients are on (the paper's ablation, Table 5)."""

    hidden_moment: bool  # second moment from (g - v)^2 (steps 4-6) instead of Adam's g^2
    hidden_step: bool  # the extra step along the hidden vector (steps 9-10)
    restart: bool  # restart the hidden vector when the smoothed cosine drops


VARIANTS: dict[str, Variant] = {
    "hvadam": Variant(hidden_moment=True, hidden_step=True, restart=True),
    "hvadam2": Variant(hidden_moment=True, hidden_step=True, restart=False),
    "hvadam1": Variant(hidden_moment=False, hidden_step=True, restart=False),
    "hvadam0": Variant(hidden_moment=False, hidden_step=False, restart=False),
}

SCOPES = ("group", "tensor", "global")

HiddenStepSize = tuple[float, float] | Callable[[Tensor], Tensor]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_nonnegative(name: str, value: Any) -> None:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: a tensor {name} must have exactly one element")
        if value.is_floating_point() is False:
            raise ValueError(f"{name}: a tensor {name} must be floating point")
        # Construction-time check only; step() never reads tensor values on the host.
        value = value.detach().cpu().item()
    if not _is_number(value) or math.isnan(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")


def validate_options(group: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first invalid hyperparameter of a param group."""
    _check_nonnegative("lr", group["lr"])
    if group["lr_hidden"] is not None:
        _check_nonnegative("lr_hidden", group["lr_hidden"])
    for name in ("eps", "gamma", "weight_decay"):
        _check_nonnegative(name, group[name])
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        if not _is_number(beta) or not 0.0 <= beta < 1.0:
            raise ValueError(f"betas: betas[{index}] must be a number in [0, 1), got {beta!r}")
    threshold = group["restart_threshold"]
    if not _is_number(threshold) or math.isnan(threshold):
        raise ValueError(f"restart_threshold: expected a number, got {threshold!r}")
    step_size = group["hidden_step_size"]
    if not callable(step_size) and (
        not isinstance(step_size, (tuple, list))
        or len(step_size) != 2
        or not all(_is_number(x) and math.isfinite(x) for x in step_size)
    ):
        raise ValueError(
            "hidden_step_size: expected (slope, intercept) for b_t = 10**(slope*delta + "
            f"intercept), or a callable delta -> b_t, got {step_size!r}"
        )
    if group["variant"] not in VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {group['variant']!r}")
    if group["scope"] not in SCOPES:
        raise ValueError(f"scope: expected one of {list(SCOPES)}, got {group['scope']!r}")
    state_dtype = group["state_dtype"]
    if state_dtype is not None and (
        not isinstance(state_dtype, torch.dtype) or not state_dtype.is_floating_point
    ):
        raise ValueError(f"state_dtype: expected None or a floating dtype, got {state_dtype!r}")
    if state_dtype == torch.float16:
        raise ValueError(
            "state_dtype: float16 cannot hold the second moment's range (η·p reaches 1e30 "
            "and beyond); use torch.bfloat16"
        )
    for name in ("decoupled_weight_decay", "fixed_decay", "amsgrad", "maximize"):
        if not isinstance(group[name], bool):
            raise ValueError(f"{name}: expected a bool, got {group[name]!r}")
    if group["fixed_decay"] and not group["decoupled_weight_decay"]:
        raise ValueError(
            "fixed_decay: the lr-independent decay is a form of decoupled decay; "
            "set decoupled_weight_decay=True as well"
        )
    if group["foreach"] not in (None, True, False):
        raise ValueError(f"foreach: expected None or a bool, got {group['foreach']!r}")
    if group["fused"] not in (None, True, False):
        raise ValueError(f"fused: expected None or a bool, got {group['fused']!r}")
    if group["foreach"] and group["fused"]:
        raise ValueError("fused: fused=True and foreach=True cannot both be set")


# Options that act on the scope as a whole (the cosine EMA, the restart rule, b_t): every
# param group sharing one "global" scope must agree on them.
SCOPE_OPTIONS = ("betas", "restart_threshold", "hidden_step_size", "variant")


def validate_global_scope(groups: list[Mapping[str, Any]]) -> None:
    """Raise ``ValueError`` when groups sharing the global scope disagree on a scope option."""
    shared = [g for g in groups if g["scope"] == "global"]
    for group in shared[1:]:
        for name in SCOPE_OPTIONS:
            first, other = shared[0][name], group[name]
            if name == "betas":
                first, other = first[1], other[1]
            if first != other:
                raise ValueError(
                    f"{name}: param groups sharing scope='global' must use the same {name} "
                    f"(the hidden vector is one for all of them), got {shared[0][name]!r} "
                    f"and {group[name]!r}"
                )
