"""``HVAdam``: a thin ``torch.optim.Optimizer`` over :mod:`hvadam.functional`."""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, ParamsT

import hvadam.distributed
from hvadam import _state
from hvadam._common import GroupOptions, Segment
from hvadam._validation import (
    VARIANTS,
    HiddenStepSize,
    validate_global_scope,
    validate_options,
    validate_scope_group,
)
from hvadam.diagnostics import ScopeDiagnostics, read_diagnostics
from hvadam.functional import ScopeOptions, implementation_for, step_scope
from hvadam.scope import SCOPE_KEY_PREFIX, SCOPE_KEYS, ScopeState, reduce_partial_sums

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
    "cosine_beta": None,
    "bias_corrected_step": False,
    "second_moment_cap": None,
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
    ``restart_threshold``, ``v`` restarts from ``m̂``. docs/algorithm.md gives every rule.

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
        cosine_beta: the rate of δ's EMA of the cosine; ``None`` (the paper) uses β2. A smaller
            value lets δ, and so the hidden step, respond within ~1/(1-cosine_beta) steps.
        bias_corrected_step: take ``b_t`` from the bias-corrected ``δ̂`` instead of ``δ`` (the
            paper), so the hidden step acts from the first steps instead of after ~1/(1-β2).
        second_moment_cap: cap each element's ``η·p`` at ``second_moment_cap·g²`` before it
            enters ``s`` (``None``: no cap, the paper). On a nearly deterministic gradient
            ``g ≈ m``, so ``η`` grows without bound and the adaptive step shrinks; with a cap
            of 1, ``s`` never exceeds Adam's second moment.
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
        cosine_beta: float | None = None,
        bias_corrected_step: bool = False,
        second_moment_cap: float | None = None,
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
            cosine_beta=cosine_beta,
            bias_corrected_step=bias_corrected_step,
            second_moment_cap=second_moment_cap,
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
            validate_scope_group(group, self.scope_group)
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
                # Very old checkpoints stored the step as a number.
                if isinstance(param_state.get("step"), (int, float)):
                    param_state["step"] = torch.tensor(
                        float(param_state["step"]),
                        dtype=torch.float32,
                        device=param.device,
                    )

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state dict, loadable with ``torch.load(weights_only=True)``: a
        callable ``hidden_step_size`` is saved by name (construct the optimizer with it to load
        the dict), and a ``scope_group`` that a wrapper copied into the param groups
        (``ZeroRedundancyOptimizer`` forwards every keyword there) is left out."""
        state_dict = super().state_dict()
        _state.saved_groups(state_dict["param_groups"])
        return state_dict

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict through ``torch.optim.Optimizer.load_state_dict``, its hooks and
        ``param_names`` included, with HVAdam's rules on top: the dict (as the user's pre-hooks
        leave it) is validated first, and nothing changes if it is wrong: options as the
        constructor validates them, state keys of another optimizer refused, state shapes
        checked. Options an older dict lacks keep this optimizer's values; state tensors keep
        HVAdam's dtypes (float32 for bf16 parameters) on the parameters' devices."""
        # Ours run last among the pre-hooks and first among the post-hooks, so the user's hooks
        # see (and may change) the dict and the state as torch's own optimizers show them.
        pre_hook = self.register_load_state_dict_pre_hook(_state.prepare_loaded)
        post_hook = self.register_load_state_dict_post_hook(_state.finish_loaded, prepend=True)
        try:
            super().load_state_dict(state_dict)
        finally:
            pre_hook.remove()
            post_hook.remove()

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
        scopes = self._scopes()
        self._check_step(scopes)  # before anything changes: a step that raises changes nothing
        for anchor, members in scopes:
            group = members[0][0]
            variant = VARIANTS[group["variant"]]
            layout = None
            if distributed and variant.hidden_step:
                layout = hvadam.distributed.scope_layout(
                    (param for _, params in members for param in params), self.scope_group
                )
            segments = []
            for member_group, params in members:
                segment = self._segment(member_group, params)
                if segment is not None:
                    if distributed:
                        segment = hvadam.distributed.local_segment(
                            segment, self.scope_group, layout
                        )
                    segments.append((segment, self._implementation(member_group, segment.params)))
            # A scope reduced across ranks steps on every rank, with or without gradients here,
            # so that all ranks call the same collectives in the same order.
            if not segments and not (layout and layout.keys):
                continue
            if anchor is None:
                # No parameter of the scope on this rank (ZeRO may leave a rank an empty
                # group): no state to keep, but the peers' all-reduces need this rank's zeros.
                assert layout is not None  # a scope without segments here has reductions
                device = hvadam.distributed.collective_device(
                    chain.from_iterable(g["params"] for g in self.param_groups),
                    layout.keys[0][0],
                )
                reduce_partial_sums({}, device, torch.float64, layout.keys, layout.aligned)
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
                    cosine_beta=group["cosine_beta"],
                    bias_corrected_step=group["bias_corrected_step"],
                ),
                layout,
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

    def _check_step(self, scopes: list) -> None:
        """Raise, naming the parameter, where the step could not run on every tensor: a sparse
        or misshapen gradient, a gradient or state on another device or of another dtype than
        its parameter, or a scope mixing ``meta`` tensors (which hold no data) with real ones.
        Only metadata is read: no value, no synchronisation."""
        for _, members in scopes:
            device_types = set()
            for group, params in members:
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
                    if grad.shape != param.shape or grad.device != param.device:
                        raise ValueError(
                            f"{self._describe(param)}: its gradient has shape "
                            f"{tuple(grad.shape)} on {grad.device}, the parameter "
                            f"{tuple(param.shape)} on {param.device}"
                        )
                    state = self.state.get(param)
                    exp_avg = state.get("exp_avg") if state else None
                    # All state tensors are made, moved and loaded together: one stands for all.
                    if (
                        state
                        and exp_avg is not None
                        and (
                            exp_avg.shape != param.shape
                            or exp_avg.device != param.device
                            or exp_avg.dtype != _state.state_dtype(group, param)
                        )
                    ):
                        _state.check_state(self._describe(param), param, state)
                        _state.check_dtypes(self._describe(param), param, state, group)
                    device_types.add(param.device.type)
            if "meta" in device_types and len(device_types) > 1:
                raise ValueError(
                    f"params: a scope mixes meta tensors (which hold no data) with tensors on "
                    f"{sorted(device_types - {'meta'})}; materialise the model "
                    "(e.g. to_empty()) before stepping"
                )

    def _implementation(self, group: dict[str, Any], params: list[Tensor]) -> str:
        return implementation_for(params, group["foreach"], group["fused"])

    def _segment(self, group: dict[str, Any], params: list[Tensor]) -> Segment | None:
        hidden_step = VARIANTS[group["variant"]].hidden_step
        amsgrad = group["amsgrad"]
        needed = _state.TENSOR_STATE[: 3 if hidden_step else 2] + (
            ("max_second_moment",) if amsgrad else ()
        )
        lists: dict[str, Any] = {
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
                    param,
                    dtype=_state.state_dtype(group, param),
                    memory_format=torch.preserve_format,
                )
        return state

    def _scope_state(self, anchor: Tensor, group: dict[str, Any]) -> ScopeState:
        state = self.state[anchor]
        if any(key not in state for key in SCOPE_KEYS):
            fresh = ScopeState.zeros(anchor.device, _state.scope_dtype(group, anchor)).to_state()
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
        second_moment_cap=group["second_moment_cap"],
    )
