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

import hashlib
import io
import json
import math
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hvadam_bench.optimizers import SPECS
from hvadam_bench.parallel import run_in_workers
from hvadam_bench.reporting.verdicts import comparable, first_best
from hvadam_bench.runner import (
    Counter,
    atomic_write_bytes,
    atomic_write_json,
    finite_or_none,
    prepare_output,
)

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


STORE_FORMAT = 2  # results and checkpoints of another format are recomputed, never trusted
_CHECKPOINT_MAGIC = b"hvadam-bench checkpoint\n"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":")).encode()


def _discard(path: Path, what: str, reason: str, consequence: str) -> None:
    """Say in one line why a stored file is not used, and remove it (if we may)."""
    print(f"hvadam-bench: {what} {path.name} {reason}; {consequence}", file=sys.stderr)
    path.unlink(missing_ok=True)


class Checkpointer:
    """Saves and restores one trial's training state.

    A checkpoint file is a magic line, a JSON header line (format, the trial it belongs to,
    the state's keys and the SHA-256 of the payload), then the payload written by
    ``torch.save``. A file that is not this trial's, is damaged, or lacks a key the trial
    needs is removed with one line on stderr, and the trial restarts from scratch."""

    def __init__(self, path: Path, store: TrialStore, trial: Trial):
        self.path = path
        self._store = store
        self._trial = trial

    def load(self, required: Iterable[str] = ()) -> dict | None:
        """The last saved state, or None: none saved, or the file was rejected (see the class
        docstring). ``required``: the keys the caller reads from the state."""
        if not self.path.exists():
            return None
        try:
            state, reason = self._read(tuple(required))
        except OSError as error:
            state, reason = None, f"is unreadable ({error.strerror})"
        if reason is not None:
            _discard(self.path, "checkpoint", reason, "restarting that trial")
        return state

    def _read(self, required: tuple[str, ...]) -> tuple[dict | None, str | None]:
        raw = self.path.read_bytes()
        if not raw.startswith(_CHECKPOINT_MAGIC):
            return None, "is not an hvadam-bench checkpoint of this format"
        header_line, _, payload = raw[len(_CHECKPOINT_MAGIC) :].partition(b"\n")
        try:
            header = json.loads(header_line)
        except ValueError:
            return None, "has a damaged header"
        if not isinstance(header, dict) or header.get("format") != STORE_FORMAT:
            return None, "is of another format"
        if header.get("trial") != asdict(self._trial):
            return None, "belongs to another trial"
        if header.get("sha256") != _digest(payload):
            return None, "is damaged (checksum mismatch)"
        missing = [key for key in required if key not in header.get("keys", [])]
        if missing:
            return None, f"lacks {', '.join(missing)}"
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as error:  # any unreadable payload: the trial restarts from scratch
            return None, f"is unreadable ({type(error).__name__})"
        if not isinstance(state, dict) or any(key not in state for key in required):
            return None, "does not hold the state it announces"
        return state, None

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (a unique temporary name, then a rename)."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        header = {
            "format": STORE_FORMAT,
            "trial": asdict(self._trial),
            "keys": sorted(state),
            "sha256": _digest(payload),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, _CHECKPOINT_MAGIC + _canonical(header) + b"\n" + payload)
        self._store.saved_checkpoint()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _result_problem(record: Any, trial: Trial) -> str | None:
    """Why ``record`` (a parsed result file) is not a sound result of ``trial``, or None."""
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not a result"
    if record.get("format") != STORE_FORMAT:
        return "is of another format"
    if record.get("trial") != asdict(trial):
        return "belongs to another trial"
    body = {key: value for key, value in record.items() if key != "sha256"}
    if record.get("sha256") != _digest(_canonical(body)):
        return "is damaged (checksum mismatch)"
    for key in ("valid", "test"):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"has a non-numeric {key!r}"
    if not isinstance(record.get("diverged"), bool):
        return "has no true/false 'diverged'"
    return None


class TrialStore:
    """Finished results (``results/*.json``) and checkpoints (``checkpoints/*.pt``) of trials,
    under one directory that several suites may share.

    Every stored file names the trial it belongs to (its full identity, whose task names
    carry each study's configuration fingerprint) and a SHA-256 of its content; anything
    else is recomputed, with one line on stderr saying so."""

    def __init__(self, root: Path, interrupt_after_checkpoints: int | None = None):
        self.root = Path(root)
        self._interrupt_after = interrupt_after_checkpoints
        self._saves = 0

    def prepare(self) -> None:
        """Check, before any training, that results and checkpoints can be written here;
        raise :class:`BenchError` otherwise."""
        prepare_output(self.root, what="trial store")
        for folder in (self.root / "results", self.root / "checkpoints"):
            prepare_output(folder, what="trial store", lock=False)

    def _result_path(self, trial: Trial) -> Path:
        return self.root / "results" / f"{trial.key}.json"

    def result(self, trial: Trial) -> dict | None:
        """The stored result of ``trial`` if it is sound (see the class docstring), else None."""
        path = self._result_path(trial)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            reason = f"is unreadable ({type(error).__name__})"
            _discard(path, "stored result", reason, "recomputing that trial")
            return None
        problem = _result_problem(record, trial)
        if problem is not None:
            _discard(path, "stored result", problem, "recomputing that trial")
            return None
        return record

    def save_result(self, trial: Trial, result: dict) -> None:
        path = self._result_path(trial)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {**result, "format": STORE_FORMAT, "trial": asdict(trial)}
        record["sha256"] = _digest(_canonical(record))
        atomic_write_json(path, record)

    def checkpointer(self, trial: Trial) -> Checkpointer:
        return Checkpointer(self.root / "checkpoints" / f"{trial.key}.pt", self, trial)

    def saved_checkpoint(self) -> None:
        self._saves += 1
        if self._interrupt_after is not None and self._saves >= self._interrupt_after:
            raise Interrupted(f"stopped after {self._saves} checkpoints, as asked")


TrialFunction = Callable[[Trial, Checkpointer], dict]


def run_trial(trial: Trial, trial_fn: TrialFunction, store: TrialStore) -> dict:
    """The trial's stored result, or run it (resuming from its checkpoint) and store it.

    ``trial_fn`` returns at least ``valid`` (the selection score), ``test`` (or None) and
    ``diverged``; a NaN or inf loss must end it with ``diverged=True`` rather than raise. The
    stored result also records the ``seconds`` the run took (its last part, if resumed).
    """
    stored = store.result(trial)
    if stored is not None:
        return stored
    checkpointer = store.checkpointer(trial)
    began = time.perf_counter()
    result = trial_fn(trial, checkpointer)
    result = {**result, "seconds": round(time.perf_counter() - began, 3)}
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


@dataclass(frozen=True)
class Workers:
    """Where :func:`run_protocol` runs its (task, optimizer) pairs: in ``jobs`` spawned,
    single-threaded processes, each of which calls ``setup(*args)`` once for the trial
    function it uses (``setup`` must be a module-level function, so that it pickles)."""

    jobs: int
    setup: Callable[..., TrialFunction]
    args: tuple = ()


@dataclass(frozen=True)
class _Protocol:
    """What every (task, optimizer) pair of one :func:`run_protocol` call shares."""

    suite: str
    grids: dict[str, list[float]]
    final_seeds: list[int]
    higher_is_better: bool
    tune_seed: int

    def summarise(
        self, task: str, name: str, trial_fn: TrialFunction, store, tick
    ) -> tuple[dict, list[dict]]:
        """Tune ``name``'s lr on ``task``, run the final seeds, and summarise them; also, per
        trial, the seconds it took when it ran and whether it ran now."""
        ran_now = []

        def counted(trial: Trial, checkpointer: Checkpointer) -> dict:
            ran_now.append(trial)
            return trial_fn(trial, checkpointer)

        lrs = self.grids[name]
        timing = []

        def run(trial: Trial) -> dict:
            result = run_trial(trial, counted, store)
            timing.append({"seconds": result.get("seconds"), "ran_now": trial in ran_now})
            tick()
            return result

        grid = []
        for lr in lrs:
            result = run(Trial(self.suite, task, name, lr, self.tune_seed, "tune"))
            grid.append(
                {"lr": lr, "valid": result.get("valid"), "diverged": bool(result.get("diverged"))}
            )
        # Compared to SIGNIFICANT_DIGITS digits: last-digit noise does not move the choice.
        scores = [comparable(_score(g, "valid", self.higher_is_better)) for g in grid]
        best = first_best(scores)
        chosen = lrs[best]
        finals = [
            run(Trial(self.suite, task, name, chosen, seed, "final")) for seed in self.final_seeds
        ]
        valid_mean, valid_std = _mean_std([r.get("valid") for r in finals if not r.get("diverged")])
        test_mean, test_std = _mean_std([r.get("test") for r in finals if not r.get("diverged")])
        curves = [r["curve"] for r in finals if r.get("curve") and not r.get("diverged")]
        summary = {
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
        return summary, timing


def _pair_in_worker(setup: Callable, args: tuple, protocol: _Protocol, root: Path):
    """In a worker: the function that runs one (task, optimizer) pair."""
    trial_fn, store = setup(*args), TrialStore(root)
    return lambda pair: protocol.summarise(*pair, trial_fn, store, lambda: None)


def run_protocol(
    suite: str,
    tasks: Sequence[str],
    optimizers: Sequence[str],
    lrs: Sequence[float] | Mapping[str, Sequence[float]],
    final_seeds: Sequence[int],
    trial_fn: TrialFunction,
    store: TrialStore,
    higher_is_better: bool = False,
    tune_seed: int = 0,
    show_progress: bool = True,
    workers: Workers | None = None,
    description: str | None = None,
    timing: list | None = None,
) -> dict:
    """Tune each optimizer's lr on validation, then rerun the chosen lr with every final seed.

    ``lrs`` is the grid of every optimizer, or a grid per optimizer name. With ``workers``
    (and more than one job), each (task, optimizer) pair runs in a worker process; every trial
    is seeded and single-threaded and goes through the same store, so the outcome is the one
    of a single process.

    Returns ``{task: {optimizer: summary}}`` with the grid, the chosen lr, mean ± std of the
    final validation and test scores, the number of diverged runs and the mean curve. A
    ``timing`` list gets, per trial, the ``seconds`` it took when it ran and whether it
    ``ran_now`` (stored trials are not rerun)."""
    grids = {name: list(lrs[name] if isinstance(lrs, Mapping) else lrs) for name in optimizers}
    protocol = _Protocol(suite, grids, list(final_seeds), higher_is_better, tune_seed)
    plan = [(task, name) for task in tasks for name in optimizers]
    per_pair = {name: len(grids[name]) + len(final_seeds) for name in optimizers}
    store.prepare()  # an unwritable store fails now, not after the first trial has trained
    counter = Counter(sum(per_pair[name] for _, name in plan), description or suite, show_progress)
    try:
        if workers is not None and workers.jobs > 1:
            done = run_in_workers(
                plan, _pair_in_worker, (workers.setup, workers.args, protocol, store.root),
                workers.jobs, on_done=lambda pair: counter.tick(per_pair[pair[1]]),
            )  # fmt: skip
        else:
            done = {
                (task, name): protocol.summarise(task, name, trial_fn, store, counter.tick)
                for task, name in plan
            }
    finally:
        counter.close()
    summary: dict = {}
    for task, name in plan:
        summary.setdefault(task, {})[name], pair_timing = done[(task, name)]
        if timing is not None:
            timing.extend(pair_timing)
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
