"""hvadam-bench variants: the study runs end to end on a tiny config, recording changes
nothing in the optimization, the vmapped members are HVAdam with their options, and the
verdict function gives fixed answers on fixed input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hvadam import HVAdam
from hvadam_bench.runner import Grid
from hvadam_bench.studies import variants
from hvadam_bench.studies.variants_optimizers import (
    MEMBERS,
    RecordingHVAdam,
    recording,
    run_family_batch,
)
from hvadam_bench.studies.variants_report import compare, render_report, verdicts


def tiny_config(**changes) -> variants.VariantsConfig:
    config = variants.VariantsConfig(
        optimizers=["hv-paper", "hv-cap-1", "hv-lr-hidden", "adam"],
        functions=["table1", variants.QUADRATIC],
        grid=Grid(lrs=(1e-2, 1e-1), beta2s=(0.999,), momenta=(0.9,)),
        steps=20, tune_starts=2, eval_starts=2, lm=None, classify_tasks=[], classify={},
        gans=[], gan={}, jobs=1, preset="tiny",
    )  # fmt: skip
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def test_tiny_run_writes_json_report_and_diagnostics(tmp_path):
    results = variants.run(tiny_config(), tmp_path, show_progress=False)
    stored = json.loads((tmp_path / "variants.json").read_text())
    assert stored["verdict"] == results["verdict"]
    report = (tmp_path / "report.md").read_text()
    assert "## Verdict" in report and "Preset" in report
    quadratic = results["tasks"][variants.QUADRATIC]["optimizers"]
    assert set(quadratic) == {"hv-paper", "hv-cap-1", "hv-lr-hidden", "adam"}
    diagnostics = quadratic["hv-paper"]["diagnostics"]
    assert diagnostics["delta_max"] is not None and diagnostics["series"]
    assert "diagnostics" not in quadratic["adam"]
    # On a deterministic bowl g ≈ m, so HVAdam's s outgrows Adam's; the cap keeps it below.
    assert diagnostics["ratio_median"] > 1
    assert quadratic["hv-cap-1"]["diagnostics"]["ratio_median"] <= 1 + 1e-9


def test_command_line_offers_the_study():
    from hvadam_bench.cli import build_parser

    args = build_parser().parse_args(["variants", "--quick", "--out", "x", "--jobs", "1"])
    assert (args.preset, args.out, args.jobs, args.render) == ("quick", "x", 1, False)
    assert build_parser().parse_args(["variants"]).preset == "default"


def test_landscape_unit_is_deterministic():
    config = tiny_config(functions=["table1"])
    first = variants.landscape_unit(config, "table1", "hv-paper")
    assert variants.landscape_unit(config, "table1", "hv-paper") == first


def test_recording_changes_nothing_and_logs_every_quantity():
    torch.manual_seed(0)
    start = torch.randn(7, 3)
    target = torch.randn(7, 3)
    runs = {}
    for name, build in (
        ("plain", lambda p: HVAdam([p], lr=1e-2, gamma=0.1)),
        ("recording", lambda p: RecordingHVAdam([p], record_every=5, lr=1e-2, gamma=0.1)),
    ):
        point = start.clone().requires_grad_()
        optimizer = build(point)
        for step in range(30):
            optimizer.zero_grad()
            ((point - target) ** 2 + 0.1 * step * point).sum().backward()
            optimizer.step()
        runs[name] = (point.detach(), optimizer)
    assert torch.equal(runs["plain"][0], runs["recording"][0])
    records = runs["recording"][1].records
    assert [r["step"] for r in records] == [1, 5, 10, 15, 20, 25, 30]
    assert {"delta", "b", "restarts", "hidden_share", "ratio_mean", "ratio_median"} <= set(
        records[-1]
    )


def test_adam_moment_ratio_is_one_and_trial_results_carry_the_logs():
    point = torch.ones(4, requires_grad=True)

    def trial_fn(trial, checkpointer):
        optimizer = RecordingHVAdam([point], lr=1e-2, variant="hvadam1", record_every=2)
        for _ in range(4):
            optimizer.zero_grad()
            (point**2).sum().backward()
            optimizer.step()
        return {"valid": 1.0, "test": 1.0, "diverged": False}

    result = recording(trial_fn)(None, None)
    (log,) = result["metric_diagnostics"]
    assert [r["step"] for r in log] == [1, 2, 4]
    assert all(r["ratio_mean"] == pytest.approx(1.0) for r in log)


@pytest.mark.parametrize("name", ["hv-cap-1", "hv-lr-hidden", "hv-cosine-0.9", "hv-no-restart"])
def test_vmapped_member_is_hvadam_with_its_options(name):
    """Each row of the batched runner is one ``HVAdam([x], **options)``."""
    land = variants.make_landscape("table1")
    starts = land.starts(3, seed=4)
    batch = run_family_batch(MEMBERS[name], land, starts, [(0.05, 0.99)], steps=15)
    for row in range(3):
        point = starts[row].clone().requires_grad_()
        optimizer = HVAdam([point], lr=0.05, betas=(0.9, 0.99), **MEMBERS[name].options)
        for step in range(15):
            optimizer.zero_grad()
            value = land.value(point[None])[0]
            assert float(value.detach()) == pytest.approx(
                float(batch.values[step, 0, row]), rel=1e-9
            )
            value.backward()
            optimizer.step()


# --- golden tests of the verdict ----------------------------------------------------------------

GOLDEN = {
    "meta": {
        "reference": "hv-paper", "baselines": ["adam"], "preset": "golden", "jobs": 1,
        "optimizers": ["hv-paper", "hv-a", "hv-b", "adam"], "protocol": "fixed",
        "labels": {"hv-paper": "HVAdam", "hv-a": "A", "hv-b": "B", "adam": "Adam"},
        "members": [
            {"name": n, "label": n, "options": {}, "why": "test"} for n in ("hv-a", "hv-b")
        ],
        "seconds": {"total": 1.0},
    },
    "tasks": {
        # Decades: 0.1 is a tie, so A's -0.05 ties and B's -0.5 wins; Adam beats them all.
        "bowl": {
            "kind": "landscape", "description": "d", "metric": "m", "higher_is_better": False,
            "optimizers": {
                "hv-paper": {"lr": 0.1, "beta2": 0.99, "score": -1.0, "std": 0.1,
                             "diverged": 0, "runs": 2},
                "hv-a": {"lr": 0.1, "beta2": 0.99, "score": -1.05, "std": 0.1,
                         "diverged": 0, "runs": 2},
                "hv-b": {"lr": 0.1, "beta2": 0.99, "score": -1.5, "std": 0.1,
                         "diverged": 0, "runs": 2},
                "adam": {"lr": 0.1, "beta2": 0.99, "score": -2.0, "std": 0.1,
                         "diverged": 0, "runs": 2},
            },
        },
        # Accuracy, higher is better; within both stds is a tie; B diverged once.
        "digits": {
            "kind": "training", "description": "d", "metric": "acc", "higher_is_better": True,
            "optimizers": {
                "hv-paper": {"lr": 0.01, "score": 90.0, "std": 0.5, "diverged": 0, "runs": 2},
                "hv-a": {"lr": 0.01, "score": 92.0, "std": 0.5, "diverged": 0, "runs": 2},
                "hv-b": {"lr": 0.01, "score": 99.0, "std": 0.1, "diverged": 1, "runs": 2},
                "adam": {"lr": 0.01, "score": 91.8, "std": 0.4, "diverged": 0, "runs": 2},
            },
        },
        # Perplexity, lower is better: A is worse than HVAdam, B better.
        "lstm": {
            "kind": "training", "description": "d", "metric": "ppl", "higher_is_better": False,
            "optimizers": {
                "hv-paper": {"lr": 0.01, "score": 200.0, "std": 1.0, "diverged": 0, "runs": 2},
                "hv-a": {"lr": 0.01, "score": 190.0, "std": 2.0, "diverged": 0, "runs": 2},
                "hv-b": {"lr": 0.01, "score": 210.0, "std": 1.0, "diverged": 0, "runs": 2},
                "adam": {"lr": 0.01, "score": 180.0, "std": 1.0, "diverged": 0, "runs": 2},
            },
        },
    },
}  # fmt: skip


def test_verdict_golden():
    verdict = verdicts(copy.deepcopy(GOLDEN))
    assert verdict["tally"] == {
        "hv-a": {"better": 2, "tie": 1, "worse": 0, "diverged": 0},
        "hv-b": {"better": 1, "tie": 0, "worse": 1, "diverged": 1},
    }
    bowl, digits, lstm = (verdict["tasks"][t] for t in ("bowl", "digits", "lstm"))
    assert bowl["best_member"] == "hv-b" and bowl["best_baseline"] == "adam"
    assert bowl["best_member_vs_reference"] == {"outcome": "better", "difference": -0.5}
    assert bowl["best_member_vs_baseline"] == {"outcome": "worse", "difference": 0.5}
    # B's 99% does not count: it diverged once; A's 92 vs Adam's 91.8 is within both stds.
    assert digits["best_member"] == "hv-a"
    assert digits["members_vs_reference"]["hv-b"]["outcome"] == "diverged"
    assert digits["best_member_vs_baseline"]["outcome"] == "tie"
    assert digits["reference_vs_baseline"]["outcome"] == "worse"
    assert lstm["best_member"] == "hv-a"
    assert lstm["members_vs_reference"]["hv-b"] == {"outcome": "worse", "difference": 10.0}
    # A: better on 2 of 3 tasks, never diverged: offered as the preset.
    assert verdict["preset"] == "hv-a"


def test_verdict_no_preset_when_none_wins_most_tasks():
    results = copy.deepcopy(GOLDEN)
    results["tasks"]["lstm"]["optimizers"]["hv-a"]["score"] = 201.0  # now a tie
    verdict = verdicts(results)
    assert verdict["tally"]["hv-a"] == {"better": 1, "tie": 2, "worse": 0, "diverged": 0}
    assert verdict["preset"] is None
    report = render_report({**results, "verdict": verdict})
    assert "**Preset: none.**" in report


def test_compare_rounds_before_it_decides():
    task = copy.deepcopy(GOLDEN["tasks"]["lstm"])
    task["optimizers"]["hv-a"].update(score=200.00001, std=0.0)
    task["optimizers"]["hv-paper"]["std"] = 0.0
    assert compare(task, "hv-a", "hv-paper")["outcome"] == "tie"
