"""Functional HVAdam: the computation behind :class:`hvadam.HVAdam`, as ``torch.optim.adam.adam``
is behind ``torch.optim.Adam``.

A step over one scope is three pieces, each replaceable on its own:

* a path's first pass (``prepare``): ``t ← t+1``, ``m ← β1·m + (1-β1)·g`` and every tensor's
  row ``(c, e, f) = (<m̂,m̂>, <m̂,m̂-v>, <m̂-v,m̂-v>)``;
* :func:`hvadam.scope.reduce_partial_sums` and :func:`hvadam.scope.decide`: the scope's totals
  and the branch-free restart / hidden-step decision;
* the path's second pass (``apply``): the second moment, the adaptive step
  ``θ ← θ - lr·m̂/(√ŝ + ε)``, and the hidden step ``v ← lerp(v, m̂, w)``, ``θ ← θ - α2·b_t·v``.

Paths: ``"single"`` (one tensor at a time, the readable reference), ``"foreach"``
(``torch._foreach_*`` over buckets of tensors with one device and dtype) and ``"fused"`` (two
passes compiled by Inductor: one reduction, one update).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import _get_foreach_kernels_supported_devices

from hvadam import _fused, _multi_tensor, _single_tensor
from hvadam._common import GroupOptions, Prepared, Segment, compute_dtype
from hvadam._rounding import STREAMS, store
from hvadam._validation import VARIANTS, HiddenStepSize
from hvadam.distributed import ScopeLayout, is_active, local_segment, scope_layout
from hvadam.scope import Decision, ScopeState, decide, kept_rows, reduce_partial_sums

__all__ = [
    "GroupOptions",
    "ScopeOptions",
    "Segment",
    "ScopeState",
    "default_implementation",
    "hvadam",
    "step_scope",
]

IMPLEMENTATIONS: dict[str, ModuleType] = {
    "single": _single_tensor,
    "foreach": _multi_tensor,
    "fused": _fused,
}


class ScopeOptions(NamedTuple):
    """The options that act on a scope as a whole."""

    beta2: float
    hidden_step: bool
    restart: bool
    restart_threshold: float
    hidden_step_size: HiddenStepSize
    cosine_beta: float | None = None
    bias_corrected_step: bool = False


def implementation_for(params: Sequence[Tensor], foreach: bool | None, fused: bool | None) -> str:
    """The path that the ``foreach`` and ``fused`` flags ask for (``None``: the default)."""
    if fused:
        return "fused"
    if foreach is None:
        return default_implementation(params)
    return "foreach" if foreach else "single"


def default_implementation(params: Sequence[Tensor]) -> str:
    """``"foreach"`` when every tensor is on a CUDA-like device or the step is being traced by
    ``torch.compile``, else ``"single"``.

    On CPU the foreach kernels loop over tensors anyway and allocate whole-list temporaries;
    measured on 2 cores (README, "Speed"), the single-tensor loop is faster there. Traced, the
    single-tensor loop unrolls into a graph per tensor that Inductor compiles several times
    slower than the foreach graph, which it fuses just as well (README, "Speed").
    """
    if torch.compiler.is_compiling():
        return "foreach"
    foreach_devices = _get_foreach_kernels_supported_devices()
    if params and all(p.device.type in foreach_devices for p in params):
        return "foreach"
    return "single"


def _real(tensor: Tensor) -> Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


class _WriteBack(NamedTuple):
    original: Tensor
    copy: Tensor
    step: Tensor | None  # the tensor's step, for state (dithered into bf16); None for params
    stream: int = 0


def _in_compute_precision(segment: Segment, upcast: bool) -> tuple[Segment, list[_WriteBack]]:
    """The segment with complex tensors viewed as real pairs and, with ``upcast``, every tensor
    in its compute dtype (float32 at least, float64 when parameter or state is), plus what to
    write back after the update."""
    write_back: list[_WriteBack] = []
    names = ("params", "grads", *STREAMS)
    has_complex = any(p.is_complex() for p in segment.params)
    if not upcast and not has_complex:
        return segment, write_back
    dtypes = [compute_dtype(p.dtype, m.dtype) for p, m in zip(segment.params, segment.exp_avgs)]
    if not has_complex and all(
        tensor.dtype == dtypes[i]
        for name in names
        for i, tensor in enumerate(getattr(segment, name))
    ):
        return segment, write_back  # nothing to view as real or to upcast

    def convert(name: str) -> list[Tensor]:
        out = []
        for i, tensor in enumerate(getattr(segment, name)):
            tensor = _real(tensor)
            if upcast and tensor.dtype != dtypes[i]:
                copy = tensor.to(dtypes[i])
                if name == "params":
                    write_back.append(_WriteBack(tensor, copy, None))
                elif name != "grads":
                    write_back.append(_WriteBack(tensor, copy, segment.steps[i], STREAMS[name]))
                tensor = copy
            out.append(tensor)
        return out

    converted: dict[str, Any] = {name: convert(name) for name in names}
    return segment._replace(**converted), write_back


def _rows_by_key(
    runs: Sequence[tuple[Segment, Prepared]], layout: ScopeLayout | None, device: torch.device
) -> dict:
    """Every tensor's row ``(c, e, f)``, gathered on ``device`` by reduction key: stacked in any
    order for a key whose tensors each live on one rank, and at the tensor's position (zeros
    for tensors without a gradient here) for a key of sharded pieces, so that ranks can add
    them up row by row."""
    gathered: dict = {}
    for segment, prepared in runs:
        for indices, rows in prepared.rows:
            gathered.setdefault(segment.reduction_keys[indices[0]], []).append(
                (segment, indices, rows.to(device))
            )
    by_key = {}
    for key, parts in gathered.items():
        if layout is None or key not in layout.aligned:
            by_key[key] = torch.cat([rows for _, _, rows in parts])
            continue
        placed = [None] * layout.aligned[key]
        for segment, indices, rows in parts:
            for i, row in zip(indices, rows.unbind()):
                placed[segment.positions[i]] = row
        zero = parts[0][2].new_zeros(3)
        by_key[key] = torch.stack([zero if row is None else row for row in placed])
    return by_key


def _per_tensor(
    decision: Decision,
    segment: Segment,
    prepared: Prepared,
    aligned_kept: dict,
    layout: ScopeLayout | None,
) -> list[Decision]:
    """The scope's decision as the tensors of each entry of ``prepared.rows`` take it
    (:meth:`Decision.for_tensors`): a tensor takes part in the hidden update only if its row
    entered the sums, judged on the whole tensor for sharded pieces (all-reduced rows)."""
    out = []
    for indices, rows in prepared.rows:
        key = segment.reduction_keys[indices[0]]
        if layout is not None and key in layout.aligned and segment.positions is not None:
            by_position = aligned_kept[key]
            kept = torch.stack([by_position[segment.positions[i]] for i in indices])
        else:
            # In the dtype reduce_partial_sums sums them in: a row finite in float64 may not be
            # in the scope's float32.
            dtype = decision.v_weight.dtype if key == () else torch.float64
            kept = kept_rows(rows.to(dtype))
        out.append(decision.for_tensors(kept.to(decision.v_weight.device)))
    return out


def step_scope(
    segments: Sequence[tuple[Segment, str]],
    scope_state: ScopeState | None,
    options: ScopeOptions,
    layout: ScopeLayout | None = None,
) -> None:
    """One HVAdam step over a scope made of ``(segment, implementation)`` pairs.

    ``scope_state`` may be ``None`` only when the variant takes no hidden step. ``layout``
    (:func:`hvadam.distributed.scope_layout`) says how the rows are reduced across ranks;
    with any non-local key, ``segments`` may be empty: the rank then joins the reduction with
    zeros and keeps its scope state in step.
    """
    runs: list[tuple[ModuleType, Segment, Prepared, list[_WriteBack]]] = []
    for segment, implementation in segments:
        kernel = IMPLEMENTATIONS[implementation]
        upcast = not getattr(kernel, "UPCASTS_INSIDE", False)
        segment, write_back = _in_compute_precision(segment, upcast)
        runs.append((kernel, segment, kernel.prepare(segment), write_back))

    decision: Decision | None = None
    if options.hidden_step:
        if scope_state is None:
            raise ValueError("scope_state: required when the variant takes a hidden step")
        rows = _rows_by_key(
            [(segment, prepared) for _, segment, prepared, _ in runs], layout, scope_state.device
        )
        sums = reduce_partial_sums(
            rows,
            scope_state.device,
            scope_state.dtype,
            layout.keys if layout else (),
            layout.aligned if layout else None,
        )
        decision = decide(
            sums.totals,
            scope_state,
            beta2=options.beta2,
            restart=options.restart,
            restart_threshold=options.restart_threshold,
            hidden_step_size=options.hidden_step_size,
            cosine_beta=options.cosine_beta,
            bias_corrected_step=options.bias_corrected_step,
        )

    for kernel, segment, prepared, write_back in runs:
        decisions = None
        if decision is not None:
            decisions = _per_tensor(decision, segment, prepared, sums.aligned_kept, layout)
        kernel.apply(segment, prepared, decisions)
        for back in write_back:
            seed = None if back.step is None else back.step * 4 + back.stream
            store(back.original, back.copy, seed)


def hvadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    second_moments: list[Tensor],
    hidden_vectors: list[Tensor],
    state_steps: list[Tensor],
    scope_state: ScopeState | None,
    max_second_moments: list[Tensor] | None = None,
    *,
    lr: float | Tensor = 1e-3,
    lr_hidden: float | Tensor | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-16,
    gamma: float = 0.0,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    fixed_decay: bool = False,
    amsgrad: bool = False,
    maximize: bool = False,
    variant: str = "hvadam",
    restart_threshold: float = 0.1,
    hidden_step_size: HiddenStepSize = (6.0, -3.0),
    cosine_beta: float | None = None,
    bias_corrected_step: bool = False,
    second_moment_cap: float | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
    scope_group: Any = None,
) -> None:
    """One HVAdam step over ``params``, which form a single scope (one hidden vector).

    The lists are aligned, one entry per parameter that has a gradient; the state tensors and
    ``scope_state`` (:meth:`ScopeState.zeros`) are updated in place. Hyperparameters mean what
    they mean for :class:`hvadam.HVAdam`; nothing is validated here, so the call stays free of
    host reads and compiles with ``fullgraph=True``. DTensors are stepped on their local
    shards and reduced over the mesh dimensions that shard them; ``scope_group`` is the group
    over which plain tensors are partitioned (every rank of it must call, even with empty lists).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
    flags = VARIANTS[variant]
    options = GroupOptions(
        lr=lr,
        lr_hidden=lr if lr_hidden is None else lr_hidden,
        beta1=betas[0],
        beta2=betas[1],
        eps=eps,
        gamma=gamma,
        weight_decay=weight_decay,
        decay="fixed" if fixed_decay else "decoupled" if decoupled_weight_decay else "l2",
        amsgrad=amsgrad,
        maximize=maximize,
        hidden_moment=flags.hidden_moment,
        hidden_step=flags.hidden_step,
        second_moment_cap=second_moment_cap,
    )
    segment = Segment(
        params=list(params),
        grads=list(grads),
        exp_avgs=list(exp_avgs),
        second_moments=list(second_moments),
        hidden_vectors=list(hidden_vectors) if flags.hidden_step else [],
        max_second_moments=list(max_second_moments or []),
        steps=list(state_steps),
        reduction_keys=[()] * len(params),
        options=options,
    )
    layout = None
    if is_active():
        layout = scope_layout(params, scope_group) if flags.hidden_step else None
        segment = local_segment(segment, scope_group, layout)
    implementation = implementation_for(segment.params, foreach, fused)
    step_scope(
        [(segment, implementation)],
        scope_state,
        ScopeOptions(
            beta2=betas[1],
            hidden_step=flags.hidden_step,
            restart=flags.restart,
            restart_threshold=restart_threshold,
            hidden_step_size=hidden_step_size,
            cosine_beta=cosine_beta,
            bias_corrected_step=bias_corrected_step,
        ),
        layout,
    )
