"""The valley-dilemma study (paper Figures 1-3, Table 1).

The same for every optimizer: on each function, every (lr, second hyperparameter)
of the shared grid runs from the same *tuning* starts; the configuration with the lowest mean
log relative gap over the run (lower is faster and more precise) is chosen; it then runs from
separate, held-out *evaluation* starts, which alone feed the tables. The relative gap is
``(f - f*) / (f₀ - f*)``.
"""

from __future__ import annotations

import argparse
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hvadam import HVAdam
from hvadam_bench.optimizers import DEFAULT_OPTIMIZERS, PAPER_SET, SPECS, check_names, spec
from hvadam_bench.parallel import run_in_workers, single_thread
from hvadam_bench.reporting.verdicts import (
    DECADE_DECIMALS,
    comparable_decades,
    first_best,
    ranks,
)
from hvadam_bench.runner import (
    BenchError,
    Counter,
    Grid,
    atomic_write_json,
    atomic_write_text,
    common_arguments,
    default_jobs,
    finite_or_none,
    job_count,
    log_spaced,
    names,
    numbers,
    prepare_output,
    progress,
    versions,
)
from hvadam_bench.studies.valley_report import TIE, render_report, write_figures
from hvadam_bench.workloads.batched import run_batch
from hvadam_bench.workloads.landscapes import DTYPE, FULL, QUICK, all_names, landscape

GAP_FLOOR = 1e-12  # relative gaps below this count as solved (float64 round-off level)
THRESHOLDS = (1e-2, 1e-4)


@dataclass
class ValleyConfig:
    functions: list[str]
    optimizers: list[str]
    grid: Grid
    steps: int
    tune_starts: int
    eval_starts: int
    seed: int = 0
    preset: str = "custom"

    @classmethod
    def preset_named(cls, name: str) -> ValleyConfig:
        if name == "quick":
            return cls(
                functions=list(QUICK), optimizers=list(DEFAULT_OPTIMIZERS), steps=200,
                tune_starts=3, eval_starts=4, preset="quick",
                grid=Grid(lrs=log_spaced(1e-3, 1.0, 2), beta2s=(0.99, 0.999), momenta=(0.5, 0.9)),
            )  # fmt: skip
        return cls(
            functions=list(FULL), optimizers=list(DEFAULT_OPTIMIZERS), steps=1000,
            tune_starts=4, eval_starts=8, preset="full",
            grid=Grid(
                lrs=log_spaced(1e-4, 1.0, 3), beta2s=(0.9, 0.99, 0.999), momenta=(0.5, 0.9, 0.99)
            ),
        )  # fmt: skip

    def validate(self) -> None:
        for name in self.functions:
            try:
                landscape(name)
            except ValueError as error:
                raise BenchError(str(error)) from None
        check_names(self.optimizers)
        if not self.functions or not self.optimizers:
            raise BenchError("nothing to run: give at least one function and one optimizer")
        if self.steps < 1 or self.tune_starts < 1 or self.eval_starts < 1:
            raise BenchError("--steps and the numbers of starts must be at least 1")


def _seed(base: int, name: str, role: int) -> int:
    return base * 1_000_003 + zlib.crc32(name.encode()) % 100_000 * 10 + role


def relative_gap(values: torch.Tensor, minimum: float) -> torch.Tensor:
    """(f - f*) / (f₀ - f*) along the first axis, clamped at :data:`GAP_FLOOR`; NaN or inf
    (a diverged run) becomes inf."""
    gap = (values - minimum) / (values[:1] - minimum)
    gap = gap.clamp(min=GAP_FLOOR)
    return torch.where(torch.isfinite(gap), gap, torch.full_like(gap, math.inf))


def criterion(gap: torch.Tensor) -> torch.Tensor:
    """Mean log10 relative gap over steps 1..T and starts (last axis): one score per config.
    Any diverged run makes its configuration's score inf."""
    return gap[1:].log10().mean(dim=0).mean(dim=-1)


def _steps_to(curve: torch.Tensor, threshold: float) -> int | None:
    hits = torch.nonzero(curve <= threshold)
    return int(hits[0]) if len(hits) else None


def run(config: ValleyConfig, out: Path, show_progress: bool = True, jobs: int = 1) -> dict:
    """Run the study, write ``valley.json``, ``report.md`` and the figures into ``out``.

    Every (function, optimizer) pair is independent and deterministic (its starts come from
    its own seeds) and runs on one thread, so ``jobs`` worker processes give the result of
    one process."""
    config.validate()
    results: dict = {"meta": _meta(config), "functions": {}}
    figures: dict = {"trajectories": {}, "curves": {}, "dynamics": {}, "cosine": None}
    tasks = [(f, o) for f in config.functions for o in config.optimizers]
    if jobs > 1:
        counter = Counter(len(tasks), "valley", show_progress)
        try:
            done = run_in_workers(
                tasks, _task_runner, (config,), jobs, on_done=lambda task: counter.tick()
            )
        finally:
            counter.close()
    else:
        with single_thread():  # tiny tensors: threads only add overhead, and change nothing
            done = {
                task: _run_task(config, *task)
                for task in progress(tasks, len(tasks), "valley", show_progress)
            }
    for (function, optimizer), (record, trajectory, hidden) in done.items():
        entry = results["functions"].setdefault(function, _function_entry(function))
        entry["optimizers"][optimizer] = record
        figures["curves"].setdefault(function, {})[optimizer] = record["curve"]
        if trajectory is not None:
            figures["trajectories"].setdefault(function, {})[optimizer] = trajectory
        if hidden is not None:
            figures["dynamics"][function] = _dynamics(hidden)
            direction = landscape(function).valley_direction
            if direction is not None:
                figures.setdefault("cosines", {})[function] = _cosine_to_valley(
                    hidden["vector"][:, 0], direction
                )
    for entry in results["functions"].values():
        _rank(entry)
    results["table1"] = table1_reproduction()
    atomic_write_json(out / "valley.json", results)
    write_figures(figures, results, out)
    atomic_write_text(out / "report.md", render_report(results))
    return results


def _task_runner(config: ValleyConfig):
    """In a worker process: the function that runs one (function, optimizer) pair."""
    return lambda task: _run_task(config, *task)


def _run_task(config: ValleyConfig, function: str, optimizer: str) -> tuple:
    """Tune ``optimizer`` on ``function``'s tuning starts, run the chosen configuration from
    the held-out starts; return its record, its first trajectory (2-D functions of the
    paper's set only) and its hidden-vector history (HVAdam only)."""
    land = landscape(function)
    optimizer_spec = spec(optimizer)
    configs = config.grid.configs(optimizer_spec.second)
    tune = run_batch(
        optimizer_spec, land, land.starts(config.tune_starts, _seed(config.seed, function, 0)),
        configs, config.steps,
    )  # fmt: skip
    scores = criterion(relative_gap(tune.values, land.minimum))
    chosen = first_best([comparable_decades(score) for score in scores.tolist()])
    lr, second = configs[chosen]
    two_d = land.dim == 2
    evaluation = run_batch(
        optimizer_spec, land, land.starts(config.eval_starts, _seed(config.seed, function, 1)),
        [(lr, second)], config.steps, record_trajectory=two_d,
        record_hidden=optimizer_spec.name == "hvadam",
    )  # fmt: skip
    gap = relative_gap(evaluation.values, land.minimum)[:, 0]  # (steps + 1, starts)
    median_curve = gap.median(dim=1).values
    record = {
        "label": optimizer_spec.label,
        "source": optimizer_spec.source,
        "lr": lr,
        optimizer_spec.second: second,
        "criterion_tuning": finite_or_none(float(scores[chosen])),
        "criterion_eval": finite_or_none(float(criterion(gap[:, None])[0])),
        "final_gap_median": finite_or_none(float(median_curve[-1])),
        "final_loss_median": finite_or_none(
            float((evaluation.values[-1, 0] - land.minimum).median())
        ),
        "diverged_starts": int((~torch.isfinite(evaluation.values[-1, 0])).sum()),
        **{f"steps_to_{t:g}": _steps_to(median_curve, t) for t in THRESHOLDS},
        "grid": [
            {"lr": c[0], optimizer_spec.second: c[1], "criterion": finite_or_none(float(s))}
            for c, s in zip(configs, scores)
        ],
        "curve": [float(f"{c:.4g}") if math.isfinite(c) else None for c in median_curve.tolist()],
    }
    trajectory = evaluation.trajectory[:, 0, 0] if two_d and optimizer in PAPER_SET else None
    return record, trajectory, evaluation.hidden


def _meta(config: ValleyConfig) -> dict:
    meta = asdict(config)
    meta["grid"] = asdict(config.grid)
    meta.update(
        protocol=__doc__.split("\n\n")[1].replace("\n", " "),
        criterion="mean over steps 1..T and starts of log10 relative gap (lower is better)",
        tie_decades=TIE,
        compared_to_decimals=DECADE_DECIMALS,
        versions=versions(),
    )
    return meta


def _function_entry(name: str) -> dict:
    land = landscape(name)
    return {"description": land.description, "dim": land.dim, "optimizers": {}}


def _rank(entry: dict) -> None:
    """Rank the optimizers by held-out score to :data:`DECADE_DECIMALS` decimals: equal
    scores share a rank (``ranks``) and keep the optimizers' order in ``ranking``."""
    scores = {
        name: comparable_decades(r["criterion_eval"]) for name, r in entry["optimizers"].items()
    }
    entry["ranking"] = sorted(scores, key=lambda name: scores[name])  # stable: ties keep order
    entry["ranks"] = ranks(scores)
    entry["winner"] = entry["ranking"][0]
    entry["tied_winners"] = [name for name, rank in entry["ranks"].items() if rank == 1]


def _dynamics(hidden: dict) -> dict:
    restarts = hidden["restart_count"][:, 0, 0]
    steps = torch.nonzero(restarts.diff() > 0).flatten() + 1
    return {
        "delta": hidden["delta"][:, 0, 0].tolist(),
        "hidden_step_size": hidden["hidden_step_size"][:, 0, 0].tolist(),
        "restart_steps": steps.tolist(),
    }


def _cosine_to_valley(vectors: torch.Tensor, direction: torch.Tensor) -> list[float]:
    """cos(v_t, v*) per step, median over starts (v* up to sign: the floor runs both ways)."""
    cosine = torch.nn.functional.cosine_similarity(
        vectors, direction.to(vectors)[None, None], dim=-1
    )
    return cosine.abs().median(dim=1).values.tolist()


def table1_reproduction() -> dict:
    """The paper's Table 1: HVAdam's m̂_t and v_t on the gradients (5,-3), (-3,5), ... with the
    erratum of SPEC (m̂_y at step 2 is +1.2105)."""
    point = torch.zeros(2, dtype=DTYPE, requires_grad=True)
    opt = HVAdam([point], lr=0.0)  # lr 0: the table's gradient sequence is fixed
    rows = []
    for step in range(5):
        point.grad = torch.tensor([5.0, -3.0] if step % 2 == 0 else [-3.0, 5.0], dtype=DTYPE)
        opt.step()
        state = opt.state[point]
        m_hat = state["exp_avg"] / (1 - 0.9 ** state["step"].to(DTYPE))
        rows.append(
            {
                "m_hat": [round(x, 4) for x in m_hat.tolist()],
                "v": [round(x, 4) for x in state["hidden_vector"].tolist()],
            }
        )
    paper = {
        "m_hat": [[5, -3], [0.7895, 1.2105], [2.3432, -0.3432], [0.7895, 1.2105], [1.8177, 0.1823]],
        "v": [[5, -3], [1, 1], [1, 1], [1, 1], [1, 1]],
    }
    return {"measured": rows, "paper_with_erratum": paper}


HELP = "the valley-dilemma study (paper Figures 1-3, Table 1)"
# The report sections that `hvadam-bench all` lifts into its combined report.
SUMMARY_SECTIONS = ("Verdict", "Summary")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(
        parser, "valley", "small grid and function set, about 80 s of CPU over 2 worker processes"
    )
    parser.add_argument("--functions", type=names, help="comma-separated function names")
    parser.add_argument("--optimizers", type=names, help="comma-separated optimizer names")
    parser.add_argument("--lrs", type=numbers, help="learning-rate grid, comma-separated")
    parser.add_argument("--beta2s", type=numbers, help="β2 grid of the adaptive methods")
    parser.add_argument("--momenta", type=numbers, help="momentum grid of SGD (as many as β2)")
    parser.add_argument("--steps", type=int, help="steps per run")
    parser.add_argument("--tune-starts", type=int, help="starting points used for tuning")
    parser.add_argument("--eval-starts", type=int, help="held-out starting points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs", type=job_count, help="worker processes (default: 2, or 1 on a one-core machine); "
        "results do not depend on it",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list functions and optimizers")


def main(args: argparse.Namespace) -> int:
    if args.list:
        print("functions: " + ", ".join(all_names()))
        print("optimizers: " + ", ".join(f"{n} ({s.source})" for n, s in SPECS.items()))
        return 0
    config = ValleyConfig.preset_named(args.preset)
    for name in ("functions", "optimizers", "steps", "tune_starts", "eval_starts", "seed"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    if args.lrs is not None or args.beta2s is not None or args.momenta is not None:
        beta2s = args.beta2s if args.beta2s is not None else config.grid.beta2s
        momenta = args.momenta if args.momenta is not None else config.grid.momenta[: len(beta2s)]
        config.grid = Grid(
            lrs=args.lrs if args.lrs is not None else config.grid.lrs,
            beta2s=beta2s,
            momenta=momenta,
        )
    config.validate()
    jobs = args.jobs if args.jobs is not None else default_jobs("quick")
    if jobs < 1:
        raise BenchError("--jobs must be at least 1")
    out = prepare_output(args.out)
    results = run(config, out, show_progress=not args.no_progress, jobs=jobs)
    winners = {name: entry["winner"] for name, entry in results["functions"].items()}
    print(f"wrote {out / 'valley.json'}, {out / 'report.md'} and figures")
    for name, winner in winners.items():
        print(f"  {name:<18} fastest: {winner}")
    return 0
