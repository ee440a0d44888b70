"""PyTorch (``hvadam.HVAdam``) and JAX (``hvadam_jax.hvadam``) give the same numbers on shared
inputs: the same gradient sequence, fed to both from the same start."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import hvadam_jax
from hvadam import HVAdam
from tests.hvadam.problems import CoupledValley, as_numpy, make_torch, max_deviation, set_grads
from tests.hvadam.test_reference_agreement import CASES
from tests.hvadam_jax.harness import (
    as_tree,
    from_tree,
    require_expressible,
    stepper,
    transformation_for,
)

SHAPES = [[(3, 4), (5,)], [(2, 3), (4,)]]


def run_side_by_side(configs, steps: int, dtype) -> np.ndarray:
    """Both libraries on the same gradients (computed at PyTorch's parameters): the largest
    parameter difference after each step."""
    problem = CoupledValley(SHAPES, seed=4, noise=1.0)
    if configs[0].maximize:
        problem.q = -problem.q
        problem.directions = [-d for d in problem.directions]
    torch_dtype = torch.float64 if dtype == jnp.float64 else torch.float32
    opt, torch_params = make_torch(problem.initial(), configs, dtype=torch_dtype)
    transform = transformation_for(configs, SHAPES)
    params = as_tree(problem.initial(), dtype)
    state = transform.init(params)
    step = stepper(transform)
    out = []
    for t in range(1, steps + 1):
        grads = problem.grads(as_numpy(torch_params), t)
        set_grads(torch_params, grads)
        opt.step()
        params, state = step(params, state, as_tree(grads, dtype))
        out.append(max_deviation(as_numpy(torch_params), from_tree(params)))
    return np.array(out)


# Both libraries are held to the reference on every case (tests/hvadam and
# test_reference_agreement.py here); side by side, one case per distinct code path suffices.
TORCH_CASES = ["defaults", "tensor_scope", "l2_amsgrad_gamma", "decoupled_fixed"]
TORCH_CASES += ["maximize_lr_hidden_step_size", "variants", "beyond_the_paper"]


@pytest.mark.parametrize("case", [case for case in TORCH_CASES if case in CASES])
def test_float64_same_numbers_as_pytorch(case):
    require_expressible(CASES[case])
    assert run_side_by_side(CASES[case], steps=40, dtype=jnp.float64).max() < 1e-10


def test_float32_same_numbers_as_pytorch():
    assert run_side_by_side(CASES["restarts"], steps=15, dtype=jnp.float32).max() < 1e-5


@pytest.mark.parametrize("options", [{}, {"amsgrad": True}, {"variant": "hvadam1"}])
def test_edge_gradients_same_numbers_as_pytorch(options):
    """Finite gradients up to float32's maximum, and zero and tiny ones: both stay finite,
    saturate alike and count the same steps as non-finite."""
    rng = np.random.default_rng(0)
    largest = float(np.finfo(np.float32).max)
    sequence = [rng.standard_normal(6), rng.uniform(-0.99, 0.99, 6) * largest, np.zeros(6)]
    sequence += [np.full(6, 1e-30), np.full(6, 0.99 * largest)] * 3
    sequence += [rng.uniform(-0.99, 0.99, 6) * largest for _ in range(6)]
    param = torch.zeros(6, requires_grad=True)
    opt = HVAdam([param], lr=1e-3, **options)
    transform = hvadam_jax.hvadam(1e-3, **options)
    point = jnp.zeros(6, jnp.float32)
    state = transform.init(point)
    update = jax.jit(transform.update)
    for grad in sequence:
        param.grad = torch.tensor(grad, dtype=torch.float32)
        opt.step()
        updates, state = update(jnp.asarray(grad, jnp.float32), state, point)
        point = optax.apply_updates(point, updates)
        torch_state = opt.state[param]
        pairs = [(param.detach(), point), (torch_state["exp_avg"], state.exp_avg)]
        pairs += [(torch_state["second_moment"], state.second_moment)]
        pairs += [(torch_state["hidden_vector"], state.hidden_vector)]
        for ours, theirs in pairs:
            ours, theirs = ours.numpy(), np.asarray(theirs)
            assert np.isfinite(ours).all() and np.isfinite(theirs).all()
            np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-30)
    scope = hvadam_jax.diagnostics(state)[0]
    torch_scope = opt.diagnostics()[0]
    assert scope["nonfinite_steps"] == torch_scope.nonfinite_steps > 0
    assert scope["steps_since_restart"] == torch_scope.steps_since_restart
    assert scope["restart_count"] == torch_scope.restart_count
