"""The shared trial machinery: selection on validation, resume, corrupt checkpoints, NaN."""

from __future__ import annotations

import math

import pytest
import torch

from hvadam_bench.training import (
    Interrupted,
    Trial,
    TrialStore,
    Workers,
    make_optimizer,
    rng_state,
    run_protocol,
    seed_everything,
    set_rng_state,
)

STEPS = 12


def toy_trial(trial: Trial, checkpointer) -> dict:
    """Fit w to a noisy target with the trial's optimizer; checkpoint every 3 steps."""
    seed_everything(trial.seed)
    w = torch.zeros(4, requires_grad=True)
    opt = make_optimizer(trial.optimizer, [w], trial.lr)
    start, curve = 0, []
    state = checkpointer.load()
    if state is not None:
        w.data.copy_(state["w"])
        opt.load_state_dict(state["opt"])
        set_rng_state(state["rng"])
        start, curve = state["step"], state["curve"]
    for step in range(start, STEPS):
        opt.zero_grad()
        target = torch.ones(4) + 0.1 * torch.randn(4)
        loss = ((w - target) ** 2).sum() * (math.inf if trial.lr > 5 else 1.0)  # lr 10 "diverges"
        if not torch.isfinite(loss):
            return {"valid": math.nan, "test": None, "diverged": True, "curve": curve}
        loss.backward()
        opt.step()
        curve.append(loss.item())
        if (step + 1) % 3 == 0:
            checkpointer.save(
                {
                    "w": w.detach().clone(),
                    "opt": opt.state_dict(),
                    "rng": rng_state(),
                    "step": step + 1,
                    "curve": curve,
                }
            )
    final = ((w.detach() - 1) ** 2).sum().item()
    return {"valid": final, "test": final, "diverged": False, "curve": curve}


def protocol(store, optimizers=("adam", "hvadam"), lrs=(0.01, 0.1, 10.0)):
    return run_protocol(
        "toy", ["fit"], list(optimizers), list(lrs), [1, 2], toy_trial, store, show_progress=False
    )


def test_selection_uses_validation_and_skips_divergence(tmp_path):
    summary = protocol(TrialStore(tmp_path))
    for name in ("adam", "hvadam"):
        entry = summary["fit"][name]
        assert entry["lr"] != 10.0  # the diverging lr is never chosen
        diverged = {g["lr"]: g["diverged"] for g in entry["grid"]}
        assert diverged[10.0] and not diverged[0.1]
        assert entry["runs"] == 2 and entry["diverged_runs"] == 0
        assert entry["test_mean"] is not None and entry["test_std"] is not None


def test_finished_trials_are_never_recomputed(tmp_path, monkeypatch):
    store = TrialStore(tmp_path)
    first = protocol(store)
    calls = []
    monkeypatch.setattr("tests.bench.test_training.toy_trial", lambda *a: calls.append(a))
    second = run_protocol(
        "toy",
        ["fit"],
        ["adam", "hvadam"],
        [0.01, 0.1, 10.0],
        [1, 2],
        lambda *a: calls.append(a),
        store,
        show_progress=False,
    )
    assert calls == [] and second == first


def test_killed_run_resumes_to_the_same_result(tmp_path):
    uninterrupted = protocol(TrialStore(tmp_path / "a"), optimizers=("hvadam",))
    killed = TrialStore(tmp_path / "b", interrupt_after_checkpoints=5)
    with pytest.raises(Interrupted):
        protocol(killed, optimizers=("hvadam",))
    assert list((tmp_path / "b" / "checkpoints").glob("*.pt"))  # a trial was cut mid-way
    resumed = protocol(TrialStore(tmp_path / "b"), optimizers=("hvadam",))
    assert resumed == uninterrupted


def test_corrupt_checkpoint_restarts_the_trial(tmp_path, capsys):
    reference = protocol(TrialStore(tmp_path / "a"), optimizers=("adam",))
    store = TrialStore(tmp_path / "b")
    trial = Trial("toy", "fit", "adam", 0.01, 0, "tune")
    path = store.checkpointer(trial).path
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint at all")
    assert protocol(store, optimizers=("adam",)) == reference
    error = capsys.readouterr().err
    assert "not an hvadam-bench checkpoint" in error and "restarting that trial" in error


def toy_trial_function():
    """What a worker process runs its trials with."""
    return toy_trial


def test_workers_give_the_single_process_result(tmp_path):
    single = protocol(TrialStore(tmp_path / "a"))
    timing: list = []
    pooled = run_protocol(
        "toy", ["fit"], ["adam", "hvadam"], [0.01, 0.1, 10.0], [1, 2], toy_trial,
        TrialStore(tmp_path / "b"), show_progress=False, workers=Workers(2, toy_trial_function),
        timing=timing,
    )  # fmt: skip
    assert pooled == single
    assert len(timing) == 2 * (3 + 2) and all(t["ran_now"] and t["seconds"] >= 0 for t in timing)
    again: list = []
    protocol_again = run_protocol(
        "toy", ["fit"], ["adam", "hvadam"], [0.01, 0.1, 10.0], [1, 2], toy_trial,
        TrialStore(tmp_path / "b"), show_progress=False, timing=again,
    )  # fmt: skip
    assert protocol_again == single
    assert not any(t["ran_now"] for t in again)
    assert [t["seconds"] for t in again] == [t["seconds"] for t in timing]  # as they ran
