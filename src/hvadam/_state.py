"""The optimizer's per-parameter state: its layout and dtypes, the checks that keep a step from
running on state that does not fit its parameter, and how state dicts are saved and loaded.

Loading composes with ``torch.optim.Optimizer``'s own machinery instead of redoing it:
``HVAdam.load_state_dict`` calls torch's, with two hooks around the user's hooks. The last
pre-hook (:func:`prepare_loaded`) sees the dict the user's pre-hooks produced; it validates the
options and the state (nothing is changed if they are wrong), fills options an older dict lacks
from the optimizer's own, and wraps every state tensor so that torch's loader (which would cast
it to the parameter's dtype: bfloat16 for a bf16 model's float32 state) passes it through. The
first post-hook (:func:`finish_loaded`) unwraps them in HVAdam's dtypes, on the parameters'
devices, before the user's post-hooks run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from hvadam._common import compute_dtype
from hvadam._validation import validate_global_scope, validate_options, validate_scope_group
from hvadam.scope import INTEGER_SCOPE_KEYS, SCOPE_KEYS

# Per-parameter state tensors with the shape of the parameter.
TENSOR_STATE = ("exp_avg", "second_moment", "hidden_vector", "max_second_moment")
# What every stepped parameter has; the other keys depend on the options (and older versions
# lacked some of them: they are created when the next step needs them).
REQUIRED_STATE = ("step", "exp_avg", "second_moment")
KNOWN_STATE = frozenset(("step", *TENSOR_STATE, *SCOPE_KEYS))

# A callable hidden_step_size is saved as this prefix and its name, not as the function: a
# checkpoint must load under torch.load(weights_only=True), which refuses pickled globals.
CALLABLE_PREFIX = "callable:"


def state_dtype(group: Mapping[str, Any], param: Tensor) -> torch.dtype:
    """The dtype of ``m``, ``s``, ``v``: the group's ``state_dtype``, or float32 for bf16/fp16
    parameters and the parameter's own dtype otherwise (complex parameters keep theirs)."""
    if param.is_complex() or group["state_dtype"] is None:
        if param.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return param.dtype
    return group["state_dtype"]


def scope_dtype(group: Mapping[str, Any], param: Tensor) -> torch.dtype:
    """The dtype of a scope's scalars: the compute dtype of its anchor parameter."""
    return compute_dtype(param.dtype, state_dtype(group, param))


def _loaded_dtype(key: str, group: Mapping[str, Any], param: Tensor, value: Tensor):
    if key == "step":
        # float32 as torch's optimizers keep it: integers are exact up to 2^24, and the bias
        # corrections are computed in the math dtype from it.
        return torch.float32
    if key in TENSOR_STATE:
        return state_dtype(group, param)
    if key in INTEGER_SCOPE_KEYS:
        return torch.int64
    if key in SCOPE_KEYS:
        return scope_dtype(group, param)
    return value.dtype


def check_state(name: str, param: Tensor, state: Mapping[str, Any], check_device: bool = True):
    """Raise ``ValueError`` (starting with ``name``) if ``state`` cannot be a parameter's HVAdam
    state: keys of another optimizer, a missing moment, or a tensor whose shape (or, with
    ``check_device``, device) does not fit ``param``."""
    if not state:
        return
    missing = [key for key in REQUIRED_STATE if key not in state]
    # Keys HVAdam does not know are kept, as torch's optimizers keep them: wrappers such as
    # Lookahead store their own buffers in the wrapped optimizer's state. Only the absence of
    # HVAdam's own moments marks another optimizer's state.
    if missing:
        unknown = sorted(set(state) - KNOWN_STATE)
        raise ValueError(
            f"{name}: not an HVAdam state (unknown keys {unknown}, missing {missing}); "
            "a state dict of another optimizer (torch.optim.Adam has exp_avg_sq) cannot be "
            "loaded into HVAdam"
        )
    for key in TENSOR_STATE:
        value = state.get(key)
        if value is None:
            continue
        if not torch.is_tensor(value) or value.shape != param.shape:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(
                f"{name}: state {key!r} has shape {shape}, the parameter {tuple(param.shape)}"
            )
        if check_device and value.device != param.device:
            raise ValueError(
                f"{name}: state {key!r} is on {value.device}, the parameter on {param.device} "
                "(was the model moved after the optimizer stepped? move it before creating "
                "the optimizer, or load a state dict after moving it)"
            )
    for key in SCOPE_KEYS:
        value = state.get(key)
        if value is not None and (not torch.is_tensor(value) or value.numel() != 1):
            raise ValueError(f"{name}: scope scalar {key!r} must be a 1-element tensor")


def check_dtypes(name: str, param: Tensor, state: Mapping[str, Any], group: Mapping[str, Any]):
    """Raise ``ValueError`` if a state tensor's dtype is not the one HVAdam keeps for ``param``
    (the parameter's dtype changed after the optimizer stepped)."""
    expected = state_dtype(group, param)
    for key in TENSOR_STATE:
        value = state.get(key)
        if value is not None and value.dtype != expected:
            raise ValueError(
                f"{name}: state {key!r} is {value.dtype}, expected {expected} for a "
                f"{param.dtype} parameter with state_dtype={group['state_dtype']}"
            )


# ----------------------------------------------------------------------------- saving


def saved_groups(groups: Iterable[dict[str, Any]]) -> None:
    """Make the param groups of a state dict (copies, from ``Optimizer.state_dict``) loadable
    with ``weights_only=True``: a callable ``hidden_step_size`` becomes its name, and any
    ``scope_group`` a wrapper copied in (a process group cannot be pickled) is dropped."""
    for group in groups:
        group.pop("scope_group", None)
        rule = group.get("hidden_step_size")
        if callable(rule):
            module = getattr(rule, "__module__", None) or "?"
            qualname = getattr(rule, "__qualname__", None) or type(rule).__qualname__
            group["hidden_step_size"] = f"{CALLABLE_PREFIX}{module}.{qualname}"


# ---------------------------------------------------------------------------- loading


class _Kept:
    """A state tensor that torch's loader must pass through untouched: it casts tensors and
    rebuilds iterables, and leaves any other object as it is."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


def prepare_loaded(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The last load pre-hook: validate ``state_dict`` against ``optimizer`` and return the dict
    torch should load (the caller's dict is not modified). Raises ``ValueError`` naming what is
    wrong, before anything is changed."""
    groups, saved = optimizer.param_groups, state_dict["param_groups"]
    if len(groups) != len(saved) or any(
        len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved)
    ):
        return None  # torch raises its own error for a dict of another shape
    loaded_groups = []
    for index, (group, saved_group) in enumerate(zip(groups, saved)):
        loaded = dict(saved_group)
        # Options an older version did not save keep the value this optimizer was built with.
        for key, value in group.items():
            if key not in ("params", "param_names"):
                loaded.setdefault(key, value)
        rule = loaded["hidden_step_size"]
        if isinstance(rule, str) and rule.startswith(CALLABLE_PREFIX):
            if not callable(group["hidden_step_size"]):
                raise ValueError(
                    f"hidden_step_size: param group {index} was saved with the callable "
                    f"{rule[len(CALLABLE_PREFIX) :]}; construct the optimizer with it "
                    "(hidden_step_size=...) before loading"
                )
            loaded["hidden_step_size"] = group["hidden_step_size"]
        try:
            validate_options(loaded)
            validate_scope_group(loaded, optimizer.scope_group)
        except ValueError as error:
            raise ValueError(f"{error} (in param group {index} of the loaded state dict)") from None
        loaded_groups.append(loaded)
    validate_global_scope(loaded_groups)

    # Saved ids map to parameters by position, as torch's loader maps them.
    params = chain.from_iterable(g["params"] for g in groups)
    saved_ids = chain.from_iterable(g["params"] for g in saved)
    for saved_id, param in zip(saved_ids, params):
        state = state_dict["state"].get(saved_id)
        if state is not None:
            # The device is not checked: loading moves every tensor to its parameter's.
            check_state(optimizer._describe(param), param, state, check_device=False)
    kept = {
        key: (
            {k: _Kept(v) if torch.is_tensor(v) else v for k, v in value.items()}
            if isinstance(value, dict)
            else value
        )
        for key, value in state_dict["state"].items()
    }
    return {**state_dict, "state": kept, "param_groups": loaded_groups}


def finish_loaded(optimizer: Any) -> None:
    """The first load post-hook: every state tensor in HVAdam's dtype, copied onto its
    parameter's device, and each scope's scalars in the state of the scope's anchor (its first
    parameter), wherever a pre-hook that remapped the state (by ``param_names``, say) put them."""
    _unwrap(optimizer)
    for anchor, members in optimizer._scopes():
        if anchor is None or SCOPE_KEYS[0] in optimizer.state.get(anchor, {}):
            continue
        holder = next(
            (
                optimizer.state[p]
                for _, params in members
                for p in params
                if SCOPE_KEYS[0] in optimizer.state.get(p, {})
            ),
            None,
        )
        if holder is not None:
            anchor_state = optimizer.state[anchor]
            for key in SCOPE_KEYS:
                if key in holder:
                    anchor_state[key] = holder.pop(key)


def _unwrap(optimizer: Any) -> None:
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for param, state in optimizer.state.items():
        group = group_of.get(id(param))
        if not isinstance(state, dict):
            continue
        for key, value in state.items():
            if not isinstance(value, _Kept):
                continue
            tensor = value.tensor
            if group is None or not torch.is_tensor(param):
                state[key] = tensor  # state of no parameter: kept as it was saved
                continue
            state[key] = tensor.to(
                device=param.device, dtype=_loaded_dtype(key, group, param, tensor), copy=True
            )
