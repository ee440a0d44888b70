"""Golden tests of the functions that turn measured numbers into rankings, choices and the
sentences of the reports, on fixed input."""

from __future__ import annotations

import math

from hvadam_bench.reporting.verdicts import (
    comparable,
    comparable_decades,
    first_best,
    rank_label,
    ranks,
)
from hvadam_bench.studies import gan_report, lm, valley, valley_report


def test_comparable_rounds_to_four_significant_digits_and_sends_failures_last():
    assert comparable(38.4812345) == 38.48
    assert comparable(38.4812345) == comparable(38.4812346)  # last-digit noise: equal
    assert comparable(38.48) < comparable(38.49)
    assert comparable(None) == comparable(math.nan) == comparable(math.inf) == math.inf
    assert comparable_decades(-4.12345678) == comparable_decades(-4.12345679) == -4.123
    assert comparable_decades(-0.0001) == 0.0 and str(comparable_decades(-0.0001)) == "0.0"


def test_ties_share_a_rank_and_the_first_of_equals_is_chosen():
    assert first_best([3.0, 1.0, 1.0, 2.0]) == 1
    by_rank = ranks({"adam": -4.1, "hvadam": -4.2, "sgd": -4.1, "yogi": -3.0})
    assert by_rank == {"adam": 2, "hvadam": 1, "sgd": 2, "yogi": 4}
    assert rank_label("adam", by_rank) == "=2/4" and rank_label("hvadam", by_rank) == "1/4"


def _valley_entry(scores: dict[str, float | None]) -> dict:
    labels = {"hvadam": "HVAdam", "hvadam2": "HVAdam² (no restart)", "adam": "Adam",
              "sgd": "SGD (momentum)", "yogi": "Yogi"}  # fmt: skip
    return {
        "description": "fixture",
        "dim": 2,
        "optimizers": {
            name: {"label": labels[name], "criterion_eval": score, "steps_to_0.0001": None}
            for name, score in scores.items()
        },
    }


def test_valley_ranking_is_robust_to_last_digit_noise():
    entry = _valley_entry({"adam": -4.00001, "hvadam": -4.000012, "sgd": -3.5, "yogi": None})
    valley._rank(entry)
    # -4.00001 and -4.000012 are equal to 3 decimals: a tie, in the optimizers' order.
    assert entry["ranking"] == ["adam", "hvadam", "sgd", "yogi"]
    assert entry["ranks"] == {"adam": 1, "hvadam": 1, "sgd": 3, "yogi": 4}
    assert entry["winner"] == "adam" and entry["tied_winners"] == ["adam", "hvadam"]


def test_valley_verdict_sentences():
    functions = {
        "ahead": _valley_entry({"hvadam": -6.0, "adam": -5.0, "sgd": -2.0}),
        "level": _valley_entry({"hvadam": -5.05, "adam": -5.0, "sgd": -2.0}),
        "behind": _valley_entry({"hvadam": -3.0, "adam": -5.0, "sgd": -2.0}),
        "ablation": _valley_entry({"hvadam": -3.0, "hvadam2": -7.0, "adam": -2.9}),
    }
    for entry in functions.values():
        valley._rank(entry)
    lines = valley_report._verdict(functions)
    assert lines[:3] == [
        "## Verdict",
        "",
        "Against the best baseline on each function (HVAdam's own ablations excluded), HVAdam "
        "is clearly faster (by more than 0.1 decades of mean relative gap) on 1 of 4 "
        "functions, ties on 2, and is slower on 1.",
    ]
    assert lines[4:8] == [
        "- Faster: `ahead` (-1.00 vs Adam).",
        "- Tied: `level` (-0.05 vs Adam), `ablation` (-0.10 vs Adam).",
        "- Slower: `behind` (+2.00 vs Adam).",
        "- An ablation of HVAdam (paper Table 5) is the overall winner on: `ablation` "
        "(HVAdam² (no restart)).",
    ]


def test_lm_ranking_treats_equal_perplexities_as_ties():
    by_optimizer = {
        "adam": {"valid_mean": 38.480001},
        "hvadam": {"valid_mean": 38.479999},
        "sgd": {"valid_mean": None},
        "yogi": {"valid_mean": 38.2},
    }
    assert lm._ranking(by_optimizer) == ["yogi", "adam", "hvadam", "sgd"]


def _gan_task(**means_and_stds) -> dict:
    return {
        "optimizers": {
            name: {"test_mean": mean, "test_std": std, "failed": mean is None}
            for name, (mean, std) in means_and_stds.items()
        }
    }


def test_gan_verdicts():
    assert gan_report.hvadam_verdict(_gan_task(adam=(1.0, 0.1))) == "not run"
    assert gan_report.hvadam_verdict(_gan_task(hvadam=(None, None), adam=(1.0, 0.1))) == "failed"
    assert gan_report.hvadam_verdict(_gan_task(hvadam=(0.5, 0.1), adam=(1.0, 0.1))) == "best"
    assert gan_report.hvadam_verdict(_gan_task(hvadam=(1.1, 0.1), adam=(1.0, 0.1))) == "tied"
    assert gan_report.hvadam_verdict(_gan_task(hvadam=(2.0, 0.1), adam=(1.0, 0.1))) == "behind"
    # HVAdam's ablations are not its rivals.
    assert gan_report.hvadam_verdict(_gan_task(hvadam=(2.0, 0.1), hvadam2=(0.1, 0.0))) == "best"
    task = _gan_task(hvadam=(1.00001, 0.1), adam=(0.99999, 0.1), sgd=(None, None))
    assert gan_report._ranked(task) == [
        "hvadam",
        "adam",
        "sgd",
    ]  # equal to 4 digits: optimizer order


def test_valley_names_an_ablation_that_ties_with_hvadam():
    functions = {"even": _valley_entry({"hvadam": -4.0001, "hvadam2": -4.0003, "adam": -3.0})}
    valley._rank(functions["even"])
    lines = valley_report._verdict(functions)
    assert lines[4] == "- Faster: `even` (-1.00 vs Adam)."
    assert lines[7] == (
        "- An ablation of HVAdam (paper Table 5) is the overall winner on: `even` "
        "(HVAdam² (no restart), tied with HVAdam)."
    )
