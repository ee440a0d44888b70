"""Beyond the paper: when does the hidden vector matter? HVAdam, its ablations and principled
variants against the best baselines, under the shared protocol (issue 15).

Landscapes (the valley study's functions and a 20-D quadratic): every optimizer runs the same
(lr × β2) grid from the same *tuning* starts; the configuration with the lowest mean log10
relative gap is chosen and run from separate, held-out *evaluation* starts, which alone feed
the tables. Training tasks (the 1-layer PTB LSTM, digits, MNIST-1D, the ring GAN): each
optimizer tunes its lr on the validation split with one seed (β2 0.999, as in those suites),
then the chosen lr runs with fresh seeds, whose test scores are reported. Every optimizer gets
the same grid; HVAdam-family runs record diagnostics as they train.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import resource
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from hvadam_bench.optimizers import check_names, spec
from hvadam_bench.parallel import run_in_workers, single_thread, torch_threads
from hvadam_bench.reporting.verdicts import comparable_decades, first_best
from hvadam_bench.runner import (
    BenchError,
    Counter,
    Grid,
    atomic_write_json,
    atomic_write_text,
    finite_or_none,
    log_spaced,
    prepare_output,
    versions,
)
from hvadam_bench.studies import classify, gan
from hvadam_bench.studies.valley import criterion, relative_gap
from hvadam_bench.studies.variants_figures import diagnostics_figure
from hvadam_bench.studies.variants_optimizers import (
    FAMILY,
    MEMBERS,
    REFERENCE,
    recording,
    register,
    run_family_batch,
)
from hvadam_bench.studies.variants_report import render_report, summarise_diagnostics, verdicts
from hvadam_bench.training import TrialStore, Workers, run_protocol
from hvadam_bench.workloads import lm as lm_workload
from hvadam_bench.workloads.batched import run_batch
from hvadam_bench.workloads.gan_training import train_gan
from hvadam_bench.workloads.landscapes import DTYPE, QUICK, Landscape, landscape

BASELINES = ("adam", "adabelief")
_LANDSCAPE_SETTINGS = ("grid", "steps", "tune_starts", "eval_starts", "seed")
QUADRATIC = "quadratic-20"


@dataclass
class Quadratic(Landscape):
    """``sum((w - t)²)`` in 20 dimensions: a deterministic, perfectly conditioned bowl, on
    which g ≈ m and HVAdam's η grows without bound. Starts lie around the origin at the
    radius of a ``randn`` draw; ``t`` is a fixed ``randn`` draw."""

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.minimizer).pow(2).sum(dim=1)


def make_landscape(name: str) -> Landscape:
    if name == QUADRATIC:
        target = torch.randn(20, generator=torch.Generator().manual_seed(15), dtype=DTYPE)
        return Quadratic(
            name, "sum((w - t)²), 20-D", 20, target, start_center=torch.zeros(20, dtype=DTYPE),
            start_radius=20**0.5,
        )  # fmt: skip
    return landscape(name)


@dataclass
class VariantsConfig:
    optimizers: list[str]
    functions: list[str]
    grid: Grid  # the landscapes' (lr × β2) grid
    steps: int
    tune_starts: int
    eval_starts: int
    lm: dict | None  # overrides of the lm study's quick preset; None: no LSTM task
    classify_tasks: list[str]
    classify: dict  # overrides of the classify study's quick preset
    gans: list[str]  # ring GANs
    gan: dict  # overrides of the gan study's quick preset
    gan_iterations: int | None = None
    seed: int = 0
    jobs: int = 2
    preset: str = "custom"
    cuts: list[str] = field(default_factory=list)  # what this preset leaves out, for the report

    @classmethod
    def preset_named(cls, name: str) -> VariantsConfig:
        optimizers = [member.name for member in FAMILY] + list(BASELINES)
        if name == "quick":
            return cls(
                optimizers=optimizers, functions=["table1", "valley-30-16", QUADRATIC],
                grid=Grid(lrs=(1e-2, 1e-1), beta2s=(0.999,), momenta=(0.9,)), steps=100,
                tune_starts=2, eval_starts=2,
                lm={"train_tokens": 7_000, "eval_tokens": 2_000, "lrs": (1e-2,), "seeds": [1]},
                classify_tasks=["digits"], classify={"lrs": (1e-2,), "seeds": 1, "epochs": 1},
                gans=["wgan-gp"], gan={"lrs": (1e-3,), "seeds": (1,)}, gan_iterations=30,
                preset="quick", cuts=["a smoke test: numbers mean nothing"],
            )  # fmt: skip
        return cls(
            optimizers=optimizers, functions=[*QUICK, QUADRATIC],
            grid=Grid(lrs=log_spaced(1e-3, 1.0, 2), beta2s=(0.99, 0.999), momenta=(0.5, 0.9)),
            steps=200, tune_starts=3, eval_starts=5,
            lm={"train_tokens": 70_000, "seeds": [1, 2]},
            classify_tasks=["digits", "mnist1d"], classify={"seeds": 2},
            gans=["wgan-gp", "sngan"], gan={"seeds": (1, 2)}, preset="default",
            cuts=[
                "LSTM: 70k training words (the lm study's quick preset: 140k), 1 layer only",
                "classify: 2 final seeds (classify study: 3)",
                "ring GAN: WGAN-GP and SN-GAN only (gan study: also WGAN); no digits GAN",
                "landscapes: the valley study's quick set and grid, 5 held-out starts",
            ],
        )  # fmt: skip

    def validate(self) -> None:
        register()
        check_names(self.optimizers)
        if REFERENCE not in self.optimizers:
            raise BenchError(f"the optimizers must include the reference {REFERENCE!r}")
        for name in self.functions:
            try:
                make_landscape(name)
            except ValueError as error:
                raise BenchError(str(error)) from None
        if self.steps < 1 or self.tune_starts < 1 or self.eval_starts < 1 or self.jobs < 1:
            raise BenchError("steps, starts and jobs must be at least 1")


# --- landscapes -------------------------------------------------------------------------------


def _seed(base: int, name: str, role: int) -> int:
    return base * 1_000_003 + zlib.crc32(name.encode()) % 100_000 * 10 + role


def _run(name: str, land: Landscape, starts, configs, steps: int):
    """Values (steps + 1, configs, starts) and, for the HVAdam family, its diagnostics."""
    if name in MEMBERS:
        batch = run_family_batch(MEMBERS[name], land, starts, configs, steps)
        return batch.values, batch
    return run_batch(spec(name), land, starts, configs, steps).values, None


def landscape_unit(config: VariantsConfig, function: str, name: str) -> dict:
    """Tune ``name`` on ``function``'s tuning starts; report its held-out starts."""
    land = make_landscape(function)
    configs = config.grid.configs("beta2")
    starts = land.starts(config.tune_starts, _seed(config.seed, function, 0))
    tune, _ = _run(name, land, starts, configs, config.steps)
    scores = criterion(relative_gap(tune, land.minimum))
    chosen = first_best([comparable_decades(score) for score in scores.tolist()])
    lr, beta2 = configs[chosen]
    starts = land.starts(config.eval_starts, _seed(config.seed, function, 1))
    values, batch = _run(name, land, starts, [(lr, beta2)], config.steps)
    gap = relative_gap(values, land.minimum)[:, 0]  # (steps + 1, starts)
    per_start = gap[1:].log10().mean(dim=0)
    record = {
        "lr": lr,
        "beta2": beta2,
        "score": finite_or_none(float(criterion(gap[:, None])[0])),
        "std": finite_or_none(float(per_start.std())) if len(per_start) > 1 else 0.0,
        "diverged": int((~torch.isfinite(values[-1, 0])).sum()),
        "runs": config.eval_starts,
        "final_gap_median": finite_or_none(float(gap[-1].median())),
    }
    if batch is not None:  # per recorded step, the median over held-out starts
        series = [
            {
                "step": step,
                **{k: float(v[row, 0].nanmedian()) for k, v in batch.diagnostics.items()},
            }
            for row, step in enumerate(batch.record_steps)
        ]
        record["diagnostics"] = summarise_diagnostics([series])
    return record


def stored_landscape_unit(config: VariantsConfig, store: Path, function: str, name: str):
    """:func:`landscape_unit`, stored as JSON under ``store`` (a folder named by a digest of
    the landscape settings) and read back instead of rerun, so that a killed run resumes."""
    path = store / f"{function}__{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    record = landscape_unit(config, function, name)
    atomic_write_json(path, record)
    return record


def _landscape_worker(config: VariantsConfig, store: Path):
    register()
    return lambda unit: stored_landscape_unit(config, store, *unit)


def run_landscapes(config: VariantsConfig, store: Path, show_progress: bool) -> dict:
    settings = {k: v for k, v in asdict(config).items() if k in _LANDSCAPE_SETTINGS}
    store = prepare_output(store / f"landscapes-{_digest(settings)}", "trial store", lock=False)
    units = [(f, o) for f in config.functions for o in config.optimizers]
    counter = Counter(len(units), "variants: landscapes", show_progress)
    try:
        if config.jobs > 1:
            done = run_in_workers(
                units, _landscape_worker, (config, store), config.jobs,
                lambda unit: counter.tick(),
            )  # fmt: skip
        else:
            with single_thread():
                done = {}
                for unit in units:
                    done[unit] = stored_landscape_unit(config, store, *unit)
                    counter.tick()
    finally:
        counter.close()
    tasks = {}
    for function in config.functions:
        land = make_landscape(function)
        tasks[function] = {
            "kind": "landscape", "description": land.description,
            "metric": "mean log10 relative gap over the run (decades, lower is better)",
            "higher_is_better": False,
            "optimizers": {name: done[(function, name)] for name in config.optimizers},
        }  # fmt: skip
    return tasks


# --- training workloads -----------------------------------------------------------------------


def _training_entries(summary: dict, description: str, metric: str, higher: bool) -> dict:
    optimizers = {}
    for name, entry in summary.items():
        record = {
            "lr": entry["lr"], "score": entry["test_mean"], "std": entry["test_std"],
            "valid": entry["valid_mean"], "diverged": entry["diverged_runs"],
            "runs": entry["runs"],
        }  # fmt: skip
        logs = [
            log for seed in entry["extra"].get("metric_diagnostics") or [] for log in seed or []
        ]
        if logs:
            record["diagnostics"] = summarise_diagnostics(logs)
        optimizers[name] = record
    return {
        "kind": "training", "description": description, "metric": metric,
        "higher_is_better": higher, "optimizers": optimizers,
    }  # fmt: skip


def lm_config(config: VariantsConfig) -> lm_workload.LMConfig:
    overrides = dict(config.lm or {})
    return replace(
        lm_workload.LMConfig.preset_named("quick"), depths=[1], optimizers=config.optimizers,
        **overrides,
    )  # fmt: skip


def _lm_worker(lm: lm_workload.LMConfig):
    register()
    from hvadam_bench.data.ptb import load_corpus

    corpus = load_corpus(lm.data_dir, lm.vocabulary)
    return recording(lm_workload.make_trial_function(lm, lm_workload.prepare_splits(corpus, lm)))


def run_lm(config: VariantsConfig, store: Path, show_progress: bool) -> dict:
    from hvadam_bench.data.ptb import load_corpus

    lm = lm_config(config)
    lm.validate()
    corpus = load_corpus(lm.data_dir, lm.vocabulary)
    task = lm.task(1, corpus)
    with torch_threads(1):
        summary = run_protocol(
            "variants-lm", [task], config.optimizers, list(lm.lrs), lm.seeds,
            _lm_worker(lm), _store(store, "lm", lm), tune_seed=lm.tune_seed,
            show_progress=show_progress, workers=Workers(config.jobs, _lm_worker, (lm,)),
            description="variants: PTB LSTM",
        )  # fmt: skip
    words = lm.train_tokens
    description = f"PTB, 1-layer LSTM, {words} training words, 1 epoch, 2k vocabulary"
    return {"lstm-1": _training_entries(summary[task], description, "test perplexity", False)}


def classify_config(config: VariantsConfig) -> classify.ClassifyConfig:
    return replace(
        classify.ClassifyConfig.preset_named("quick"), tasks=config.classify_tasks,
        optimizers=config.optimizers, jobs=config.jobs, **config.classify,
    )  # fmt: skip


def _classify_worker(settings: classify.ClassifyConfig):
    register()
    return recording(classify.trial_function(settings))


def run_classify(config: VariantsConfig, store: Path, show_progress: bool) -> dict:
    settings = classify_config(config)
    settings.validate()
    with torch_threads(1):
        summary = run_protocol(
            "variants-classify", [settings.task_id(n) for n in settings.tasks],
            config.optimizers, list(settings.lrs), list(range(1, settings.seeds + 1)),
            _classify_worker(settings), _store(store, "classify", settings), higher_is_better=True,
            show_progress=show_progress,
            workers=Workers(config.jobs, _classify_worker, (settings,)),
            description="variants: classify",
        )  # fmt: skip
    return {
        name: _training_entries(
            summary[settings.task_id(name)], classify.TASKS[name].description,
            "test accuracy (%)", True,
        )
        for name in settings.tasks
    }  # fmt: skip


def gan_config(config: VariantsConfig) -> gan.GanConfig:
    return replace(
        gan.GanConfig.preset_named("quick"), datasets=["ring"], gans=config.gans,
        optimizers=config.optimizers, jobs=config.jobs, iterations=config.gan_iterations,
        **config.gan,
    )  # fmt: skip


def _gan_worker(settings: gan.GanConfig, out: Path):
    register()
    return recording(functools.partial(train_gan, problem=gan.make_problem("ring", settings, out)))


def run_gan(config: VariantsConfig, store: Path, show_progress: bool) -> dict:
    settings = gan_config(config)
    settings.validate()
    tasks = [f"ring-{name}" for name in settings.gans]
    with torch_threads(1):
        summary = run_protocol(
            "variants-gan", tasks, config.optimizers, list(settings.lrs), list(settings.seeds),
            _gan_worker(settings, store), _store(store, "gan", settings), higher_is_better=False,
            tune_seed=settings.tune_seed, show_progress=show_progress,
            workers=Workers(config.jobs, _gan_worker, (settings, store)),
            description="variants: ring GAN",
        )  # fmt: skip
    budget = settings.budget("ring")
    return {
        task: _training_entries(
            summary[task],
            f"{gan.GAN_LABELS[task.split('-', 1)[1]]} on a ring of 8 Gaussians, MLPs, "
            f"{budget.iterations} generator iterations",
            "test W2 to the target", False,
        )
        for task in tasks
    }  # fmt: skip


# --- the study --------------------------------------------------------------------------------


def _store(store: Path, workload: str, settings) -> TrialStore:
    """The workload's trial store, in a folder named by a digest of its settings: trials are
    keyed by task, optimizer, lr and seed only, so another budget must not find them."""
    return TrialStore(store / f"{workload}-{_digest(asdict(settings))}")


# Settings a trial's key already holds (task, optimizer, lr, seed) or that cannot change its
# result (how many processes share the work): left out of the store's digest, so that running
# more optimizers, tasks or seeds reuses the trials already run.
_NOT_SHAPING = {"optimizers", "jobs", "gans", "tasks", "depths", "datasets", "seeds", "lrs",
                "sgd_lrs", "preset", "cuts", "functions"}  # fmt: skip


def _digest(settings: dict) -> str:
    shaping = {k: v for k, v in settings.items() if k not in _NOT_SHAPING}
    identity = json.dumps(shaping, sort_keys=True, default=str)
    return hashlib.sha256(identity.encode()).hexdigest()[:10]


def rerender(out: Path) -> dict:
    """Recompute the verdict and rewrite ``report.md`` from ``out/variants.json``."""
    path = out / "variants.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BenchError(f"cannot read {path}: {error}") from None
    results["verdict"] = verdicts(results)
    atomic_write_json(path, results)
    diagnostics_figure(results, out / "diagnostics.png")
    atomic_write_text(out / "report.md", render_report(results))
    return results


def run(config: VariantsConfig, out: Path, show_progress: bool = True) -> dict:
    """Run every workload of ``config``; write ``variants.json`` and ``report.md`` into ``out``
    (trials of the training workloads are stored, and resumed, under ``out/trials``)."""
    config.validate()
    began = time.perf_counter()
    seconds: dict[str, float] = {}
    tasks: dict = {}
    store = out / "trials"
    workloads = [("landscapes", lambda: run_landscapes(config, store, show_progress))]
    if config.lm is not None:
        workloads.append(("lm", lambda: run_lm(config, store, show_progress)))
    if config.classify_tasks:
        workloads.append(("classify", lambda: run_classify(config, store, show_progress)))
    if config.gans:
        workloads.append(("gan", lambda: run_gan(config, store, show_progress)))
    for label, work in workloads:
        started = time.perf_counter()
        tasks.update(work())
        seconds[label] = round(time.perf_counter() - started, 1)
    seconds["total"] = round(time.perf_counter() - began, 1)
    # CPU time of this process and its finished workers: on a machine shared with other
    # work, the wall time says little about what the study itself costs.
    seconds["cpu"] = round(
        sum(
            usage.ru_utime + usage.ru_stime
            for usage in (resource.getrusage(resource.RUSAGE_SELF),
                          resource.getrusage(resource.RUSAGE_CHILDREN))
        ),
        1,
    )  # fmt: skip
    results = {"meta": _meta(config, seconds), "tasks": tasks}
    results["verdict"] = verdicts(results)
    atomic_write_json(out / "variants.json", results)
    diagnostics_figure(results, out / "diagnostics.png")
    atomic_write_text(out / "report.md", render_report(results))
    return results


def _meta(config: VariantsConfig, seconds: dict) -> dict:
    meta = asdict(config)
    meta["grid"] = asdict(config.grid)
    meta.update(
        protocol=" ".join(__doc__.split("\n\n")[1].split()),
        members=[asdict(member) for member in FAMILY if member.name in config.optimizers],
        labels={name: spec(name).label for name in config.optimizers},
        baselines=[name for name in config.optimizers if name not in MEMBERS],
        reference=REFERENCE,
        seconds=seconds,
        versions=versions(),
    )
    return meta


HELP = "HVAdam's ablations and variants beyond the paper against the best baselines (issue 15)"
# The report sections that `hvadam-bench all` would lift into its combined report.
SUMMARY_SECTIONS = ("Verdict",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", dest="preset", action="store_const", const="quick", default="default",
        help="a smoke test of every workload, a minute or two (default: the CPU default, "
        "under 30 minutes on 2 cores)",
    )  # fmt: skip
    parser.add_argument("--out", default="results/variants", help="output directory")
    parser.add_argument("--jobs", type=int, help="worker processes (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--render", action="store_true",
        help="only recompute the verdict and report from OUT/variants.json",
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    if args.render:
        rerender(prepare_output(args.out))
        print(f"rewrote {Path(args.out) / 'report.md'}")
        return 0
    config = VariantsConfig.preset_named(args.preset)
    if args.jobs is not None:
        config.jobs = args.jobs
    config.validate()
    out = prepare_output(args.out)
    results = run(config, out, show_progress=not args.no_progress)
    print(f"wrote {out / 'variants.json'} and {out / 'report.md'}")
    for task, entry in results["verdict"]["tasks"].items():
        print(f"  {task:<18} best HVAdam variant: {entry['best_member']}")
    return 0


if __name__ == "__main__":  # the same as `hvadam-bench variants ...`
    import sys

    from hvadam_bench.cli import main as cli_main

    sys.exit(cli_main(["variants", *sys.argv[1:]]))
