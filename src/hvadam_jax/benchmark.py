"""Step time of ``hvadam_jax.hvadam`` against ``optax.adam`` under ``jax.jit``, side by side.

``python -m hvadam_jax.benchmark [--params 10000000] [--leaves 20] [--rounds 21]``

Each optimizer's step (``update`` + ``apply_updates``) is one jitted function whose parameters
and state are donated, as in a training loop; the gradient is a fixed input. The optimizers
alternate round by round (so a slow spell of a shared machine hits both alike), each round times
a few steps of each, and the report gives the median time per step and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import hvadam_jax


def _tree(total: int, leaves: int, key: jax.Array) -> list[jax.Array]:
    sizes = [total // leaves] * leaves
    sizes[-1] += total - sum(sizes)
    keys = jax.random.split(key, leaves)
    return [jax.random.normal(k, (n,), jnp.float32) for k, n in zip(keys, sizes)]


def _runner(transform: optax.GradientTransformation, params, grads):
    def step(params, state, grads):
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    carry = [jax.tree.map(jnp.copy, params), transform.init(params)]

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            carry[0], carry[1] = step(carry[0], carry[1], grads)
        jax.block_until_ready(carry)
        return (time.perf_counter() - start) / steps

    run(2)  # compile and warm up
    return run


def measure(total: int, leaves: int, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per step of each optimizer, interleaved over ``rounds`` rounds."""
    params = _tree(total, leaves, jax.random.PRNGKey(0))
    grads = _tree(total, leaves, jax.random.PRNGKey(1))
    runners = {
        "optax.adam": _runner(optax.adam(1e-3), params, grads),
        "hvadam_jax.hvadam": _runner(hvadam_jax.hvadam(1e-3), params, grads),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(run(steps))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--leaves", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=5, help="steps per optimizer and round")
    args = parser.parse_args(argv)
    medians = measure(args.params, args.leaves, args.rounds, args.steps)
    for name, seconds in medians.items():
        print(f"{name:20s} {seconds * 1e3:8.2f} ms/step")
    ratio = medians["hvadam_jax.hvadam"] / medians["optax.adam"]
    print(f"ratio hvadam_jax.hvadam / optax.adam: {ratio:.2f}")
    print(f"({args.params} float32 parameters in {args.leaves} leaves, {jax.devices()[0]})")


if __name__ == "__main__":
    main()
