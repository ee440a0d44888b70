"""The variants study's verdict and report.

A member of the HVAdam family is compared with the paper's HVAdam, and the best member with
the best baseline, task by task. A difference counts only beyond the noise: on a landscape,
more than the valley study's tie margin (0.1 decades of relative gap, a factor 1.26); on a
training task, more than both standard deviations over the final seeds (as the gan study
calls an optimizer clearly best). Anything within is a tie; a member with any diverged run
is marked as diverged, whatever its mean.
"""

from __future__ import annotations

import math
import statistics

from hvadam_bench.reporting.markdown import fmt, table
from hvadam_bench.reporting.verdicts import comparable, comparable_decades
from hvadam_bench.studies.valley_report import TIE

SYMBOLS = {"better": "+", "tie": "=", "worse": "−", "diverged": "✗"}
SERIES_POINTS = 12  # points of each diagnostic kept per run in the JSON


def summarise_diagnostics(logs: list[list[dict]]) -> dict:
    """Scalar summaries over every log (one per run and optimizer instance) and the first
    log's series, thinned to :data:`SERIES_POINTS` points."""
    records = [record for log in logs for record in log]

    def values(name: str) -> list[float]:
        found = (record.get(name) for record in records)
        return [v for v in found if v is not None and math.isfinite(v)]

    def median(name: str) -> float | None:
        found = values(name)
        return statistics.median(found) if found else None

    def maximum(name: str) -> float | None:
        found = values(name)
        return max(found) if found else None

    last_restarts = [log[-1].get("restarts") for log in logs if log]
    first = logs[0] if logs else []
    stride = max(1, math.ceil(len(first) / SERIES_POINTS))
    return {
        "delta_max": maximum("delta"),
        "b_max": maximum("b"),
        "hidden_share_median": median("hidden_share"),
        "hidden_share_max": maximum("hidden_share"),
        "restarts": max((r for r in last_restarts if r is not None), default=None),
        "ratio_median": median("ratio_mean"),
        "series": first[::stride],
    }


def _comparable(task: dict, name: str) -> float:
    """The task's score for ``name`` as a number to minimise, rounded as the bench rounds."""
    record = task["optimizers"][name]
    if record.get("diverged") or record.get("score") is None:
        return math.inf
    if task["kind"] == "landscape":
        return comparable_decades(record["score"])
    return comparable(-record["score"] if task["higher_is_better"] else record["score"])


def compare(task: dict, name: str, other: str) -> dict:
    """``name`` against ``other`` on ``task``: ``outcome`` (better, worse, tie, diverged) and
    ``difference`` (name's score minus other's, in the task's metric)."""
    mine, theirs = task["optimizers"][name], task["optimizers"][other]
    if mine.get("diverged") or mine.get("score") is None:
        return {"outcome": "diverged", "difference": None}
    if theirs.get("diverged") or theirs.get("score") is None:
        return {"outcome": "better", "difference": None}
    difference = mine["score"] - theirs["score"]
    if task["kind"] == "landscape":
        margin = TIE
    else:
        margin = max(mine.get("std") or 0.0, theirs.get("std") or 0.0)
    gain = -difference if task["higher_is_better"] else difference  # negative: name is better
    if _comparable(task, name) == _comparable(task, other) or abs(gain) <= margin:
        outcome = "tie"
    else:
        outcome = "better" if gain < 0 else "worse"
    return {"outcome": outcome, "difference": difference}


def _best(task: dict, names: list[str]) -> str:
    return min(names, key=lambda name: (_comparable(task, name), names.index(name)))


def verdicts(results: dict) -> dict:
    """Per task: the best member, how it and every member compare with the paper's HVAdam,
    how the best member and HVAdam compare with the best baseline; per member, its tally;
    and the preset to offer (a member better than HVAdam on most tasks that never diverged),
    or None."""
    meta = results["meta"]
    reference, baselines = meta["reference"], meta["baselines"]
    per_task = {}
    tally: dict[str, dict[str, int]] = {}
    for task_name, task in results["tasks"].items():
        names = list(task["optimizers"])
        members = [name for name in names if name not in baselines]
        best_member = _best(task, members)
        best_baseline = _best(task, [n for n in names if n in baselines]) if baselines else None
        against_reference = {
            name: compare(task, name, reference) for name in members if name != reference
        }
        for name, result in against_reference.items():
            counts = tally.setdefault(name, {"better": 0, "tie": 0, "worse": 0, "diverged": 0})
            counts[result["outcome"]] += 1
        entry = {
            "best_member": best_member,
            "best_member_vs_reference": (
                compare(task, best_member, reference) if best_member != reference else None
            ),
            "best_baseline": best_baseline,
            "members_vs_reference": against_reference,
        }
        if best_baseline is not None:
            entry["best_member_vs_baseline"] = compare(task, best_member, best_baseline)
            entry["reference_vs_baseline"] = compare(task, reference, best_baseline)
        per_task[task_name] = entry
    tasks = len(per_task)
    # The rule: better than HVAdam on most tasks, and no diverged run anywhere. Its
    # losses are not disqualifying, but the report lists them beside the offer.
    candidates = [
        name for name, counts in tally.items()
        if counts["better"] > tasks / 2 and counts["diverged"] == 0
    ]  # fmt: skip
    preset = max(
        candidates, key=lambda name: (tally[name]["better"], -tally[name]["worse"]), default=None
    )
    return {"tasks": per_task, "tally": tally, "preset": preset, "task_count": tasks}


# --- markdown ---------------------------------------------------------------------------------


def _difference(task: dict, result: dict | None) -> str:
    if result is None:
        return "(it is HVAdam)"
    outcome, difference = result["outcome"], result["difference"]
    if difference is None:
        return outcome
    unit = " dec" if task["kind"] == "landscape" else ""
    text = f"{outcome} ({difference:+.3g}{unit})"
    return f"**{text}**" if outcome in ("worse", "diverged") else text


def render_report(results: dict) -> str:
    meta, verdict = results["meta"], results["verdict"]
    labels = meta["labels"]
    seconds = meta["seconds"]
    lines = [
        "# HVAdam variants beyond the paper",
        "",
        f"Generated by `hvadam-bench variants` (preset `{meta['preset']}`, "
        f"{len(meta['optimizers'])} optimizers, {meta['jobs']} worker process(es), "
        f"{seconds['total']:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k not in ("total", "cpu"))
        + (f"; {seconds['cpu']:.0f} CPU seconds" if "cpu" in seconds else "")
        + "). Do not edit by hand: rerun the command.",
        "",
        f"**Protocol.** {meta['protocol']}",
        "",
        "**Verdict rule.** " + " ".join(__doc__.split("\n\n")[1].split()),
        "",
        "## The variants, and why each is tried",
        "",
        table(
            ["name", "label", "options", "why"],
            [[m["name"], m["label"], _options(m["options"]), m["why"]] for m in meta["members"]],
        ),
        "",
        "Baselines: " + ", ".join(labels[name] for name in meta["baselines"]) + ".",
        "",
        "## Verdict",
        "",
        "Per task: the best HVAdam-family member, how it compares with the paper's HVAdam and "
        "with the best baseline (score difference in the task's metric; `dec`: decades of "
        "relative gap, negative is better there), and how the paper's HVAdam compares with "
        "the best baseline. Losses are in bold.",
        "",
        table(
            [
                "task",
                "best variant",
                "vs HVAdam",
                "best baseline",
                "best variant vs it",
                "HVAdam vs it",
            ],
            [
                [
                    name,
                    labels[entry["best_member"]],
                    _difference(results["tasks"][name], entry["best_member_vs_reference"]),
                    labels.get(entry["best_baseline"], "—"),
                    _difference(results["tasks"][name], entry.get("best_member_vs_baseline")),
                    _difference(results["tasks"][name], entry.get("reference_vs_baseline")),
                ]
                for name, entry in verdict["tasks"].items()
            ],
        ),  # fmt: skip
        "",
        f"Each variant against the paper's HVAdam over the {verdict['task_count']} tasks:",
        "",
        table(
            ["variant", "better", "tie", "worse", "diverged"],
            [
                [labels[name], str(c["better"]), str(c["tie"]), str(c["worse"]), str(c["diverged"])]
                for name, c in verdict["tally"].items()
            ],
        ),  # fmt: skip
        "",
        "Task by task (`+` better than HVAdam, `=` tie, `−` worse, `✗` diverged):",
        "",
        table(
            ["variant", *verdict["tasks"]],
            [
                [
                    labels[name],
                    *(
                        SYMBOLS[entry["members_vs_reference"][name]["outcome"]]
                        for entry in verdict["tasks"].values()
                    ),
                ]
                for name in verdict["tally"]
            ],
        ),  # fmt: skip
        "",
        _preset_paragraph(verdict, labels, meta),
        "",
    ]
    if meta.get("cuts"):
        lines += ["What this preset cuts: " + "; ".join(meta["cuts"]) + ".", ""]
    lines += ["## Tasks", ""]
    for name, task in results["tasks"].items():
        lines += _task_section(name, task, verdict["tasks"][name], labels)
    lines += [
        "## Diagnostics, read",
        "",
        "δ: the EMA of the cosine between the hidden vector and the momentum; b: the hidden "
        "step size b_t = 10^(6δ-3); share: ‖α2·b·v‖ / ‖total parameter change‖ of a step; "
        "ratio: mean(HVAdam's s) / mean(Adam's EMA of g²) at the same β2 (above 1, HVAdam's "
        "adaptive step is smaller than Adam's by about its square root). Medians over the "
        "recorded steps (every 10th) of the final runs; restarts: the most any final run had.",
        "",
        _diagnostics_table(results, meta["reference"], labels),
        "",
        "![diagnostics over training](diagnostics.png)",
        "",
    ]
    return "\n".join(lines)


def _options(options: dict) -> str:
    return ", ".join(f"`{k}={v!r}`" for k, v in options.items()) or "(defaults)"


def _preset_paragraph(verdict: dict, labels: dict, meta: dict) -> str:
    preset = verdict["preset"]
    if preset is None:
        return (
            "**Preset: none.** No variant is better than the paper's HVAdam on most tasks "
            "without a diverged run, so none is offered as a preset."
        )
    member = next(m for m in meta["members"] if m["name"] == preset)
    counts = verdict["tally"][preset]
    worse = [
        name for name, entry in verdict["tasks"].items()
        if entry["members_vs_reference"][preset]["outcome"] == "worse"
    ]  # fmt: skip
    losses = f"worse on {len(worse)}: {', '.join(worse)}" if worse else "never worse"
    return (
        f"**Preset: {labels[preset]}** ({_options(member['options'])}): better than the "
        f"paper's HVAdam on {counts['better']} of {verdict['task_count']} tasks, tied on "
        f"{counts['tie']}, {losses}; no run diverged."
    )


def _task_section(name: str, task: dict, entry: dict, labels: dict) -> list[str]:
    rows, bold = [], set()
    order = sorted(
        task["optimizers"], key=lambda n: (_comparable(task, n), list(task["optimizers"]).index(n))
    )
    for index, optimizer in enumerate(order):
        record = task["optimizers"][optimizer]
        diagnostics = record.get("diagnostics") or {}
        if optimizer == entry["best_member"]:
            bold.add(index)
        second = f", β2 {record['beta2']:g}" if "beta2" in record else ""
        rows.append(
            [
                labels[optimizer], f"{record['lr']:g}{second}",
                f"{fmt(record['score'])} ± {fmt(record.get('std'))}",
                f"{record['diverged']}/{record['runs']}",
                fmt(diagnostics.get("delta_max")), fmt(diagnostics.get("b_max")),
                fmt(diagnostics.get("hidden_share_median")), fmt(diagnostics.get("restarts")),
                fmt(diagnostics.get("ratio_median")),
            ]
        )  # fmt: skip
    return [
        f"### {name}",
        "",
        f"{task['description']}. Score: {task['metric']}, mean ± std over the held-out "
        f"{'starts' if task['kind'] == 'landscape' else 'seeds'}; best variant in bold.",
        "",
        table(
            [
                "optimizer",
                "chosen lr",
                "score",
                "diverged",
                "δ max",
                "b max",
                "share",
                "restarts",
                "ratio",
            ],
            rows,
            bold,
        ),  # fmt: skip
        "",
    ]


def _diagnostics_table(results: dict, reference: str, labels: dict) -> str:
    """Per task, the paper's HVAdam's diagnostics beside those of the task's best variant."""
    rows = []
    for name, task in results["tasks"].items():
        best = results["verdict"]["tasks"][name]["best_member"]
        for member in dict.fromkeys((reference, best)):
            diagnostics = task["optimizers"][member].get("diagnostics") or {}
            rows.append(
                [name, labels[member], *(fmt(diagnostics.get(key)) for key in (
                    "delta_max", "b_max", "hidden_share_median", "hidden_share_max",
                    "restarts", "ratio_median"))]
            )  # fmt: skip
    return table(
        ["task", "optimizer", "δ max", "b max", "share (median)", "share (max)", "restarts",
         "ratio"],
        rows,
    )  # fmt: skip
