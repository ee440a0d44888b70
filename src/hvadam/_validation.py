"""Hyperparameter validation shared by the optimizer class and the functional API.

Every check raises ``ValueError`` whose message starts with the argument's name, so a bad
configuration fails at construction (or in ``add_param_group``), never inside ``step()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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


def _number(name: str, value: Any) -> float:
    """``value`` as a float; a tensor must hold one floating-point element."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: a tensor {name} must have exactly one element")
        if not value.is_floating_point():
            raise ValueError(f"{name}: a tensor {name} must be floating point")
        # Construction and loading only; step() never reads tensor values on the host.
        return value.detach().cpu().item()
    if not _is_number(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    return float(value)


def _check_finite_nonnegative(name: str, value: Any) -> None:
    number = _number(name, value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name}: expected a finite, non-negative number, got {value!r}")


def _check_flag(name: str, value: Any, allow_none: bool = False) -> None:
    # `fused=1` is as much a typo as `maximize=1`: only True, False (and None where it means
    # "pick for me") are accepted.
    if not (isinstance(value, bool) or (allow_none and value is None)):
        expected = "None or a bool" if allow_none else "a bool"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


# b_t = 10^(slope·δ + intercept) must be finite for every δ in [-1, 1] in float32, the
# narrowest dtype a scope's scalars are kept in.
MAX_HIDDEN_STEP_EXPONENT = math.log10(torch.finfo(torch.float32).max)


def validate_options(group: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first invalid hyperparameter of a param group."""
    _check_finite_nonnegative("lr", group["lr"])
    if group["lr_hidden"] is not None:
        _check_finite_nonnegative("lr_hidden", group["lr_hidden"])
    for name in ("gamma", "weight_decay"):
        _check_finite_nonnegative(name, group[name])
    eps = _number("eps", group["eps"])
    if not (math.isfinite(eps) and eps > 0):
        # ε keeps η = p / ((g - m)² + γ·p + ε) defined where g = m = v (a zero gradient on the
        # first step is enough): 0 would make that 0/0.
        raise ValueError(f"eps: expected a finite, positive number, got {group['eps']!r}")
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        if not _is_number(beta) or not 0.0 <= beta < 1.0:
            raise ValueError(f"betas: betas[{index}] must be a number in [0, 1), got {beta!r}")
    threshold = group["restart_threshold"]
    if not _is_number(threshold) or not math.isfinite(threshold):
        raise ValueError(f"restart_threshold: expected a finite number, got {threshold!r}")
    _check_hidden_step_size(group["hidden_step_size"])
    cosine_beta = group.get("cosine_beta")
    if cosine_beta is not None and (not _is_number(cosine_beta) or not 0.0 <= cosine_beta < 1.0):
        raise ValueError(f"cosine_beta: expected None or a number in [0, 1), got {cosine_beta!r}")
    cap = group.get("second_moment_cap")
    if cap is not None and (not _is_number(cap) or not (math.isfinite(cap) and cap > 0)):
        # 0 would make the cap 0·g², and 0·inf a NaN where g² overflows.
        raise ValueError(f"second_moment_cap: expected None or a finite number > 0, got {cap!r}")
    _check_flag("bias_corrected_step", group.get("bias_corrected_step", False))
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
        _check_flag(name, group[name])
    if group["fixed_decay"] and not group["decoupled_weight_decay"]:
        raise ValueError(
            "fixed_decay: the lr-independent decay is a form of decoupled decay; "
            "set decoupled_weight_decay=True as well"
        )
    _check_flag("foreach", group["foreach"], allow_none=True)
    _check_flag("fused", group["fused"], allow_none=True)
    if group["foreach"] and group["fused"]:
        raise ValueError("fused: fused=True and foreach=True cannot both be set")


def _check_hidden_step_size(step_size: Any) -> None:
    if callable(step_size):
        return  # its values are guarded inside the step: a non-finite b_t takes no hidden step
    if (
        not isinstance(step_size, (tuple, list))
        or len(step_size) != 2
        or not all(_is_number(x) and math.isfinite(x) for x in step_size)
    ):
        raise ValueError(
            "hidden_step_size: expected (slope, intercept) for b_t = 10**(slope*delta + "
            f"intercept), or a callable delta -> b_t, got {step_size!r}"
        )
    slope, intercept = step_size
    if abs(slope) + intercept > MAX_HIDDEN_STEP_EXPONENT:
        raise ValueError(
            f"hidden_step_size: b_t = 10**({slope}*delta + {intercept}) reaches "
            f"10**{abs(slope) + intercept:g} for delta in [-1, 1], beyond float32's range; "
            f"keep |slope| + intercept <= {MAX_HIDDEN_STEP_EXPONENT:.2f}"
        )


def validate_scope_group(group: Mapping[str, Any], scope_group: Any) -> None:
    """Under ZeRO each rank holds different tensors, so per-tensor scopes would have ranks call
    different numbers of collectives, and hang."""
    if group["scope"] == "tensor" and scope_group is not None:
        raise ValueError(
            'scope_group: cannot be combined with scope="tensor" (ranks holding '
            'different tensors would run different collectives); use scope="group" '
            'or "global"'
        )


# Options that act on the scope as a whole (the cosine EMA, the restart rule, b_t): every
# param group sharing one "global" scope must agree on them.
SCOPE_OPTIONS = (
    "betas",
    "restart_threshold",
    "hidden_step_size",
    "variant",
    "cosine_beta",
    "bias_corrected_step",
)


def validate_global_scope(groups: Sequence[Mapping[str, Any]]) -> None:
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
