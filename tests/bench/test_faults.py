"""What long runs meet: hostile data files, kills, damaged stored files, two runs at once,
and input that can only fail late unless checked first. Each test fails on the code before
issue #13."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hvadam_bench import training
from hvadam_bench.cli import main
from hvadam_bench.studies import gan
from hvadam_bench.training import Interrupted, Trial, TrialStore, run_protocol

from .conftest import alive, descendants, write_cifar10

# --- 1. a CIFAR pickle that would run code is refused ------------------------------------------


class _Hostile:
    """Unpickled by plain ``pickle.loads``, this creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_gan_refuses_a_cifar_pickle_that_runs_code(tmp_path, capsys):
    data = write_cifar10(tmp_path / "data")
    marker = tmp_path / "the-pickle-ran"
    hostile = {b"data": _Hostile(marker), b"labels": [0]}
    (data / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(hostile))
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"unused")
    command = ["gan", "--datasets", "cifar10", "--data-dir", str(data), "--iterations", "1"]
    status = main([*command, "--inception-weights", str(weights), "--out", str(tmp_path / "o")])
    assert status == 2 and not marker.exists()
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "refusing to load" in error[0] and "data_batch_1" in error[0]


# --- 2. a killed run leaves no process behind --------------------------------------------------

# A ring GAN run long enough to be killed mid-way, its two pairs on two worker processes.
LONG_GAN = [
    "gan", "--datasets", "ring", "--gans", "wgan", "--optimizers", "adam,sgd",
    "--lrs", "1e-3", "--seeds", "1", "--jobs", "2", "--no-progress",
]  # fmt: skip


def _start(arguments: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hvadam_bench", *arguments],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def _wait_for_workers(process: subprocess.Popen, count: int, timeout: float = 60.0) -> set[int]:
    """The run's processes once ``count`` of them (workers, resource tracker) are up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        found = descendants(process.pid)
        if len(found) >= count:
            time.sleep(1.0)  # let the workers start training
            return descendants(process.pid)
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} processes after {timeout} s")


def _assert_all_end(pids: set[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive(pids)
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} processes outlived the run"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes via /proc")
@pytest.mark.parametrize(
    "how", ["SIGKILL parent", "SIGTERM parent", "Ctrl-C (SIGINT to the group)"]
)
def test_a_killed_run_leaves_no_process_behind(tmp_path, source_env, how):
    out = tmp_path / "gan"
    process = _start([*LONG_GAN, "--iterations", "100000", "--out", str(out)], source_env)
    processes = _wait_for_workers(process, count=3)  # two workers and the resource tracker
    if how.startswith("SIGKILL"):
        process.send_signal(signal.SIGKILL)
    elif how.startswith("SIGTERM"):
        process.send_signal(signal.SIGTERM)
    else:
        os.killpg(process.pid, signal.SIGINT)
    process.wait(timeout=30)
    _assert_all_end(processes)
    if not how.startswith("SIGKILL"):
        error = process.stderr.read().decode().strip().splitlines()
        assert process.returncode in (130, 143) and len(error) == 1, error


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes via /proc")
def test_a_killed_run_resumes_from_its_checkpoints(tmp_path, source_env):
    out = tmp_path / "gan"
    command = [*LONG_GAN, "--iterations", "60", "--out", str(out)]
    process = _start(command, source_env)
    deadline = time.monotonic() + 60
    while not list(out.rglob("checkpoints/*.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    processes = descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    _assert_all_end(processes)
    checkpoints = list(out.rglob("checkpoints/*.pt"))
    assert checkpoints
    rerun = subprocess.run(
        [sys.executable, "-m", "hvadam_bench", *command], env=source_env, capture_output=True
    )
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert not list(out.rglob("checkpoints/*.pt"))  # every trial finished and was stored
    assert "checkpoint" not in rerun.stderr.decode()  # resumed, nothing was rejected


# --- 3. stored results and checkpoints are used only if they are this trial's, intact ---------


def counting_trial(trial: Trial, checkpointer) -> dict:
    """A trial that trains nothing: its scores follow from its lr and seed."""
    counting_trial.calls += 1
    return {"valid": trial.lr * 10 + trial.seed, "test": trial.lr, "diverged": False}


def _protocol(store: TrialStore) -> dict:
    counting_trial.calls = 0
    return run_protocol(
        "toy", ["fit"], ["adam"], [0.01, 0.1], [1, 2], counting_trial, store, show_progress=False
    )


@pytest.mark.parametrize(
    "damage",
    ["{}", "[]", "another trial's", '"valid": "abc"', "edited score", "not JSON", "old format"],
)
def test_damaged_or_foreign_stored_results_are_recomputed(tmp_path, capsys, damage):
    store = TrialStore(tmp_path / "trials")
    reference = _protocol(store)
    trial = Trial("toy", "fit", "adam", 0.01, 0, "tune")
    path = store.root / "results" / f"{trial.key}.json"
    other = store.root / "results" / f"{Trial('toy', 'fit', 'adam', 0.1, 0, 'tune').key}.json"
    record = json.loads(path.read_text())
    path.write_text(
        {
            "{}": "{}",
            "[]": "[]",
            "another trial's": other.read_text(),
            '"valid": "abc"': json.dumps({**record, "valid": "abc"}),
            "edited score": json.dumps({**record, "valid": 0.0}),
            "not JSON": '{"valid": 0.1',
            "old format": json.dumps({"trial": record["trial"], "valid": 0.0, "test": 0.0,
                                      "diverged": False}),
        }[damage]
    )  # fmt: skip
    capsys.readouterr()
    assert _protocol(store) == reference
    assert counting_trial.calls == 1  # that trial alone was recomputed
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and path.name in error[0] and "recomputing" in error[0]
    assert json.loads(path.read_text())["format"] == training.STORE_FORMAT


def _gan_config(**changes) -> gan.GanConfig:
    config = gan.GanConfig.preset_named("quick")
    config.datasets, config.gans, config.optimizers = ["ring"], ["wgan-gp"], ["hvadam"]
    config.lrs, config.seeds, config.iterations, config.jobs = (1e-3,), (1,), 6, 1
    for name, value in changes.items():
        setattr(config, name, value)
    return config


def _comparable(results: dict) -> dict:
    datasets = json.loads(json.dumps(results["datasets"]))
    for entry in datasets.values():
        entry.pop("cpu_seconds_per_run")
    return datasets


def _flip_tensor_bytes(path: Path) -> None:
    """Flip bytes in the middle of the file's largest stored tensor (the file is a zip
    whose tensor storages lie in entries named ``.../data/<n>``)."""
    import zipfile

    raw = bytearray(path.read_bytes())
    start = raw.find(b"PK\x03\x04")
    with zipfile.ZipFile(path if start == 0 else _tail(path, start)) as archive:
        largest = max(
            (info for info in archive.infolist() if "/data/" in info.filename),
            key=lambda info: info.file_size,
        )
    header = start + largest.header_offset
    name_length = int.from_bytes(raw[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(raw[header + 28 : header + 30], "little")
    middle = header + 30 + name_length + extra_length + largest.file_size // 2
    for offset in range(middle, middle + 4):
        raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def _tail(path: Path, start: int) -> Path:
    tail = path.with_name(path.name + ".zip")
    tail.write_bytes(path.read_bytes()[start:])
    return tail


@pytest.mark.parametrize("damage", ["flipped tensor bytes", "missing keys"])
def test_damaged_checkpoint_restarts_its_trial(tmp_path, capsys, monkeypatch, damage):
    monkeypatch.setitem(
        gan.BUDGETS["quick"], "ring", replace(gan.BUDGETS["quick"]["ring"], evaluations=3)
    )
    whole = gan.run(_gan_config(), tmp_path / "a", show_progress=False)
    with pytest.raises(Interrupted):
        gan.run(_gan_config(), tmp_path / "b", show_progress=False, interrupt_after_checkpoints=1)
    (checkpoint,) = (tmp_path / "b" / "trials").rglob("checkpoints/*.pt")
    if damage == "flipped tensor bytes":
        _flip_tensor_bytes(checkpoint)
        for leftover in checkpoint.parent.glob("*.zip"):
            leftover.unlink()
    else:
        trial = Trial("gan", "ring-wgan-gp", "hvadam", 1e-3, 0, "tune")
        store = TrialStore(checkpoint.parent.parent)
        assert store.checkpointer(trial).path == checkpoint
        store.checkpointer(trial).save({"iteration": 2, "curve": [1.0]})  # intact, incomplete
    capsys.readouterr()
    resumed = gan.run(_gan_config(), tmp_path / "b", show_progress=False)
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and checkpoint.name in error[0] and "restarting" in error[0], error
    assert ("damaged" if damage.startswith("flipped") else "lacks generator") in error[0]
    assert _comparable(resumed) == _comparable(whole)


# --- 4. two runs into one --out ---------------------------------------------------------------

TINY_VALLEY = [
    "valley", "--functions", "table1", "--optimizers", "hvadam,adam", "--steps", "15",
    "--lrs", "0.03,0.3", "--beta2s", "0.99", "--momenta", "0.9", "--tune-starts", "2",
    "--eval-starts", "2", "--no-progress",
]  # fmt: skip


def test_a_second_run_into_a_busy_out_refuses_at_once(tmp_path, capsys, source_env):
    out = tmp_path / "valley"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hvadam_bench.runner import prepare_output;"
         " prepare_output(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(out)],
        env=source_env, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == b"held"
        started = time.monotonic()
        assert main([*TINY_VALLEY, "--out", str(out)]) == 2
        assert time.monotonic() - started < 5
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and f"pid {holder.pid}" in error[0], error
        assert "another hvadam-bench run" in error[0]
        assert not (out / "valley.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main([*TINY_VALLEY, "--out", str(out)]) == 0  # free again once the holder ended


def test_two_runs_at_once_both_finish_or_one_refuses(tmp_path, source_env):
    out = tmp_path / "gan"
    command = [*LONG_GAN, "--iterations", "8", "--out", str(out)]
    runs = [_start(command, source_env) for _ in range(2)]
    for run in runs:
        run.wait(timeout=300)
    outcomes = sorted((run.returncode, run.stderr.read().decode()) for run in runs)
    assert outcomes[0][0] == 0, outcomes[0][1]
    status, error = outcomes[1]
    assert status == 0 or (status == 2 and "another hvadam-bench run" in error), error
    assert json.loads((out / "gan.json").read_text())["datasets"]["ring"]


def test_checkpoints_are_written_under_unique_temporary_names(tmp_path):
    store = TrialStore(tmp_path)
    checkpointer = store.checkpointer(Trial("toy", "fit", "adam", 0.1, 0, "tune"))
    # Where the old code always wrote its temporary file: another writer's, here a folder.
    checkpointer.path.parent.mkdir(parents=True)
    checkpointer.path.with_name(f".{checkpointer.path.name}.tmp").mkdir()
    checkpointer.save({"step": 1})
    assert checkpointer.load() == {"step": 1}


# --- 5. what can be checked is checked before any training -----------------------------------


def test_an_unwritable_trial_store_fails_before_training(tmp_path, capsys, monkeypatch):
    from hvadam_bench.studies import lm

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained before checking the trial store")

    monkeypatch.setattr(lm, "make_trial_function", lambda *a, **k: must_not_train)
    trials = tmp_path / "trials"
    trials.mkdir()
    (trials / "results").write_text("a file where the results folder should be")
    ptb = Path(__file__).parent
    from .test_lm import TINY_SIZES, write_ptb

    data = write_ptb(tmp_path / "ptb")
    status = main(
        ["lm", "--data-dir", str(data), *TINY_SIZES, "--depths", "1", "--optimizers", "adam",
         "--trials", str(trials), "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert status == 2, ptb
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "trial store" in error[0] and str(trials) in error[0], error


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_trial_store_fails_before_training(tmp_path, capsys):
    trials = tmp_path / "trials"
    trials.mkdir()
    trials.chmod(0o555)
    try:
        from .test_lm import TINY_SIZES, write_ptb

        data = write_ptb(tmp_path / "ptb")
        status = main(
            ["lm", "--data-dir", str(data), *TINY_SIZES, "--depths", "1", "--optimizers",
             "adam", "--trials", str(trials), "--out", str(tmp_path / "o")]
        )  # fmt: skip
    finally:
        trials.chmod(0o755)
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "trial store" in error[0]


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*TINY_VALLEY, "--out", ""]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["hvadam-bench: error: --out is empty: give a folder"]
    assert not list(tmp_path.iterdir())


def test_unusable_cifar_stops_gan_before_the_ring_trains(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "gan"
    command = [*LONG_GAN[:2], "ring,cifar10", *LONG_GAN[3:], "--iterations", "4"]
    assert main([*command, "--data-dir", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert not list(out.rglob("*.json"))  # nothing trained
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cifar10 not found" in error[0], error
