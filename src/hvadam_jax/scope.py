"""The scope: the parameters that share one hidden vector, and its branch-free per-step decision.

Every leaf of the scope contributes its share of three inner products over the concatenation of
all leaves: with ``m̂`` the bias-corrected momentum and ``d = m̂ - v``,

    c = <m̂, m̂>,   e = <m̂, d>,   f = <d, d>.

:func:`decide` turns the totals and the scope's scalars into the weight by which ``v`` moves
towards ``m̂`` and the size ``b_t`` of the hidden step, with ``jnp.where`` only: no value is ever
read on the host, so the step traces into one XLA computation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

# |v'|² at or below ZERO_NORM_FACTOR · eps · |m̂|² is rounding noise, counted as |v'| = 0.
ZERO_NORM_FACTOR = 32

HiddenStepSize = tuple[float, float] | Callable[[jax.Array], jax.Array]


class ScopeState(NamedTuple):
    """The scalars one hidden vector carries between steps (0-dim arrays).

    ``steps_since_restart`` is ``t2`` (-1: restart on the next step) and ``delta`` the EMA ``δ``
    of the cosine between the new hidden vector and ``m̂``; together with the moments they are
    the whole dynamic state. The other fields are diagnostics: ``delta_hat`` (``δ̂``, bias
    corrected), the last accepted ``cosine``, ``hidden_step_size`` (the ``b_t`` applied in the
    last step, 0 when none was taken), ``restart_count``, and ``nonfinite_steps``: steps in
    which some leaf was left out of the inner products because its share was not finite, or in
    which ``b_t`` was not finite.
    """

    steps_since_restart: jax.Array
    delta: jax.Array
    delta_hat: jax.Array
    cosine: jax.Array
    hidden_step_size: jax.Array
    restart_count: jax.Array
    nonfinite_steps: jax.Array

    @classmethod
    def zeros(cls, dtype: jnp.dtype) -> ScopeState:
        """A fresh scope: ``t2 = -1`` (so the first step restarts), ``δ = 0``."""
        # A separate array per field: a buffer shared by two fields could not be donated.
        return cls(
            steps_since_restart=jnp.full((), -1, jnp.int32),
            delta=jnp.zeros((), dtype),
            delta_hat=jnp.zeros((), dtype),
            cosine=jnp.zeros((), dtype),
            hidden_step_size=jnp.zeros((), dtype),
            restart_count=jnp.zeros((), jnp.int32),
            nonfinite_steps=jnp.zeros((), jnp.int32),
        )


class Decision(NamedTuple):
    """What the leaves of the scope apply after the decision.

    ``v ← v + v_weight·(m̂ - v)`` (``v_weight``: 1 on a restart, ``1 - k`` on a hidden step, 0
    otherwise), then ``θ ← θ - lr_hidden · hidden_coef · v`` (``hidden_coef = b_t`` or 0).
    """

    v_weight: jax.Array
    hidden_coef: jax.Array
    restarting: jax.Array

    def for_leaf(self, kept: jax.Array) -> Decision:
        """The decision as one leaf takes it: a leaf left out of the sums (``kept`` false)
        keeps its ``v`` (a restart still sets ``v ← m̂``) and takes no hidden step, since
        ``k`` says nothing about its ``d``."""
        zero = jnp.zeros_like(self.v_weight)
        return Decision(
            v_weight=jnp.where(kept | self.restarting, self.v_weight, zero),
            hidden_coef=jnp.where(kept, self.hidden_coef, zero),
            restarting=self.restarting,
        )


def leaf_share(
    exp_avg: jax.Array, hidden_vector: jax.Array, bias_correction1: jax.Array
) -> jax.Array:
    """One leaf's ``(c, e, f)`` as a length-3 array, from ``m`` (not yet bias-corrected) and ``v``.

    With ``bc1 = 1 - β1^t``, ``m̂ = m / bc1`` and ``d = m̂ - v``:
    ``c = Σm² / bc1²``, ``e = Σm·(m - bc1·v) / bc1²`` and ``f = Σ(m·(1/bc1) - v)²``. ``f`` is
    summed from the difference itself, so it does not cancel when ``v ≈ m̂`` as
    ``<v,v> - 2<v,m̂> + <m̂,m̂>`` would. ``e`` and ``f`` are written so that no elementwise
    intermediate is common to two of the sums: XLA would otherwise store that intermediate
    in memory and read it back (on CPU this tripled the time of the three sums).
    """
    inverse = 1 / bias_correction1
    c = jnp.sum(exp_avg * exp_avg)
    e = jnp.sum(exp_avg * (exp_avg - bias_correction1 * hidden_vector))
    f = jnp.sum(jnp.square(exp_avg * inverse - hidden_vector))
    return jnp.stack([c * (inverse * inverse), e * (inverse * inverse), f])


def scope_sums(shares: list[jax.Array], dtype: jnp.dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The scope's ``(c, e, f)``, the number of leaves left out, and which leaves were kept.

    A leaf whose share is not finite (a NaN or inf gradient, or squares that overflow) takes no
    part in the decision nor in its hidden update (:meth:`Decision.for_leaf`): one bad leaf
    cannot freeze the scope.
    """
    if not shares:
        return jnp.zeros(3, dtype), jnp.zeros((), jnp.int32), jnp.zeros(0, bool)
    rows = jnp.stack([share.astype(dtype) for share in shares])
    finite = jnp.all(jnp.isfinite(rows), axis=1)
    sums = jnp.sum(jnp.where(finite[:, None], rows, jnp.zeros_like(rows)), axis=0)
    return sums, jnp.sum(~finite).astype(jnp.int32), finite


def hidden_step_size_of(rule: HiddenStepSize, delta: jax.Array) -> jax.Array:
    """``b_t`` from ``δ``: ``10**(slope·δ + intercept)`` for a pair, else the user's callable."""
    if callable(rule):
        return jnp.asarray(rule(delta), dtype=delta.dtype)
    slope, intercept = rule
    return jnp.power(jnp.asarray(10.0, delta.dtype), delta * slope + intercept)


def decide(
    sums: jax.Array,
    left_out: jax.Array,
    state: ScopeState,
    *,
    b2: float | jax.Array,
    restart: bool,
    restart_threshold: float | jax.Array,
    hidden_step_size: HiddenStepSize,
    cosine_beta: float | jax.Array | None = None,
    bias_corrected_step: bool = False,
) -> tuple[Decision, ScopeState]:
    """One scope decision, branch-free: the restart, the new hidden vector and ``b_t``.

    With ``(c, e, f) = sums`` and ``k = e / f`` (0 when ``f = 0``), the new hidden vector is
    ``v' = m̂ - k·(m̂ - v)``, the foot of the perpendicular from the origin onto the line through
    ``v`` and ``m̂``. Its inner products need no second pass over the leaves:

        <v', m̂> = c - k·e,    |v'|² = c - 2k·e + k²·f,    cos = <v', m̂> / (|v'|·|m̂|).

    ``t2 ← t2 + 1``. When ``t2 = 0`` the step restarts: ``v ← m̂``, ``δ ← 0``, no hidden step.
    Otherwise ``δ ← β2·δ + (1-β2)·cos`` and ``δ̂ = δ / (1 - β2^t2)``; if ``δ̂`` is below the
    restart threshold (and restarts are on), the next step restarts (``t2 ← -1``); else
    ``v ← v'`` and a hidden step of size ``b_t(δ)`` is taken. A degenerate cosine (not finite,
    ``|cos| > 1``, ``m̂ = 0``, or ``|v'|² ≤ 32·eps·|m̂|²``, which is rounding noise of a vanishing
    ``v'``) or a non-finite ``b_t`` changes nothing at all, ``t2`` included.

    Two options beyond the paper: ``cosine_beta`` replaces ``β2`` as the rate of ``δ``'s EMA
    (and of its bias correction), and ``bias_corrected_step`` sizes ``b_t`` from ``δ̂``.
    """
    c, e, f = sums[0], sums[1], sums[2]
    zero = jnp.zeros_like(c)
    one = jnp.ones_like(c)
    t2 = state.steps_since_restart + 1
    restarting = t2 == 0

    safe_f = jnp.where(f != 0, f, one)
    k = jnp.where(f != 0, e / safe_f, zero)
    inner = c - k * e
    norm_sq = c - 2 * k * e + k * k * f
    # The square root of each factor, not of the product: c·|v'|² overflows long before c does.
    cosine = inner / (jnp.sqrt(norm_sq) * jnp.sqrt(c))
    zero_floor = ZERO_NORM_FACTOR * jnp.finfo(c.dtype).eps
    valid = (
        jnp.isfinite(cosine)
        & (jnp.abs(cosine) <= 1)
        & (c > 0)
        & (norm_sq > zero_floor * c)
        & ~restarting
    )

    rate = b2 if cosine_beta is None else cosine_beta
    delta = state.delta * rate + (1 - rate) * cosine
    # t2 ≥ 1 wherever δ̂ is used; on a restart step the denominator would be 0.
    bias_correction = 1 - jnp.power(jnp.asarray(rate, c.dtype), jnp.maximum(t2, 1).astype(c.dtype))
    delta_hat = delta / bias_correction
    no_restart = jnp.zeros((), bool)
    wants_restart = valid & (delta_hat < restart_threshold) if restart else no_restart
    step_size = hidden_step_size_of(hidden_step_size, delta_hat if bias_corrected_step else delta)
    bad_step_size = valid & ~wants_restart & ~jnp.isfinite(step_size)
    accepted = valid & ~bad_step_size
    hidden = accepted & ~wants_restart

    v_weight = jnp.where(restarting, one, jnp.where(hidden, 1 - k, zero))
    hidden_coef = jnp.where(hidden, step_size, zero)

    # t2 after this step: 0 after a restart, -1 when a restart was just scheduled, and its old
    # value (as if the step never happened) when the decision was degenerate.
    next_t2 = jnp.where(wants_restart, -1, t2)
    new_state = ScopeState(
        steps_since_restart=jnp.where(accepted | restarting, next_t2, state.steps_since_restart),
        delta=jnp.where(restarting, zero, jnp.where(accepted, delta, state.delta)),
        delta_hat=jnp.where(accepted, delta_hat, state.delta_hat),
        cosine=jnp.where(accepted, cosine, state.cosine),
        hidden_step_size=hidden_coef,
        restart_count=state.restart_count + wants_restart.astype(state.restart_count.dtype),
        nonfinite_steps=state.nonfinite_steps
        + ((left_out > 0) | bad_step_size).astype(state.nonfinite_steps.dtype),
    )
    decision = Decision(v_weight=v_weight, hidden_coef=hidden_coef, restarting=restarting)
    return decision, new_state
