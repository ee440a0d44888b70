"""Figures, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

# One colour per optimizer across every figure; HVAdam is drawn thicker.
COLOURS = {
    "hvadam": "#d62728",
    "hvadam2": "#ff9896",
    "hvadam1": "#e377c2",
    "hvadam0": "#c7c7c7",
    "sgd": "#7f7f7f",
    "adam": "#1f77b4",
    "adamw": "#aec7e8",
    "adabelief": "#2ca02c",
    "radam": "#98df8a",
    "yogi": "#9467bd",
    "adabound": "#c5b0d5",
    "rmsprop": "#8c564b",
    "lookahead": "#17becf",
}


def optimizer_style(name: str) -> dict:
    """Colour, width and layer of an optimizer's line: HVAdam drawn thick, on top."""
    return {
        "color": COLOURS.get(name, "black"),
        "linewidth": 2.2 if name == "hvadam" else 1.1,
        "zorder": 3 if name == "hvadam" else 2,
    }


def save(figure, path: Path) -> None:
    # No timestamp in the file, so that a rerun with the same results gives the same bytes.
    figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def contour_trajectories(landscape, trajectories: Mapping[str, torch.Tensor], labels, path: Path):
    """The paper's Figures 1-2: the landscape's contours with each optimizer's path."""
    points = torch.cat([t for t in trajectories.values()] + [landscape.minimizer[None]])
    points = points[torch.isfinite(points).all(dim=1)]
    low, high = points.min(dim=0).values, points.max(dim=0).values
    pad = (high - low).clamp(min=1.0) * 0.15
    xs = torch.linspace(float(low[0] - pad[0]), float(high[0] + pad[0]), 200, dtype=points.dtype)
    ys = torch.linspace(float(low[1] - pad[1]), float(high[1] + pad[1]), 200, dtype=points.dtype)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")
    values = landscape.value(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
    values = values.reshape(grid_x.shape) - landscape.minimum
    figure, axes = plt.subplots(figsize=(6.4, 5.2))
    levels = torch.quantile(values.reshape(-1), torch.linspace(0.0, 0.97, 18, dtype=values.dtype))
    axes.contour(
        grid_x, grid_y, values, levels=sorted(set(levels.tolist())), cmap="Greys", linewidths=0.6
    )
    for name, path_points in trajectories.items():
        axes.plot(path_points[:, 0], path_points[:, 1], label=labels[name], **optimizer_style(name))
        axes.plot(path_points[0, 0], path_points[0, 1], "o", color=COLOURS.get(name), markersize=3)
    axes.plot(*landscape.minimizer.tolist(), "x", color="orange", markersize=12, mew=3)
    axes.set_title(f"{landscape.name}: {landscape.description}")
    axes.legend(fontsize=8, loc="best")
    save(figure, path)


def loss_curves(curves: Mapping[str, Mapping[str, list]], labels, path: Path) -> None:
    """Median relative gap (f - f*)/(f₀ - f*) over held-out starts, per function."""
    count = len(curves)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, (function, by_optimizer) in zip(axes.flat, curves.items()):
        for name, curve in by_optimizer.items():
            axis.plot(
                [max(c, 1e-12) if c is not None else float("nan") for c in curve],
                **optimizer_style(name),
                label=labels[name],
            )
        axis.set_yscale("log")
        axis.set_title(function, fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[count:]:
        axis.axis("off")
    axes.flat[0].set_ylabel("relative gap (median)")
    handles, names = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=7, fontsize=8)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    save(figure, path)


def hidden_vector_convergence(table_steps, cosine_curve, path: Path) -> None:
    """The paper's Figure 3: v_t and m̂_t on Table 1's gradients, and cos(v_t, v*) on the
    Table-1 function."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.4))
    for step, (m_hat, v) in enumerate(table_steps, start=1):
        left.annotate(
            "",
            xy=m_hat,
            xytext=(0, 0),
            arrowprops={"arrowstyle": "->", "color": "#1f77b4", "alpha": 0.35 + 0.13 * step},
        )
        left.annotate(
            "", xy=v, xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "#d62728", "lw": 2}
        )
        left.text(m_hat[0], m_hat[1], f" m̂{step}", color="#1f77b4", fontsize=8)
    left.plot([0, 3], [0, 3], "--", color="orange", label="v* = (1, 1) direction")
    left.plot([], [], color="#1f77b4", label="m̂_t")
    left.plot([], [], color="#d62728", label="v_t")
    left.set_xlim(-3.5, 5.5)
    left.set_ylim(-3.5, 5.5)
    left.set_aspect("equal")
    left.legend(fontsize=8)
    left.set_title("Table 1: v_t = (1, 1) from step 2 on")
    right.plot(range(1, len(cosine_curve) + 1), cosine_curve, color="#d62728")
    right.set_xscale("log")
    right.set_xlabel("step")
    right.set_ylabel("cos(v_t, v*)")
    right.set_ylim(-1.05, 1.05)
    right.grid(alpha=0.3)
    right.set_title("On f = 4|x-y|+|x+y| (median over starts)")
    save(figure, path)


def hvadam_dynamics(dynamics: Mapping[str, Mapping[str, list]], path: Path) -> None:
    """HVAdam's δ, b_t and restarts over time, one column per function."""
    figure, axes = plt.subplots(2, len(dynamics), figsize=(5.2 * len(dynamics), 6), squeeze=False)
    for column, (function, series) in enumerate(dynamics.items()):
        top, bottom = axes[0, column], axes[1, column]
        top.plot(series["delta"], color="#d62728", label="δ")
        restarts = series["restart_steps"]
        for step in restarts:
            top.axvline(step, color="black", alpha=0.25, linewidth=0.8)
        top.set_title(f"{function}: δ ({len(restarts)} restarts, grey lines)")
        top.grid(alpha=0.3)
        bottom.plot(
            [b if b > 0 else float("nan") for b in series["hidden_step_size"]], color="#9467bd"
        )
        bottom.set_yscale("log")
        bottom.set_xlabel("step")
        bottom.set_title("b_t applied (gaps: no hidden step)")
        bottom.grid(alpha=0.3)
    save(figure, path)


def speed_curves(results: Mapping, path: Path) -> None:
    """ms per step against parameter count, log-log, with HVAdam's bandwidth floor."""
    sizes = sorted(int(s) for s in results["sizes"])
    names = list(next(iter(results["sizes"].values())))
    figure, axes = plt.subplots(figsize=(7.5, 5))
    for name in names:
        times = [results["sizes"][str(s)][name]["median_ms"] for s in sizes]
        family = name.split("_")[0]
        axes.plot(
            sizes, times, marker="o",
            linestyle="-" if family == "hvadam" else "--",
            linewidth=2.2 if family == "hvadam" else 1.2, label=name,
        )  # fmt: skip
    floor = (
        [results["sizes"][str(s)][names[0]]["floor_ms"] for s in sizes]
        if names[0].startswith("hvadam")
        else None
    )
    if floor:
        axes.plot(sizes, floor, color="black", linestyle=":", label="HVAdam bandwidth floor")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("parameters")
    axes.set_ylabel("ms per step (median)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, ncol=2)
    save(figure, path)
