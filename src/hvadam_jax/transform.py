"""HVAdam as an ``optax.GradientTransformation``.

Per leaf (one array of the params pytree), with ``g`` the gradient, ``t`` the step count,
``bc1 = 1 - β1^t`` and ``bc2 = 1 - β2^t``:

    m ← β1·m + (1-β1)·g
    p = (g - v)²                                  (v from the previous step)
    η = p / ((g - m)² + γ·p + ε)
    s ← β2·s + (1-β2)·η·p + ε                     (Adam's g² in the variants without it)
    update = -lr · (m/bc1) / (√(s/bc2) + ε)       (the adaptive step)

Per scope (by default the whole pytree), over the concatenation of every leaf, the hidden
vector ``v`` moves to the foot of the perpendicular from the origin onto the line through ``v``
and ``m̂``, and ``update -= lr_hidden · b_t · v`` (the hidden step), unless the smoothed cosine
``δ̂`` calls for a restart (see :func:`hvadam_jax.scope.decide`).

Everything is pure ``jax.numpy`` with ``jnp.where`` for every decision: the update traces into
one XLA computation with no host callback, and under ``jax.jit`` with sharded parameters the
scope's sums become all-reduces by themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hvadam_jax.scope import (
    HiddenStepSize,
    ScopeState,
    decide,
    leaf_share,
    scope_sums,
)

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


class Variant(NamedTuple):
    """Which of HVAdam's ingredients are on (the paper's ablation, Table 5)."""

    hidden_moment: bool  # second moment from (g - v)² instead of Adam's g²
    hidden_step: bool  # the step along the hidden vector
    restart: bool  # restart the hidden vector when the smoothed cosine drops


VARIANTS: dict[str, Variant] = {
    "hvadam": Variant(hidden_moment=True, hidden_step=True, restart=True),
    "hvadam2": Variant(hidden_moment=True, hidden_step=True, restart=False),
    "hvadam1": Variant(hidden_moment=False, hidden_step=True, restart=False),
    "hvadam0": Variant(hidden_moment=False, hidden_step=False, restart=False),
}

# b_t = 10^(slope·δ + intercept) must stay finite in float32 for every δ in [-1, 1].
MAX_HIDDEN_STEP_EXPONENT = math.log10(float(jnp.finfo(jnp.float32).max))


class HVAdamState(NamedTuple):
    """The state of :func:`hvadam`; every field is readable as a diagnostic.

    ``exp_avg`` (m), ``second_moment`` (s), ``hidden_vector`` (v, ``None`` for the variant
    ``"hvadam0"``) and ``max_second_moment`` (``None`` without AMSGrad) have the structure of the
    params, in float32 or wider. ``count`` is the number of steps taken; ``scope`` holds the hidden
    vector's scalars (:class:`hvadam_jax.ScopeState`).
    """

    count: jax.Array
    exp_avg: optax.Updates
    second_moment: optax.Updates
    hidden_vector: optax.Updates | None
    max_second_moment: optax.Updates | None
    scope: ScopeState


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(name: str, value: Any, *, positive: bool = False) -> None:
    """Python numbers are checked here; arrays (e.g. from ``optax.inject_hyperparams``) cannot
    be read without a host sync, so they are trusted."""
    if callable(value) or isinstance(value, jax.Array) or hasattr(value, "dtype"):
        return
    if not _is_number(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name}: expected a finite, {kind} number, got {value!r}")


def _validate(options: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first invalid option (the rules of ``hvadam.HVAdam``)."""
    _check_number("learning_rate", options["learning_rate"])
    if options["lr_hidden"] is not None:
        _check_number("lr_hidden", options["lr_hidden"])
    for name in ("gamma", "weight_decay"):
        _check_number(name, options[name])
    _check_number("eps", options["eps"], positive=True)
    for name in ("b1", "b2"):
        beta = options[name]
        if _is_number(beta) and not 0.0 <= beta < 1.0:
            raise ValueError(f"{name}: expected a number in [0, 1), got {beta!r}")
        if not _is_number(beta) and not hasattr(beta, "dtype"):
            raise ValueError(f"{name}: expected a number in [0, 1), got {beta!r}")
    threshold = options["restart_threshold"]
    if _is_number(threshold) and not math.isfinite(threshold):
        raise ValueError(f"restart_threshold: expected a finite number, got {threshold!r}")
    for name in ("decoupled_weight_decay", "fixed_decay", "amsgrad", "maximize"):
        if not isinstance(options[name], bool):
            raise ValueError(f"{name}: expected a bool, got {options[name]!r}")
    if options["fixed_decay"] and not options["decoupled_weight_decay"]:
        raise ValueError(
            "fixed_decay: the lr-independent decay is a form of decoupled decay; "
            "set decoupled_weight_decay=True as well"
        )
    cosine_beta = options["cosine_beta"]
    if cosine_beta is not None and not (
        hasattr(cosine_beta, "dtype") or (_is_number(cosine_beta) and 0.0 <= cosine_beta < 1.0)
    ):
        raise ValueError(f"cosine_beta: expected None or a number in [0, 1), got {cosine_beta!r}")
    cap = options["second_moment_cap"]
    if cap is not None and not (
        hasattr(cap, "dtype") or (_is_number(cap) and math.isfinite(cap) and cap > 0)
    ):
        # 0 would make the cap 0·g², and 0·inf a NaN where g² overflows.
        raise ValueError(f"second_moment_cap: expected None or a finite number > 0, got {cap!r}")
    if not isinstance(options["bias_corrected_step"], bool):
        raise ValueError(
            f"bias_corrected_step: expected a bool, got {options['bias_corrected_step']!r}"
        )
    if options["variant"] not in VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {options['variant']!r}")
    rule = options["hidden_step_size"]
    if callable(rule):
        return  # its values are guarded inside the step: a non-finite b_t changes nothing
    if (
        not isinstance(rule, (tuple, list))
        or len(rule) != 2
        or not all(_is_number(x) and math.isfinite(x) for x in rule)
    ):
        raise ValueError(
            "hidden_step_size: expected (slope, intercept) for b_t = 10**(slope*delta + "
            f"intercept), or a callable delta -> b_t, got {rule!r}"
        )
    slope, intercept = rule
    if abs(slope) + intercept > MAX_HIDDEN_STEP_EXPONENT:
        raise ValueError(
            f"hidden_step_size: b_t = 10**({slope}*delta + {intercept}) reaches "
            f"10**{abs(slope) + intercept:g} for delta in [-1, 1], beyond float32's range; "
            f"keep |slope| + intercept <= {MAX_HIDDEN_STEP_EXPONENT:.2f}"
        )


def _state_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32 at least (bf16/fp16 params keep float32 state), else the param's own dtype."""
    return jnp.promote_types(dtype, jnp.float32)


def _as(value: Any, dtype: jnp.dtype) -> Any:
    """A hyperparameter in a leaf's dtype: Python numbers stay weakly typed (exact), arrays
    (schedules, ``inject_hyperparams``) are cast so that they never widen the state."""
    return value if _is_number(value) else jnp.asarray(value).astype(dtype)


def _value_at(schedule: ScalarOrSchedule, count: jax.Array) -> Any:
    return schedule(count) if callable(schedule) else schedule


def _saturation(dtype: jnp.dtype) -> float:
    """Where the gradient and the step's squares saturate: a quarter of the dtype's maximum, as
    in ``hvadam._common.saturation`` (README, "Numerics")."""
    return float(jnp.finfo(dtype).max) / 4


def _lerp(start: jax.Array, end: jax.Array, weight: Any) -> jax.Array:
    """``start + weight·(end - start)`` in ``torch.lerp``'s two-sided form, which keeps the
    result between ``start`` and ``end``: the one-sided form can round past ``end`` at weight 1,
    and a momentum one ulp beyond the saturation makes the next ``g - m`` overflow."""
    diff = end - start
    return jnp.where(jnp.abs(weight) < 0.5, start + weight * diff, end - diff * (1 - weight))


def _ordered_after(value: jax.Array, other: jax.Array) -> jax.Array:
    """``value``, unchanged, but made to depend on ``other`` (one element of it).

    The new hidden vector is written over the old one in place when the state is donated, and
    the second moment's pass reads the old one (``p = (g - v)²``). Nothing orders those two
    passes, so XLA copies ``v`` at every step to keep the old one readable; on CPU that copy of a
    large leaf costs a fresh allocation and its page faults (one 10M leaf: 5.0x ``optax.adam``
    with it, 2.9x without). Making the weight of the new ``v`` depend on the second moment orders
    the passes and removes the copy. The condition cannot hold (no value is both NaN and inf),
    but XLA cannot know that, so it keeps the dependency.
    """
    if other.size == 0:
        return value
    probe = other.reshape(-1)[0]
    return jnp.where(jnp.isnan(probe) & jnp.isinf(probe), jnp.zeros_like(value), value)


def hvadam(
    learning_rate: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    gamma: float = 0.0,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    *,
    fixed_decay: bool = False,
    amsgrad: bool = False,
    lr_hidden: ScalarOrSchedule | None = None,
    restart_threshold: float = 0.1,
    hidden_step_size: HiddenStepSize = (6.0, -3.0),
    variant: str = "hvadam",
    maximize: bool = False,
    mask: Any = None,
    cosine_beta: float | None = None,
    bias_corrected_step: bool = False,
    second_moment_cap: float | None = None,
) -> optax.GradientTransformation:
    r"""HVAdam (Zhang et al., AAAI 2025) as an optax gradient transformation.

    The whole params pytree is one scope: one hidden vector spans every leaf. For a hidden
    vector per group of leaves (``hvadam.HVAdam``'s default, one per param group), give each
    group its own ``hvadam`` with ``optax.multi_transform`` (or ``optax.partition``).

    Per leaf, with ``t`` the step, ``m̂ = m / (1 - β1^t)`` and ``ŝ = s / (1 - β2^t)``:

    .. math::
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad p = (g - v)^2, \qquad
        \eta = p / ((g - m)^2 + \gamma p + \epsilon) \\
        s &\leftarrow \beta_2 s + (1-\beta_2)\,\eta p + \epsilon, \qquad
        u = -\mathrm{lr}\; \hat m / (\sqrt{\hat s} + \epsilon) - \mathrm{lr_{hidden}}\,b_t\,v

    where ``v`` (updated first) is the scope's hidden vector and ``b_t = 10^{6δ-3}`` the
    hidden step size (0 when the scope takes no hidden step); see
    :func:`hvadam_jax.scope.decide`.

    Args:
        learning_rate: α1, the adaptive step's learning rate: a number or an optax schedule
            (a function of the step count, starting at 0).
        b1: β1, the momentum's decay.
        b2: β2, the second moment's decay and that of δ, the EMA of the cosine.
        eps: ε, added inside the second moment and to its square root.
        gamma: γ, caps η at 1/γ (0: no cap).
        weight_decay: decay coefficient: L2 on the gradient (``g ← g + wd·θ``) unless
            ``decoupled_weight_decay``.
        decoupled_weight_decay: decay the weights directly, ``θ ← θ·(1 - lr·wd)``, as AdamW.
        fixed_decay: with decoupled decay, ``θ ← θ·(1 - wd)``, independent of lr.
        amsgrad: use the running maximum of the second moment.
        lr_hidden: α2, the hidden step's learning rate (number or schedule); ``None`` ties it
            to ``learning_rate``, schedule included.
        restart_threshold: restart the hidden vector when ``δ̂`` falls below this.
        hidden_step_size: ``(slope, intercept)`` for ``b_t = 10^{slope·δ + intercept}``, or a
            callable from the δ array to ``b_t`` (under ``optax.inject_hyperparams`` name it in
            ``static_args``, or it is taken for a schedule).
        variant: ``"hvadam"``, or the paper's ablations ``"hvadam0"`` (Adam), ``"hvadam1"``
            (Adam's second moment + hidden step) and ``"hvadam2"`` (no restart).
        maximize: maximize the objective instead of minimizing.
        mask: which leaves weight decay applies to, as for ``optax.adamw``: a pytree of bools
            with the params' structure, or a callable from params to one. ``None``: all.
        cosine_beta: beyond the paper: the rate of δ's EMA (and of its bias correction) in
            place of β2; ``None``: β2.
        bias_corrected_step: beyond the paper: ``b_t`` from ``δ̂`` instead of ``δ``.
        second_moment_cap: beyond the paper: ``η·p`` is capped at ``cap·g²`` before it enters
            the second moment (a finite number > 0); ``None``: no cap.

    Returns:
        An ``optax.GradientTransformation`` whose state is an :class:`HVAdamState`. ``update``
        needs ``params`` when ``weight_decay`` is not 0.
    """
    options = dict(locals())
    _validate(options)
    flags = VARIANTS[variant]
    decay = "fixed" if fixed_decay else "decoupled" if decoupled_weight_decay else "l2"
    has_decay = not (_is_number(weight_decay) and weight_decay == 0)
    has_gamma = not (_is_number(gamma) and gamma == 0)

    def init_fn(params: optax.Params) -> HVAdamState:
        leaves = jax.tree.leaves(params)
        for leaf in leaves:
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(
                    f"params: hvadam optimizes real floating-point arrays, got a leaf of dtype "
                    f"{leaf.dtype} (shape {leaf.shape})"
                )

        def zeros(leaf: jax.Array) -> jax.Array:
            return jnp.zeros_like(leaf, dtype=_state_dtype(leaf.dtype))

        scope_dtype = jnp.float32
        for leaf in leaves:
            scope_dtype = jnp.promote_types(scope_dtype, leaf.dtype)
        return HVAdamState(
            count=jnp.zeros((), jnp.int32),
            exp_avg=jax.tree.map(zeros, params),
            second_moment=jax.tree.map(zeros, params),
            hidden_vector=jax.tree.map(zeros, params) if flags.hidden_step else None,
            max_second_moment=jax.tree.map(zeros, params) if amsgrad else None,
            scope=ScopeState.zeros(scope_dtype),
        )

    def update_fn(
        updates: optax.Updates, state: HVAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, HVAdamState]:
        grads, treedef = jax.tree.flatten(updates)
        count = optax.safe_increment(state.count)
        if not grads:  # an empty scope takes no step, as an HVAdam group without gradients
            return updates, state._replace(count=count)
        exp_avgs = treedef.flatten_up_to(state.exp_avg)
        second_moments = treedef.flatten_up_to(state.second_moment)
        # Leaves of optional state are None where the option is off.
        hidden_vectors: list[Any] = (
            treedef.flatten_up_to(state.hidden_vector) if flags.hidden_step else [None] * len(grads)
        )
        max_moments: list[Any] = (
            treedef.flatten_up_to(state.max_second_moment) if amsgrad else [None] * len(grads)
        )
        if has_decay:
            if params is None:
                raise ValueError("params: hvadam with weight_decay needs params in update()")
            param_leaves: list[Any] = treedef.flatten_up_to(params)
            decay_mask = mask(params) if callable(mask) else mask
            decays = [True] * len(grads) if mask is None else treedef.flatten_up_to(decay_mask)
        else:
            param_leaves = [None] * len(grads)
            decays = [False] * len(grads)

        lr = _value_at(learning_rate, state.count)
        lr_h = lr if lr_hidden is None else _value_at(lr_hidden, state.count)

        def effective_grad(i: int) -> jax.Array:
            """``g`` after ``maximize`` and L2 decay, saturated at a quarter of the dtype's
            maximum: a finite gradient near the maximum would otherwise overflow ``g - m``."""
            dtype = exp_avgs[i].dtype
            g = grads[i].astype(dtype)
            if maximize:
                g = -g
            if has_decay and decays[i] and decay == "l2":
                g = g + _as(weight_decay, dtype) * param_leaves[i].astype(dtype)
            limit = _saturation(dtype)
            return jnp.clip(g, -limit, limit)

        def bias_corrections(dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
            t = count.astype(dtype)
            return 1 - jnp.power(_as(b1, dtype), t), 1 - jnp.power(_as(b2, dtype), t)

        # Pass 1: the momentum and every leaf's share of the scope's inner products.
        new_exp_avgs, shares = [], []
        for i in range(len(grads)):
            dtype = exp_avgs[i].dtype
            g = effective_grad(i)
            m = _lerp(exp_avgs[i], g, 1 - _as(b1, dtype))
            new_exp_avgs.append(m)
            if flags.hidden_step:
                shares.append(leaf_share(m, hidden_vectors[i], bias_corrections(dtype)[0]))

        decision, scope = None, state.scope
        if flags.hidden_step:
            sums, left_out, kept = scope_sums(shares, state.scope.delta.dtype)
            decision, scope = decide(
                sums,
                left_out,
                state.scope,
                b2=_as(b2, state.scope.delta.dtype),
                restart=flags.restart,
                restart_threshold=_as(restart_threshold, state.scope.delta.dtype),
                hidden_step_size=hidden_step_size,
                cosine_beta=None
                if cosine_beta is None
                else _as(cosine_beta, state.scope.delta.dtype),
                bias_corrected_step=bias_corrected_step,
            )

        # Pass 2: the second moment, the adaptive step, the hidden vector and the hidden step.
        out_updates, new_second, new_hidden, new_max = [], [], [], []
        for i in range(len(grads)):
            m = new_exp_avgs[i]
            dtype = m.dtype
            limit = _saturation(dtype)
            g = effective_grad(i)
            bc1, bc2 = bias_corrections(dtype)
            one_minus_b2 = 1 - _as(b2, dtype)
            s = second_moments[i]
            if flags.hidden_moment:
                distance = jnp.square(g - hidden_vectors[i])  # p, with v from the last step
                noise = jnp.square(g - m) + _as(eps, dtype)
                if has_gamma:
                    noise = noise + _as(gamma, dtype) * distance
                # Saturated, so that where p overflowed, η·p = p·p/noise is inf (then saturated
                # below), never inf/inf = NaN; η·p itself exceeds the range when g = m ≠ v.
                noise = jnp.minimum(noise, limit)
                eta_p = distance / noise * distance
                if second_moment_cap is not None:
                    eta_p = jnp.minimum(eta_p, _as(second_moment_cap, dtype) * (g * g))
                # s ← s + (1-β2)·(η·p + ε/(1-β2) - s) is β2·s + (1-β2)·η·p + ε.
                target = eta_p + _as(eps, dtype) / one_minus_b2
                s = s + one_minus_b2 * (jnp.minimum(target, limit) - s)
            else:
                s = s + one_minus_b2 * (jnp.minimum(g * g, limit) - s)
            new_second.append(s)
            if amsgrad:
                s = jnp.maximum(max_moments[i], s)
                new_max.append(s)

            # -lr·m̂/(√(s/bc2) + ε) = m / ((√s + ε·√bc2) / (-lr·√bc2/bc1)); m is divided last, so
            # that an m near the dtype's maximum is never multiplied by a factor above 1.
            sqrt_bc2 = jnp.sqrt(bc2)
            neg_step = -_as(lr, dtype) * sqrt_bc2 / bc1
            step = m / ((jnp.sqrt(s) + _as(eps, dtype) * sqrt_bc2) / neg_step)

            if has_decay and decays[i] and decay != "l2":
                rate = _as(weight_decay, dtype)
                if decay == "decoupled":
                    rate = _as(lr, dtype) * rate
                step = step - rate * param_leaves[i].astype(dtype)

            if decision is not None:
                # v ← (1-w)·v + w·m̂, then the hidden step -lr_hidden·b_t·v.
                leaf = decision.for_leaf(kept[i])
                weight = leaf.v_weight.astype(dtype)
                if flags.hidden_moment:
                    weight = _ordered_after(weight, new_second[-1])
                v = hidden_vectors[i] * (1 - weight) + m * (weight / bc1)
                new_hidden.append(v)
                step = step - (_as(lr_h, dtype) * leaf.hidden_coef.astype(dtype)) * v
            out_updates.append(step.astype(grads[i].dtype))

        new_state = HVAdamState(
            count=count,
            exp_avg=treedef.unflatten(new_exp_avgs),
            second_moment=treedef.unflatten(new_second),
            hidden_vector=treedef.unflatten(new_hidden) if flags.hidden_step else None,
            max_second_moment=treedef.unflatten(new_max) if amsgrad else None,
            scope=scope,
        )
        return treedef.unflatten(out_updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def hvadam_states(opt_state: optax.OptState) -> list[HVAdamState]:
    """Every :class:`HVAdamState` inside an optax state (a chain, ``inject_hyperparams``,
    ``multi_transform`` ...), in pytree order: one per scope."""

    def is_hvadam(node: Any) -> bool:
        return isinstance(node, HVAdamState)

    return [node for node in jax.tree.leaves(opt_state, is_leaf=is_hvadam) if is_hvadam(node)]


def diagnostics(opt_state: optax.OptState) -> list[dict[str, float | int]]:
    """Per scope, its scalars as Python numbers (one transfer to the host, for logging):
    ``steps`` (t), ``steps_since_restart``, ``delta`` (δ), ``delta_hat`` (δ̂), ``cosine``,
    ``hidden_step_size`` (the b_t applied in the last step), ``restart_count`` and
    ``nonfinite_steps``."""
    states = jax.device_get([(s.count, s.scope) for s in hvadam_states(opt_state)])
    out = []
    for count, scope in states:
        row: dict[str, float | int] = {"steps": int(count)}
        for name, value in scope._asdict().items():
            row[name] = value.item()
        out.append(row)
    return out
