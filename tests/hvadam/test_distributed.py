"""Scopes split across processes: DDP, FSDP2 (DTensor), ZeRO and DTensor layouts, on 2 CPU
processes (gloo) spawned by each test, against a single-process run on the full batch.

HVAdam amplifies round-off (docs/algorithm.md §8.8), and a different summation order across ranks is
round-off. So every comparison with the single-process run is held to a tolerance calibrated
on the run itself: ``TOLERANCE_FACTOR`` times the deviation caused by jittering every gradient
by a relative 1e-7. Ranks must agree with each other exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import hvadam.distributed
import hvadam.functional as F
from hvadam import HVAdam, ScopeState
from tests.hvadam.problems import CoupledValley, as_numpy, make_torch, set_grads
from tests.hvadam.reference import GroupConfig

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

WORLD = 2
STEPS = 40
JITTER = 1e-7
TOLERANCE_FACTOR = 10
# A restart threshold well above the default 0.1: restarts are frequent, the decision is exercised.
OPTIONS = dict(lr=2e-2, restart_threshold=0.7)
LAYOUT_OPTIONS = dict(lr=1e-2)
# The kernel paths, by the options that select them.
PATHS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


# ------------------------------------------------------------------------------- harness


def spawn(tmp_path: Path, scenario: Callable, *args) -> list[dict]:
    """Run ``scenario(rank, tmp_path, *args)`` on 2 gloo processes; return what each returned."""
    torch.multiprocessing.spawn(_entry, args=(tmp_path, scenario, args), nprocs=WORLD)
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _entry(rank: int, tmp_path: Path, scenario: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(str(tmp_path / "store"), WORLD),
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),  # a mismatched collective fails, not hangs
    )
    try:
        torch.save(scenario(rank, tmp_path, *args), tmp_path / f"rank{rank}.pt")
        # Tear down only once both ranks are done: a rank that destroys its groups while its
        # peer still talks to it can abort in gloo's worker threads (seen once in ~20 runs of
        # the DCP scenario as "terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def diagnostics(opt) -> list[dict]:
    """Every scope's diagnostics, without its name (scopes may be named differently by rank)."""
    return [
        {k: v for k, v in dataclasses.asdict(d).items() if k != "scope"} for d in opt.diagnostics()
    ]


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def flat(params) -> torch.Tensor:
    return torch.cat([full(p).detach().reshape(-1) for p in params])


def jitter(params, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        if p.grad is not None:
            noise = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype)
            p.grad.mul_(1 + JITTER * noise)


def max_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ------------------------------------------------------------------- the network problem

LAYERS = ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")


def make_model() -> nn.Module:
    """Linear(6,5) and Linear(3,1) shard unevenly over 2 ranks (3/2 rows; 1/0: an empty
    shard); Linear(5,3) stays a plain tensor in the FSDP2 runs (a mixed scope)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)
    ).double()


def batch(step: int, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s batch, or the half of it that ``rank`` trains on."""
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(32, 6, generator=generator, dtype=torch.float64)
    y = (x[:, :1] * x[:, 1:2]).sin() + 0.1 * x[:, 2:3]
    if rank is None:
        return x, y
    half = len(x) // WORLD
    return x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]


def zero_groups(model: nn.Module) -> list[dict]:
    """Two scopes; ZeRO's greedy partition leaves rank 0 no parameter of the second."""
    named = dict(model.named_parameters())
    first = [named[name] for name in LAYERS if name != "4.weight"]
    return [{"params": first}, {"params": [named["4.weight"]]}]


def masked(step: int, name: str) -> bool:
    """Gradients dropped in the ZeRO runs: every 3rd step the first layer has none (rank 0 then
    has no gradient in its scope), every 5th step the second scope has none on any rank."""
    return (name.startswith("0.") and step % 3 == 0) or (name == "4.weight" and step % 5 == 0)


def drop_masked_grads(model: nn.Module, step: int) -> None:
    for name, p in model.named_parameters():
        if masked(step, name):
            p.grad = None


POISONED_ROWS = slice(3, 5)  # rank 1's shard of 0.weight


def train_single(
    steps: int,
    groups: str = "one",
    perturb: bool = False,
    path: str = "single",
    poison: bool = False,
):
    """The single-process run on the full batch: final parameters and diagnostics. With
    ``poison``, the last step's gradient of 0.weight is NaN in the rows rank 1 holds."""
    model = make_model()
    params = zero_groups(model) if groups == "zero" else model.parameters()
    opt = HVAdam(params, **PATHS[path], **OPTIONS)
    for step in range(steps):
        x, y = batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if groups == "zero":
            drop_masked_grads(model, step)
        if perturb:
            jitter(model.parameters(), seed=step)
        if poison and step == steps - 1:
            model[0].weight.grad[POISONED_ROWS] = float("nan")
        opt.step()
    return flat(model.parameters()), diagnostics(opt)


def tolerance_and_reference(groups: str = "one", path: str = "single"):
    reference, reference_diagnostics = train_single(STEPS, groups, path=path)
    jittered, _ = train_single(STEPS, groups, perturb=True, path=path)
    floor = max_deviation(reference, jittered)
    assert floor > 0
    return TOLERANCE_FACTOR * floor, reference, reference_diagnostics


def report(name: str, deviation: float, tolerance: float) -> None:
    print(f"{name}: max deviation {deviation:.3g}, tolerance {tolerance:.3g}")


# --------------------------------------------------------------------------------- DDP


def ddp_scenario(rank: int, tmp_path: Path) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    model = make_model()
    ddp = DistributedDataParallel(model)
    opt = HVAdam(model.parameters(), **OPTIONS)
    for step in range(STEPS):
        x, y = batch(step, rank)
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    return {"params": flat(model.parameters()), "diagnostics": diagnostics(opt)}


def test_ddp_needs_nothing_extra(tmp_path):
    """Replicas are identical and keep a local reduction: DDP equals the single process."""
    tolerance, reference, reference_diagnostics = tolerance_and_reference()
    results = spawn(tmp_path, ddp_scenario)
    assert torch.equal(results[0]["params"], results[1]["params"])
    assert results[0]["diagnostics"] == results[1]["diagnostics"]
    deviation = max_deviation(results[0]["params"], reference)
    report("DDP", deviation, tolerance)
    assert deviation <= tolerance
    assert (
        results[0]["diagnostics"][0]["restart_count"] == reference_diagnostics[0]["restart_count"]
    )  # restart count


# ------------------------------------------------------------------------------- FSDP2


def shard_model(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model[4], mesh=mesh)
    return model


def average_plain_grads(model: nn.Module) -> None:
    """Data-parallel averaging of the parameters FSDP2 does not manage (the plain Linear)."""
    for p in model[2].parameters():
        dist.all_reduce(p.grad)
        p.grad.div_(WORLD)


def train_fsdp(
    rank: int, steps: range, opt=None, model=None, path: str = "single", poison: bool = False
) -> tuple[nn.Module, HVAdam]:
    model = model if model is not None else shard_model(make_model())
    opt = opt if opt is not None else HVAdam(model.parameters(), **PATHS[path], **OPTIONS)
    for step in steps:
        x, y = batch(step, rank)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        average_plain_grads(model)
        if poison and rank == 1 and step == steps[-1]:
            model[0].weight.grad.to_local().fill_(float("nan"))  # rows 3:5 of the whole
        opt.step()
    return model, opt


def fsdp_scenario(
    rank: int, tmp_path: Path, path: str, local_only: bool, poison: bool = False
) -> dict:
    if local_only:  # the negative control: every share stays on its rank
        hvadam.distributed.reduction_key = lambda tensor, scope_group=None: ()
    model, opt = train_fsdp(rank, range(STEPS), path=path, poison=poison)
    named = dict(model.named_parameters())
    return {
        "params": flat(model.parameters()),
        "plain": flat(model[2].parameters()),
        "local_shapes": [tuple(named[name].to_local().shape) for name in ("0.weight", "4.bias")],
        "diagnostics": diagnostics(opt),
    }


@pytest.mark.parametrize("path", list(PATHS))
def test_fsdp2_equals_single_process(tmp_path, path):
    """Uneven and empty shards, and plain tensors in the same scope, reduce to the logical
    scope: FSDP2 equals the single process, and every rank takes the same decisions."""
    tolerance, reference, reference_diagnostics = tolerance_and_reference(path=path)
    results = spawn(tmp_path, fsdp_scenario, path, False)
    assert [r["local_shapes"] for r in results] == [[(3, 6), (1,)], [(2, 6), (0,)]]
    assert torch.equal(results[0]["plain"], results[1]["plain"])
    assert results[0]["diagnostics"] == results[1]["diagnostics"]
    deviation = max_deviation(results[0]["params"], reference)
    report(f"FSDP2 ({path})", deviation, tolerance)
    assert deviation <= tolerance
    # The restart decision, frequent here, is the same on every rank and as in one process.
    restarts = results[0]["diagnostics"][0]["restart_count"]
    assert restarts >= 2
    assert restarts == reference_diagnostics[0]["restart_count"]


def test_fsdp2_nan_in_one_shard_is_left_out_on_every_rank(tmp_path):
    """A NaN gradient in rank 1's shard of a tensor: both ranks leave the whole tensor out of
    the scope's decision, count it, and decide as one process does with the same NaN rows."""
    tolerance, _, _ = tolerance_and_reference()
    reference, reference_diagnostics = train_single(STEPS, poison=True)
    results = spawn(tmp_path, fsdp_scenario, "single", False, True)
    assert results[0]["diagnostics"] == results[1]["diagnostics"]
    decided = results[0]["diagnostics"][0]
    assert decided["nonfinite_steps"] == reference_diagnostics[0]["nonfinite_steps"] == 1
    assert decided["restart_count"] == reference_diagnostics[0]["restart_count"]
    assert decided["hidden_step_size"] == pytest.approx(
        reference_diagnostics[0]["hidden_step_size"], rel=1e-6
    )
    healthy = torch.isfinite(reference)
    assert not healthy.all() and torch.equal(healthy, torch.isfinite(results[0]["params"]))
    deviation = max_deviation(results[0]["params"][healthy], reference[healthy])
    report("FSDP2, NaN in one shard", deviation, tolerance)
    assert deviation <= tolerance


def test_fsdp2_with_local_reduction_would_diverge(tmp_path):
    """The negative control: with every share kept local, each rank decides from its own
    shards: the ranks disagree and the parameters leave the tolerance far behind."""
    tolerance, reference, _ = tolerance_and_reference()
    results = spawn(tmp_path, fsdp_scenario, "single", True)
    deviation = max_deviation(results[0]["params"], reference)
    report("FSDP2, local reduction (negative control)", deviation, tolerance)
    assert deviation > 100 * tolerance
    assert results[0]["diagnostics"] != results[1]["diagnostics"]


# ----------------------------------------------------------------------- ZeRO (+ DDP)


def zero_scenario(rank: int, tmp_path: Path) -> dict:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    model = make_model()
    ddp = DistributedDataParallel(model)
    opt = ZeroRedundancyOptimizer(
        zero_groups(model), optimizer_class=HVAdam, scope_group=dist.group.WORLD, **OPTIONS
    )
    names = {p: name for name, p in model.named_parameters()}
    for step in range(STEPS):
        x, y = batch(step, rank)
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        drop_masked_grads(model, step)
        opt.step()
    # ZeRO copies every keyword into its own param groups too; a process group cannot be saved.
    for group in opt.param_groups:
        del group["scope_group"]
    opt.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save(opt.state_dict(), tmp_path / "zero_checkpoint.pt")
    return {
        "params": flat(model.parameters()),
        "local": [[names[p] for p in g["params"]] for g in opt.optim.param_groups],
        "diagnostics": diagnostics(opt.optim),
    }


def test_zero_equals_single_process(tmp_path):
    """ZeRO with ``scope_group``: a rank holding no parameter of a scope, or none with a
    gradient, still joins the reduction; a scope with no gradient anywhere does not step."""
    tolerance, reference, reference_diagnostics = tolerance_and_reference("zero")
    results = spawn(tmp_path, zero_scenario)
    # The situations this test is about: rank 0 holds only the first layer's weight in the
    # first scope (so has no gradient there every 3rd step) and nothing of the second.
    assert results[0]["local"] == [["0.weight"], []]
    assert results[1]["local"][1] == ["4.weight"]
    assert torch.equal(results[0]["params"], results[1]["params"])
    assert results[0]["diagnostics"][0] == results[1]["diagnostics"][0]
    deviation = max_deviation(results[0]["params"], reference)
    report("ZeRO + DDP", deviation, tolerance)
    assert deviation <= tolerance
    # Scope by scope, the same restarts as one process (and the second scope skipped its
    # gradient-less steps there too: its step count would differ otherwise).
    restarts = results[0]["diagnostics"][0]["restart_count"]
    assert restarts == reference_diagnostics[0]["restart_count"]
    assert results[1]["diagnostics"][1] == pytest.approx(reference_diagnostics[1])
    saved = torch.load(tmp_path / "zero_checkpoint.pt", weights_only=False)
    assert len(saved["state"]) == len(LAYERS)  # both ranks' state, consolidated


# The functional form, with plain tensors partitioned over ranks by hand.
FUNCTIONAL_SHAPES = [(4, 3), (5, 2), (3,), (2, 2), (4,)]


def has_grad(step: int, index: int) -> bool:
    """Every 4th step the odd tensors (all of rank 1's) have no gradient; every 7th, from the
    first (with its restart pending), none has."""
    return step % 7 != 0 and not (step % 4 == 3 and index % 2 == 1)


class FunctionalRun:
    """``hvadam.functional.hvadam`` over the tensors ``indices`` of a 5-tensor scope, fed
    seeded gradients; the state dicts are what an optimizer would keep."""

    def __init__(self, indices: list[int]):
        generator = torch.Generator().manual_seed(7)
        initial = [
            torch.randn(s, generator=generator, dtype=torch.float64) for s in FUNCTIONAL_SHAPES
        ]
        self.params = {i: initial[i] for i in indices}
        self.state = {
            i: {
                "m": torch.zeros_like(p),
                "s": torch.zeros_like(p),
                "v": torch.zeros_like(p),
                "t": torch.zeros(()),
            }
            for i, p in self.params.items()
        }
        self.scope = ScopeState.zeros(dtype=torch.float64)

    def step(self, step: int, scope_group=None, perturb: bool = False) -> None:
        generator = torch.Generator().manual_seed(2000 + step)
        grads = [
            torch.randn(s, generator=generator, dtype=torch.float64) + 0.3
            for s in FUNCTIONAL_SHAPES
        ]
        if perturb:
            for grad in grads:
                grad.mul_(
                    1 + JITTER * torch.randn(grad.shape, generator=generator, dtype=grad.dtype)
                )
        taking_part = [i for i in self.params if has_grad(step, i)]
        if not taking_part and scope_group is None:
            return  # a single process skips a scope without gradients
        states = [self.state[i] for i in taking_part]
        F.hvadam(
            [self.params[i] for i in taking_part],
            [grads[i] for i in taking_part],
            [s["m"] for s in states],
            [s["s"] for s in states],
            [s["v"] for s in states],
            [s["t"] for s in states],
            self.scope,
            scope_group=scope_group,
            **OPTIONS,
        )


def functional_scenario(rank: int, tmp_path: Path) -> dict:
    run = FunctionalRun([i for i in range(len(FUNCTIONAL_SHAPES)) if i % WORLD == rank])
    for step in range(STEPS):
        run.step(step, scope_group=dist.group.WORLD)
    return {"params": run.params, "scope": list(run.scope)}


def test_functional_form_with_scope_group(tmp_path):
    """Each rank passes its own tensors, or empty lists, and every rank takes one decision."""
    runs = []
    for perturb in (False, True):
        run = FunctionalRun(list(range(len(FUNCTIONAL_SHAPES))))
        for step in range(STEPS):
            run.step(step, perturb=perturb)
        runs.append(run)
    reference, jittered = (flat(run.params.values()) for run in runs)
    tolerance = TOLERANCE_FACTOR * max_deviation(reference, jittered)
    results = spawn(tmp_path, functional_scenario)
    for rank_scope, reference_scope in zip(zip(*(r["scope"] for r in results)), runs[0].scope):
        assert torch.equal(rank_scope[0], rank_scope[1])
        torch.testing.assert_close(rank_scope[0], reference_scope, rtol=1e-6, atol=1e-9)
    merged = {i: p for r in results for i, p in r["params"].items()}
    deviation = max_deviation(flat(merged[i] for i in sorted(merged)), reference)
    report("functional, scope_group", deviation, tolerance)
    assert deviation <= tolerance
    # The 6 steps without any gradient were skipped on every rank, the first one too (which
    # must not take the pending restart): t2 counts the other 34, from 0.
    skipped = sum(not has_grad(step, 0) for step in range(STEPS))
    assert results[0]["scope"][0].item() == STEPS - skipped - 1 == 33


def test_scope_group_refuses_tensor_scope():
    with pytest.raises(ValueError, match="scope_group"):
        HVAdam([torch.zeros(2, requires_grad=True)], scope="tensor", scope_group=object())
    opt = HVAdam([torch.zeros(2, requires_grad=True)], scope_group=object())
    with pytest.raises(ValueError, match="scope_group"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "scope": "tensor"})
    assert len(opt.param_groups) == 1


# ------------------------------------------------------- DTensor layouts on a 2-D mesh


def layout_problem() -> CoupledValley:
    return CoupledValley([[(4, 3), (5, 2), (3,), (2, 2), (4,)]], seed=3)


def layout_scenario(rank: int, tmp_path: Path, foreach: bool) -> dict:
    """One scope over DTensors of a (2, 1) mesh named ("outer", "inner"), where "outer" spans
    both ranks: replicated on "outer" (its key must leave "outer" out, or its share would count
    twice), sharded on both dimensions (two groups, reduced in turn), sharded on "outer" only,
    a plain replicated tensor, and a replicated DTensor whose gradient arrives partial."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("outer", "inner"))
    placements = [
        [Replicate(), Shard(0)],
        [Shard(0), Shard(0)],
        [Shard(0), Replicate()],
        None,
        [Replicate(), Replicate()],
    ]
    problem = layout_problem()
    params = []
    for value, placement in zip(problem.initial()[0], placements):
        tensor = torch.tensor(value)
        if placement is not None:
            tensor = distribute_tensor(tensor, mesh, placement)
        params.append(nn.Parameter(tensor))
    opt = HVAdam(params, foreach=foreach, **LAYOUT_OPTIONS)
    keys = [hvadam.distributed.reduction_key(p) for p in params]
    for t in range(1, STEPS + 1):
        grads = problem.grads([[full(p).detach().numpy() for p in params]], t)[0]
        for p, grad, placement in zip(params, grads, placements):
            grad = torch.tensor(grad)
            if placement is None:
                p.grad = grad
            elif placement == [Replicate(), Replicate()]:
                p.grad = DTensor.from_local(grad / WORLD, mesh, [Partial(), Replicate()])
            else:
                p.grad = distribute_tensor(grad, mesh, placement)
        opt.step()
    return {
        "params": flat(params),
        "keys": [[mesh.get_group(name) in key for name in ("outer", "inner")] for key in keys],
        "diagnostics": diagnostics(opt),
    }


def train_layout_single(perturb: bool, foreach: bool) -> torch.Tensor:
    problem = layout_problem()
    opt, params = make_torch(problem.initial(), [GroupConfig()], foreach=foreach, **LAYOUT_OPTIONS)
    for t in range(1, STEPS + 1):
        set_grads(params, problem.grads(as_numpy(params), t))
        if perturb:
            jitter(params[0], seed=t)
        opt.step()
    return flat(params[0])


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_dtensor_layouts_reduce_over_sharded_dims_only(tmp_path, foreach):
    reference = train_layout_single(False, foreach)
    tolerance = TOLERANCE_FACTOR * max_deviation(reference, train_layout_single(True, foreach))
    results = spawn(tmp_path, layout_scenario, foreach)
    assert results[0]["keys"] == [
        [False, True],
        [True, True],
        [True, False],
        [False, False],
        [False, False],
    ]
    assert results[0]["diagnostics"] == results[1]["diagnostics"]
    assert results[0]["diagnostics"][0]["hidden_step_size"] > 0  # hidden steps are taken
    deviation = max_deviation(results[0]["params"], reference)
    report(f"DTensor layouts ({'foreach' if foreach else 'single'})", deviation, tolerance)
    assert deviation <= tolerance


# ----------------------------------------------------------------- DCP checkpoints


def dcp_scenario(rank: int, tmp_path: Path) -> dict:
    """Save after half the steps, through DCP (sharded) and as a full state dict; restore each
    into a fresh model and optimizer and finish the run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    checkpoint = tmp_path / "checkpoint"
    as_full = StateDictOptions(full_state_dict=True)
    model, opt = train_fsdp(rank, range(STEPS // 2))
    saved_diagnostics = diagnostics(opt)
    dcp.save(
        {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
        checkpoint_id=checkpoint,
    )
    full_state = copy.deepcopy(  # a full state dict shares the plain tensors with the run
        {
            "model": get_model_state_dict(model, options=as_full),
            "optim": get_optimizer_state_dict(model, opt, options=as_full),
        }
    )
    model, opt = train_fsdp(rank, range(STEPS // 2, STEPS), opt, model)
    result = {"uninterrupted": flat(model.parameters()), "saved_diagnostics": saved_diagnostics}

    for method in ("dcp", "full"):
        model = shard_model(make_model())
        opt = HVAdam(model.parameters(), **OPTIONS)
        if method == "dcp":
            options = None
            state = {
                "model": get_model_state_dict(model),
                "optim": get_optimizer_state_dict(model, opt),
            }
            dcp.load(state, checkpoint_id=checkpoint)
        else:
            options, state = as_full, full_state
        set_model_state_dict(model, state["model"], options=options)
        set_optimizer_state_dict(model, opt, state["optim"], options=options)
        weight_state = opt.state[model[0].weight]
        result[method] = {
            "loaded_diagnostics": diagnostics(opt),
            "state_types": {key: type(value).__name__ for key, value in weight_state.items()},
        }
        model, opt = train_fsdp(rank, range(STEPS // 2, STEPS), opt, model)
        result[method]["resumed"] = flat(model.parameters())
    return result


def test_dcp_checkpoint_resumes_exactly(tmp_path):
    """Sharded (DCP) and full optimizer state dicts of FSDP2 resume bit-identically, with the
    scope's scalars, and the state stays sharded."""
    results = spawn(tmp_path, dcp_scenario)
    for result in results:
        assert (
            result["saved_diagnostics"][0]["restart_count"] >= 1
        )  # restarts before the checkpoint
        for method in ("dcp", "full"):
            restored = result[method]
            assert torch.equal(restored["resumed"], result["uninterrupted"]), method
            assert restored["loaded_diagnostics"] == result["saved_diagnostics"], method
            assert restored["state_types"]["exp_avg"] == "DTensor", method
            assert restored["state_types"]["scope_delta"] == "Tensor", method
    assert torch.equal(results[0]["uninterrupted"], results[1]["uninterrupted"])
