"""Batched runs are exactly the runs one would make one by one."""

import pytest
import torch

from hvadam import HVAdam
from hvadam_bench.optimizers import SPECS
from hvadam_bench.workloads.batched import run_batch
from hvadam_bench.workloads.landscapes import landscape


@pytest.mark.parametrize("name", ["hvadam", "hvadam1", "hvadam-bf16"])
def test_vmapped_hvadam_equals_one_optimizer_per_run(name):
    spec = SPECS[name]
    land = landscape("bent")
    starts = land.starts(2, seed=3)
    configs = [(0.05, 0.99), (0.2, 0.999)]
    batch = run_batch(spec, land, starts, configs, steps=40, record_trajectory=True)
    for c, (lr, beta2) in enumerate(configs):
        for s in range(len(starts)):
            x = starts[s].clone().requires_grad_()
            opt = HVAdam(
                [x], lr=lr, betas=(0.9, beta2), variant=spec.hvadam_variant,
                state_dtype=spec.state_dtype,
            )  # fmt: skip
            for _ in range(40):
                opt.zero_grad()
                land.value(x[None]).sum().backward()
                opt.step()
            assert torch.equal(batch.trajectory[-1, c, s], x.detach())


@pytest.mark.parametrize("name", ["adam", "sgd", "lookahead", "adabound"])
def test_stacked_baseline_runs_equal_separate_runs(name):
    land = landscape("valley-30-16")
    starts = land.starts(3, seed=4)
    spec = SPECS[name]
    second = 0.9 if spec.second == "momentum" else 0.99
    batch = run_batch(spec, land, starts, [(0.03, second)], steps=25, record_trajectory=True)
    for s in range(len(starts)):
        x = starts[s : s + 1].clone().requires_grad_()
        opt = spec.build([{"params": [x], "lr": 0.03}], second)
        for _ in range(25):
            opt.zero_grad()
            land.value(x).sum().backward()
            opt.step()
        torch.testing.assert_close(
            batch.trajectory[-1, 0, s], x.detach()[0], rtol=1e-12, atol=1e-12
        )


def test_hidden_diagnostics_are_recorded_for_hvadam():
    land = landscape("table1")
    batch = run_batch(
        SPECS["hvadam"], land, land.starts(2, 0), [(0.1, 0.99)], 30, record_hidden=True
    )
    assert batch.hidden["delta"].shape == (30, 1, 2)
    assert batch.hidden["vector"].shape == (30, 1, 2, 2)
    assert (batch.hidden["delta"][1:] != 0).any()
