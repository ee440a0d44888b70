"""What the deep-learning suites share: resumable trials, learning-rate selection on a
validation split, several seeds, and divergence handling.

A *trial* is one training run (suite, task, optimizer, lr, seed, phase). The protocol is the
valley study's: every optimizer runs the same learning-rate grid once ("tune" phase, one
seed); the lr with the best *validation* score is kept; that lr then runs with several seeds
("final" phase), whose validation and test scores are reported as mean ± std. The test split
is never used for a choice.

Trials are resumable: a suite's trial function saves a checkpoint now and then through its
:class:`Checkpointer`; a killed run continues from the last one, a finished trial's result is
stored once (atomically) and never recomputed, and a corrupt checkpoint is discarded so that
its trial restarts cleanly.
"""

from __future__ import annotations

import json
import math
import random
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hvadam_bench.optimizers import SPECS
from hvadam_bench.runner import Counter, atomic_write_json, finite_or_none

DEFAULT_BETA2, DEFAULT_MOMENTUM = 0.999, 0.9


@dataclass(frozen=True)
class Trial:
    suite: str
    task: str
    optimizer: str
    lr: float
    seed: int
    phase: str  # "tune" or "final"

    @property
    def key(self) -> str:
        """A file-name-safe identity: equal trials share results, whichever suite asks."""
        raw = "__".join(
            [self.suite, self.task, self.optimizer, f"lr{self.lr:.4g}", f"s{self.seed}", self.phase]
        )
        return re.sub(r"[^A-Za-z0-9_.+-]", "-", raw)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """Optimizer ``name`` of the shared registry at ``lr``, with its second hyperparameter at
    its default (β2 = 0.999, SGD momentum 0.9): the deep-learning suites tune the lr only."""
    spec = SPECS[name]
    second = DEFAULT_MOMENTUM if spec.second == "momentum" else DEFAULT_BETA2
    return spec.build([{"params": list(params), "lr": lr}], second)


class Interrupted(KeyboardInterrupt):
    """Raised by a :class:`TrialStore` told to stop after some checkpoints (tests of resuming)."""


class Checkpointer:
    """Saves and restores one trial's training state (``torch.save``, atomically)."""

    def __init__(self, path: Path, store: TrialStore):
        self.path = path
        self._store = store

    def load(self) -> dict | None:
        """The last saved state, or None (none saved, or the file is unreadable: then it is
        removed and the trial starts over)."""
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as error:  # any unreadable file: the trial restarts from scratch
            print(
                f"hvadam-bench: corrupt checkpoint {self.path.name} ({type(error).__name__}); "
                "restarting that trial",
                file=sys.stderr,
            )
            self.path.unlink(missing_ok=True)
            return None

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(state, temporary)
        temporary.replace(self.path)
        self._store.saved_checkpoint()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


class TrialStore:
    """Finished results (``results/*.json``) and checkpoints (``checkpoints/*.pt``) of trials,
    under one directory that several suites may share."""

    def __init__(self, root: Path, interrupt_after_checkpoints: int | None = None):
        self.root = Path(root)
        self._interrupt_after = interrupt_after_checkpoints
        self._saves = 0

    def _result_path(self, trial: Trial) -> Path:
        return self.root / "results" / f"{trial.key}.json"

    def result(self, trial: Trial) -> dict | None:
        path = self._result_path(trial)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # unreadable: recompute rather than trust it
            return None

    def save_result(self, trial: Trial, result: dict) -> None:
        path = self._result_path(trial)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"trial": asdict(trial), **result})

    def checkpointer(self, trial: Trial) -> Checkpointer:
        return Checkpointer(self.root / "checkpoints" / f"{trial.key}.pt", self)

    def saved_checkpoint(self) -> None:
        self._saves += 1
        if self._interrupt_after is not None and self._saves >= self._interrupt_after:
            raise Interrupted(f"stopped after {self._saves} checkpoints, as asked")


TrialFunction = Callable[[Trial, Checkpointer], dict]


def run_trial(trial: Trial, trial_fn: TrialFunction, store: TrialStore) -> dict:
    """The trial's stored result, or run it (resuming from its checkpoint) and store it.

    ``trial_fn`` returns at least ``valid`` (the selection score), ``test`` (or None) and
    ``diverged``; a NaN or inf loss must end it with ``diverged=True`` rather than raise.
    """
    stored = store.result(trial)
    if stored is not None:
        return stored
    checkpointer = store.checkpointer(trial)
    result = trial_fn(trial, checkpointer)
    store.save_result(trial, _json_safe(result))
    checkpointer.clear()
    return store.result(trial)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _score(result: dict, key: str, higher_is_better: bool) -> float:
    """The value to minimise: diverged or missing counts as the worst possible."""
    value = result.get(key)
    if result.get("diverged") or value is None or not math.isfinite(value):
        return math.inf
    return -value if higher_is_better else value


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def run_protocol(
    suite: str,
    tasks: Sequence[str],
    optimizers: Sequence[str],
    lrs: Sequence[float],
    final_seeds: Sequence[int],
    trial_fn: TrialFunction,
    store: TrialStore,
    higher_is_better: bool = False,
    tune_seed: int = 0,
    show_progress: bool = True,
) -> dict:
    """Tune each optimizer's lr on validation, then rerun the chosen lr with every final seed.

    Returns ``{task: {optimizer: summary}}`` with the grid, the chosen lr, mean ± std of the
    final validation and test scores, the number of diverged runs and the mean curve."""
    plan = [(task, name) for task in tasks for name in optimizers]
    total = len(plan) * (len(lrs) + len(final_seeds))
    counter = Counter(total, suite, show_progress)
    summary: dict = {}
    for task, name in plan:
        grid = []
        for lr in lrs:
            result = run_trial(Trial(suite, task, name, lr, tune_seed, "tune"), trial_fn, store)
            grid.append(
                {"lr": lr, "valid": result.get("valid"), "diverged": bool(result.get("diverged"))}
            )
            counter.tick()
        scores = [_score(g, "valid", higher_is_better) for g in grid]
        best = min(range(len(lrs)), key=lambda i: (scores[i], i))
        chosen = lrs[best]
        finals = []
        for seed in final_seeds:
            finals.append(
                run_trial(Trial(suite, task, name, chosen, seed, "final"), trial_fn, store)
            )
            counter.tick()
        valid_mean, valid_std = _mean_std([r.get("valid") for r in finals if not r.get("diverged")])
        test_mean, test_std = _mean_std([r.get("test") for r in finals if not r.get("diverged")])
        curves = [r["curve"] for r in finals if r.get("curve") and not r.get("diverged")]
        summary.setdefault(task, {})[name] = {
            "label": SPECS[name].label,
            "lr": chosen,
            "grid": grid,
            "valid_mean": valid_mean,
            "valid_std": valid_std,
            "test_mean": test_mean,
            "test_std": test_std,
            "diverged_runs": sum(bool(r.get("diverged")) for r in finals),
            "runs": len(finals),
            "curve": [statistics.fmean(values) for values in zip(*curves)] if curves else None,
            "extra": {k: [r.get(k) for r in finals] for k in finals[0] if k.startswith("metric_")},
        }
    counter.close()
    return summary


def rng_state() -> dict:
    """Every RNG a training loop may draw from, to checkpoint with the model."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
