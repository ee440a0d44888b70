"""Fixtures shared by the bench tests: PNG checks, CIFAR archives on disk, process listing."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def is_png(path: Path) -> bool:
    """Whether ``path`` is a PNG file (by its magic bytes)."""
    return Path(path).read_bytes().startswith(PNG_MAGIC)


def cifar10_batch(count: int, offset: int) -> bytes:
    """One pickled CIFAR-10 batch of ``count`` images whose bytes count up from ``offset``."""
    data = ((np.arange(count * 3072) + offset) % 256).astype(np.uint8).reshape(count, 3072)
    labels = [i % 10 for i in range(count)]
    return pickle.dumps({b"batch_label": b"fixture", b"data": data, b"labels": labels})


def write_cifar10(root: Path, archive: bool = False, per_batch: int = 6) -> Path:
    """A CIFAR-10 python-pickle archive in the real layout (packed as ``.tar.gz`` with
    ``archive``), with ``per_batch`` images in each batch; returns ``root``."""
    files = {name: cifar10_batch(per_batch, i) for i, name in enumerate(CIFAR10_FILES)}
    files["batches.meta"] = pickle.dumps({b"label_names": [b"x"] * 10})
    root.mkdir(parents=True, exist_ok=True)
    if archive:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        for name, raw in files.items():
            (folder / name).write_bytes(raw)
    return root


@pytest.fixture
def cifar10_dir(tmp_path) -> Path:
    """A small, valid CIFAR-10 folder."""
    return write_cifar10(tmp_path / "cifar")


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (Linux ``/proc``); zombies count as ended."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (not ended, not zombies)."""
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


@pytest.fixture
def source_env() -> dict:
    """The environment a subprocess needs to import this checkout's packages."""
    root = Path(__file__).resolve().parents[2]
    paths = [str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
