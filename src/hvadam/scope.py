"""The scope: the set of parameters that share one hidden vector, and its per-step decision.

One HVAdam step over a scope is three named pieces (``hvadam.functional`` composes them):

1. *partial sums* (per kernel path): with ``m̂`` the bias-corrected momentum and ``d = m̂ - v``,
   every tensor contributes its share of ``c = <m̂, m̂>``, ``e = <m̂, d>`` and ``f = <d, d>``.
   A tensor whose share is not finite (a NaN or inf gradient, or values whose squares overflow)
   is left out and counted (:func:`scope_share`): one bad tensor cannot freeze its whole scope.
   It takes no part in the hidden update either (:meth:`Decision.for_tensors`).
2. *reduction* (:func:`reduce_partial_sums`): the shares are added up over the scope; shares of
   sharded tensors are all-reduced over the process groups that hold the other pieces.
3. *decision* (:func:`decide`): from ``(c, e, f)`` and the scope scalars, a branch-free
   computation yields the weight by which ``v`` moves towards ``m̂`` and the hidden-step size.

The ``d``-form of the decision (docs/algorithm.md §4.2) is used: ``a - 2b + c`` cancels when
``v ≈ m̂``, ``<d, d>`` does not.
Everything here stays on the device; no value is read on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from hvadam._validation import HiddenStepSize

# Keys under which a scope's scalars live in the optimizer state of its anchor parameter.
SCOPE_KEY_PREFIX = "scope_"


class ScopeState(NamedTuple):
    """The scalars one hidden vector carries between steps (1-element tensors on one device).

    ``steps_since_restart`` is the algorithm's ``t2`` (``-1``: restart on the next step);
    ``delta`` is the EMA of the cosine. ``delta_hat``, ``cosine`` and ``hidden_step_size``
    (the ``b_t`` actually applied, 0 when no hidden step was taken) are kept for diagnostics
    only, as are the counts ``restart_count`` and ``nonfinite_steps`` (steps in which some
    tensor's share was left out as not finite, or ``b_t`` was not finite).
    """

    steps_since_restart: Tensor
    delta: Tensor
    delta_hat: Tensor
    cosine: Tensor
    hidden_step_size: Tensor
    restart_count: Tensor
    nonfinite_steps: Tensor

    @classmethod
    def zeros(cls, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        """A fresh scope: ``t2 = -1`` (restart first), ``δ = 0``."""

        # Stored with shape (1,), not (): Inductor on CPU (torch 2.13) drops in-place updates
        # of 0-dim float64 graph inputs, which would silently freeze a compiled float64 scope.
        def scalar(value: float, scalar_dtype: torch.dtype = dtype) -> Tensor:
            return torch.full((1,), value, dtype=scalar_dtype, device=device)

        return cls(
            steps_since_restart=scalar(-1, torch.int64),
            delta=scalar(0.0),
            delta_hat=scalar(0.0),
            cosine=scalar(0.0),
            hidden_step_size=scalar(0.0),
            restart_count=scalar(0, torch.int64),
            nonfinite_steps=scalar(0, torch.int64),
        )

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor]) -> ScopeState:
        """A view on the ``scope_*`` entries of an optimizer state dict (shares the tensors)."""
        return cls(*(state[key] for key in SCOPE_KEYS))

    def to_state(self) -> dict[str, Tensor]:
        """The ``scope_*`` entries to store in the anchor parameter's state."""
        return dict(zip(SCOPE_KEYS, self))

    @property
    def device(self) -> torch.device:
        return self.delta.device

    @property
    def dtype(self) -> torch.dtype:
        return self.delta.dtype


# |v'|² below ZERO_NORM_FACTOR · eps · |m̂|² is indistinguishable from 0 (see decide()).
ZERO_NORM_FACTOR = 32

SCOPE_KEYS = tuple(SCOPE_KEY_PREFIX + name for name in ScopeState._fields)
# The scope scalars that count (int64); the others are in the scope's compute dtype.
INTEGER_SCOPE_KEYS = tuple(
    SCOPE_KEY_PREFIX + name for name in ("steps_since_restart", "restart_count", "nonfinite_steps")
)


class Decision(NamedTuple):
    """What the update pass applies to the tensors of the scope.

    ``v ← lerp(v, m̂, v_weight)`` (1 on a restart, ``1 - k`` on a hidden step, 0 otherwise), then
    ``θ ← θ - lr_hidden · hidden_coef · v`` (``hidden_coef`` is ``b_t``, or 0 when no hidden step).
    The scope's decision holds 0-dim tensors; :meth:`for_tensors` gives each tensor's own.
    """

    v_weight: Tensor
    hidden_coef: Tensor
    restarting: Tensor

    def for_tensors(self, kept: Tensor) -> Decision:
        """The decision as ``n`` tensors take it, from ``kept`` (``(n,)`` bool: whether each
        tensor's row entered the sums): a tensor left out of the decision takes no part in its
        hidden update, since ``k`` says nothing about that tensor's ``d``: its ``v`` stays as it
        was (a restart still sets ``v ← m̂``) and it takes no hidden step. Followed blindly,
        ``v' = m̂ - k·d`` could leave the dtype's range for it (|v'| ≤ |m̂| holds only for
        tensors in the sums)."""
        zero = torch.zeros_like(self.v_weight)
        return Decision(
            v_weight=torch.where(kept | self.restarting, self.v_weight, zero),
            hidden_coef=torch.where(kept, self.hidden_coef, zero),
            restarting=self.restarting.expand_as(kept),
        )


# Shares whose key is the empty tuple are local; any other key is the tuple of process groups
# over which that share must be all-reduced before it joins the scope's total.
ReductionKey = tuple


def kept_rows(rows: Tensor) -> Tensor:
    """Which of the rows ``(n, 3)`` of ``(c, e, f)`` enter the scope's sums: the finite ones."""
    return rows.isfinite().all(dim=1)


def scope_share(rows: Tensor) -> Tensor:
    """The share of ``n`` tensors, from their rows ``(n, 3)`` of ``(c, e, f)``: the sum of the
    finite rows and the number of rows left out, ``(Σc, Σe, Σf, left_out)``.

    A tensor whose row is not finite takes no part in the scope's decision (its own state is
    already lost, as it would be under Adam, or its squares overflow), so the healthy tensors
    keep their hidden step.
    """
    finite = kept_rows(rows)
    kept = torch.where(finite[:, None], rows, torch.zeros_like(rows)).sum(0)
    return torch.cat([kept, (~finite).sum().to(rows.dtype).view(1)])


class ScopeSums(NamedTuple):
    """What :func:`reduce_partial_sums` gives: the scope's ``(c, e, f, left_out, n)`` and, for
    each key of sharded pieces, which tensors (by position) entered the sums."""

    totals: Tensor
    aligned_kept: dict[ReductionKey, Tensor]


def reduce_partial_sums(
    rows: Mapping[ReductionKey, Tensor],
    device: torch.device,
    dtype: torch.dtype,
    reduction_keys: Sequence[ReductionKey] = (),
    aligned: Mapping[ReductionKey, int] | None = None,
) -> ScopeSums:
    """The scope's ``(c, e, f, left_out, n)`` from its per-tensor rows ``(c, e, f)`` by
    reduction key: ``Σ local + Σ_k all_reduce_k(rows_k)``, rows that are not finite left out
    (:func:`scope_share`).

    Rows held by other ranks are brought in with one float64 all-reduce per key (sequentially
    over the groups of a key), so every rank ends with the same total and takes the same
    decision. A key in ``aligned`` (the pieces of sharded tensors) holds one row per tensor of
    the scope, in an order all ranks share, and is all-reduced row by row *before* rows are
    left out: a tensor non-finite in one piece is left out on every rank, as it is in a single
    process. Any other key (tensors partitioned whole over ranks) is reduced as its finite sum.
    ``reduction_keys`` lists the scope's non-local keys in an order every rank shares; each is
    all-reduced exactly once per step, with zeros from a rank that has no rows, so that ranks
    call the same collectives in the same order. Keys not listed there are reduced after them.

    ``n`` counts the (rank, key) pairs that brought rows: ``n = 0`` means no tensor of the scope
    had a gradient on any rank, and :func:`decide` then leaves the scope as it was. For each key
    in ``aligned``, :attr:`ScopeSums.aligned_kept` says which tensors (by position) were kept.
    """
    aligned = aligned or {}
    local = rows.get(())
    total = torch.zeros(4, device=device, dtype=dtype)
    if local is not None:
        total = total + scope_share(local.to(device=device, dtype=dtype))
    # Fills, not copies of host values: a blocking host-to-device copy would wait for the device.
    taken = torch.zeros(1, device=device, dtype=dtype).fill_(float(local is not None))
    remote = list(reduction_keys) + [k for k in rows if k and k not in reduction_keys]
    aligned_kept: dict[ReductionKey, Tensor] = {}
    if not remote:
        return ScopeSums(torch.cat([total, taken]), aligned_kept)

    import torch.distributed as dist

    # float64 whatever the scope's dtype: every rank must all-reduce the same dtype, also a
    # rank that holds none of the scope's tensors and so cannot know that dtype.
    for key in remote:
        size = 3 * aligned[key] if key in aligned else 4
        buffer = torch.zeros(size + 1, device=device, dtype=torch.float64)
        if key in rows:
            key_rows = rows[key].to(device=device, dtype=torch.float64)
            buffer[:size] = key_rows.reshape(-1) if key in aligned else scope_share(key_rows)
            buffer[size].fill_(1)
        for group in key:
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
        if key in aligned:
            aligned_kept[key] = kept_rows(buffer[:size].view(-1, 3))
            share = scope_share(buffer[:size].view(-1, 3))
        else:
            share = buffer[:size]
        total = total + share.to(dtype)
        taken = taken + buffer[size:].to(dtype)
    return ScopeSums(torch.cat([total, taken]), aligned_kept)


def hidden_step_size_of(rule: HiddenStepSize, delta: Tensor) -> Tensor:
    """``b_t`` from ``δ``: ``10**(slope·δ + intercept)`` for a pair, or the user's callable."""
    if callable(rule):
        return torch.as_tensor(rule(delta), dtype=delta.dtype, device=delta.device)
    slope, intercept = rule
    return torch.pow(10.0, delta * slope + intercept)


def decide(
    sums: Tensor,
    state: ScopeState,
    *,
    beta2: float,
    restart: bool,
    restart_threshold: float,
    hidden_step_size: HiddenStepSize | Callable[[Tensor], Tensor],
    cosine_beta: float | None = None,
    bias_corrected_step: bool = False,
) -> Decision:
    """One scope decision (docs/algorithm.md §4), branch-free; updates ``state`` in place.

    With ``c, e, f = sums`` and ``k = e / f`` (0 when ``f = 0``), the new hidden vector is
    ``v' = m̂ - k·d`` (the foot of the perpendicular from 0 onto the line through ``v`` and
    ``m̂``), ``<v', m̂> = c - k·e``, ``|v'|² = c - 2k·e + k²·f`` and
    ``cos = <v', m̂> / (|v'|·|m̂|)``. Then ``δ ← β2·δ + (1-β2)·cos``,
    ``δ̂ = δ / (1 - β2^t2)``; a hidden step of size ``b_t(δ)`` is taken unless ``δ̂`` fell
    below the restart threshold (which schedules a restart) or the cosine was degenerate
    (not finite, ``|cos| > 1``, ``m̂ = 0`` or ``v' = 0`` to working precision: nothing changes).
    Two options beyond the paper: ``cosine_beta`` replaces β2 as the rate of δ's EMA (and of
    its bias correction), and ``bias_corrected_step`` takes ``b_t`` from ``δ̂`` instead of ``δ``.
    A ``b_t`` that is not finite (a user's callable) is treated as a degenerate cosine, and
    counted in ``nonfinite_steps`` with the steps whose shares had tensors left out.
    ``sums`` is ``(c, e, f, left_out, n)`` from :func:`reduce_partial_sums`; with ``n = 0`` (no
    share anywhere) the scope is left exactly as it was.
    """
    state = ScopeState(*(scalar.view(()) for scalar in state))
    c, e, f, left_out, shares_taken = sums.unbind()
    zero = torch.zeros_like(c)
    t2 = state.steps_since_restart + 1
    # With no share on any rank, no tensor of the scope had a gradient anywhere: the scope does
    # not step, as a single process would skip it.
    took_part = shares_taken > 0
    restarting = (t2 == 0) & took_part

    k = torch.where(f != 0, e / f, zero)
    inner = c - k * e
    norm_sq = c - 2 * k * e + k * k * f
    # sqrt of each factor, not of the product: c·|v'|² overflows long before c does.
    cosine = inner / (norm_sq.sqrt() * c.sqrt())
    # "|v'| = 0" at working precision: |v'|² = c - k·e cancels to round-off when v, m̂ and 0
    # are collinear (always so for a 1-element scope), so anything below that noise level
    # (|v'|² ≤ 32·eps·|m̂|², i.e. cos ≲ 2e-3 in float32) counts as zero and changes nothing,
    # instead of a decision drawn from rounding errors.
    zero_floor = ZERO_NORM_FACTOR * torch.finfo(c.dtype).eps
    valid = cosine.isfinite() & (cosine.abs() <= 1) & (c > 0) & (norm_sq > zero_floor * c)
    valid = valid & took_part & ~restarting

    rate = beta2 if cosine_beta is None else cosine_beta
    delta = state.delta * rate + (1 - rate) * cosine
    delta_hat = delta / (1 - torch.pow(rate, t2.to(delta.dtype)))
    wants_restart = valid & (delta_hat < restart_threshold) if restart else zero.bool()
    step_size = hidden_step_size_of(hidden_step_size, delta_hat if bias_corrected_step else delta)
    bad_step_size = valid & ~wants_restart & ~step_size.isfinite()
    accepted = valid & ~bad_step_size
    hidden = accepted & ~wants_restart

    one = torch.ones_like(c)
    v_weight = torch.where(restarting, one, torch.where(hidden, 1 - k, zero))
    hidden_coef = torch.where(hidden, step_size, zero)

    # t2 after this step: 0 on a restart, -1 when a restart was just scheduled, unchanged
    # (as if the step never happened) when the cosine was degenerate.
    next_t2 = torch.where(wants_restart, torch.full_like(t2, -1), t2)
    state.steps_since_restart.copy_(
        torch.where(accepted | restarting, next_t2, state.steps_since_restart)
    )
    state.delta.copy_(torch.where(restarting, zero, torch.where(accepted, delta, state.delta)))
    state.delta_hat.copy_(torch.where(accepted, delta_hat, state.delta_hat))
    state.cosine.copy_(torch.where(accepted, cosine, state.cosine))
    state.hidden_step_size.copy_(torch.where(took_part, hidden_coef, state.hidden_step_size))
    state.restart_count.add_(wants_restart.to(state.restart_count.dtype))
    nonfinite = took_part & ((left_out > 0) | bad_step_size)
    state.nonfinite_steps.add_(nonfinite.to(state.nonfinite_steps.dtype))
    return Decision(v_weight=v_weight, hidden_coef=hidden_coef, restarting=restarting)
