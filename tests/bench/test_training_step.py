"""The training-step section of the speed study, end to end on toy sizes of every model."""

from __future__ import annotations

import json

import pytest

from hvadam import _fused
from hvadam_bench.studies import speed_training_step as training_step
from hvadam_bench.studies.speed_training_step import OPTIMIZERS, WORKLOADS, TrainingStepConfig


@pytest.fixture
def eager_fused(monkeypatch):
    """HVAdam's fused kernels run uncompiled: the same Python arithmetic without a cold
    compile of a minute per model (tests/hvadam/test_fused.py covers the compiled kernels)."""
    monkeypatch.setattr(_fused, "_compiled", lambda kernel: kernel)


def test_every_workload_and_optimizer_is_timed_and_reported(tmp_path, eager_fused):
    config = TrainingStepConfig(rounds=2, steps_per_round=2, warmup_steps=1, tiny=True)
    results = training_step.run(config, tmp_path, show_progress=False)

    assert json.loads((tmp_path / "training-step.json").read_text()) == results
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "training-step.json",
        "training-step.md",
    ]  # no temporary file left behind
    assert list(results["workloads"]) == list(WORKLOADS)
    for workload in results["workloads"].values():
        assert workload["parameters"] > 0 and workload["tensors"] > 0
        assert list(workload["optimizers"]) == list(OPTIMIZERS)
        for name, entry in workload["optimizers"].items():
            assert len(entry["step_ms"]) == len(entry["optimizer_ms"]) == 2 * 2
            assert all(
                0 < opt <= step for opt, step in zip(entry["optimizer_ms"], entry["step_ms"])
            )
            assert entry["median_step_ms"] > 0 and entry["median_optimizer_ms"] > 0
            assert 0 < entry["optimizer_share"] < 1
            assert entry["first_step_s"] > 0
            assert entry["baseline"] == ("adam_fused" if name.endswith("fused") else "adam")
            assert entry["step_ratio"] > 0 and entry["optimizer_ratio"] > 0
        assert workload["optimizers"]["adam"]["step_ratio"] == 1
        assert workload["optimizers"]["adam_fused"]["step_ratio"] == 1

    report = (tmp_path / "training-step.md").read_text()
    assert "## Training step" in report
    for name in WORKLOADS:
        assert f"| {name} |" in report and f"### {name}:" in report
    for name in OPTIMIZERS:
        assert report.count(f"| {name} |") == len(WORKLOADS)


def test_command_line_runs_a_subset_and_refuses_unknown_names(tmp_path, eager_fused, capsys):
    arguments = ["--tiny", "--out", str(tmp_path), "--no-progress", "--rounds", "1"]
    chosen = ["--workloads", "many_small", "--optimizers", "hvadam_fused,adam_fused"]
    assert training_step.main([*arguments, *chosen]) == 0
    results = json.loads((tmp_path / "training-step.json").read_text())
    assert list(results["workloads"]) == ["many_small"]
    entries = results["workloads"]["many_small"]["optimizers"]
    assert list(entries) == ["hvadam_fused", "adam_fused"]
    assert "| many_small |" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        training_step.main([*arguments, "--optimizers", "sgd"])
    assert "unknown or no optimizer ['sgd']" in capsys.readouterr().err


def test_full_size_models_have_the_sizes_the_report_describes():
    sizes = {}
    for name in ("transformer", "cnn", "many_small"):
        params = list(training_step.BUILDERS[name](False, "cpu").model.parameters())
        sizes[name] = (len(params), sum(p.numel() for p in params))
    assert sizes["transformer"][0] == 52 and 7.3e6 < sizes["transformer"][1] < 7.5e6
    assert sizes["cnn"][0] == 14 and 0.35e6 < sizes["cnn"][1] < 0.45e6
    assert sizes["many_small"] == (300, 150 * (81 * 81 + 81))
