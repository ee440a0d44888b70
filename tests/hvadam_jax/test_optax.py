"""hvadam_jax.hvadam follows optax's conventions: schedules, chains, weight-decay masks,
``inject_hyperparams``, ``multi_transform`` scopes, ``jit`` with donated buffers, a pure
branch-free trace, float32 state for bfloat16 parameters, and options checked up front."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hvadam_jax


def params_and_grads(seed: int = 0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.standard_normal((4, 3)), dtype), "b": jnp.zeros(3, dtype)}

    def grads(t: int):
        r = np.random.default_rng((seed, t))
        return {
            "w": jnp.asarray(r.standard_normal((4, 3)), dtype),
            "b": jnp.asarray(r.standard_normal(3), dtype),
        }

    return params, grads


def run(transform, steps: int = 6, hook=None, dtype=jnp.float32):
    params, grads = params_and_grads(dtype=dtype)
    state = transform.init(params)
    update = jax.jit(transform.update)
    for t in range(steps):
        if hook is not None:
            state = hook(state, t)
        updates, state = update(grads(t), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def assert_trees_equal(a, b, rtol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=0)


def test_schedule_equals_injected_learning_rate_set_every_step():
    """In float64 (so that injected hyperparameters, which arrive as arrays, round as Python
    floats do), a schedule and a learning rate injected at every step agree exactly."""

    def schedule(count):  # float64 arithmetic whether count is an int32 array or an int
        return 0.1 / (1.0 + count)

    scheduled, _ = run(hvadam_jax.hvadam(schedule), dtype=jnp.float64)

    def set_lr(state, t):
        state.hyperparams["learning_rate"] = jnp.asarray(schedule(t), jnp.float64)
        return state

    factory = optax.inject_hyperparams(hvadam_jax.hvadam, hyperparam_dtype=jnp.float64)
    injected, _ = run(factory(learning_rate=1.0), hook=set_lr, dtype=jnp.float64)
    assert_trees_equal(scheduled, injected, rtol=1e-12)
    # lr_hidden=None ties the hidden step to the schedule: the same as passing it explicitly.
    tied, _ = run(hvadam_jax.hvadam(schedule, lr_hidden=schedule), dtype=jnp.float64)
    assert_trees_equal(scheduled, tied)
    untied, _ = run(hvadam_jax.hvadam(schedule, lr_hidden=0.1), dtype=jnp.float64)
    assert not np.allclose(np.asarray(untied["w"]), np.asarray(scheduled["w"]))


def test_inject_hyperparams_keeps_the_state_dtype():
    """Injected hyperparameters arrive as arrays (float32 here, params float64): they must not
    widen or narrow the state, whose dtypes a jitted training loop relies on."""
    transform = optax.inject_hyperparams(hvadam_jax.hvadam)(
        learning_rate=1e-2, b1=0.8, gamma=0.1, weight_decay=1e-3, restart_threshold=0.2
    )
    params, state = run(transform, dtype=jnp.float64)
    inner = state.inner_state
    assert inner.exp_avg["w"].dtype == jnp.float64 and inner.scope.delta.dtype == jnp.float64
    assert params["w"].dtype == jnp.float64
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def test_chain_with_clipping_equals_clipping_the_gradients_first():
    clip = optax.clip_by_global_norm(0.5)
    chained, _ = run(optax.chain(clip, hvadam_jax.hvadam(1e-2)))
    params, grads = params_and_grads()
    transform, clip_state = hvadam_jax.hvadam(1e-2), clip.init(params)
    state = transform.init(params)
    for t in range(6):
        clipped, clip_state = clip.update(grads(t), clip_state, params)
        updates, state = jax.jit(transform.update)(clipped, state, params)
        params = optax.apply_updates(params, updates)
    assert_trees_equal(chained, params, rtol=1e-6)


def test_weight_decay_mask():
    """Weight decay reaches only the leaves the mask selects (a pytree or a callable)."""
    mask = {"w": True, "b": False}
    params, grads = params_and_grads()
    plain = hvadam_jax.hvadam(1e-2)
    state = plain.init(params)
    # L2: the same as adding wd·θ to the selected gradients by hand.
    l2 = hvadam_jax.hvadam(1e-2, weight_decay=0.1, mask=mask)
    by_hand = dict(grads(0), w=grads(0)["w"] + 0.1 * params["w"])
    assert_trees_equal(l2.update(grads(0), state, params), plain.update(by_hand, state, params))
    # Decoupled: the plain update minus lr·wd·θ on the selected leaves only.
    decoupled = hvadam_jax.hvadam(
        1e-2, weight_decay=0.1, decoupled_weight_decay=True, mask=lambda p: mask
    )
    updates, _ = decoupled.update(grads(0), state, params)
    expected, _ = plain.update(grads(0), state, params)
    np.testing.assert_allclose(updates["w"], expected["w"] - 1e-3 * params["w"], rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], expected["b"])
    nothing = hvadam_jax.hvadam(1e-2, weight_decay=0.1, mask={"w": False, "b": False})
    assert_trees_equal(
        nothing.update(grads(0), state, params), plain.update(grads(0), state, params)
    )


def test_multi_transform_gives_one_scope_per_group():
    transform = optax.multi_transform(
        {"a": hvadam_jax.hvadam(1e-2), "b": hvadam_jax.hvadam(1e-2, restart_threshold=0.5)},
        {"w": "a", "b": "b"},
    )
    _, state = run(transform)
    scopes = hvadam_jax.diagnostics(state)
    assert len(scopes) == 2 and all(s["steps"] == 6 for s in scopes)
    _, single = run(hvadam_jax.hvadam(1e-2))
    assert len(hvadam_jax.diagnostics(single)) == 1


def test_trace_is_pure_and_branch_free():
    transform = hvadam_jax.hvadam(1e-2, amsgrad=True, weight_decay=0.1)
    params, grads = params_and_grads()
    state = transform.init(params)
    jaxpr = jax.make_jaxpr(transform.update)(grads(0), state, params)

    def primitives(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn.primitive.name
            for value in eqn.params.values():  # nested jaxprs (pjit, custom_jvp, ...)
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(item, "jaxpr", item)
                    if hasattr(inner, "eqns"):
                        yield from primitives(inner)

    names = set(primitives(jaxpr.jaxpr))
    assert not {n for n in names if "callback" in n or n in ("cond", "while", "switch")}, names


def test_jit_with_donated_params_and_state():
    transform = hvadam_jax.hvadam(1e-2)
    params, grads = params_and_grads()

    def step(params, state, grads):
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    state = transform.init(params)
    for t in range(3):
        params, state = step(params, state, grads(t))
    assert int(state.count) == 3 and int(state.scope.steps_since_restart) >= 0


def test_bfloat16_params_keep_float32_state():
    params, state = run(hvadam_jax.hvadam(1e-2), dtype=jnp.bfloat16)
    assert params["w"].dtype == jnp.bfloat16
    assert state.exp_avg["w"].dtype == jnp.float32 and state.scope.delta.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def test_state_fields_are_readable_diagnostics():
    _, state = run(hvadam_jax.hvadam(1e-2, amsgrad=True))
    assert isinstance(state, hvadam_jax.HVAdamState)
    assert set(state.exp_avg) == set(state.hidden_vector) == set(state.max_second_moment)
    (scope,) = hvadam_jax.diagnostics(state)
    assert set(scope) == {"steps", *hvadam_jax.ScopeState._fields}
    _, adam_like = run(hvadam_jax.hvadam(1e-2, variant="hvadam0"))
    assert adam_like.hidden_vector is None and adam_like.max_second_moment is None


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"b1": 1.0}, "b1"),
        ({"b2": -0.1}, "b2"),
        ({"eps": 0.0}, "eps"),
        ({"gamma": float("nan")}, "gamma"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"lr_hidden": float("inf")}, "lr_hidden"),
        ({"restart_threshold": float("inf")}, "restart_threshold"),
        ({"hidden_step_size": (600.0, 0.0)}, "hidden_step_size"),
        ({"hidden_step_size": "big"}, "hidden_step_size"),
        ({"variant": "hvadam3"}, "variant"),
        ({"amsgrad": 1}, "amsgrad"),
        ({"fixed_decay": True, "weight_decay": 0.1}, "fixed_decay"),
    ],
)
def test_bad_options_raise_naming_the_argument(options, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        hvadam_jax.hvadam(**{"learning_rate": 1e-3, **options})


def test_integer_leaves_and_missing_params_are_refused():
    with pytest.raises(ValueError, match="^params:"):
        hvadam_jax.hvadam().init({"w": jnp.zeros(3), "steps": jnp.zeros(3, jnp.int32)})
    transform = hvadam_jax.hvadam(weight_decay=0.1)
    state = transform.init(jnp.zeros(3))
    with pytest.raises(ValueError, match="^params:"):
        transform.update(jnp.ones(3), state)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_donated_step_updates_the_hidden_vector_in_place(amsgrad):
    """With donated state, XLA writes every state array in place: no copy of a state-sized
    array in the compiled step (a copy of v per step cost 2x at 10M on CPU; README, JAX)."""
    transform = hvadam_jax.hvadam(1e-3, amsgrad=amsgrad)
    params = [jnp.zeros(4096, jnp.float32), jnp.zeros(4096, jnp.float32)]

    def step(params, state, grads):
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = (
        jax.jit(step, donate_argnums=(0, 1))
        .lower(params, transform.init(params), params)
        .compile()
        .as_text()
    )
    copies = [line for line in compiled.splitlines() if "f32[4096]" in line and " copy(" in line]
    assert not copies, copies
