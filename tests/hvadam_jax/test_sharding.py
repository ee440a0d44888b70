"""Sharded parameters: under ``jax.jit`` over a 2-device CPU mesh, the scope's sums become
all-reduces by themselves and the run equals the unsharded one.

As in the PyTorch distributed tests (tests/hvadam/test_distributed.py), a different summation
order is round-off, which HVAdam amplifies, so the sharded run is held to a tolerance calibrated
on the unsharded run itself: 10x the deviation caused by jittering every gradient by a relative
1e-7. The two devices come from ``--xla_force_host_platform_device_count=2`` (set by this
directory's conftest); when jax was imported before it could act, the test runs itself in a
subprocess that sets it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import hvadam_jax

STEPS = 40
JITTER = 1e-7
TOLERANCE_FACTOR = 10
SIZES = [(6, 8), (8, 4), (4, 1)]


def init_params() -> dict:
    rng = np.random.default_rng(0)
    params = {}
    for i, (fan_in, fan_out) in enumerate(SIZES):
        params[f"w{i}"] = jnp.asarray(rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in))
        params[f"b{i}"] = jnp.asarray(0.1 * rng.standard_normal(fan_out))
    return params


def loss(params, x, y):
    h = x
    for i in range(len(SIZES)):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < len(SIZES) - 1:
            h = jnp.tanh(h)
    return jnp.mean((h - y) ** 2)


def batch(step: int):
    rng = np.random.default_rng(1000 + step)
    x = rng.standard_normal((32, 6))
    return jnp.asarray(x), jnp.asarray(np.sin(x[:, :1] * x[:, 1:2]) + 0.1 * x[:, 2:3])


def train(shardings: dict | None = None, jitter: bool = False):
    """40 steps of a small MLP in float64; with ``shardings``, parameters and state live
    sharded on the mesh. Returns the final parameters (on the host) and the scope's scalars."""
    # A restart threshold far above the default: restarts happen, the decision is exercised.
    transform = hvadam_jax.hvadam(2e-2, restart_threshold=0.95)
    params = init_params()
    if shardings is not None:
        params = jax.device_put(params, shardings)
    state = transform.init(params)

    def step(params, state, x, y, noise):
        grads = jax.grad(loss)(params, x, y)
        grads = jax.tree.map(lambda g, n: g * (1 + JITTER * n), grads, noise)
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # The parameters keep their layout from step to step; the state's is left to XLA.
    step = jax.jit(step, out_shardings=(shardings, None) if shardings else None)

    for t in range(STEPS):
        rng = np.random.default_rng(t)
        noise = {
            k: jnp.asarray(rng.standard_normal(v.shape) if jitter else np.zeros(v.shape))
            for k, v in params.items()
        }
        params, state = step(params, state, *batch(t), noise)
    if shardings is not None:
        for name, leaf in params.items():
            assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), name
            if name.startswith("w"):  # the state of a sharded weight stays sharded
                moment = state.exp_avg[name]
                assert moment.sharding.is_equivalent_to(shardings[name], leaf.ndim), name
    host = np.concatenate([np.asarray(params[k]).ravel() for k in sorted(params)])
    return host, hvadam_jax.diagnostics(state)[0]


def check() -> str:
    devices = jax.devices("cpu")[:2]
    mesh = Mesh(np.array(devices), ("x",))
    # Rows of every weight split over the two devices (so every inner product is a sum of two
    # pieces); the biases replicated, as a mixed scope.
    shardings = {
        name: NamedSharding(mesh, P("x") if name.startswith("w") else P()) for name in init_params()
    }
    reference, reference_scope = train()
    jittered, _ = train(jitter=True)
    floor = np.abs(reference - jittered).max()
    assert floor > 0
    sharded, sharded_scope = train(shardings)
    deviation = np.abs(reference - sharded).max()
    assert deviation <= TOLERANCE_FACTOR * floor, (deviation, floor)
    assert reference_scope["restart_count"] == sharded_scope["restart_count"] > 0
    assert reference_scope["steps_since_restart"] == sharded_scope["steps_since_restart"]
    return f"max deviation {deviation:.3g}, tolerance {TOLERANCE_FACTOR * floor:.3g}"


def test_sharded_run_equals_unsharded_within_calibrated_round_off():
    if len(jax.devices("cpu")) >= 2:
        print(check())
        return
    env = dict(os.environ, JAX_ENABLE_X64="1")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
        " --xla_cpu_use_fusion_emitters=false"
    )
    root = Path(__file__).resolve().parents[2]
    code = "from tests.hvadam_jax.test_sharding import check; print(check())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
