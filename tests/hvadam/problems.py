"""Deterministic test problems whose gradients the library and the reference both consume."""

from __future__ import annotations

import numpy as np
import torch

from hvadam import HVAdam
from tests.hvadam.reference import GroupConfig, ReferenceHVAdam


class CoupledValley:
    """f(x) = ½·xᵀQx + c(t)ᵀx + noise, over the concatenation x of every tensor of every group.

    Q is ill-conditioned and rotated (a valley that is not axis-aligned, coupling all tensors);
    c(t) turns by 120° every ``turn_every`` steps and a seeded per-step noise is added, so the
    hidden vector both settles and gets restarted. Tensors listed in ``missing`` get no
    gradient on every ``missing_every``-th step.
    """

    def __init__(
        self,
        shapes: list[list[tuple[int, ...]]],
        seed: int = 0,
        turn_every: int = 15,
        noise: float = 0.3,
        missing: tuple[tuple[int, int], ...] = (),
        missing_every: int = 3,
    ):
        self.shapes = shapes
        rng = np.random.default_rng(seed)
        sizes = [int(np.prod(s)) for group in shapes for s in group]
        n = sum(sizes)
        basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
        self.q = basis @ np.diag(np.logspace(-2, 1, n)) @ basis.T
        self.directions = [rng.standard_normal(n) for _ in range(3)]
        self.x0 = rng.standard_normal(n)
        self.seed = seed
        self.turn_every = turn_every
        self.noise = noise
        self.missing = set(missing)
        self.missing_every = missing_every

    def initial(self) -> list[list[np.ndarray]]:
        return self.split(self.x0.copy())

    def split(self, x: np.ndarray) -> list[list[np.ndarray]]:
        out, offset = [], 0
        for group in self.shapes:
            tensors = []
            for shape in group:
                size = int(np.prod(shape))
                tensors.append(x[offset : offset + size].reshape(shape).copy())
                offset += size
            out.append(tensors)
        return out

    def grads(self, params: list[list[np.ndarray]], t: int) -> list[list[np.ndarray | None]]:
        x = np.concatenate([p.ravel() for group in params for p in group])
        rng = np.random.default_rng((self.seed, t))
        g = self.q @ x + self.directions[(t // self.turn_every) % 3]
        g = g + self.noise * rng.standard_normal(g.shape)
        out = self.split(g)
        if t % self.missing_every == 0:
            for gi, ti in self.missing:
                out[gi][ti] = None
        return out


# Two param groups of tensors of several ranks, the layout most path and reference tests use;
# tensors (0, 1) and (1, 0) get no gradient on every third step, as unused parameters.
TWO_GROUPS = [[(3, 4), (5,), (2, 1, 3)], [(2, 3), (4,)]]
SOMETIMES_MISSING = ((0, 1), (1, 0))


def two_group_valley() -> CoupledValley:
    """The coupled valley over :data:`TWO_GROUPS`, noisy, with missing gradients."""
    return CoupledValley(TWO_GROUPS, seed=7, noise=1.0, missing=SOMETIMES_MISSING)


# Two groups with different options each, covering every option the kernels branch on: the
# fused kernels (test_fused.py) and the CUDA paths (test_cuda.py) are held to the reference on
# them. Restart thresholds above the default make restarts happen within 40 steps.
KERNEL_CASES = {
    "defaults_restarts": [
        GroupConfig(lr=1e-2, betas=(0.9, 0.9), restart_threshold=0.8),
        GroupConfig(lr=3e-2, betas=(0.8, 0.9), restart_threshold=0.8),
    ],
    "l2_amsgrad_gamma_cap": [
        GroupConfig(lr=1e-2, weight_decay=0.1, amsgrad=True, gamma=0.5),
        GroupConfig(lr=3e-2, eps=1e-8, amsgrad=True, second_moment_cap=1.0),
    ],
    "decoupled_global_cosine_rate": [
        GroupConfig(
            lr=1e-2,
            weight_decay=0.1,
            decoupled_weight_decay=True,
            scope="global",
            cosine_beta=0.8,
            bias_corrected_step=True,
            hidden_step_size=(4.0, -3.0),
        ),
        GroupConfig(
            lr=3e-2,
            scope="global",
            lr_hidden=0.1,
            cosine_beta=0.8,
            bias_corrected_step=True,
            hidden_step_size=(4.0, -3.0),
        ),
    ],
    "ablations": [GroupConfig(lr=1e-2, variant="hvadam1"), GroupConfig(lr=3e-2, variant="hvadam0")],
}


def make_torch(
    initial: list[list[np.ndarray]],
    configs: list[GroupConfig],
    dtype: torch.dtype = torch.float64,
    **overrides,
) -> tuple[HVAdam, list[list[torch.Tensor]]]:
    params = [
        [torch.tensor(p, dtype=dtype, requires_grad=True) for p in group] for group in initial
    ]
    groups = [{"params": ps, **cfg.torch_kwargs(), **overrides} for ps, cfg in zip(params, configs)]
    return HVAdam(groups), params


def set_grads(params: list[list[torch.Tensor]], grads: list[list[np.ndarray | None]]) -> None:
    for group, group_grads in zip(params, grads):
        for p, g in zip(group, group_grads):
            p.grad = None if g is None else torch.tensor(g, dtype=p.dtype)


def as_numpy(params: list[list[torch.Tensor]]) -> list[list[np.ndarray]]:
    return [[p.detach().double().numpy().copy() for p in group] for group in params]


def max_deviation(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> float:
    return max(
        float(np.max(np.abs(x - y), initial=0.0)) for ga, gb in zip(a, b) for x, y in zip(ga, gb)
    )


def run_both(problem: CoupledValley, configs, steps: int, dtype=torch.float64, **overrides):
    """Run the reference and the library side by side; return per-step deviations and both."""
    ref = ReferenceHVAdam(problem.initial(), configs)
    opt, params = make_torch(problem.initial(), configs, dtype=dtype, **overrides)
    deviations = []
    for t in range(1, steps + 1):
        ref.step(problem.grads(ref.params, t))
        set_grads(params, problem.grads(as_numpy(params), t))
        opt.step()
        deviations.append(max_deviation(ref.params, as_numpy(params)))
    return np.array(deviations), ref, opt


def run_reference(problem: CoupledValley, configs, steps: int, perturb: float = 0.0):
    ref = ReferenceHVAdam(problem.initial(), configs)
    for group in ref.params:
        for p in group:
            p += perturb
    trajectory = []
    for t in range(1, steps + 1):
        ref.step(problem.grads(ref.params, t))
        trajectory.append([[p.copy() for p in group] for group in ref.params])
    return trajectory, ref


def snapshot(opt, params) -> dict:
    """A deep copy of everything a step may change: parameters, state and param groups."""
    return {
        "params": [p.detach().clone() for p in params],
        "state": {
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
            for i, p in enumerate(params)
            if p in opt.state
        },
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
    }


def assert_unchanged(before: dict, after: dict) -> None:
    """Two :func:`snapshot` s are identical, bit for bit (NaN equal to NaN)."""
    assert before["groups"] == after["groups"]
    assert len(before["params"]) == len(after["params"])
    for a, b in zip(before["params"], after["params"]):
        assert a.device == b.device and (a.device.type == "meta" or torch.equal(a, b))
    assert before["state"].keys() == after["state"].keys()
    for i, state in before["state"].items():
        assert state.keys() == after["state"][i].keys(), f"param {i}: state keys changed"
        for key, value in state.items():
            other = after["state"][i][key]
            if torch.is_tensor(value):
                same = value.shape == other.shape and value.device == other.device
                if same and value.device.type != "meta":
                    same = torch.equal(value.nan_to_num(), other.nan_to_num()) and torch.equal(
                        value.isnan(), other.isnan()
                    )
                assert same, f"param {i}: state {key!r} changed"
            else:
                assert value == other, f"param {i}: state {key!r} changed"
