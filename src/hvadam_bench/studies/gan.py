"""The GAN study (paper Figure 6, Table 4): WGAN, WGAN-GP and SN-GAN trained by each optimizer.

The optimizer under test drives both networks (one instance for the generator, one for the
critic, same hyperparameters). Every optimizer runs the same learning-rate grid once on the
tuning seed; the lr whose generator scores best on the *validation* reference (a held-out
target sample or data split, fresh generator noise) is kept and rerun with the final seeds,
which alone feed the tables, scored against the separate *test* reference. A non-finite loss
ends a run as diverged; an optimizer fails a task when most of its runs diverged or its mean
score is more than twice the best optimizer's (the paper's Figure 6 splits its optimizers
into the successful and the failed in the same spirit).

CPU default: a ring of 8 Gaussians (Wasserstein-2 distance to the target, modes covered,
fraction of high-quality samples) and the 8x8 scikit-learn digits (Fréchet distance in the
feature space of a small digits classifier trained once and cached), tiny MLP GANs.
``--full``: CIFAR-10 with a DCGAN-style generator (WGAN, WGAN-GP) and a ResNet generator
(SN-GAN), FID by torch-fidelity.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from hvadam_bench.optimizers import DEFAULT_OPTIMIZERS, check_names
from hvadam_bench.parallel import torch_threads
from hvadam_bench.runner import (
    BenchError,
    atomic_write_json,
    atomic_write_text,
    common_arguments,
    default_jobs,
    job_count,
    names,
    numbers,
    prepare_output,
    seed_list,
    versions,
)
from hvadam_bench.studies.gan_report import (
    FAIL_RATIO,
    _ranked,
    render_report,
    write_figures,
)
from hvadam_bench.training import (
    Trial,
    TrialFunction,
    TrialStore,
    Workers,
    run_protocol,
)
from hvadam_bench.workloads.gan_problems import (
    BUDGETS,
    CPU_DATASETS,
    DATASETS,
    GAN_LABELS,
    GANS,
    RING_MODES,
    RING_RADIUS,
    RING_SIGMA,
    Budget,
    Cifar10Problem,
    DigitsProblem,
    Problem,
    RingProblem,
)
from hvadam_bench.workloads.gan_training import (
    CLIP,
    GAN_BETA1,
    GRADIENT_PENALTY,
    curve_iterations,
    train_gan,
)

FORMAT = 1  # bump when a change to training or scoring makes stored trials stale


PRESET_GRIDS = {
    "quick": {"lrs": (1e-4, 1e-3, 1e-2), "seeds": (1, 2)},
    "full": {"lrs": (5e-5, 1e-4, 2e-4, 5e-4, 1e-3), "seeds": (1, 2, 3, 4, 5)},
}


@dataclass
class GanConfig:
    datasets: list[str]
    gans: list[str]
    optimizers: list[str]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]  # the final (reported) seeds
    preset: str = "quick"
    tune_seed: int = 0
    iterations: int | None = None  # overrides every dataset's budget
    device: str = "cpu"
    data_dir: Path | None = None
    inception_weights: Path | None = None
    jobs: int = 1  # worker processes (each runs whole (task, optimizer) pairs)

    @classmethod
    def preset_named(cls, name: str) -> GanConfig:
        grid = PRESET_GRIDS[name]
        return cls(
            datasets=list(CPU_DATASETS if name == "quick" else ("cifar10",)),
            gans=list(GANS),
            optimizers=list(DEFAULT_OPTIMIZERS),
            lrs=grid["lrs"],
            seeds=grid["seeds"],
            preset=name,
            device="cpu" if name == "quick" else ("cuda" if torch.cuda.is_available() else "cpu"),
            jobs=default_jobs(name),
        )

    def budget(self, dataset: str) -> Budget:
        budget = BUDGETS[self.preset][dataset]
        if self.iterations is not None:
            budget = replace(budget, iterations=self.iterations)
        return budget

    def validate(self) -> None:
        for label, chosen, known in (
            ("dataset", self.datasets, DATASETS),
            ("GAN", self.gans, GANS),
        ):
            unknown = [name for name in chosen if name not in known]
            if unknown:
                raise BenchError(f"unknown {label} {unknown[0]!r}; known: {', '.join(known)}")
        check_names(self.optimizers)
        if not self.datasets or not self.gans or not self.optimizers:
            raise BenchError("nothing to run: give at least one dataset, GAN and optimizer")
        if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise BenchError(f"learning rates must be positive and finite, got {self.lrs}")
        if not self.seeds:
            raise BenchError("give at least one final seed")
        if self.tune_seed in self.seeds:
            raise BenchError(
                f"--seeds must not contain the tuning seed {self.tune_seed}: the reported runs "
                "would include the one the lr was chosen on"
            )
        if self.jobs < 1:
            raise BenchError("--jobs must be at least 1")
        if self.iterations is not None and self.iterations < 1:
            raise BenchError("--iterations must be at least 1")
        if self.device != "cpu" and not _device_available(self.device):
            raise BenchError(f"--device {self.device}: not available on this machine")


def _device_available(device: str) -> bool:
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError):
        return False
    return True


def make_problem(dataset: str, config: GanConfig, out: Path) -> Problem:
    budget = config.budget(dataset)
    if dataset == "ring":
        return RingProblem(budget, config.device)
    if dataset == "digits":
        return DigitsProblem(budget, config.device, out / "digits_classifier.pt")
    return Cifar10Problem(
        budget, config.device, config.data_dir, config.inception_weights, out / "fidelity_cache"
    )


# ---- fingerprint of stored trials ------------------------------------------------------------


def _fingerprint(dataset: str, budget: Budget) -> str:
    """Changes whenever a stored trial of ``dataset`` would no longer be what this code and
    budget compute, so that results of another budget are never reused."""
    identity = json.dumps(
        {"format": FORMAT, "dataset": dataset, "budget": asdict(budget), "clip": CLIP,
         "penalty": GRADIENT_PENALTY, "ring": [RING_MODES, RING_RADIUS, RING_SIGMA],
         "beta1": GAN_BETA1},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(identity.encode()).hexdigest()[:10]


# ---- the study -------------------------------------------------------------------------------


def run(
    config: GanConfig,
    out: Path,
    show_progress: bool = True,
    interrupt_after_checkpoints: int | None = None,
) -> dict:
    """Run the study; write ``gan.json``, ``report.md`` and the figures into ``out``.

    ``interrupt_after_checkpoints`` stops the run after that many checkpoints (tests of
    resuming; in-process runs only)."""
    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"meta": _meta(config), "datasets": {}}
    samples: dict = {}  # drawn in the figures, kept out of the JSON (they would swell it)
    # One intra-op thread on CPU: tiny networks run faster without threading, and the result
    # does not depend on how many cores the machine has.
    with torch_threads(1 if config.device == "cpu" else None):
        # Every problem is built before any training, also with workers: it checks the data
        # (an unusable CIFAR folder stops the run before the ring trials, not after) and
        # caches the digits classifier before any worker needs it.
        problems = {dataset: make_problem(dataset, config, out) for dataset in config.datasets}
        for dataset, problem in problems.items():
            store = TrialStore(_store_root(out, problem), interrupt_after_checkpoints)
            tasks = [f"{dataset}-{gan}" for gan in config.gans]
            summary = _protocol(problem, store, config, out, tasks, show_progress)
            entry = {
                "metric": problem.metric,
                "metric_long": problem.metric_long,
                "budget": asdict(problem.budget),
                "curve_iterations": curve_iterations(problem.budget),
                "notes": problem.notes(),
                "gans": {},
            }
            for task in tasks:
                gan = task.split("-", 1)[1]
                entry["gans"][gan] = _task_entry(summary[task], task, config, store)
                samples.setdefault(dataset, {})[gan] = {
                    name: r.pop("samples") for name, r in entry["gans"][gan]["optimizers"].items()
                }
            entry["cpu_seconds_per_run"] = _cpu_seconds(store, config, tasks)
            results["datasets"][dataset] = entry
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "gan.json", results)
    write_figures(results, samples, out)
    atomic_write_text(out / "report.md", render_report(results))
    return results


def _store_root(out: Path, problem: Problem) -> Path:
    """Trials of one dataset and budget: another budget never reuses them."""
    return out / "trials" / f"{problem.name}-{_fingerprint(problem.name, problem.budget)}"


def _protocol(problem, store, config, out, tasks, show_progress) -> dict:
    """The protocol over ``tasks``, in ``config.jobs`` processes (each builds its own copy of
    the problem from ``out``, where the digits classifier is cached)."""
    return run_protocol(
        "gan", tasks, config.optimizers, list(config.lrs), list(config.seeds),
        functools.partial(train_gan, problem=problem), store, higher_is_better=False,
        tune_seed=config.tune_seed, show_progress=show_progress,
        workers=Workers(config.jobs, _worker_trial_function, (problem.name, config, out)),
    )  # fmt: skip


def _worker_trial_function(dataset: str, config: GanConfig, out: Path) -> TrialFunction:
    """In a worker process: the trial function over this process's own copy of the data."""
    return functools.partial(train_gan, problem=make_problem(dataset, config, out))


def _cpu_seconds(store: TrialStore, config: GanConfig, tasks: list[str]) -> float | None:
    """Mean CPU time of this configuration's runs (measured when they ran; a resumed run
    counts only its last part)."""
    seconds = []
    for path in (store.root / "results").glob("*.json"):
        result = json.loads(path.read_text())
        trial = result.get("trial", {})
        ours = trial.get("task") in tasks and trial.get("optimizer") in config.optimizers
        if ours and result.get("cpu_seconds") is not None:
            seconds.append(result["cpu_seconds"])
    return round(statistics.fmean(seconds), 2) if seconds else None


def _task_entry(summary: dict, task: str, config: GanConfig, store: TrialStore) -> dict:
    """The protocol's summary per optimizer, plus the per-run scores, samples and the verdict
    (failed or not)."""
    optimizers = {}
    for name, entry in summary.items():
        finals = [
            store.result(Trial("gan", task, name, entry["lr"], seed, "final"))
            for seed in config.seeds
        ]
        extra = entry.pop("extra")
        optimizers[name] = {
            **entry,
            "tests": [run.get("test") for run in finals],
            "modes_covered": _mean(extra.get("metric_modes_covered")),
            "high_quality": _mean(extra.get("metric_high_quality")),
            "samples": next((run["samples"] for run in finals if run.get("samples")), []),
        }
    best = min(
        (r["test_mean"] for r in optimizers.values() if r["test_mean"] is not None),
        default=None,
    )
    for entry in optimizers.values():
        entry["failed"] = _failed(entry, best)
    return {"optimizers": optimizers, "best_test_mean": best}


def _mean(values: Sequence | None) -> float | None:
    finite = [v for v in values or [] if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def _failed(entry: dict, best: float | None) -> bool:
    """Most runs diverged, or the mean test score is over FAIL_RATIO times the best one."""
    if entry["diverged_runs"] * 2 > entry["runs"] or entry["test_mean"] is None:
        return True
    return best is not None and entry["test_mean"] > FAIL_RATIO * best


def _meta(config: GanConfig) -> dict:
    meta = asdict(config)
    meta["data_dir"] = str(config.data_dir) if config.data_dir else None
    meta["inception_weights"] = str(config.inception_weights) if config.inception_weights else None
    meta.update(
        protocol=" ".join(__doc__.split("\n\n")[1].split()),
        fail_ratio=FAIL_RATIO,
        versions=versions(),
    )
    return meta


# ---- command line ----------------------------------------------------------------------------

HELP = "WGAN, WGAN-GP and SN-GAN per optimizer (paper Figure 6, Table 4)"
# The report sections that `hvadam-bench all` lifts into its combined report.
SUMMARY_SECTIONS = ("Compared with the paper",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(
        parser, "gan", "a 2-D Gaussian mixture and 8x8 digits with MLP GANs on CPU, ~15 min"
    )
    parser.add_argument("--datasets", type=names, help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--gans", type=names, help=f"comma-separated, of {', '.join(GANS)}")
    parser.add_argument("--optimizers", type=names, help="comma-separated optimizer names")
    parser.add_argument("--lrs", type=numbers, help="learning-rate grid, comma-separated")
    parser.add_argument("--seeds", type=seed_list, help="number of final seeds (1..N)")
    parser.add_argument("--iterations", type=int, help="generator iterations per run")
    parser.add_argument("--device", help="cpu or cuda (default: cpu; cuda with --full if any)")
    parser.add_argument(
        "--jobs", type=job_count, help="worker processes (default: 2 with the CPU default, else 1)"
    )
    parser.add_argument("--data-dir", type=Path, help="folder holding CIFAR-10 (cifar10 only)")
    parser.add_argument(
        "--inception-weights",
        type=Path,
        help="torch-fidelity's Inception-v3 weights file, for FID (cifar10 only)",
    )


def main(args: argparse.Namespace) -> int:
    config = GanConfig.preset_named(args.preset)
    for name in ("datasets", "gans", "optimizers", "lrs", "iterations", "device", "jobs"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    if getattr(args, "seeds", None) is not None:
        config.seeds = tuple(args.seeds)
    config.data_dir = getattr(args, "data_dir", None)
    config.inception_weights = getattr(args, "inception_weights", None)
    config.validate()
    out = prepare_output(args.out)
    results = run(config, out, show_progress=not args.no_progress)
    print(f"wrote {out / 'gan.json'}, {out / 'report.md'} and figures")
    for dataset, entry in results["datasets"].items():
        for gan, task in entry["gans"].items():
            best = _ranked(task)[0]
            failed = [n for n, r in task["optimizers"].items() if r["failed"]]
            print(
                f"  {dataset:<8} {GAN_LABELS[gan]:<8} best: {best:<10} "
                f"failed: {', '.join(failed) or 'none'}"
            )
    return 0
