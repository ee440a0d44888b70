"""Train a small pure-JAX network with hvadam_jax.hvadam and with optax.adam, and print both.

Needs jax and optax only (``pip install ".[jax]"``). Each optimizer gets its best learning rate
from the same grid, chosen on a validation split; the test loss is reported once, at the end.
Run: python examples/jax_quickstart.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import hvadam_jax

GRID = (3e-3, 1e-2, 3e-2, 1e-1)
STEPS = 1000
OPTIMIZERS = {
    # Clipping in front and a cosine schedule: hvadam is an ordinary optax transformation.
    "hvadam": lambda lr: optax.chain(
        optax.clip_by_global_norm(10.0), hvadam_jax.hvadam(optax.cosine_decay_schedule(lr, STEPS))
    ),
    "adam": lambda lr: optax.chain(
        optax.clip_by_global_norm(10.0), optax.adam(optax.cosine_decay_schedule(lr, STEPS))
    ),
}


def make_data():
    kx, kw, kn = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(kx, (3072, 8))
    y = jnp.sin(x @ jax.random.normal(kw, (8, 1))) + 0.05 * jax.random.normal(kn, (3072, 1))
    return (x[:2048], y[:2048]), (x[2048:2560], y[2048:2560]), (x[2560:], y[2560:])


def init_model(key: jax.Array) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {"w": jax.random.normal(k1, (8, 64)) / jnp.sqrt(8.0), "b": jnp.zeros(64)},
        "out": {"w": jax.random.normal(k2, (64, 1)) / 8.0, "b": jnp.zeros(1)},
    }


def predict(params: dict, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((predict(params, x) - y) ** 2)


def train(name: str, lr: float, data):
    transform = OPTIMIZERS[name](lr)
    params = init_model(jax.random.PRNGKey(0))
    state = transform.init(params)
    x, y = data

    def step(params, state, key):
        idx = jax.random.randint(key, (64,), 0, len(x))
        grads = jax.grad(loss)(params, x[idx], y[idx])
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # Parameters and optimizer state are donated: updated in place, as in a real training loop.
    step = jax.jit(step, donate_argnums=(0, 1))
    for key in jax.random.split(jax.random.PRNGKey(2), STEPS):
        params, state = step(params, state, key)
    return params, state


def main() -> None:
    train_data, valid_data, test_data = make_data()
    print(f"{'optimizer':<10}" + "".join(f"{'lr=' + str(lr):>12}" for lr in GRID))
    for name in OPTIMIZERS:
        runs = {lr: train(name, lr, train_data) for lr in GRID}
        valid = {lr: float(loss(params, *valid_data)) for lr, (params, _) in runs.items()}
        print(f"{name:<10}" + "".join(f"{valid[lr]:>12.5f}" for lr in GRID) + "   (valid)")
        best = min(valid, key=valid.get)
        params, state = runs[best]
        print(f"{'':<10}best lr {best}: test loss {float(loss(params, *test_data)):.5f}")
        if name == "hvadam":  # the hidden vector's scalars, one dict per scope
            print(f"{'':<10}{hvadam_jax.diagnostics(state)[0]}")


if __name__ == "__main__":
    main()
