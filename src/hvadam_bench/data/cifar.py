"""CIFAR-10 and CIFAR-100 from the python-pickle archives the user downloaded: the one reader
of every suite that uses CIFAR.

The archive may be given unpacked (``cifar-10-batches-py/`` or ``cifar-100-python/``, or that
folder itself) or packed (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``). Its files
are pickles, so they are read with an unpickler that only rebuilds numpy arrays: a crafted
file that would run code is refused, not executed. Anything missing or malformed raises
:class:`BenchError` naming the file.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hvadam_bench.runner import BenchError


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps what, in its python-pickle archive."""

    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)

    def expected(self) -> str:
        """The layout in words, for error messages."""
        return f"{self.folder}/{{{','.join(self.files)}}} or {self.archive}"


CIFAR = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py", "cifar-10-python.tar.gz",
        tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
        "labels", "label_names", 10,
    ),
    "cifar100": CifarLayout(
        "cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "meta",
        "fine_labels", "fine_label_names", 100,
    ),
}  # fmt: skip

# What a CIFAR pickle may reference: numpy arrays (and their dtypes) as pickled by protocol 2
# (the official archive) or by protocols 4-5, and the latin-1 codec Python 3 uses for bytes
# in protocol-2 pickles. Anything else is refused, not executed.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # NumPy 2 renamed it
        return super().find_class(module, name)


def unpickle_arrays(raw: bytes) -> dict:
    """A pickled dict of numpy arrays and plain values, keys decoded to ``str``; only numpy
    arrays may be rebuilt (:class:`pickle.UnpicklingError` for anything else)."""
    # The archive was written by Python 2: its str keys come back as bytes.
    loaded = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    if not isinstance(loaded, dict):
        raise ValueError(f"a {type(loaded).__name__}, not a dict")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def _part(raw: bytes, where: str, layout: CifarLayout, dataset: str) -> tuple[Tensor, Tensor]:
    try:
        content = unpickle_arrays(raw)
        data = np.asarray(content["data"])
        labels = np.asarray(content[layout.label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"data of shape {data.shape} and type {data.dtype}")
        if labels.shape != (len(data),) or labels.min(initial=0) < 0:
            raise ValueError("labels do not match the images")
        if labels.max(initial=0) >= layout.classes:
            raise ValueError(f"a label ≥ {layout.classes}")
    except Exception as error:  # a truncated, foreign or hostile file: one line, naming it
        raise BenchError(
            f"malformed {dataset} file {where}: expected a pickled dict with 'data' (N x 3072 "
            f"uint8) and '{layout.label_key}' ({type(error).__name__}: {error})"
        ) from None
    images = torch.from_numpy(data.copy()).reshape(-1, 3, 32, 32)  # stored channel-major
    return images, torch.from_numpy(labels)


def locate_cifar(data_dir: str | Path, dataset: str) -> Path:
    """Where ``dataset`` is under ``data_dir``: its unpacked folder (``data_dir`` itself or its
    ``cifar-10-batches-py`` / ``cifar-100-python`` sub-folder, holding every file) or its
    ``.tar.gz`` archive; :class:`BenchError` naming what is missing otherwise."""
    layout = CIFAR[dataset]
    root = Path(data_dir).expanduser()
    folder = root if root.name == layout.folder else root / layout.folder
    if not folder.is_dir() and (root / layout.archive).is_file():
        return root / layout.archive
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing:
        raise BenchError(
            f"{dataset} not found: expected {layout.expected()} (the python version of the "
            f"archive) in --data-dir {str(root)!r}; missing {', '.join(missing)} in {folder}"
        )
    return folder


def _raw_files(data_dir: str | Path, dataset: str) -> tuple[dict[str, bytes], str]:
    """The archive's files as bytes, and where they were read (for messages)."""
    layout = CIFAR[dataset]
    location = locate_cifar(data_dir, dataset)
    if location.is_dir():
        return {name: (location / name).read_bytes() for name in layout.files}, f"{location}/"
    try:
        with tarfile.open(location, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [name for name in layout.files if name not in members]
            if missing:
                raise BenchError(f"--data-dir: {location} lacks {', '.join(missing)}")
            raw = {name: tar.extractfile(members[name]).read() for name in layout.files}
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BenchError(
            f"--data-dir: {location} is not a readable tar.gz ({type(error).__name__})"
        ) from None
    return raw, f"{location}:"


def read_cifar(data_dir: str | Path, dataset: str) -> tuple[Tensor, Tensor, Tensor, Tensor, list]:
    """Train images, train labels, test images, test labels (images uint8, N x 3 x 32 x 32)
    and the class names of CIFAR-10 (``dataset="cifar10"``) or CIFAR-100 (fine labels)."""
    layout = CIFAR[dataset]
    raw, where = _raw_files(data_dir, dataset)
    parts = [_part(raw[name], where + name, layout, dataset) for name in layout.train_files]
    test_x, test_y = _part(raw[layout.test_file], where + layout.test_file, layout, dataset)
    try:
        names = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in unpickle_arrays(raw[layout.meta_file])[layout.names_key]
        ]
        if len(names) != layout.classes:
            raise ValueError(f"{len(names)} class names")
    except Exception as error:
        raise BenchError(
            f"malformed {dataset} file {where}{layout.meta_file}: expected a pickled dict with "
            f"'{layout.names_key}' ({type(error).__name__}: {error})"
        ) from None
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    return train_x, train_y, test_x, test_y, names
