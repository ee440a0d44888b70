"""No NaN or inf enters the state or the parameters from a finite gradient, on the edge gradients
of the PyTorch suite (tests/hvadam/test_numerics.py) and on finite gradients up to the dtype's
maximum; a leaf that does go non-finite (a NaN gradient) is left out of the scope's sums and
counted, and a non-finite hidden step size changes nothing in the scope, as in the reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hvadam_jax
from tests.hvadam.problems import run_reference
from tests.hvadam.reference import GroupConfig
from tests.hvadam_jax.harness import deviations, run_jax

SHAPES = [(4, 3), (5,), (1,)]
REGIMES = ["zero", "constant", "tiny", "huge", "normal", "mixed", "extreme"]
MAGNITUDES = [0.0, 1e-30, 1e-8, 1.0, 1e8, 1e15]
OPTIONS = {
    "defaults": {},
    "amsgrad": {"amsgrad": True},
    "gamma_l2": {"gamma": 0.1, "weight_decay": 1e-2},
    "hvadam1": {"variant": "hvadam1"},
    "decoupled": {"decoupled_weight_decay": True, "weight_decay": 0.1, "learning_rate": 1.0},
}


def gradient(kind: str, shape, step: int, scale: float, rng: np.random.Generator, dtype):
    """The PyTorch suite's regimes, plus "extreme": finite values up to 0.99·finfo.max."""
    if kind == "zero":
        return np.zeros(shape)
    if kind == "constant":
        return np.full(shape, scale if scale else 1.0)
    if kind == "tiny":
        return rng.standard_normal(shape) * 1e-30
    if kind == "huge":
        return rng.standard_normal(shape) * 1e15
    if kind == "mixed":  # every element a different order of magnitude, sign flipping by step
        return (-1.0) ** step * 10.0 ** rng.integers(-30, 16, shape).astype(float)
    if kind == "extreme":
        largest = float(jnp.finfo(dtype).max)
        return rng.uniform(-0.99, 0.99, shape) * largest
    return rng.standard_normal(shape) * scale


@functools.cache
def stepper(options: str, dtype):
    transform = hvadam_jax.hvadam(**{"learning_rate": 1e-3, **OPTIONS[options]})

    @jax.jit
    def step(params, state, grads):
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return transform, step


def assert_finite(params, state) -> None:
    for leaf in jax.tree.leaves((params, state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert bool(jnp.all(jnp.isfinite(leaf))), "a parameter or state entry is not finite"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("options", list(OPTIONS))
def test_no_nan_or_inf_from_finite_gradients(options, dtype):
    transform, step = stepper(options, dtype)
    rng = np.random.default_rng(hash(options) % 2**16)
    for _ in range(8):  # random sequences of regimes, each from a fresh start
        params = [jnp.zeros(shape, dtype) for shape in SHAPES]
        state = transform.init(params)
        scale = MAGNITUDES[rng.integers(len(MAGNITUDES))]
        for t, kind in enumerate(rng.choice(REGIMES, size=10)):
            grads = [jnp.asarray(gradient(kind, s, t, scale, rng, dtype), dtype) for s in SHAPES]
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
            params, state = step(params, state, grads)
            assert_finite(params, state)


@pytest.mark.parametrize("value", [1e15, 1e-30, 0.0, 3.0, 0.9 * float(jnp.finfo(jnp.float32).max)])
def test_long_constant_gradient_stays_finite(value):
    """A constant g makes g - m exactly 0 in float32 after ~150 steps while v ≠ g, the case
    where η·p = p²/((g-m)² + ε) overflows unless saturated."""
    transform, step = stepper("defaults", jnp.float32)
    params = [jnp.zeros(7, jnp.float32), jnp.zeros((2, 2), jnp.float32)]
    state = transform.init(params)
    grads = [jnp.full_like(p, value) for p in params]
    for _ in range(300):
        params, state = step(params, state, grads)
    assert_finite(params, state)


class SeparateLeaves:
    """Each leaf pulled towards its own target, so that a NaN in one leaf stays in that leaf
    (CoupledValley mixes every coordinate into every gradient). ``poisoned`` gets a NaN
    gradient at step ``poison_at``."""

    shapes = [[(3, 2), (4,)]]

    def __init__(self, poisoned: int | None = None, poison_at: int = 5):
        rng = np.random.default_rng(11)
        self.targets = [rng.standard_normal(s) for s in self.shapes[0]]
        self.poisoned, self.poison_at = poisoned, poison_at

    def initial(self):
        return [[np.zeros(s) for s in self.shapes[0]]]

    def grads(self, params, t):
        rng = np.random.default_rng((5, t))
        out = [
            p - target + 0.3 * rng.standard_normal(p.shape)
            for p, target in zip(params[0], self.targets)
        ]
        if t == self.poison_at and self.poisoned is not None:
            out[self.poisoned] = np.full(out[self.poisoned].shape, np.nan)
        return [out]


def test_nan_leaf_is_left_out_and_counted_like_the_reference():
    configs = [GroupConfig(lr=1e-2, restart_threshold=0.5)]
    problem = SeparateLeaves(poisoned=0)
    reference, ref = run_reference(problem, configs, steps=30)
    library, state = run_jax(problem, configs, steps=30)
    # The healthy leaf keeps following the reference's decisions, taken without the NaN leaf.
    healthy = [[[step[0][1]]] for step in reference], [[[step[0][1]]] for step in library]
    assert deviations(*healthy).max() < 1e-10
    scope = hvadam_jax.diagnostics(state)[0]
    reference_scope = next(iter(ref.scopes.values()))
    assert scope["nonfinite_steps"] == reference_scope.nonfinite_steps == 26  # steps 5..30
    assert scope["steps_since_restart"] == reference_scope.t2


def test_nonfinite_hidden_step_size_changes_nothing_and_is_counted():
    """A rule whose b_t is inf once δ would reach 0.5: from then on the scope is frozen (δ, v,
    t2), every such step is counted, and the adaptive step goes on, as in the reference."""

    def rule(delta):
        return 1e-3 / (delta < 0.5)  # 1e-3, or 1e-3 / 0 = inf (NumPy and JAX alike)

    configs = [GroupConfig(lr=1e-3, betas=(0.5, 0.5), hidden_step_size=rule)]
    problem = SeparateLeaves()
    reference, ref = run_reference(problem, configs, steps=25)
    library, state = run_jax(problem, configs, steps=25)
    assert deviations(reference, library).max() < 1e-10
    scope = hvadam_jax.diagnostics(state)[0]
    reference_scope = next(iter(ref.scopes.values()))
    assert scope["nonfinite_steps"] == reference_scope.nonfinite_steps > 0
    assert scope["steps_since_restart"] == reference_scope.t2
    assert scope["delta"] == pytest.approx(reference_scope.delta, abs=1e-12)
    assert scope["delta"] < 0.5  # δ stopped below where b_t goes non-finite

    # One more step: nothing in the scope moves.
    transform = hvadam_jax.hvadam(1e-3, b1=0.5, b2=0.5, hidden_step_size=rule)
    params = {"g0": [jnp.asarray(p) for p in library[-1][0]]}
    grads = {"g0": [jnp.asarray(g) for g in problem.grads(library[-1], 26)[0]]}
    (inner,) = hvadam_jax.hvadam_states(state)
    _, after = transform.update(grads, inner, params)
    for name in ("steps_since_restart", "delta", "delta_hat", "cosine", "restart_count"):
        assert getattr(after.scope, name) == getattr(inner.scope, name), name
    assert after.scope.nonfinite_steps == inner.scope.nonfinite_steps + 1
    for old, new in zip(inner.hidden_vector["g0"], after.hidden_vector["g0"]):
        assert bool(jnp.array_equal(old, new))


def test_a_leaf_left_out_of_the_decision_takes_no_hidden_update():
    """A leaf whose squares overflow float32 (momentum ~1e25) is left out of the sums; it must
    then move exactly as it does alone, where its row leaves nothing to decide, while the other
    leaf keeps its hidden steps (as in the PyTorch suite)."""

    transform = hvadam_jax.hvadam(learning_rate=1e-2, variant="hvadam2")

    def run(shapes):
        params = [jnp.zeros(s, jnp.float32) for s in shapes]
        state = transform.init(params)
        rng = np.random.default_rng(0)
        for _ in range(30):
            grads = [rng.standard_normal(3) * 1e25, rng.standard_normal(4)][: len(params)]
            updates, state = transform.update([jnp.asarray(g, jnp.float32) for g in grads], state)
            params = optax.apply_updates(params, updates)
        return params, state

    (big, healthy), state = run([(3,), (4,)])
    (alone,), alone_state = run([(3,)])
    assert_finite([big, healthy], state)
    np.testing.assert_array_equal(np.asarray(big), np.asarray(alone))
    scope = hvadam_jax.diagnostics(state)[0]
    assert scope["nonfinite_steps"] == 30 and scope["hidden_step_size"] > 0


def test_no_momentum_at_the_saturation_stays_finite():
    """β1 = 0 and gradients at ±finfo.max: m + 1·(g - m) rounded one ulp past the saturation,
    and the next g - m overflowed to -inf (the values of a PyTorch property-test failure)."""
    transform = hvadam_jax.hvadam(b1=0.0, b2=0.5, eps=1e-30)
    params = [jnp.zeros(2, jnp.float32)]
    state = transform.init(params)
    for g in [-9.984867988600888e37, 3.4028234663852886e38, -3.4028234663852886e38]:
        updates, state = transform.update([jnp.asarray([g, 1.0], jnp.float32)], state, params)
        params = optax.apply_updates(params, updates)
        assert_finite(params, state)
