"""``HVAdam``: a thin ``torch.optim.Optimizer`` over :mod:`hvadam.functional`."""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

import hvadam.distributed
from hvadam._common import GroupOptions, Segment, compute_dtype
from hvadam._validation import (
    VARIANTS,
    HiddenStepSize,
    validate_global_scope,
    validate_options,
)
from hvadam.diagnostics import ScopeDiagnostics, read_diagnostics
from hvadam.functional import ScopeOptions, implementation_for, step_scope
from hvadam.scope import SCOPE_KEY_PREFIX, SCOPE_KEYS, ScopeState, reduce_partial_sums

# Per-parameter state tensors with the shape of the parameter.
_TENSOR_STATE = ("exp_avg", "second_moment", "hidden_vector", "max_second_moment")
_INTEGER_SCOPE_KEYS = (
    SCOPE_KEY_PREFIX + "steps_since_restart",
    SCOPE_KEY_PREFIX + "restart_count",
)

# Options added after the first release get a default here so that older checkpoints load.
_DEFAULTS: dict[str, Any] = {
    "lr_hidden": None,
    "gamma": 0.0,
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "fixed_decay": False,
    "amsgrad": False,
    "restart_threshold": 0.1,
    "hidden_step_size": (6.0, -3.0),
    "scope": "group",
    "variant": "hvadam",
    "state_dtype": None,
    "foreach": None,
    "fused": None,
    "maximize": False,
}


class HVAdam(Optimizer):
    r"""HVAdam (Zhang et al., AAAI 2025): Adam with a hidden vector over all dimensions.

    Per tensor, with ``v`` the tensor's slice of the scope's hidden vector:

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad p = (g - v)^2, \qquad
        \eta = p / ((g - m)^2 + \gamma p + \epsilon) \\
        s &\leftarrow \beta_2 s + (1-\beta_2)\,\eta p + \epsilon, \qquad
        \theta \leftarrow \theta - \mathrm{lr}\; \hat m / (\sqrt{\hat s} + \epsilon)

    Per scope (default: one param group), ``v`` moves to the foot of the perpendicular from 0
    onto the line through ``v`` and ``m̂``; ``δ``, an EMA of ``cos(v, m̂)``, sizes an extra step
    ``θ ← θ - lr_hidden · 10^{6δ-3} · v``; when the bias-corrected ``δ̂`` drops below
    ``restart_threshold``, ``v`` restarts from ``m̂``. See ``SPEC.md`` for every detail.

    Args:
        params: parameters or param groups.
        lr: the adaptive step's learning rate α1 (float or 1-element tensor).
        betas: (β1, β2).
        eps: ε, added inside the second moment and to its square root.
        gamma: γ, caps η at 1/γ (0: no cap).
        weight_decay: decay coefficient (L2 on the gradient unless ``decoupled_weight_decay``).
        decoupled_weight_decay: decay the weights directly, ``θ ← θ·(1 - lr·wd)``, as AdamW.
        fixed_decay: with decoupled decay, use ``θ ← θ·(1 - wd)``, independent of lr.
        amsgrad: use the running maximum of the second moment.
        lr_hidden: the hidden step's learning rate α2; ``None`` ties it to ``lr`` (schedulers
            then scale both).
        restart_threshold: restart the hidden vector when ``δ̂`` falls below this.
        hidden_step_size: ``(slope, intercept)`` for ``b_t = 10^{slope·δ + intercept}``, or a
            callable mapping the δ tensor to ``b_t`` (keep it picklable to save checkpoints).
        scope: which parameters share a hidden vector: ``"group"``, ``"tensor"`` or ``"global"``
            (every group whose scope is ``"global"``).
        variant: ``"hvadam"``, or the paper's ablations ``"hvadam0"`` (Adam), ``"hvadam1"``
            (Adam's second moment + hidden step) and ``"hvadam2"`` (no restart).
        state_dtype: dtype of ``m``, ``s``, ``v``; ``None`` keeps float32 for bf16/fp16
            parameters and the parameter's dtype otherwise. The math runs in float32 or wider.
        foreach: use the multi-tensor path; ``None`` picks the faster one for the device.
        fused: use the compiled path (two passes over memory; compiles on first use, see the
            README's "Speed").
        maximize: maximize the objective instead of minimizing.
        scope_group: the ``torch.distributed`` process group over which the optimizer's plain
            (non-DTensor) parameters are partitioned, as ``ZeroRedundancyOptimizer`` does: their
            shares of the scope's inner products are all-reduced over it. ``None`` (default):
            plain tensors are local, or identical on every rank (DDP). DTensor parameters need
            nothing: they are reduced over the mesh dimensions that shard them. Not allowed
            with ``scope="tensor"``. See README, "Scaling out".
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        gamma: float = 0.0,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        fixed_decay: bool = False,
        amsgrad: bool = False,
        lr_hidden: float | Tensor | None = None,
        restart_threshold: float = 0.1,
        hidden_step_size: HiddenStepSize = (6.0, -3.0),
        scope: str = "group",
        variant: str = "hvadam",
        state_dtype: torch.dtype | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
        maximize: bool = False,
        scope_group: Any = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            eps=eps,
            gamma=gamma,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            fixed_decay=fixed_decay,
            amsgrad=amsgrad,
            lr_hidden=lr_hidden,
            restart_threshold=restart_threshold,
            hidden_step_size=hidden_step_size,
            scope=scope,
            variant=variant,
            state_dtype=state_dtype,
            foreach=foreach,
            fused=fused,
            maximize=maximize,
        )
        validate_options(defaults)
        # An attribute, not a group option: a process group cannot be saved in a state dict.
        self.scope_group = scope_group
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its options are validated before it joins."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            validate_options(group)
            validate_global_scope(self.param_groups)
            if group["scope"] == "tensor" and self.scope_group is not None:
                # Under ZeRO each rank holds different tensors, so per-tensor scopes would have
                # ranks call different numbers of collectives, and hang.
                raise ValueError(
                    'scope_group: cannot be combined with scope="tensor" (ranks holding '
                    'different tensors would run different collectives); use scope="group" '
                    'or "global"'
                )
            for param in group["params"]:
                _check_param(param, group)
        except ValueError:
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("scope_group", None)  # process groups are not pickled
        for group in self.param_groups:
            for key, value in _DEFAULTS.items():
                group.setdefault(key, value)
            for param in group["params"]:
                param_state = self.state.get(param, {})
                if "step" in param_state and not torch.is_tensor(param_state["step"]):
                    param_state["step"] = torch.tensor(
                        float(param_state["step"]),
                        dtype=torch.float32,
                        device=param.device,
                    )

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state dict, without any ``scope_group`` entry that a wrapper copied
        into the param groups (``ZeroRedundancyOptimizer`` forwards every keyword there): a
        process group cannot be pickled."""
        state_dict = super().state_dict()
        for group in state_dict["param_groups"]:
            group.pop("scope_group", None)
        return state_dict

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, keeping each state tensor in HVAdam's dtype and on the param's
        device (``Optimizer`` would cast all of them to the param's dtype, losing the float32
        state of bf16 parameters)."""
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        for group in self.param_groups:
            for param in group["params"]:
                saved = state_dict["state"].get(next(saved_ids))
                if saved is None:
                    continue
                state = self.state[param]
                for key, value in saved.items():
                    if torch.is_tensor(value):
                        state[key] = value.to(
                            device=param.device,
                            dtype=_loaded_dtype(key, group, param, value),
                            copy=True,
                        )

    # ----------------------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the
        loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = hvadam.distributed.is_active()
        for anchor, members in self._scopes():
            segments = []
            for group, params in members:
                segment = self._segment(group, params)
                if segment is not None:
                    if distributed:
                        segment = hvadam.distributed.local_segment(segment, self.scope_group)
                    segments.append((segment, self._implementation(group, segment.params)))
            group = members[0][0]
            variant = VARIANTS[group["variant"]]
            reduction_keys = []
            if distributed and variant.hidden_step:
                reduction_keys = hvadam.distributed.scope_reduction_keys(
                    (param for _, params in members for param in params), self.scope_group
                )
            # A scope reduced across ranks steps on every rank, with or without gradients here,
            # so that all ranks call the same collectives in the same order.
            if not segments and not reduction_keys:
                continue
            if anchor is None:
                # No parameter of the scope on this rank (ZeRO may leave a rank an empty
                # group): no state to keep, but the peers' all-reduces need this rank's zeros.
                device = hvadam.distributed.collective_device(
                    chain.from_iterable(g["params"] for g in self.param_groups),
                    reduction_keys[0][0],
                )
                reduce_partial_sums({}, device, torch.float64, reduction_keys)
                continue
            scope_state = self._scope_state(anchor, group) if variant.hidden_step else None
            step_scope(
                segments,
                scope_state,
                ScopeOptions(
                    beta2=group["betas"][1],
                    hidden_step=variant.hidden_step,
                    restart=variant.restart,
                    restart_threshold=group["restart_threshold"],
                    hidden_step_size=group["hidden_step_size"],
                ),
                reduction_keys,
            )
        return loss

    def _scopes(
        self,
    ) -> list[tuple[Tensor | None, list[tuple[dict[str, Any], list[Tensor]]]]]:
        """Each scope as (anchor parameter, [(group, params)]); the anchor's state holds the
        scope's scalars. With a ``scope_group``, empty groups count too (anchor ``None``): under
        ZeRO another rank holds their parameters, and this rank must join their reduction."""
        keep_empty = self.scope_group is not None
        scopes: list = []
        global_members: list = []
        for group in self.param_groups:
            params = group["params"]
            if not params and not keep_empty:
                continue
            if group["scope"] == "group":
                scopes.append((params[0] if params else None, [(group, params)]))
            elif group["scope"] == "tensor":
                scopes.extend((param, [(group, [param])]) for param in params)
            else:
                global_members.append((group, params))
        if global_members:
            anchor = next((p for _, params in global_members for p in params), None)
            scopes.append((anchor, global_members))
        return scopes

    def _implementation(self, group: dict[str, Any], params: list[Tensor]) -> str:
        return implementation_for(params, group["foreach"], group["fused"])

    def _segment(self, group: dict[str, Any], params: list[Tensor]) -> Segment | None:
        hidden_step = VARIANTS[group["variant"]].hidden_step
        amsgrad = group["amsgrad"]
        needed = _TENSOR_STATE[: 3 if hidden_step else 2] + (
            ("max_second_moment",) if amsgrad else ()
        )
        lists: dict[str, list[Tensor]] = {
            name: []
            for name in (
                "params",
                "grads",
                "exp_avgs",
                "second_moments",
                "hidden_vectors",
                "max_second_moments",
                "steps",
            )
        }
        for param in params:
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError(
                    f"HVAdam does not support sparse gradients ({self._describe(param)}); "
                    "use torch.optim.SparseAdam for sparse embeddings, "
                    "or nn.Embedding(sparse=False)"
                )
            state = self._param_state(param, group, needed)
            lists["params"].append(param)
            lists["grads"].append(grad)
            lists["exp_avgs"].append(state["exp_avg"])
            lists["second_moments"].append(state["second_moment"])
            if hidden_step:
                lists["hidden_vectors"].append(state["hidden_vector"])
            if amsgrad:
                lists["max_second_moments"].append(state["max_second_moment"])
            lists["steps"].append(state["step"])
        if not lists["params"]:
            return None
        return Segment(
            **lists,
            reduction_keys=[()] * len(lists["params"]),
            options=_group_options(group),
        )

    def _param_state(
        self, param: Tensor, group: dict[str, Any], needed: tuple[str, ...]
    ) -> dict[str, Any]:
        """The param's state, with the ``needed`` tensors (and ``step``) created lazily, which
        also completes states loaded from older checkpoints."""
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        for key in needed:
            if key not in state:
                state[key] = torch.zeros_like(
                    param, dtype=_state_dtype(group, param), memory_format=torch.preserve_format
                )
        return state

    def _scope_state(self, anchor: Tensor, group: dict[str, Any]) -> ScopeState:
        state = self.state[anchor]
        if any(key not in state for key in SCOPE_KEYS):
            fresh = ScopeState.zeros(anchor.device, _compute_dtype(group, anchor)).to_state()
            for key, value in fresh.items():
                state.setdefault(key, value)
        return ScopeState.from_state(state)

    def _describe(self, param: Tensor) -> str:
        for index, group in enumerate(self.param_groups):
            for position, candidate in enumerate(group["params"]):
                if candidate is param:
                    names = group.get("param_names")
                    if names:
                        return f"parameter {names[position]!r}"
                    return (
                        f"parameter {position} of param group {index}, shape {tuple(param.shape)}"
                    )
        return f"parameter of shape {tuple(param.shape)}"

    # ----------------------------------------------------------------------- diagnostics

    def diagnostics(self) -> list[ScopeDiagnostics]:
        """δ, δ̂, b_t, cosine, steps since restart and restart count of every scope that has
        taken a step. Reading them synchronises with the device once; ``step()`` never does."""
        named = []
        for anchor, members in self._scopes():
            if anchor is None:
                continue
            state = self.state.get(anchor, {})
            if SCOPE_KEY_PREFIX + "delta" not in state:
                continue
            named.append((self._scope_name(anchor, members), ScopeState.from_state(state)))
        return read_diagnostics(named)

    def _scope_name(self, anchor: Tensor, members: list) -> str:
        group = members[0][0]
        if group["scope"] == "global":
            return "global"
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        if group["scope"] == "group":
            return f"group {index}"
        return f"group {index} / {self._describe(anchor)}"


def _check_param(param: Tensor, group: dict[str, Any]) -> None:
    if not (param.is_floating_point() or param.is_complex()):
        raise ValueError(f"params: HVAdam optimizes floating or complex tensors, got {param.dtype}")
    if param.dtype == torch.complex32:
        raise ValueError("params: complex32 parameters are not supported; use complex64")
    if param.is_complex() and group["state_dtype"] is not None:
        raise ValueError("state_dtype: complex parameters keep their state in their own dtype")


def _group_options(group: dict[str, Any]) -> GroupOptions:
    variant = VARIANTS[group["variant"]]
    if group["fixed_decay"]:
        decay = "fixed"
    elif group["decoupled_weight_decay"]:
        decay = "decoupled"
    else:
        decay = "l2"
    beta1, beta2 = group["betas"]
    return GroupOptions(
        lr=group["lr"],
        lr_hidden=group["lr"] if group["lr_hidden"] is None else group["lr_hidden"],
        beta1=beta1,
        beta2=beta2,
        eps=group["eps"],
        gamma=group["gamma"],
        weight_decay=group["weight_decay"],
        decay=decay,
        amsgrad=group["amsgrad"],
        maximize=group["maximize"],
        hidden_moment=variant.hidden_moment,
        hidden_step=variant.hidden_step,
    )


def _state_dtype(group: dict[str, Any], param: Tensor) -> torch.dtype:
    if param.is_complex() or group["state_dtype"] is None:
        if param.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return param.dtype
    return group["state_dtype"]


def _compute_dtype(group: dict[str, Any], param: Tensor) -> torch.dtype:
    return compute_dtype(param.dtype, _state_dtype(group, param))


def _loaded_dtype(key: str, group: dict[str, Any], param: Tensor, value: Tensor) -> torch.dtype:
    if key == "step":
        # float32 as torch's optimizers keep it: integers are exact up to 2^24, and the bias
        # corrections are computed in the math dtype from it.
        return torch.float32
    if key in _TENSOR_STATE:
        return _state_dtype(group, param)
    if key in _INTEGER_SCOPE_KEYS:
        return torch.int64
    if key.startswith(SCOPE_KEY_PREFIX):
        return _compute_dtype(group, param)
    return value.dtype
