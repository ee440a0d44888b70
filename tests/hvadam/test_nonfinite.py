"""Bad numbers never poison a run.

- A finite gradient anywhere in the dtype's range, up to its maximum, leaves parameters and
  state finite, on every path and storage dtype (the effective gradient and the noise term
  saturate at a quarter of the dtype's maximum).
- A tensor whose gradient is NaN or inf keeps non-finite moments (as Adam's do), but its share
  never enters its scope's decision: the healthy tensors of the scope keep their hidden steps and
  restarts, and the scope counts those steps in ``nonfinite_steps``.
- A hidden step size that is not finite changes nothing in the scope, and is counted.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hvadam import HVAdam
from tests.hvadam.problems import TWO_GROUPS, CoupledValley, run_both, two_group_valley
from tests.hvadam.reference import GroupConfig

PATHS = [
    pytest.param({"foreach": False}, id="single"),
    pytest.param({"foreach": True}, id="foreach"),
    pytest.param({"fused": True}, id="fused-eager"),
]


@pytest.fixture(autouse=True)
def _fused_uncompiled(eager_fused):
    """Compiled kernels are held to the reference in test_fused.py, a huge gradient included."""


def assert_finite(opt: HVAdam, params) -> None:
    for i, p in enumerate(params):
        assert torch.isfinite(p).all(), f"parameter {i}"
        for key, value in opt.state[p].items():
            if torch.is_tensor(value) and value.is_floating_point():
                assert torch.isfinite(value).all(), f"{key} of parameter {i}"


HUGE = [
    pytest.param(torch.float32, None, 1e20, id="f32-1e20"),
    pytest.param(torch.float32, None, 3e38, id="f32-3e38"),
    pytest.param(torch.float64, None, 1e200, id="f64-1e200"),
    pytest.param(torch.float64, None, 1.7e308, id="f64-1.7e308"),
    pytest.param(torch.bfloat16, None, 1e20, id="bf16-params-1e20"),
    pytest.param(torch.bfloat16, None, 3e38, id="bf16-params-3e38"),
    pytest.param(torch.float32, torch.bfloat16, 1e20, id="bf16-state-1e20"),
    pytest.param(torch.float32, torch.bfloat16, 3e38, id="bf16-state-3e38"),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype,state_dtype,huge", HUGE)
@pytest.mark.parametrize("options", [{}, {"amsgrad": True, "gamma": 0.1}, {"variant": "hvadam0"}])
def test_huge_finite_gradient_keeps_everything_finite(path, dtype, state_dtype, huge, options):
    params = [torch.zeros(2, dtype=dtype, requires_grad=True), torch.zeros(3, dtype=dtype)]
    params[1].requires_grad_()
    opt = HVAdam(params, lr=1e-2, state_dtype=state_dtype, **options, **path)
    grads = [[huge, 1.0], [-huge, huge, 0.5]]
    for step in range(6):
        for p, g in zip(params, grads):
            # Signs flip so the moments and the hidden vector see both directions.
            p.grad = torch.tensor(g, dtype=dtype) * (-1) ** step
        opt.step()
        assert_finite(opt, params)
    # The scope's sums are squares of m̂ and m̂ - v: where those overflow the compute dtype, the
    # share is left out of the decision like a non-finite one, and counted; below that, nothing is.
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if math.log10(huge) * 2 + 2 < math.log10(torch.finfo(compute).max):
        assert all(d.nonfinite_steps == 0 for d in opt.diagnostics())


class PoisonedValley(CoupledValley):
    """The coupled valley, with one tensor's gradient non-finite at one step.

    From that step on, the other tensors' gradients read the poisoned tensor as zero, so they
    stay finite whatever becomes of it, and the question is only whether the optimizer lets
    the bad tensor spoil its scope's decision.
    """

    def __init__(self, *args, poison: tuple[int, int, int, float], **kwargs):
        super().__init__(*args, **kwargs)
        self.poison = poison

    def grads(self, params, t):
        step, gi, ti, value = self.poison
        if t >= step:
            params = [[p.copy() for p in group] for group in params]
            params[gi][ti][...] = 0.0
        out = super().grads(params, t)
        if t == step:
            out[gi][ti] = np.full(self.shapes[gi][ti], value)
        return out


CONFIGS = [
    GroupConfig(lr=1e-2, betas=(0.9, 0.9), restart_threshold=0.8),
    GroupConfig(lr=3e-2, betas=(0.8, 0.9), scope="tensor", restart_threshold=0.8),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_is_left_out_of_its_scope(path, bad):
    # Tensor (0, 1) turns bad at step 5 and stays bad (its moments stay non-finite); group 0's
    # other tensors must keep their hidden steps and restarts, exactly as the reference says.
    problem = PoisonedValley(TWO_GROUPS, seed=3, noise=1.0, poison=(5, 0, 1, bad))
    deviations, ref, opt = run_both(problem, CONFIGS, steps=40, **path)
    healthy = [p for i, p in enumerate(opt.param_groups[0]["params"]) if i != 1]
    healthy += opt.param_groups[1]["params"]
    ref_healthy = [p for i, p in enumerate(ref.params[0]) if i != 1] + ref.params[1]
    deviation = max(
        float(np.max(np.abs(p.detach().numpy() - r))) for p, r in zip(healthy, ref_healthy)
    )
    assert deviation < 1e-10, f"healthy tensors deviate by {deviation:.3e}"
    # NaN stays in the tensor's moments, as in Adam; inf saturates, and the squares of a
    # momentum that large overflow the scope's sums: left out all the same.
    poisoned = opt.state[opt.param_groups[0]["params"][1]]["exp_avg"]
    assert torch.isnan(poisoned).all() if math.isnan(bad) else torch.isfinite(poisoned).all()

    group_scope = ref.scopes[("group", 0)]
    diag = opt.diagnostics()
    assert diag[0].nonfinite_steps == group_scope.nonfinite_steps == 36  # steps 5..40
    assert diag[0].restart_count == group_scope.restarts > 0
    # The scope kept deciding after the poison: hidden steps were taken late in the run.
    assert group_scope.last_b > 0 or group_scope.t2 <= 0
    assert diag[0].hidden_step_size == pytest.approx(group_scope.last_b, rel=1e-9, abs=1e-300)
    assert all(d.nonfinite_steps == 0 for d in diag[1:])
    assert np.isfinite(deviations[:4]).all()


@pytest.mark.parametrize("path", PATHS)
def test_a_tensor_left_out_of_the_decision_takes_no_hidden_update(path):
    # A momentum of ~1e25 is finite in float32 but its squares overflow the scope's sums, so
    # the tensor is left out. The decision's k then comes from the other tensor alone and says
    # nothing about this one's d: following it moved v by k·d, which could leave float32's range
    # (a fresh clone's property test found that). Left out, it must move exactly as it does in a
    # scope of its own, where its row leaves nothing to decide.
    def run(params, opt, steps=30):
        generator = torch.Generator().manual_seed(0)
        for _ in range(steps):
            for p in params:
                scale = 1e25 if p.numel() == 3 else 1.0
                p.grad = torch.randn(p.shape, generator=generator) * scale
            opt.step()
        return opt

    big, healthy = torch.zeros(3, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = run([big, healthy], HVAdam([big, healthy], lr=1e-2, variant="hvadam2", **path))
    alone = torch.zeros(3, requires_grad=True)
    alone_opt = HVAdam([alone], lr=1e-2, variant="hvadam2", **path)
    run([alone, torch.zeros(4)], alone_opt)
    assert_finite(opt, [big, healthy])
    assert torch.equal(big, alone)
    assert torch.equal(opt.state[big]["hidden_vector"], alone_opt.state[alone]["hidden_vector"])
    assert opt.diagnostics()[0].nonfinite_steps == 30
    # The healthy tensor kept its hidden steps.
    assert opt.diagnostics()[0].hidden_step_size > 0


@pytest.mark.parametrize("path", PATHS)
def test_non_finite_hidden_step_size_changes_nothing_and_is_counted(path):
    # A user's rule that is infinite beyond δ = 0.6: those steps leave the scope untouched.
    def rule(delta):
        return 10.0 ** (2 * delta - 2) / (delta < 0.6)

    configs = [
        GroupConfig(lr=1e-2, betas=(0.9, 0.9), hidden_step_size=rule),
        GroupConfig(lr=3e-2),
    ]
    deviations, ref, opt = run_both(two_group_valley(), configs, steps=40, **path)
    assert deviations.max() < 1e-10, f"max deviation {deviations.max():.3e}"
    counted = ref.scopes[("group", 0)].nonfinite_steps
    assert 0 < counted < 35, counted  # both branches of the rule were taken
    assert opt.diagnostics()[0].nonfinite_steps == counted
    params = [p for g in opt.param_groups for p in g["params"]]
    assert_finite(opt, params)
