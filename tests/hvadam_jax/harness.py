"""Run ``hvadam_jax`` on the PyTorch suite's problems (tests/hvadam/problems.py), configured by
the reference's ``GroupConfig`` s, side by side with the float64 reference."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hvadam_jax
from tests.hvadam.problems import CoupledValley, max_deviation
from tests.hvadam.reference import GroupConfig

# Reference options that name the same thing in hvadam_jax.hvadam under another name, and those
# a transformation expresses by its place in an optax tree instead of by an argument.
RENAMED = {"lr": "learning_rate"}
STRUCTURAL = {"betas", "scope"}


def hvadam_options(config: GroupConfig) -> dict:
    """``hvadam_jax.hvadam`` keyword arguments with the meaning of a reference group config.

    A reference option that hvadam_jax does not take, set away from its default, raises
    ``NotImplementedError`` (the tests then skip that case, naming the option)."""
    supported = set(inspect.signature(hvadam_jax.hvadam).parameters)
    for name, value in config.__dict__.items():
        default = GroupConfig.__dataclass_fields__[name].default
        known = RENAMED.get(name, name) in supported or name in STRUCTURAL
        if not known and value != default:
            raise NotImplementedError(f"option {name!r} has no hvadam_jax counterpart")
    extra = {
        name: getattr(config, name)
        for name in ("cosine_beta", "bias_corrected_step", "second_moment_cap")
        if hasattr(config, name)
    }
    return extra | dict(
        learning_rate=config.lr,
        b1=config.betas[0],
        b2=config.betas[1],
        eps=config.eps,
        gamma=config.gamma,
        weight_decay=config.weight_decay,
        decoupled_weight_decay=config.decoupled_weight_decay,
        fixed_decay=config.fixed_decay,
        amsgrad=config.amsgrad,
        maximize=config.maximize,
        lr_hidden=config.lr_hidden,
        restart_threshold=config.restart_threshold,
        hidden_step_size=config.hidden_step_size,
        variant=config.variant,
    )


def as_tree(groups: list[list[np.ndarray]], dtype=jnp.float64) -> dict:
    """Param groups as a pytree ``{"g0": [leaf, ...], "g1": [...]}``."""
    return {f"g{gi}": [jnp.asarray(p, dtype) for p in group] for gi, group in enumerate(groups)}


def from_tree(tree: dict) -> list[list[np.ndarray]]:
    return [[np.asarray(leaf, np.float64) for leaf in tree[f"g{gi}"]] for gi in range(len(tree))]


def transformation_for(configs: list[GroupConfig], shapes) -> optax.GradientTransformation:
    """One ``hvadam`` per scope of the reference: a param group (``scope="group"``), a tensor
    (``"tensor"``), or all ``"global"`` groups together (which must then share every option:
    one transformation has one set of hyperparameters)."""
    transforms, labels = {}, {}
    global_options = None
    for gi, (config, group_shapes) in enumerate(zip(configs, shapes)):
        options = hvadam_options(config)
        if config.scope == "group":
            transforms[f"g{gi}"] = hvadam_jax.hvadam(**options)
            labels[f"g{gi}"] = [f"g{gi}"] * len(group_shapes)
        elif config.scope == "tensor":
            labels[f"g{gi}"] = [f"g{gi}t{ti}" for ti in range(len(group_shapes))]
            for ti in range(len(group_shapes)):
                transforms[f"g{gi}t{ti}"] = hvadam_jax.hvadam(**options)
        else:
            if global_options not in (None, options):
                raise NotImplementedError("a global scope over groups with different options")
            global_options = options
            transforms["global"] = hvadam_jax.hvadam(**options)
            labels[f"g{gi}"] = ["global"] * len(group_shapes)
    return optax.multi_transform(transforms, labels)


def require_expressible(configs: list[GroupConfig]) -> None:
    """Skip the calling test when the configs have no hvadam_jax counterpart, saying why."""
    import pytest

    try:
        transformation_for(configs, [[(1,)] for _ in configs])
    except NotImplementedError as error:
        pytest.skip(str(error))


def stepper(transform: optax.GradientTransformation):
    """A jitted ``(params, state, grads) -> (params, state)``."""

    @jax.jit
    def step(params, state, grads):
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def run_jax(problem: CoupledValley, configs, steps: int, dtype=jnp.float64, perturb: float = 0.0):
    """``steps`` steps of hvadam_jax on ``problem``; the parameters after every step."""
    transform = transformation_for(configs, problem.shapes)
    params = as_tree(problem.initial(), dtype)
    params = jax.tree.map(lambda p: p + perturb, params)
    state = transform.init(params)
    step = stepper(transform)
    trajectory = []
    for t in range(1, steps + 1):
        grads = as_tree(problem.grads(from_tree(params), t), dtype)
        params, state = step(params, state, grads)
        trajectory.append(from_tree(params))
    return trajectory, state


def deviations(a, b) -> np.ndarray:
    return np.array([max_deviation(x, y) for x, y in zip(a, b)])
