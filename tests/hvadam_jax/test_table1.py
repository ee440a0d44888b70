"""The paper's worked example (Table 1), with the erratum that m̂_y at step 2 is +1.2105."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hvadam_jax
from tests.hvadam.test_table1 import GRADIENTS, HIDDEN, M_HAT


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_table1_hidden_vector_and_momentum(dtype):
    # lr = 0: the table lists a fixed gradient sequence, independent of where θ goes.
    opt = hvadam_jax.hvadam(0.0)
    point = jnp.zeros(2, dtype)
    state = opt.init(point)
    update = jax.jit(opt.update)
    for step, (grad, m_hat, hidden) in enumerate(zip(GRADIENTS, M_HAT, HIDDEN), start=1):
        updates, state = update(jnp.asarray(grad, dtype), state, point)
        point = optax.apply_updates(point, updates)
        measured = state.exp_avg / (1 - 0.9**step)
        assert np.asarray(measured) == pytest.approx(m_hat, abs=5e-5), f"m̂ at step {step}"
        assert np.asarray(state.hidden_vector) == pytest.approx(hidden, abs=5e-5), f"v, {step}"
        assert state.hidden_vector.dtype == dtype and int(state.count) == step
    assert np.all(np.asarray(point) == 0)


def test_table1_hidden_vector_found_within_two_steps_on_the_function():
    """On f itself (from a point in the valley), v is parallel to v* = (1, 1) after 2 steps."""

    def f(point):
        x, y = point
        return 4 * jnp.abs(x - y) + jnp.abs(x + y)

    opt = hvadam_jax.hvadam(0.3)
    point = jnp.array([1.0, 0.7])
    state = opt.init(point)
    for _ in range(2):
        updates, state = opt.update(jax.grad(f)(point), state, point)
        point = optax.apply_updates(point, updates)
    v = np.asarray(state.hidden_vector)
    assert v @ np.ones(2) / (np.linalg.norm(v) * np.sqrt(2)) > 0.999
