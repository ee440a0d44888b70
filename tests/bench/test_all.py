"""``hvadam-bench all``: every suite in turn, and one combined report of their headline sections."""

from __future__ import annotations

import argparse

import pytest

from hvadam_bench import cli
from hvadam_bench.reporting.markdown import sections
from hvadam_bench.runner import BenchError

REPORT = """# A study

Intro.

## Verdict

- HVAdam wins here, loses there.

![curves](curves.png) and [a link](https://example.org) and [data](study.json)

## Details

| big | table |

## Against the paper

Numbers differ.
"""


def test_sections_are_lifted_in_order_with_links_into_the_folder():
    text = sections(REPORT, ("Against the paper", "Verdict", "Missing"), folder="study")
    assert text.index("## Against the paper") < text.index("## Verdict")
    assert "## Details" not in text and "big" not in text and "Intro" not in text
    assert "](study/curves.png)" in text and "](study/study.json)" in text
    assert "](https://example.org)" in text


def test_all_runs_every_suite_and_combines_their_summaries(tmp_path, monkeypatch):
    ran = []

    def fake_main(name):
        def main(args: argparse.Namespace) -> int:
            ran.append((name, args.no_progress))
            (tmp_path / name).mkdir(exist_ok=True)
            report = REPORT.replace("# A study", f"# The {name} study")
            (tmp_path / name / "report.md").write_text(report)
            return 0

        return main

    for name in cli.ALL:
        monkeypatch.setattr(cli._study(name), "main", fake_main(name))
        monkeypatch.setattr(cli._study(name), "SUMMARY_SECTIONS", ("Verdict",))
    assert cli.main(["all", "--out", str(tmp_path), "--no-progress"]) == 0
    assert ran == [(name, True) for name in cli.ALL]
    combined = (tmp_path / "report.md").read_text()
    for name in cli.ALL:
        assert f"# The {name} study" in combined
        assert f"]({name}/report.md)" in combined
        assert f"]({name}/curves.png)" in combined
    assert "Wall time:" in combined and "## Details" not in combined


def test_all_stops_at_a_failing_suite(tmp_path, monkeypatch):
    first, second = cli.ALL[:2]
    monkeypatch.setattr(cli._study(first), "main", lambda args: 2)
    called = []
    monkeypatch.setattr(cli._study(second), "main", lambda args: called.append(1) or 0)
    assert cli.main(["all", "--out", str(tmp_path), "--no-progress"]) == 2
    assert not called and not (tmp_path / "report.md").exists()


def test_seeds_and_jobs_mean_the_same_in_every_study():
    """`--seeds N` is the final seeds 1..N and `--jobs N` a worker count in every study that
    takes them (gan once took a list of seeds, lm and classify a count)."""
    parser = cli.build_parser()
    for study in ("lm", "ablation", "classify", "gan"):
        args = parser.parse_args([study, "--seeds", "3", "--jobs", "2"])
        assert args.seeds == [1, 2, 3] and args.jobs == 2, study
    for study in ("lm", "classify", "gan", "valley"):
        with pytest.raises(BenchError, match="--jobs takes a count of at least 1"):
            parser.parse_args([study, "--jobs", "0"])
