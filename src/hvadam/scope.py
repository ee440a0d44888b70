"""The scope: the set of parameters that share one hidden vector, and its per-step decision.

One HVAdam step over a scope is three named pieces (``hvadam.functional`` composes them):

1. *partial sums* (per kernel path): with ``m̂`` the bias-corrected momentum and ``d = m̂ - v``,
   every tensor contributes its share of ``c = <m̂, m̂>``, ``e = <m̂, d>`` and ``f = <d, d>``.
2. *reduction* (:func:`reduce_partial_sums`): the shares are added up over the scope; shares of
   sharded tensors are all-reduced over the process groups that hold the other pieces.
3. *decision* (:func:`decide`): from ``(c, e, f)`` and the scope scalars, a branch-free
   computation yields the weight by which ``v`` moves towards ``m̂`` and the hidden-step size.

The ``d``-form of SPEC step 10 is used: ``a - 2b + c`` cancels when ``v ≈ m̂``, ``<d, d>`` does not.
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

    ``steps_since_restart`` is SPEC's ``t2`` (``-1``: restart on the next step); ``delta`` is the
    EMA of the cosine. ``delta_hat``, ``cosine`` and ``hidden_step_size`` (the ``b_t`` actually
    applied, 0 when no hidden step was taken) are kept for diagnostics only.
    """

    steps_since_restart: Tensor
    delta: Tensor
    delta_hat: Tensor
    cosine: Tensor
    hidden_step_size: Tensor
    restart_count: Tensor

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


class Decision(NamedTuple):
    """What the update pass applies to every tensor of the scope.

    ``v ← lerp(v, m̂, v_weight)`` (1 on a restart, ``1 - k`` on a hidden step, 0 otherwise), then
    ``θ ← θ - lr_hidden · hidden_coef · v`` (``hidden_coef`` is ``b_t``, or 0 when no hidden step).
    """

    v_weight: Tensor
    hidden_coef: Tensor


# Shares whose key is the empty tuple are local; any other key is the tuple of process groups
# over which that share must be all-reduced before it joins the scope's total.
ReductionKey = tuple


def reduce_partial_sums(
    shares: Mapping[ReductionKey, Tensor],
    device: torch.device,
    dtype: torch.dtype,
    reduction_keys: Sequence[ReductionKey] = (),
) -> Tensor:
    """Add up the scope's ``(c, e, f)`` shares: ``Σ local + Σ_k all_reduce_k(share_k)``.

    Shares held by other ranks are brought in with one all-reduce of a 4-element float64 tensor
    per distinct set of process groups (sequentially over the groups of a key), so every rank
    ends with the same total and takes the same decision. ``reduction_keys`` lists the scope's
    non-local keys in an order every rank shares; each is all-reduced exactly once per step,
    with a zero share from a rank that has none, so that ranks call the same collectives in
    the same order. Shares under keys not listed there are reduced after them.

    Returns ``(c, e, f)`` when every share is local; otherwise ``(c, e, f, n)``, where ``n``
    counts the (rank, key) pairs that brought a share: ``n = 0`` means no tensor of the scope
    had a gradient on any rank, and :func:`decide` then leaves the scope as it was.
    """
    total = torch.zeros(3, device=device, dtype=dtype)
    for key, share in shares.items():
        if not key:
            total = total + share.to(device=device, dtype=dtype)
    remote = list(reduction_keys) + [k for k in shares if k and k not in reduction_keys]
    if not remote:
        return total

    import torch.distributed as dist

    # float64 whatever the scope's dtype: every rank must all-reduce the same dtype, also a
    # rank that holds none of the scope's tensors and so cannot know that dtype.
    local_count = float(any(not key for key in shares))
    # Fills, not copies of host values: a blocking host-to-device copy would wait for the device.
    reduced = torch.zeros(4, device=device, dtype=torch.float64)
    reduced[3].fill_(local_count)
    for key in remote:
        buffer = torch.zeros(4, device=device, dtype=torch.float64)
        if key in shares:
            buffer[:3] = shares[key]
            buffer[3].fill_(1)
        for group in key:
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
        reduced = reduced + buffer
    return torch.cat([total, total.new_zeros(1)]) + reduced.to(dtype)


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
) -> Decision:
    """One scope decision (SPEC steps 1, 9, 10), branch-free; updates ``state`` in place.

    With ``c, e, f = sums`` and ``k = e / f`` (0 when ``f = 0``), the new hidden vector is
    ``v' = m̂ - k·d`` (the foot of the perpendicular from 0 onto the line through ``v`` and
    ``m̂``), ``<v', m̂> = c - k·e``, ``|v'|² = c - 2k·e + k²·f`` and
    ``cos = <v', m̂> / (|v'|·|m̂|)``. Then ``δ ← β2·δ + (1-β2)·cos``,
    ``δ̂ = δ / (1 - β2^t2)``; a hidden step of size ``b_t(δ)`` is taken unless ``δ̂`` fell
    below the restart threshold (which schedules a restart) or the cosine was degenerate
    (not finite, ``|cos| > 1``, ``m̂ = 0`` or ``v' = 0`` to working precision: nothing changes).
    ``sums`` may carry a fourth entry, the count of shares that took part across ranks
    (:func:`reduce_partial_sums`); when it is 0 the scope is left exactly as it was.
    """
    state = ScopeState(*(scalar.view(()) for scalar in state))
    c, e, f = sums[:3].unbind()
    zero = torch.zeros_like(c)
    t2 = state.steps_since_restart + 1
    restarting = t2 == 0

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
    took_part = None
    if sums.numel() == 4:
        # Reduced across ranks: sums[3] counts the shares that took part. With none, no tensor
        # of the scope had a gradient anywhere, and the scope does not step (as a single
        # process would skip it).
        took_part = sums[3] > 0
        restarting = restarting & took_part
        valid = valid & took_part
    accepted = valid & ~restarting

    delta = state.delta * beta2 + (1 - beta2) * cosine
    delta_hat = delta / (1 - torch.pow(beta2, t2.to(delta.dtype)))
    wants_restart = accepted & (delta_hat < restart_threshold) if restart else zero.bool()
    hidden = accepted & ~wants_restart
    step_size = hidden_step_size_of(hidden_step_size, delta)

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
    if took_part is None:
        state.hidden_step_size.copy_(hidden_coef)
    else:
        state.hidden_step_size.copy_(torch.where(took_part, hidden_coef, state.hidden_step_size))
    state.restart_count.add_(wants_restart.to(state.restart_count.dtype))
    return Decision(v_weight=v_weight, hidden_coef=hidden_coef)
