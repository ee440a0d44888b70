"""Worker processes that never outlive their parent, and torch's thread count.

The suites share their independent units of work (the valley study's (function, optimizer)
pairs, the training suites' (task, optimizer) pairs) over spawned worker processes, one torch
thread each; a run killed in any way (SIGKILL, SIGTERM, Ctrl-C) leaves no process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the body with ``count`` torch intra-op threads (None: leave torch's default)."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def single_thread() -> contextlib.AbstractContextManager:
    """One torch thread: small tensors run faster without threading (much faster when the
    cores are shared), and results do not depend on the machine's core count."""
    return torch_threads(1)


_WORKER: dict = {}  # what a worker process keeps between the units it runs
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with(parent: int) -> None:
    """Make this worker end when process ``parent`` does, however it ends (even SIGKILL):
    orphaned workers would keep computing and hold the resource tracker alive.

    On Linux the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``);
    everywhere, a daemon thread also checks once a second that the parent is still ours."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watching thread below still does the job, a second later
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _start_worker(parent: int, setup: Callable, setup_args: tuple) -> None:
    _die_with(parent)
    # Ctrl-C reaches the whole process group: the parent alone decides, and ends the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _WORKER["unit"] = setup(*setup_args)


def _run_unit(unit: Hashable):
    return _WORKER["unit"](unit)


def run_in_workers(
    units: Sequence[Hashable],
    setup: Callable,
    setup_args: tuple,
    jobs: int,
    on_done: Callable[[Hashable], None] = lambda unit: None,
) -> dict:
    """``{unit: unit_fn(unit)}``, with the units shared out over ``jobs`` spawned processes.

    ``setup(*setup_args)`` (a module-level function, so that it pickles) runs once in each
    worker and returns ``unit_fn``. Meant for (task, optimizer) pairs of :func:`run_protocol`:
    they are independent (each tunes its own lr, then runs its final seeds), every trial is
    seeded and single-threaded, and results go through the same store, so the outcome is the
    one of a single process. ``on_done(unit)`` runs here as each unit finishes.

    Workers never outlive this call: if it ends early (an error, Ctrl-C, SIGTERM turned into
    an exception by the command line) they are killed at once, and if this process is
    killed they end by themselves (:func:`_die_with`). Their checkpoints let a rerun resume."""
    done: dict = {}
    pool = ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker, initargs=(os.getpid(), setup, setup_args),
    )  # fmt: skip
    finished = False
    try:
        futures = {pool.submit(_run_unit, unit): unit for unit in units}
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            on_done(futures[future])
        finished = True
    finally:
        if not finished:
            _kill_workers(pool)
        pool.shutdown(wait=finished, cancel_futures=True)
    return {unit: done[unit] for unit in units}


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL every worker of ``pool`` and reap it (``shutdown`` alone would wait for the
    running units, minutes of training, to finish)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    for worker in workers:
        worker.join(timeout=5)
