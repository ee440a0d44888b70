"""The variants study's figure: each HVAdam-family member's diagnostics over a run, per task."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hvadam_bench.runner import atomic_write_bytes  # noqa: E402

PANELS = (
    ("delta", "δ (EMA of the cosine)", "linear"),
    ("hidden_share", "hidden step / total change", "log"),
    ("ratio_mean", "mean s / mean EMA(g²)", "log"),
)


def diagnostics_figure(results: dict, path: Path) -> None:
    """One row per task, one column per diagnostic; one line per member (its first final
    run, or on a landscape the median over held-out starts). Written atomically."""
    labels = results["meta"]["labels"]
    tasks = [
        (name, task)
        for name, task in results["tasks"].items()
        if any("diagnostics" in record for record in task["optimizers"].values())
    ]
    if not tasks:
        return
    figure, axes = plt.subplots(
        len(tasks), len(PANELS), figsize=(13, 2.3 * len(tasks)), squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for row, (name, task) in enumerate(tasks):
        members = [n for n, r in task["optimizers"].items() if "diagnostics" in r]
        for column, (key, title, scale) in enumerate(PANELS):
            axis = axes[row][column]
            for index, member in enumerate(members):
                series = task["optimizers"][member]["diagnostics"]["series"]
                points = [(r["step"], r.get(key)) for r in series if r.get(key) is not None]
                points = [(s, v) for s, v in points if v == v and (scale == "linear" or v > 0)]
                if points:
                    steps, values = zip(*points)
                    axis.plot(steps, values, color=colours(index % 10), label=labels[member],
                              linewidth=2.0 if index == 0 else 1.0)  # fmt: skip
            axis.set_yscale(scale)
            axis.set_title(f"{name}: {title}", fontsize=8)
            axis.tick_params(labelsize=7)
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, loc="upper center", ncol=5, fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / len(tasks)))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
