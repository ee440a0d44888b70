"""``hvadam-bench speed`` end to end on a tiny model, and its handling of bad input."""

from __future__ import annotations

import json

import pytest
import torch

from hvadam_bench.cli import main
from hvadam_bench.studies import speed
from hvadam_bench.studies import speed_compile_cost as compile_cost
from hvadam_bench.studies import speed_training_step as training_step
from hvadam_bench.studies.speed import _peak_step_bytes, floor_ms

from .conftest import is_png


def test_times_every_optimizer_and_writes_json_report_and_plot(tmp_path):
    names = ["hvadam_single", "hvadam_foreach", "adam_loop", "adabelief_pytorch"]
    args = [
        "speed",
        "--sizes",
        "2000,4000",
        "--tensors",
        "10",
        "--rounds",
        "2",
        "--no-training-step",
    ]
    assert main([*args, "--optimizers", ",".join(names), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "speed.json").read_text())
    assert list(results["sizes"]) == ["2000", "4000"]
    meta = results["meta"]
    assert meta["copy_bandwidth_GBps"] > 0 and meta["read_bandwidth_GBps"] > 0
    assert meta["floor_ratio_hvadam_to_adam"] > 1
    for entries in results["sizes"].values():
        assert list(entries) == names
        for name, entry in entries.items():
            assert len(entry["times_ms"]) == 2 * 3  # rounds x steps per round, interleaved
            assert entry["median_ms"] > 0 and entry["floor_ms"] > 0
            expected_state = 12 if name.startswith("hvadam") else 8  # m, s, v / m, v in fp32
            assert entry["state_bytes_per_param"] == pytest.approx(expected_state, rel=0.01)
        assert entries["adam_loop"]["ratio_to_adam_loop"] == 1
        assert "ratio_to_adam_fused" not in entries["adam_loop"]  # fused Adam was not run
    report = (tmp_path / "report.md").read_text()
    assert "## 0.002M parameters" in report and "hvadam_foreach" in report
    assert is_png(tmp_path / "speed.png")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizers", "sgd"], "unknown optimizer 'sgd'"),
        (["--sizes", "50"], "at least the number of tensors"),
        (["--rounds", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    assert main(["speed", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "speed.json").exists()


def test_floor_counts_the_reduction_pass_at_the_read_rate():
    # 10 parameters, 1 GB/s for copies, 0.5 GB/s for reads: Adam moves 7 floats at the copy
    # rate; HVAdam 9 at the copy rate and 3 at the read rate.
    assert floor_ms("adam", 10, 1e9, 0.5e9) == pytest.approx(7 * 40 / 1e9 * 1e3)
    assert floor_ms("hvadam", 10, 1e9, 0.5e9) == pytest.approx(
        (9 * 40 / 1e9 + 3 * 40 / 0.5e9) * 1e3
    )
    same_rates = floor_ms("hvadam", 10, 1e9, 1e9) / floor_ms("adam", 10, 1e9, 1e9)
    assert same_rates == pytest.approx(12 / 7)


class _AllocatesTemporary:
    """A stand-in optimizer whose step allocates, fills and frees ``numel`` floats."""

    def __init__(self, numel: int) -> None:
        self.numel = numel

    def step(self) -> None:
        torch.ones(self.numel).sum()


def test_peak_step_bytes_sees_a_temporary_that_reuses_freed_memory():
    # Freeing a 32 MB mapped block raises glibc's mmap threshold past 16 MB, so the 16 MB
    # temporaries come from the heap, and once freed the heap keeps them: the process's RSS
    # would not grow when the measured step reuses that memory; the measurement must see it.
    _AllocatesTemporary(8_000_000).step()
    optimizer = _AllocatesTemporary(4_000_000)
    optimizer.step()
    assert _peak_step_bytes(optimizer, "cpu") >= 0.9 * 16_000_000
    assert _peak_step_bytes(_AllocatesTemporary(1), "cpu") < 4_000_000


def test_host_sync_check_runs_steps_under_the_error_mode_and_restores_it(monkeypatch):
    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    class Syncs:
        steps = 0

        def step(self):
            assert modes[-1] == "error"
            self.steps += 1
            if self.steps == 4:
                raise RuntimeError("called a synchronizing CUDA operation\ntraceback")

    class Quiet:
        def step(self):
            assert modes[-1] == "error"

    assert speed._host_sync(Syncs(), "cuda") == "called a synchronizing CUDA operation"
    assert modes[-1] == 0
    assert speed._host_sync(Quiet(), "cuda") == ""
    assert modes[-1] == 0
    assert speed._host_sync(Quiet(), "cpu") is None
    assert speed._sync_cell({"host_sync": ""}) == ["none"]
    assert speed._sync_cell({"host_sync": None}) == []
    assert 200_000_000 in speed.SpeedConfig.preset_named("full", "cuda").sizes
    assert 200_000_000 not in speed.SpeedConfig.preset_named("full").sizes


def test_report_carries_the_training_step_and_compile_sections(tmp_path):
    results = speed.run(
        speed.SpeedConfig(
            sizes=[2000], tensors=2, rounds=1, optimizers=["hvadam_single", "adam_loop"]
        ),
        tmp_path,
        show_progress=False,
    )
    step_config = training_step.TrainingStepConfig(
        workloads=["cnn"], optimizers=["adam", "hvadam"], rounds=1, tiny=True
    )
    results["training_step"] = training_step.run(step_config, tmp_path, show_progress=False)
    results["compile_cost"] = compile_cost.with_ratios(
        {"Adam": {"cold_s": 40.0, "warm_ms": 1.0}, "HVAdam": {"cold_s": 50.0, "warm_ms": 1.5}}
    )
    report = speed.render_report(results)
    assert "Compiling a whole training step" in report
    assert training_step.render_section(results["training_step"]).splitlines()[0] in report
