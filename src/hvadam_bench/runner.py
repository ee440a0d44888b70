"""What every study shares: the tuning protocol, atomic result files, progress, and the one
error type the command line turns into a one-line message."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None


class BenchError(Exception):
    """A problem with the user's input or environment: reported in one line, exit status 2."""


@dataclass(frozen=True)
class Grid:
    """The tuning grid every optimizer gets: learning rates, and the values of its second
    hyperparameter (β2 for adaptive methods, momentum for SGD; both lists equally long)."""

    lrs: tuple[float, ...]
    beta2s: tuple[float, ...]
    momenta: tuple[float, ...]

    def __post_init__(self):
        if not self.lrs or not self.beta2s or not self.momenta:
            raise BenchError("the tuning grid is empty: give at least one lr and one beta2")
        if len(self.beta2s) != len(self.momenta):
            raise BenchError("the beta2 and momentum grids must have as many points")
        if any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise BenchError(f"learning rates must be positive and finite, got {self.lrs}")
        if any(not 0 <= b < 1 for b in (*self.beta2s, *self.momenta)):
            raise BenchError("beta2 and momentum values must lie in [0, 1)")

    def configs(self, second_kind: str) -> list[tuple[float, float]]:
        """Every (lr, second) pair for an optimizer whose second hyperparameter is
        ``second_kind`` ("beta2" or "momentum")."""
        seconds = self.momenta if second_kind == "momentum" else self.beta2s
        return [(lr, second) for lr in self.lrs for second in seconds]


def log_spaced(low: float, high: float, per_decade: int) -> tuple[float, ...]:
    """``low`` to ``high`` inclusive, ``per_decade`` points per factor of ten."""
    count = round(math.log10(high / low) * per_decade) + 1
    return tuple(float(f"{low * 10 ** (i / per_decade):.3g}") for i in range(count))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.
    The temporary file has a unique name, so concurrent writers never collide."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from others
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or inf: diverged numbers are written as null."""
    return float(value) if math.isfinite(value) else None


def prepare_output(directory: str | os.PathLike, what: str = "--out", lock: bool = True) -> Path:
    """Create ``directory`` if needed, check it is writable and (with ``lock``) claim it for
    this process; raise :class:`BenchError` otherwise. ``what`` names it in the message."""
    if not str(directory).strip():
        raise BenchError(f"{what} is empty: give a folder")
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise BenchError(f"cannot write to {what} {str(path)!r}: {reason}") from None
    if lock:
        lock_directory(path, what)
    return path


LOCK_NAME = ".hvadam-bench.lock"
_held_locks: dict[Path, int] = {}  # folder -> descriptor of its lock file, held by this process


def lock_directory(path: Path, what: str = "--out") -> None:
    """Claim ``path`` for this process (an exclusive ``flock`` on a lock file in it, released
    when the process ends), or raise :class:`BenchError` at once if another process holds
    it: two runs writing the same trials and reports would overwrite each other's work."""
    if fcntl is None:  # no flock (Windows): no protection, as before
        return
    key = Path(path).resolve()
    if key in _held_locks:
        return
    descriptor = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise BenchError(
            f"another hvadam-bench run (pid {holder}) is writing to {what} {str(path)!r}; "
            "wait for it to finish or choose another folder"
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _held_locks[key] = descriptor


def release_locks() -> None:
    """Release every folder :func:`lock_directory` claimed (the command line does so when a
    command ends, so that in-process callers such as tests can run again)."""
    while _held_locks:
        _, descriptor = _held_locks.popitem()
        os.close(descriptor)  # closing the descriptor releases its flock


def progress(iterable: Iterable, total: int, description: str, enabled: bool = True):
    """A tqdm progress bar on stderr (or the bare iterable when disabled)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit="run", dynamic_ncols=True)


class Counter:
    """A progress bar advanced by hand (``tick()``), for loops that are not one iterable."""

    def __init__(self, total: int, description: str, enabled: bool = True):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=description, unit="run", dynamic_ncols=True)

    def tick(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def versions() -> dict[str, str]:
    """The versions a results file records: hvadam, torch, Python, and the CPU."""
    import torch

    import hvadam

    return {
        "hvadam": hvadam.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
    }


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for the record of a results file:
    last digits may differ on another CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def default_jobs(preset: str) -> int:
    """Worker processes a training suite uses unless told: both cores (at most 2) for the CPU
    preset, one process (on the accelerator) for ``--full``."""
    return min(2, os.cpu_count() or 1) if preset == "quick" else 1


def names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def numbers(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def seed_list(text: str) -> list[int]:
    """``--seeds N`` in every study: the final (reported) seeds 1..N; seed 0 tunes."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"--seeds must be at least 1, got {count}")
    return list(range(1, count + 1))


def job_count(text: str) -> int:
    """``--jobs N`` in every study: worker processes, at least 1 (results do not depend on it)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"--jobs takes a count of at least 1, got {text!r}")
    return count


def common_arguments(parser: argparse.ArgumentParser, study: str, quick_help: str) -> None:
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick",
        dest="preset",
        action="store_const",
        const="quick",
        help=f"{quick_help} (default)",
    )
    preset.add_argument(
        "--full", dest="preset", action="store_const", const="full", help="the complete study"
    )
    parser.set_defaults(preset="quick")
    parser.add_argument("--out", default=f"results/{study}", help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
