"""``hvadam-bench valley`` end to end on a tiny grid, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hvadam_bench import runner
from hvadam_bench.cli import main

from .conftest import is_png

TINY = [
    "valley",
    "--functions", "table1,nd-3",
    "--optimizers", "hvadam,adam,sgd",
    "--steps", "15",
    "--lrs", "0.03,0.3",
    "--beta2s", "0.99",
    "--momenta", "0.9",
    "--tune-starts", "2",
    "--eval-starts", "2",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("valley")
    assert main([*TINY, "--out", str(out)]) == 0
    return out, json.loads((out / "valley.json").read_text())


def test_writes_json_report_and_figures(tiny_run):
    out, results = tiny_run
    assert set(results) == {"meta", "functions", "table1"}
    assert set(results["functions"]) == {"table1", "nd-3"}
    report = (out / "report.md").read_text()
    assert "## Verdict" in report and "`table1`" in report
    for figure in ("curves.png", "contours_table1.png", "hidden_vector.png", "hvadam_dynamics.png"):
        assert is_png(out / figure), figure
    assert not (out / "contours_nd-3.png").exists()  # contours only for 2-D functions
    assert not list(out.glob(".*.tmp"))


def test_json_schema(tiny_run):
    _, results = tiny_run
    for entry in results["functions"].values():
        assert entry["winner"] in entry["optimizers"]
        assert sorted(entry["ranking"]) == sorted(entry["optimizers"])
        for name, r in entry["optimizers"].items():
            assert len(r["curve"]) == 16  # the start and 15 steps
            assert r["curve"][0] == 1.0
            for key in (
                "lr",
                "criterion_tuning",
                "criterion_eval",
                "final_gap_median",
                "final_loss_median",
                "steps_to_0.01",
                "steps_to_0.0001",
                "grid",
            ):
                assert key in r, (name, key)
            assert ("momentum" if name == "sgd" else "beta2") in r


def test_every_optimizer_saw_the_same_grid(tiny_run):
    _, results = tiny_run
    for entry in results["functions"].values():
        grids = {}
        for name, r in entry["optimizers"].items():
            second = "momentum" if name == "sgd" else "beta2"
            grids[name] = [(g["lr"], g[second]) for g in r["grid"]]
            chosen = (r["lr"], r[second])
            assert chosen in grids[name]
            # the chosen point is the grid's best on the tuning starts
            best = min(
                (g for g in r["grid"] if g["criterion"] is not None), key=lambda g: g["criterion"]
            )
            assert r["criterion_tuning"] == best["criterion"]
        lrs = {tuple(lr for lr, _ in grid) for grid in grids.values()}
        assert lrs == {(0.03, 0.3)}
        assert {len(grid) for grid in grids.values()} == {2}


def test_table1_hidden_vector_reaches_v_star_in_two_steps(tiny_run):
    _, results = tiny_run
    measured = results["table1"]["measured"]
    assert measured[0]["v"] == [5.0, -3.0]
    assert all(row["v"] == [1.0, 1.0] for row in measured[1:])
    assert measured[1]["m_hat"] == [0.7895, 1.2105]  # SPEC's erratum: +1.2105


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hvadam_bench", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--functions", "himmelblau"], "unknown function 'himmelblau'"),
        (["--optimizers", "adamax"], "unknown optimizer 'adamax'"),
        (["--lrs", ""], "grid is empty"),
        (["--lrs", "0.1,-1"], "positive"),
        (["--beta2s", "0.9,0.99", "--momenta", "0.9"], "as many points"),
        (["--steps", "0"], "at least 1"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = run_cli("valley", "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "valley.json").exists()


def test_out_that_is_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("valley", "--out", str(blocker / "sub"), "--steps", "1")
    assert result.returncode == 2 and "cannot write to --out" in result.stderr
    assert result.stderr.count("\n") == 1


def test_interrupted_write_leaves_no_half_written_json(tmp_path, monkeypatch):
    target = tmp_path / "valley.json"
    target.write_text('{"old": true}\n')

    class Interrupt(BaseException):
        pass

    def interrupted_dump(*args, **kwargs):
        raise Interrupt  # as if Ctrl-C landed while the file was being written

    monkeypatch.setattr(runner.json, "dumps", interrupted_dump)
    with pytest.raises(Interrupt):
        runner.atomic_write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["valley.json"]


def test_list_and_help():
    result = run_cli("valley", "--list")
    assert result.returncode == 0 and "hvadam" in result.stdout and "table1" in result.stdout
    assert run_cli().returncode == 2


def test_results_are_readable_like_any_new_file(tmp_path):
    target = tmp_path / "report.md"
    runner.atomic_write_text(target, "text\n")
    plain = tmp_path / "plain.md"
    plain.write_text("text\n")
    assert target.stat().st_mode == plain.stat().st_mode
